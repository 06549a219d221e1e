"""RFC 7323 timestamps: TSval clock, TS.Recent update rule, PAWS, RTT measurement."""

import pytest

from tcpip.tcp import TcpConnection

from .conftest import (
    LOCAL_SEQ,
    REMOTE_SEQ,
    RST,
    SEND,
    config,
    established,
    recv,
    recv_one,
)

BASE = LOCAL_SEQ + 1
TS_CFG = config(timestamps=True)


def ts_conn(now=0.0, **kw):
    base = dict(timestamps_enabled=True, ts_recent=5000, ts_recent_age=0.0, ts_time=1000)
    base.update(kw)
    return established(now, TS_CFG, **base)


def test_every_segment_carries_tsval_and_echoes_ts_recent():
    conn = ts_conn()
    conn.send(b"x")
    seg = recv_one(conn, 0.25)
    assert seg.options.timestamp == (1250, 5000)


def test_effective_mss_leaves_room_for_the_option():
    conn = ts_conn()
    conn.send(b"x" * 3000)
    assert [len(s.payload) for s in recv(conn)] == [1448, 1448, 104]


def test_ts_recent_updated_by_in_order_segment():
    conn = ts_conn()
    conn.on_segment(SEND(payload=b"a", ts=(6000, 1000)), 0.1)
    assert conn.ts_recent == 6000
    assert recv_one(conn, 0.1).options.timestamp == (1100, 6000)


def test_ts_recent_not_updated_by_segment_beyond_last_ack_sent():
    conn = ts_conn()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 100, payload=b"later", ts=(7000, 1000)), 0.1)
    assert conn.ts_recent == 5000
    assert recv_one(conn, 0.1).options.timestamp[1] == 5000


def test_paws_drops_old_timestamp_and_acks():
    conn = ts_conn()
    conn.on_segment(SEND(payload=b"replayed", ts=(4000, 900)), 0.1)
    assert conn.receive_available() == 0
    assert conn.counters.paws_drops == 1
    ack = recv_one(conn, 0.1)
    assert ack.ack == REMOTE_SEQ + 1


def test_paws_handles_tsval_wraparound():
    conn = ts_conn(ts_recent=0xFFFFFF00)
    conn.on_segment(SEND(payload=b"new", ts=(0x10, 900)), 0.1)  # later, after wrap
    assert conn.receive() == b"new"
    assert conn.ts_recent == 0x10


def test_paws_does_not_apply_to_rst():
    conn = ts_conn()
    conn.on_segment(SEND(flags=RST, ts=(1, 0)), 0.1)
    assert conn.closed and conn.reset_received


def test_paws_ignores_stale_ts_recent():
    conn = ts_conn(ts_recent_age=25 * 24 * 3600.0)
    conn.on_segment(SEND(payload=b"ok", ts=(4000, 900)), 0.1)
    assert conn.receive() == b"ok"
    assert conn.ts_recent == 4000


def test_segment_without_timestamp_is_accepted_like_linux():
    conn = ts_conn()
    conn.on_segment(SEND(payload=b"nots"), 0.1)
    assert conn.receive() == b"nots"


def test_rtt_from_tsecr():
    conn = ts_conn()
    conn.send(b"x" * 10)
    assert recv_one(conn, 0.0).options.timestamp == (1000, 5000)
    conn.on_segment(SEND(ack=BASE + 10, ts=(5100, 1000)), 0.25)
    assert conn.rtt.srtt == pytest.approx(0.25)


def test_rtt_from_tsecr_of_a_retransmission_is_correct():
    # With timestamps the echo says which transmission is acknowledged (RFC 7323 4.1), so the
    # retransmission ambiguity Karn's algorithm avoids does not arise.
    conn = ts_conn()
    conn.send(b"x" * 10)
    recv(conn, 0.0)
    assert recv_one(conn, 1.0).options.timestamp == (2000, 5000)
    conn.on_segment(SEND(ack=BASE + 10, ts=(5100, 2000)), 1.1)
    assert conn.rtt.srtt == pytest.approx(0.1)


def test_ts_clock_continues_across_export_and_import():
    conn = ts_conn()
    snap = conn.export_state(5.0)
    assert snap.ts_time == 6000
    again = TcpConnection.from_snapshot(snap, TS_CFG, 100.0)
    again.send(b"y")
    seg = recv_one(again, 100.0)
    assert seg.options.timestamp == (6000, 5000)
    again.send(b"z")
    again.nodelay = True
    assert recv_one(again, 100.5).options.timestamp == (6500, 5000)


def test_duplicate_of_acked_data_updates_ts_recent_for_the_echo():
    # Our ACK was lost and the peer retransmits after backing off: the duplicate ACK must
    # echo the retransmission's TSval, or the peer measures its whole backoff as RTT.
    conn = ts_conn()
    conn.on_segment(SEND(payload=b"abc", ts=(6000, 1000)), 0.0)
    recv_one(conn, 0.0)
    conn.on_segment(SEND(payload=b"abc", ts=(9000, 1000)), 3.0)  # entirely old
    dup = recv_one(conn, 3.0)
    assert dup.ack == REMOTE_SEQ + 4 and dup.options.timestamp[1] == 9000
