"""Flow control: window scale, zero window / persist probes, SWS avoidance on both sides."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    RST,
    SEND,
    config,
    established,
    fields,
    recv,
    recv_nothing,
    recv_one,
)

BASE = LOCAL_SEQ + 1


def test_window_scale_applies_both_ways():
    big = 1 << 20
    conn = established(
        cfg=config(receive_buffer=big),
        snd_wscale=7,
        rcv_wscale=5,
        initial_rcv_wnd=big,
        rcv_wnd=big,
    )
    conn.on_segment(SEND(window=100, payload=b"x" * 64), 0.0)
    assert conn.snd_wnd == 12800
    ack = recv_one(conn)
    assert ack.window == (big - 64) >> 5


def test_zero_window_persist_probes_with_backoff_then_resume():
    conn = established(snd_wnd=0)
    conn.send(b"p" * 100)
    recv_nothing(conn, 0.0)
    assert conn.next_deadline() == pytest.approx(1.0)
    probe = recv_one(conn, 1.0)
    assert fields(probe) == dict(seq=BASE, ack=REMOTE_SEQ + 1, flags=ACK, payload=b"p")
    assert conn.counters.zero_window_probes == 1
    assert conn.next_deadline() == pytest.approx(3.0)
    conn.on_segment(SEND(window=0), 1.05)  # still closed
    recv_nothing(conn, 1.05)
    assert recv_one(conn, 3.0).payload == b"p"
    assert conn.next_deadline() == pytest.approx(7.0)
    # The window opens: everything goes, starting at SND.UNA (the probe byte again).
    conn.on_segment(SEND(window=65535), 3.5)
    seg = recv_one(conn, 3.5)
    assert (seg.seq, len(seg.payload)) == (BASE, 100)
    assert conn.persist_backoff == 0
    assert conn.counters.zero_window_probes == 2


def test_zero_window_probe_byte_accepted():
    conn = established(snd_wnd=0)
    conn.send(b"abc")
    recv(conn, 0.0)
    recv_one(conn, 1.0)
    conn.on_segment(SEND(ack=BASE + 1, window=0), 1.1)  # the probe byte got in
    assert conn.snd_una == BASE + 1
    conn.on_segment(SEND(ack=BASE + 1, window=1000), 1.2)
    seg = recv_one(conn, 1.2)
    assert (seg.seq, seg.payload) == (BASE + 1, b"bc")


def test_persist_never_gives_up_while_the_peer_answers():
    conn = established(cfg=config(max_retransmissions=2), snd_wnd=0)
    conn.send(b"q")
    recv(conn, 0.0)
    for _ in range(6):
        t = conn.next_deadline()
        recv_one(conn, t)
        conn.on_segment(SEND(window=0), t + 0.01)
        recv(conn, t + 0.01)
    assert conn.state is TcpState.ESTABLISHED


def test_persist_gives_up_when_probes_go_unanswered():
    conn = established(cfg=config(max_retransmissions=2), snd_wnd=0)
    conn.send(b"q")
    recv(conn, 0.0)
    out = []
    while not conn.closed:
        out = recv(conn, conn.next_deadline())
    assert conn.counters.zero_window_probes == 2
    assert out[-1].flags & RST
    assert conn.error is not None


def test_rto_with_closed_window_hands_over_to_persist():
    conn = established()
    conn.send(b"r" * 1000)
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=BASE + 500, window=0), 0.1)
    recv_nothing(conn, 0.1)
    t = conn.next_deadline()
    recv_nothing(conn, t)  # retransmission timer: no retransmission into a zero window
    assert conn.counters.retransmissions == 0
    probe = recv_one(conn, conn.next_deadline())
    assert (probe.seq, len(probe.payload)) == (BASE + 500, 1)
    conn.on_segment(SEND(ack=BASE + 500, window=4000), 5.0)
    seg = recv_one(conn, 5.0)
    assert (seg.seq, len(seg.payload)) == (BASE + 500, 500)


def test_receiver_advertises_zero_then_updates_window_when_app_reads():
    cfg = config(receive_buffer=4000)
    conn = established(cfg=cfg, initial_rcv_wnd=4000, rcv_wnd=4000)
    seq = REMOTE_SEQ + 1
    for size in (1460, 1460, 1080):
        conn.on_segment(SEND(seq=seq, payload=b"z" * size), 0.0)
        seq += size
    acks = recv(conn)
    assert acks[-1].window == 0 and acks[-1].ack == seq
    # A zero-window probe from the peer is answered with the zero window.
    conn.on_segment(SEND(seq=seq, payload=b"!"), 0.5)
    ack = recv_one(conn, 0.5)
    assert (ack.ack, ack.window) == (seq, 0)
    assert conn.receive_available() == 4000
    # Receiver SWS avoidance: reading 100 bytes does not reopen the window ...
    conn.receive(100)
    recv_nothing(conn, 0.6)
    # ... reading enough for a full segment does: a window update is sent.
    conn.receive(1400)
    upd = recv_one(conn, 0.7)
    assert (upd.ack, upd.window) == (seq, 1500)


def test_receiver_sws_keeps_the_right_edge_for_small_openings():
    cfg = config(receive_buffer=4000)
    conn = established(cfg=cfg, initial_rcv_wnd=4000, rcv_wnd=4000)
    conn.on_segment(SEND(payload=b"z" * 4000), 0.0)
    recv(conn)
    conn.receive(500)
    # Data-less traffic from the peer that needs an ACK still sees window 0.
    conn.on_segment(SEND(seq=REMOTE_SEQ, payload=b""), 0.1)  # unacceptable -> ACK
    assert recv_one(conn, 0.1).window == 0


def test_segment_larger_than_window_is_trimmed():
    cfg = config(receive_buffer=4000)
    conn = established(cfg=cfg, initial_rcv_wnd=4000, rcv_wnd=4000)
    conn.on_segment(SEND(payload=bytes(range(250)) * 20), 0.0)
    ack = recv_one(conn)
    assert ack.ack == REMOTE_SEQ + 1 + 4000 and ack.window == 0
    assert conn.receive() == (bytes(range(250)) * 20)[:4000]


def test_sender_sws_waits_for_a_useful_window():
    conn = established(snd_wnd=1000, max_snd_wnd=65535)
    conn.send(b"s" * 5000)
    recv_nothing(conn, 0.0)  # 1000 < MSS and < max window / 2
    seg = recv_one(conn, conn.next_deadline())  # SWS override timeout
    assert (seg.seq, len(seg.payload)) == (BASE, 1000)


def test_sender_sends_partial_segment_that_is_half_the_max_window():
    conn = established(snd_wnd=1000, max_snd_wnd=1000)
    conn.send(b"s" * 5000)
    seg = recv_one(conn, 0.0)
    assert len(seg.payload) == 1000


def test_peer_window_limits_in_flight_data():
    conn = established(snd_wnd=3 * MSS)
    conn.send(b"w" * (10 * MSS))
    assert len(recv(conn)) == 3
    conn.on_segment(SEND(ack=BASE + MSS, window=3 * MSS), 0.1)
    assert len(recv(conn, 0.1)) == 1


def test_scaled_window_rounding_never_exceeds_the_buffer():
    # With window scale 7 the offered window is rounded up to 128 bytes so that the right edge
    # never moves left; the rounding must not accumulate over many ACKs.
    buf = 200_000
    conn = established(
        cfg=config(receive_buffer=buf), rcv_wscale=7, initial_rcv_wnd=buf, rcv_wnd=buf - 100
    )
    seq = REMOTE_SEQ + 1
    edges = []
    for _ in range(400):
        conn.on_segment(SEND(seq=seq, payload=b"q" * 1000), 0.0)
        for a in recv(conn):
            edges.append(a.ack + (a.window << 7))
        if conn.receive_available() and edges and edges[-1] == conn.rcv_nxt:
            break
        seq = conn.rcv_nxt
    # Rounded up (never shrinking by more than the rounding), never beyond buffer + 127.
    assert all(b >= a - 127 for a, b in zip(edges, edges[1:], strict=False))
    assert max(edges) - (REMOTE_SEQ + 1) < buf + 128
    assert conn.receive_available() < buf + 128
    assert edges[-1] == conn.rcv_nxt  # finally closed: zero window


def test_reading_does_not_force_an_ack_per_segment():
    # Window updates on read only when the offer at least doubles (Linux tcp_cleanup_rbuf);
    # an application that reads every segment must not defeat the delayed ACK.
    conn = established(cfg=config(delayed_ack=0.04, receive_buffer=65535))
    acks = 0
    for i in range(20):
        conn.on_segment(SEND(seq=REMOTE_SEQ + 1 + i * MSS, payload=b"r" * MSS), 0.0)
        assert conn.receive() == b"r" * MSS
        acks += len(recv(conn, 0.0))
    assert acks == 10
