"""CLOSE-WAIT and LAST-ACK (the peer closed first)."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    PSH,
    REMOTE_SEQ,
    RST,
    SEND,
    close_wait,
    fields,
    last_ack,
    recv,
    recv_nothing,
    recv_one,
)


def test_can_still_send_in_close_wait():
    conn = close_wait()
    assert conn.send(b"reply") == 5
    seg = recv_one(conn)
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 2, flags=PSH | ACK, payload=b"reply"
    )
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, ack=LOCAL_SEQ + 6), 0.1)
    assert conn.snd_una == LOCAL_SEQ + 6 and conn.state is TcpState.CLOSE_WAIT


def test_close_sends_fin_and_enters_last_ack():
    conn = close_wait()
    conn.send(b"bye")
    conn.close()
    assert conn.state is TcpState.LAST_ACK
    seg = recv_one(conn)
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 2, flags=FIN | PSH | ACK, payload=b"bye"
    )


def test_ack_of_fin_in_last_ack_closes_cleanly():
    conn = last_ack()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, ack=LOCAL_SEQ + 2), 0.1)
    assert conn.closed
    assert conn.error is None and not conn.reset_received
    recv_nothing(conn, 0.1)
    assert conn.next_deadline() is None


def test_last_ack_retransmits_fin():
    conn = last_ack()
    fin = recv_one(conn, 1.0)
    assert fields(fin) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 2, flags=FIN | ACK, payload=b"")


def test_partial_ack_in_last_ack_does_not_close():
    conn = close_wait()
    conn.send(b"abc")
    conn.close()
    recv(conn)
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, ack=LOCAL_SEQ + 4), 0.1)
    assert conn.state is TcpState.LAST_ACK


def test_data_after_peer_fin_is_ignored():
    conn = close_wait()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, payload=b"bogus"), 0.1)
    assert conn.receive_available() == 0
    assert conn.rcv_nxt == REMOTE_SEQ + 2


def test_retransmitted_peer_fin_is_acked():
    conn = close_wait()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, flags=FIN | ACK), 0.1)
    assert recv_one(conn, 0.1).ack == REMOTE_SEQ + 2
    assert conn.state is TcpState.CLOSE_WAIT


def test_rst_in_close_wait_resets():
    conn = close_wait()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, flags=RST), 0.1)
    assert conn.closed and conn.reset_received and conn.error == "connection reset"


def test_rst_in_last_ack_closes_without_error():
    conn = last_ack()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, flags=RST), 0.1)
    assert conn.closed and conn.error is None


def test_eof_only_after_data_taken():
    conn = close_wait(buffered_receive=b"unread")
    assert conn.eof_received
    assert conn.receive() == b"unread"


def test_last_ack_gives_up_after_max_retransmissions():
    from .conftest import config

    conn = last_ack(0.0, config(max_retransmissions=2))
    now = 0.0
    while not conn.closed:
        now = conn.next_deadline()
        out = recv(conn, now)
    assert out[-1].flags & RST
    assert conn.error == "connection timed out"
    assert now == pytest.approx(1.0 + 2.0 + 4.0)
