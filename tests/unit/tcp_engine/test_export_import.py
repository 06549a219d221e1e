"""export_state / from_snapshot: the TCB handed to an offload target and back (NDIS b.13, T.3-T.6)."""

import dataclasses

import pytest

from tcpip.tcb import TcpState
from tcpip.tcp import TcpConnection

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    SEND,
    close_wait,
    closing,
    config,
    established,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    recv,
    recv_nothing,
    recv_one,
    snapshot,
    syn_received,
    syn_sent,
    time_wait,
)

BASE = LOCAL_SEQ + 1
R = REMOTE_SEQ + 1
DATA = bytes(i * 7 & 0xFF for i in range(5000))


def busy():
    """In flight: 2 segments; unsent: the rest (window 3000); 3 bytes received, not read."""
    conn = established(snd_wnd=3000, max_snd_wnd=3000)
    conn.send(DATA)
    out = recv(conn, 0.0)
    assert [len(s.payload) for s in out] == [MSS, MSS]
    conn.on_segment(SEND(ack=BASE, payload=b"abc", window=3000), 0.1)
    assert recv_one(conn, 0.1).ack == R + 3
    return conn


def test_export_fields():
    snap = busy().export_state(0.3)
    assert snap.state is TcpState.ESTABLISHED
    assert (snap.snd_una, snap.snd_nxt, snap.snd_max) == (BASE, BASE + 2 * MSS, BASE + 2 * MSS)
    assert snap.send_data == DATA  # from SND.UNA: unacked, then unsent
    assert snap.buffered_receive == b"abc"
    assert snap.rcv_nxt == R + 3
    assert snap.rcv_wnd == 65535 - 3
    assert snap.snd_wnd == 3000 and snap.max_snd_wnd == 3000
    assert snap.retransmit_timeout_delta == pytest.approx(0.7)
    assert snap.persist_timeout_delta is None and snap.keepalive_timeout_delta is None
    assert snap.cwnd == 10 * MSS and snap.srtt is None
    assert (snap.local_port, snap.remote_port, snap.remote_mss) == (80, 49500, MSS)
    assert not snap.fin_queued and snap.fin_seq is None


def test_import_continues_exactly():
    snap = busy().export_state(0.3)
    conn = TcpConnection.from_snapshot(snap, config(), 10.0)
    assert conn.receive() == b"abc"
    recv_nothing(conn, 10.0)  # nothing new fits the window (sender SWS)
    assert conn.next_deadline() == pytest.approx(10.7)
    rexmit = recv_one(conn, 10.7)
    assert (rexmit.seq, rexmit.payload) == (BASE, DATA[:MSS])
    conn.on_segment(SEND(seq=R + 3, ack=BASE + 2 * MSS, window=65535), 10.8)
    got = b"".join(s.payload for s in recv(conn, 10.8))
    assert got == DATA[2 * MSS :]


def test_export_requires_flushing_the_delayed_ack():
    conn = established(cfg=config(delayed_ack=0.2))
    conn.on_segment(SEND(payload=b"owed"), 0.0)
    with pytest.raises(ValueError, match="flush_ack"):
        conn.export_state(0.01)
    ack = conn.flush_ack(0.01)
    assert [(s.ack, s.flags) for s in ack] == [(R + 4, ACK)]
    assert conn.flush_ack(0.01) == []
    snap = conn.export_state(0.01)
    assert snap.buffered_receive == b"owed"
    recv_nothing(conn, 1.0)  # the delayed ACK timer is gone too


@pytest.mark.parametrize("make", [lambda: syn_sent()[0], lambda: syn_received()[0], time_wait])
def test_export_refused_outside_synchronized_states(make):
    with pytest.raises(ValueError):
        make().export_state(0.0)


@pytest.mark.parametrize(
    "make", [established, fin_wait_1, fin_wait_2, close_wait, last_ack, closing, busy]
)
def test_snapshot_round_trip_is_identity(make):
    conn = make()
    recv(conn, 0.2)
    snap = conn.export_state(0.2)
    again = TcpConnection.from_snapshot(snap, config(), 0.2).export_state(0.2)
    assert again == snap


def test_fin_state_is_carried():
    snap = fin_wait_1().export_state(0.0)
    assert snap.fin_queued and snap.fin_seq == BASE
    conn = TcpConnection.from_snapshot(snap, config(), 5.0)
    recv_nothing(conn, 5.0)
    fin = recv_one(conn, conn.next_deadline())
    assert (fin.seq, fin.flags) == (BASE, FIN | ACK)
    conn.on_segment(SEND(ack=BASE + 1), 7.0)
    assert conn.state is TcpState.FIN_WAIT_2


def test_unsent_data_and_queued_fin_are_sent_after_import():
    conn = established(snd_wnd=0)
    conn.send(b"queued")
    conn.close()
    recv(conn, 0.0)
    snap = conn.export_state(0.1)
    assert snap.state is TcpState.FIN_WAIT_1 and snap.fin_seq == BASE + 6
    assert snap.persist_timeout_delta == pytest.approx(0.9)
    imported = TcpConnection.from_snapshot(snap, config(), 1.0)
    imported.on_segment(SEND(window=1000), 1.0)
    seg = recv_one(imported, 1.0)
    assert (seg.seq, seg.payload, seg.flags & FIN) == (BASE, b"queued", FIN)


def test_rtt_and_congestion_state_survive():
    conn = established()
    conn.send(b"x" * 100)
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=BASE + 100), 0.08)
    snap = conn.export_state(0.1)
    assert snap.srtt == pytest.approx(0.08)
    snap = dataclasses.replace(snap, cwnd=4 * MSS, ssthresh=3 * MSS)
    imported = TcpConnection.from_snapshot(snap, config(), 0.0)
    assert imported.rtt.srtt == pytest.approx(0.08) and imported.rtt.rto == pytest.approx(0.24)
    imported.send(b"y" * (10 * MSS))
    assert len(recv(imported, 0.0)) == 4


def test_keepalive_and_probe_counters_survive():
    ka = dict(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0, keepalive_probes=3)
    conn = established(cfg=config(**ka), **ka)
    recv(conn, 0.0)
    recv_one(conn, 10.0)
    snap = conn.export_state(11.0)
    assert snap.keepalive_probe_count == 1 and snap.keepalive_timeout_delta == pytest.approx(1.0)
    imported = TcpConnection.from_snapshot(snap, config(), 50.0)
    recv_nothing(imported, 50.0)
    assert imported.next_deadline() == pytest.approx(51.0)
    recv_one(imported, 51.0)
    recv_one(imported, 53.0)
    recv(imported, 55.0)
    assert imported.closed


@pytest.mark.parametrize(
    "bad",
    [
        dict(state=TcpState.SYN_SENT),
        dict(snd_nxt=LOCAL_SEQ),  # SndNxt before SndUna
        dict(snd_nxt=LOCAL_SEQ + 100, snd_max=LOCAL_SEQ + 100),  # beyond the (empty) data
        dict(fin_queued=True, fin_seq=LOCAL_SEQ + 5, send_data=b"abc"),  # FIN not after data
        dict(fin_queued=True, fin_seq=None),
        dict(snd_wscale=15),
        dict(remote_mss=0),
    ],
)
def test_import_rejects_inconsistent_tcb(bad):
    with pytest.raises(ValueError):
        TcpConnection.from_snapshot(snapshot(**bad), config(), 0.0)


def test_import_logs_the_state_change(caplog):
    with caplog.at_level("DEBUG", logger="tcpip.tcp"):
        TcpConnection.from_snapshot(snapshot(), config(), 0.0)
    assert any("CLOSED -> ESTABLISHED" in r.message for r in caplog.records)
