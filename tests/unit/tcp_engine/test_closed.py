"""CLOSED state and segments that belong to no connection (RFC 9293 3.10.7.1)."""

from tcpip.tcp import TcpState, is_listen_syn, reset_for_segment

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    PSH,
    REMOTE_SEQ,
    RST,
    SEND,
    SYN,
    established,
    fields,
    recv,
    recv_nothing,
    recv_one,
    syn_sent,
)


def test_reset_for_segment_with_ack_uses_seg_ack():
    rst = reset_for_segment(SEND(ack=1234, payload=b"abc"))
    assert rst is not None
    assert (rst.seq, rst.flags) == (1234, RST)
    assert (rst.src_port, rst.dst_port) == (80, 49500)


def test_reset_for_segment_without_ack_acks_seg_len():
    rst = reset_for_segment(SEND(seq=100, ack=None, flags=SYN | FIN, payload=b"xy"))
    assert rst is not None
    # SEG.LEN = 2 payload + SYN + FIN
    assert (rst.seq, rst.ack, rst.flags) == (0, 104, RST | ACK)


def test_reset_is_never_answered():
    assert reset_for_segment(SEND(flags=RST)) is None
    assert reset_for_segment(SEND(flags=RST | ACK)) is None


def test_is_listen_syn():
    assert is_listen_syn(SEND(flags=SYN, ack=None))
    assert not is_listen_syn(SEND(flags=SYN | ACK))
    assert not is_listen_syn(SEND(flags=SYN | RST, ack=None))
    assert not is_listen_syn(SEND(flags=ACK))
    assert not is_listen_syn(SEND(flags=FIN | ACK))


def test_abort_established_sends_rst_and_closes():
    conn = established()
    conn.send(b"pending")
    conn.abort()
    assert conn.state is TcpState.CLOSED and conn.closed
    assert conn.error == "aborted"
    rst = recv_one(conn)
    assert fields(rst) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=RST | ACK, payload=b"")
    assert conn.counters.rsts_out == 1
    assert conn.next_deadline() is None


def test_abort_in_syn_sent_sends_nothing():
    conn, _ = syn_sent()
    conn.abort()
    assert conn.closed
    recv_nothing(conn)


def test_closed_connection_answers_with_rst_but_not_to_rst():
    conn = established()
    conn.abort()
    recv(conn)
    conn.on_segment(SEND(flags=PSH | ACK, payload=b"late", ack=LOCAL_SEQ + 1), 1.0)
    rst = recv_one(conn, 1.0)
    assert (rst.seq, rst.flags) == (LOCAL_SEQ + 1, RST)
    conn.on_segment(SEND(flags=RST), 1.0)
    recv_nothing(conn, 1.0)


def test_closed_connection_refuses_api_calls_quietly():
    conn = established()
    conn.abort()
    recv(conn)
    assert conn.send(b"x") == 0
    assert conn.send_space() == 0
    conn.close()
    assert conn.closed
    assert conn.receive() == b""
    recv_nothing(conn, 10.0)
    assert conn.next_deadline() is None
