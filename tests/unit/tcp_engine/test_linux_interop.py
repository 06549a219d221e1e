"""Scripted exchanges with a peer that behaves like Linux 6.x TCP (the real peer over TAP):
SYN with MSS 1460 / SACK-permitted / timestamps / window scale 7, 1448-byte segments (1460 - 12
bytes of timestamp option), an ACK for every second segment, zero-window probes and keepalives
sent as SEG.SEQ = SND.UNA - 1 without data."""

import pytest

from tcpip.tcp import TcpConfig, TcpConnection, TcpState
from tcpip.tcp_segment import TcpOptions

from .conftest import (
    ACK,
    FIN,
    LOCAL_IP,
    LOCAL_PORT,
    LOCAL_SEQ,
    PSH,
    REMOTE_IP,
    REMOTE_PORT,
    REMOTE_SEQ,
    SEND,
    SYN,
    recv,
    recv_nothing,
    recv_one,
)

LINUX_MSS = 1448  # with timestamps
TS0 = 3_000_000_000  # Linux TSval at the SYN (random offset)
R = REMOTE_SEQ + 1
L = LOCAL_SEQ + 1


def linux_syn() -> object:
    return SEND(
        seq=REMOTE_SEQ,
        ack=None,
        flags=SYN,
        window=64240,
        options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(TS0, 0)),
    )


def linux(seq=R, ack=L, flags=ACK, window=502, payload=b"", ts=0, ecr=0):
    return SEND(
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        payload=payload,
        options=TcpOptions(timestamp=(TS0 + ts, ecr)),
    )


def accepted(cfg: TcpConfig | None = None) -> TcpConnection:
    """Passive open from a Linux SYN at t=0, handshake completed at t=0.001."""
    cfg = cfg or TcpConfig()
    conn = TcpConnection.accept(
        cfg, LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, LOCAL_SEQ, linux_syn(), 0.0, ts_offset=0
    )
    synack = recv_one(conn, 0.0)
    assert synack.flags == SYN | ACK
    conn.on_segment(linux(ts=1, ecr=synack.options.timestamp[0]), 0.001)
    assert conn.state is TcpState.ESTABLISHED
    recv_nothing(conn, 0.001)
    return conn


def test_syn_ack_for_a_linux_syn():
    conn = TcpConnection.accept(
        TcpConfig(),
        LOCAL_IP,
        LOCAL_PORT,
        REMOTE_IP,
        REMOTE_PORT,
        LOCAL_SEQ,
        linux_syn(),
        2.0,
        ts_offset=0,
    )
    sa = recv_one(conn, 2.0)
    o = sa.options
    assert (o.mss, o.wscale, o.sack_permitted, o.timestamp) == (1460, 5, False, (2000, TS0))
    assert sa.window == 65535
    assert conn._smss == LINUX_MSS


def test_handshake_completes_and_uses_linux_window_scale():
    conn = accepted()
    assert conn.snd_wnd == 502 << 7
    assert conn.rtt.srtt == pytest.approx(0.001)  # from the TSecr of the third ACK


def test_quickack_at_start_then_every_second_segment():
    # Like Linux: the first 16 data segments are ACKed at once (quick-ACK mode), then the
    # delayed-ACK rule ACKs every second full-sized segment.
    conn = accepted()
    acks = []
    for i in range(24):
        conn.on_segment(linux(seq=R + i * LINUX_MSS, payload=b"d" * LINUX_MSS, ts=10 + i), 0.01)
        acks += recv(conn, 0.01)
        conn.receive()
    assert [a.ack for a in acks] == [R + k * LINUX_MSS for k in range(1, 17)] + [
        R + (16 + 2 * k) * LINUX_MSS for k in range(1, 5)
    ]


def test_we_ack_every_second_full_segment_and_echo_the_oldest_tsval():
    conn = accepted(TcpConfig(quickack=0))
    acks = []
    for i in range(10):
        conn.on_segment(
            linux(seq=R + i * LINUX_MSS, payload=b"d" * LINUX_MSS, ts=10 + i), 0.01 + i * 0.0001
        )
        acks += recv(conn, 0.01 + i * 0.0001)
    assert [a.ack for a in acks] == [R + 2 * k * LINUX_MSS for k in range(1, 6)]
    # RFC 7323 4.3: the echoed TSval is that of the first segment the ACK covers.
    assert [a.options.timestamp[1] for a in acks] == [TS0 + 10 + 2 * k for k in range(5)]
    # Window scale 5: the first ACK offers the whole free buffer; later ones keep the right
    # edge where it is (receiver SWS avoidance) -- rounded up, never shrinking it.
    assert acks[0].window == ((1 << 20) - 2 * LINUX_MSS) >> 5
    edges = [a.ack + (a.window << 5) for a in acks]
    assert edges == [edges[0]] * 5 or all(e >= edges[0] for e in edges)
    assert max(edges) - R <= (1 << 20) + 31
    assert conn.receive_available() == 10 * LINUX_MSS


def test_our_bulk_send_respects_iw10_and_linux_acks():
    conn = accepted()
    conn.send(b"u" * 100_000)
    out = recv(conn, 0.01)
    assert [len(s.payload) for s in out] == [LINUX_MSS] * 10
    # Linux ACKs two segments at a time; slow start grows cwnd by one MSS per ACK.
    conn.on_segment(linux(ack=L + 2 * LINUX_MSS, ts=20, ecr=out[1].options.timestamp[0]), 0.02)
    out2 = recv(conn, 0.02)
    assert len(out2) == 3
    assert conn.rtt.srtt is not None


def test_linux_zero_window_probe_is_answered_with_our_window():
    cfg = TcpConfig(receive_buffer=4 * LINUX_MSS, delayed_ack=0.0)
    conn = accepted(cfg)
    for i in range(4):
        conn.on_segment(linux(seq=R + i * LINUX_MSS, payload=b"z" * LINUX_MSS, ts=5), 0.01)
    acks = recv(conn, 0.01)
    assert acks[-1].window == 0
    # Linux tcp_xmit_probe_skb(): SEG.SEQ = SND.UNA - 1, no data.
    conn.on_segment(linux(seq=R + 4 * LINUX_MSS - 1, ts=300), 0.3)
    probe_ack = recv_one(conn, 0.3)
    assert (probe_ack.ack, probe_ack.window) == (R + 4 * LINUX_MSS, 0)
    conn.receive()
    upd = recv_one(conn, 0.4)
    assert upd.window == 4 * LINUX_MSS  # buffer is below 64 KiB: no scaling


def test_linux_sack_blocks_do_not_disturb_us():
    conn = accepted(TcpConfig(sack_permitted=True))
    conn.send(b"s" * (4 * LINUX_MSS))
    recv(conn, 0.01)
    sack = TcpOptions(timestamp=(TS0 + 30, 0), sack_blocks=((L + LINUX_MSS, L + 2 * LINUX_MSS),))
    conn.on_segment(SEND(seq=R, ack=L, window=502, options=sack), 0.02)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.snd_una == L


def test_linux_fin_with_data_then_our_close():
    conn = accepted()
    conn.on_segment(linux(flags=FIN | PSH | ACK, payload=b"bye", ts=40), 0.05)
    assert conn.state is TcpState.CLOSE_WAIT and conn.eof_received
    ack = recv_one(conn, 0.05)
    assert ack.ack == R + 4
    conn.close()
    fin = recv_one(conn, 0.06)
    assert (fin.seq, fin.flags) == (L, FIN | ACK)
    conn.on_segment(linux(seq=R + 4, ack=L + 1, ts=41), 0.07)
    assert conn.closed and conn.error is None
