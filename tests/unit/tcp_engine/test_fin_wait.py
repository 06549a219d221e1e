"""FIN-WAIT-1 and FIN-WAIT-2 (we closed first)."""

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
    fin_wait_1,
    fin_wait_2,
    recv,
    recv_nothing,
    recv_one,
)


def test_ack_of_fin_moves_to_fin_wait_2():
    conn = fin_wait_1()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2), 0.1)
    assert conn.state is TcpState.FIN_WAIT_2
    recv_nothing(conn, 0.1)


def test_fin_without_ack_of_ours_moves_to_closing():
    conn = fin_wait_1()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1, flags=FIN | ACK), 0.1)
    assert conn.state is TcpState.CLOSING and conn.eof_received
    assert fields(recv_one(conn, 0.1)) == dict(
        seq=LOCAL_SEQ + 2, ack=REMOTE_SEQ + 2, flags=ACK, payload=b""
    )


def test_fin_ack_acking_ours_moves_to_time_wait():
    conn = fin_wait_1()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2, flags=FIN | ACK), 0.1)
    assert conn.state is TcpState.TIME_WAIT
    assert recv_one(conn, 0.1).ack == REMOTE_SEQ + 2


def test_fin_is_retransmitted_on_timeout():
    conn = fin_wait_1()
    recv_nothing(conn, 0.0)
    assert conn.next_deadline() == pytest.approx(1.0)
    fin = recv_one(conn, 1.0)
    assert fields(fin) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=FIN | ACK, payload=b"")
    assert conn.counters.retransmissions == 1


def test_data_and_fin_retransmitted_together():
    conn = established()
    conn.send(b"tail")
    conn.close()
    assert recv_one(conn).flags == FIN | PSH | ACK
    seg = recv_one(conn, 1.0)
    assert seg.payload == b"tail" and seg.flags & FIN


def test_fin_waits_for_queued_data_the_window_cannot_take():
    conn = established(snd_wnd=1000, max_snd_wnd=1000)
    conn.send(b"y" * 1500)
    conn.close()
    out = recv(conn)
    assert [len(s.payload) for s in out] == [1000]
    assert not out[0].flags & FIN
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1001, window=1000), 0.1)
    seg = recv_one(conn, 0.1)
    assert len(seg.payload) == 500 and seg.flags & FIN
    assert seg.seq == LOCAL_SEQ + 1001


def test_half_close_still_receives_in_fin_wait_1_and_2():
    conn = fin_wait_1()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1, payload=b"still "), 0.1)
    conn.on_segment(SEND(seq=REMOTE_SEQ + 7, ack=LOCAL_SEQ + 2, payload=b"talking"), 0.2)
    assert conn.state is TcpState.FIN_WAIT_2
    assert conn.receive() == b"still talking"
    conn.on_segment(SEND(seq=REMOTE_SEQ + 14, ack=LOCAL_SEQ + 2, flags=FIN | ACK), 0.3)
    assert conn.state is TcpState.TIME_WAIT and conn.eof_received


def test_fin_wait_2_fin_moves_to_time_wait_and_acks():
    conn = fin_wait_2()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2, flags=FIN | ACK), 0.1)
    assert conn.state is TcpState.TIME_WAIT
    assert fields(recv_one(conn, 0.1)) == dict(
        seq=LOCAL_SEQ + 2, ack=REMOTE_SEQ + 2, flags=ACK, payload=b""
    )


def test_fin_wait_2_timeout_closes():
    conn = fin_wait_2(0.0, config(fin_wait_2_timeout=5.0))
    recv_nothing(conn, 0.0)
    assert conn.next_deadline() == pytest.approx(5.0)
    recv_nothing(conn, 4.9)
    assert conn.state is TcpState.FIN_WAIT_2
    recv_nothing(conn, 5.0)
    assert conn.closed and conn.error == "FIN-WAIT-2 timeout"


def test_fin_wait_2_timer_restarts_on_acceptable_segments():
    conn = fin_wait_2(0.0, config(fin_wait_2_timeout=5.0))
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2, payload=b"x"), 4.0)
    recv_one(conn, 4.0)  # the ACK of the data
    assert conn.next_deadline() == pytest.approx(9.0)


def test_fin_wait_2_entered_by_ack_starts_timer():
    conn = fin_wait_1(0.0, config(fin_wait_2_timeout=7.0))
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2), 1.0)
    recv_nothing(conn, 1.0)
    assert conn.next_deadline() == pytest.approx(8.0)


def test_send_refused_after_close():
    for conn in (fin_wait_1(), fin_wait_2()):
        assert conn.send(b"x") == 0 and conn.send_space() == 0
