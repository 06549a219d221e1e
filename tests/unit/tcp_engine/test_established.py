"""ESTABLISHED: data in both directions, ACK processing, acceptability, delayed ACK, Nagle."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    PSH,
    REMOTE_SEQ,
    SEND,
    config,
    established,
    fields,
    recv,
    recv_nothing,
    recv_one,
)


def test_send_one_segment_and_ack_it():
    conn = established()
    assert conn.send(b"abcdef") == 6
    seg = recv_one(conn)
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=PSH | ACK, payload=b"abcdef"
    )
    assert conn.snd_nxt == LOCAL_SEQ + 7
    assert conn.next_deadline() == pytest.approx(1.0)  # retransmission timer
    conn.on_segment(SEND(ack=LOCAL_SEQ + 7), 0.05)
    assert conn.snd_una == LOCAL_SEQ + 7
    recv_nothing(conn, 0.05)
    assert conn.next_deadline() is None
    assert conn.counters.bytes_out == 6 and conn.counters.segments_out == 1


def test_large_send_is_segmented_at_mss_with_psh_on_last():
    conn = established()
    conn.send(b"x" * 4000)
    out = recv(conn)
    assert [len(s.payload) for s in out] == [1460, 1460, 1080]
    assert [s.seq for s in out] == [LOCAL_SEQ + 1, LOCAL_SEQ + 1461, LOCAL_SEQ + 2921]
    assert [bool(s.flags & PSH) for s in out] == [False, False, True]


def test_send_buffer_is_bounded():
    conn = established(cfg=config(send_buffer=1000))
    assert conn.send(b"a" * 600) == 600
    assert conn.send_space() == 400
    assert conn.send(b"b" * 600) == 400
    assert conn.send(b"c") == 0
    recv(conn)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1001), 0.1)
    assert conn.send_space() == 1000


def test_receive_in_order_data():
    conn = established()
    conn.on_segment(SEND(flags=PSH | ACK, payload=b"hello"), 0.0)
    assert conn.receive_available() == 5
    assert fields(recv_one(conn)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 6, flags=ACK, payload=b""
    )
    assert conn.receive(2) == b"he"
    assert conn.receive() == b"llo"
    assert conn.receive() == b""


def test_advertised_window_shrinks_as_the_buffer_fills():
    conn = established()
    conn.on_segment(SEND(payload=b"x" * 1000), 0.0)
    assert recv_one(conn).window == 65535 - 1000


def test_old_duplicate_is_acked_and_not_delivered_twice():
    conn = established()
    conn.on_segment(SEND(payload=b"abc"), 0.0)
    recv(conn)
    conn.on_segment(SEND(payload=b"abc"), 0.1)
    assert fields(recv_one(conn, 0.1)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 4, flags=ACK, payload=b""
    )
    assert conn.receive() == b"abc"
    assert conn.counters.unacceptable_segments == 1


def test_partially_old_segment_is_trimmed():
    conn = established()
    conn.on_segment(SEND(payload=b"abc"), 0.0)
    conn.on_segment(SEND(payload=b"abcdef"), 0.0)
    assert conn.receive() == b"abcdef"


def test_segment_beyond_window_is_acked_and_dropped():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1 + 70000, payload=b"zz"), 0.0)
    assert fields(recv_one(conn)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=ACK, payload=b""
    )
    assert conn.receive_available() == 0


def test_ack_of_unsent_data_is_answered_and_dropped():
    conn = established()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 100, payload=b"data"), 0.0)
    assert conn.snd_una == LOCAL_SEQ + 1
    assert conn.receive_available() == 0
    assert recv_one(conn).ack == REMOTE_SEQ + 1


def test_segment_without_ack_bit_is_dropped():
    conn = established()
    conn.on_segment(SEND(flags=PSH, payload=b"noack"), 0.0)
    assert conn.receive_available() == 0


def test_fin_moves_to_close_wait_after_the_data():
    conn = established()
    conn.on_segment(SEND(flags=FIN | PSH | ACK, payload=b"bye"), 0.0)
    assert conn.state is TcpState.CLOSE_WAIT and conn.eof_received
    assert recv_one(conn).ack == REMOTE_SEQ + 5  # 3 bytes + FIN
    assert conn.receive() == b"bye"


def test_close_sends_fin_after_queued_data_piggybacked():
    conn = established()
    conn.send(b"last words")
    conn.close()
    assert conn.state is TcpState.FIN_WAIT_1
    seg = recv_one(conn)
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=FIN | PSH | ACK, payload=b"last words"
    )
    assert conn.send(b"more") == 0


def test_close_twice_is_harmless():
    conn = established()
    conn.close()
    conn.close()
    assert recv_one(conn).flags == FIN | ACK


def test_delayed_ack_waits_for_the_timer():
    conn = established(cfg=config(delayed_ack=0.04))
    conn.on_segment(SEND(payload=b"a" * 100), 0.0)
    recv_nothing(conn, 0.0)
    assert conn.next_deadline() == pytest.approx(0.04)
    recv_nothing(conn, 0.039)
    assert recv_one(conn, 0.04).ack == REMOTE_SEQ + 101
    assert conn.next_deadline() is None


def test_delayed_ack_acks_every_second_full_segment():
    conn = established(cfg=config(delayed_ack=0.04))
    conn.on_segment(SEND(payload=b"a" * 1460), 0.0)
    recv_nothing(conn, 0.0)
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1461, payload=b"b" * 1460), 0.001)
    assert recv_one(conn, 0.001).ack == REMOTE_SEQ + 2921
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2921, payload=b"c" * 1460), 0.002)
    recv_nothing(conn, 0.002)


def test_delayed_ack_is_piggybacked_on_data():
    conn = established(cfg=config(delayed_ack=0.04))
    conn.on_segment(SEND(payload=b"ping"), 0.0)
    conn.send(b"pong")
    seg = recv_one(conn, 0.001)
    assert seg.ack == REMOTE_SEQ + 5 and seg.payload == b"pong"
    assert not conn.ack_owed


def test_nagle_holds_small_segment_while_small_one_unacked():
    conn = established()
    conn.send(b"a")
    assert recv_one(conn).payload == b"a"
    conn.send(b"b")
    conn.send(b"c")
    recv_nothing(conn, 0.01)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2), 0.05)
    assert recv_one(conn, 0.05).payload == b"bc"


def test_nodelay_sends_small_segments_at_once():
    conn = established(nodelay=True)
    conn.send(b"a")
    recv_one(conn)
    conn.send(b"b")
    assert recv_one(conn).payload == b"b"


def test_full_segments_are_not_held_by_nagle():
    conn = established()
    conn.send(b"a")
    recv_one(conn)
    conn.send(b"x" * 1460)
    assert len(recv_one(conn).payload) == 1460


def test_bidirectional_exchange():
    conn = established()
    conn.send(b"request")
    recv_one(conn)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 8, flags=PSH | ACK, payload=b"response"), 0.02)
    assert conn.receive() == b"response"
    assert fields(recv_one(conn, 0.02)) == dict(
        seq=LOCAL_SEQ + 8, ack=REMOTE_SEQ + 9, flags=ACK, payload=b""
    )


def test_window_update_rule_ignores_old_segments():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, window=30000), 0.0)
    assert conn.snd_wnd == 30000
    conn.on_segment(SEND(payload=b"abc", window=40000), 0.0)
    assert conn.snd_wnd == 40000
    # An older segment (SEG.SEQ < SND.WL1) must not change the window.
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, payload=b"abc", window=100), 0.0)
    assert conn.snd_wnd == 40000


def test_idle_poll_returns_nothing_and_has_no_deadline():
    conn = established()
    recv(conn)
    for t in (0.0, 1.0, 1000.0):
        recv_nothing(conn, t)
    assert conn.next_deadline() is None


def test_state_change_is_logged_with_the_four_tuple(caplog):
    conn = established()
    with caplog.at_level("DEBUG", logger="tcpip.tcp"):
        conn.close()
    assert any(
        "198.18.0.1:80 -> 198.18.0.2:49500" in r.message and "FIN-WAIT-1" in r.message
        for r in caplog.records
    )


def test_pure_ack_at_the_right_edge_of_our_window_is_processed():
    # Found by the pair test: the peer's SND.NXT sits exactly at our right edge (it filled
    # the window, we then lost data and it went back); its pure ACKs carry SEG.SEQ = RCV.NXT +
    # RCV.WND.  RFC 9293 would discard them; Linux (tcp_sequence) accepts them, and so must
    # we, or both ends drop each other's ACKs forever.
    conn = established()
    conn.send(b"x" * 100)
    recv(conn)
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1 + 65535, ack=LOCAL_SEQ + 101), 0.1)
    assert conn.snd_una == LOCAL_SEQ + 101


def test_pure_ack_beyond_the_right_edge_is_still_rejected():
    conn = established()
    conn.send(b"x" * 100)
    recv(conn)
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1 + 65536, ack=LOCAL_SEQ + 101), 0.1)
    assert conn.snd_una == LOCAL_SEQ + 1
