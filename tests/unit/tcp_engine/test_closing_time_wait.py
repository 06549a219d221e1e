"""CLOSING and TIME-WAIT."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    FIN,
    LOCAL_SEQ,
    REMOTE_SEQ,
    RST,
    SEND,
    SYN,
    closing,
    config,
    fields,
    recv_nothing,
    recv_one,
    time_wait,
)


def test_closing_ack_moves_to_time_wait():
    conn = closing()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, ack=LOCAL_SEQ + 2), 0.1)
    assert conn.state is TcpState.TIME_WAIT
    recv_nothing(conn, 0.1)
    assert conn.next_deadline() == pytest.approx(0.1 + 2 * 1.0)


def test_closing_retransmits_fin():
    conn = closing()
    fin = recv_one(conn, 1.0)
    assert fields(fin) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 2, flags=FIN | ACK, payload=b"")


def test_time_wait_lasts_two_msl_then_closed():
    conn = time_wait(0.0, config(msl=3.0))
    assert conn.next_deadline() == pytest.approx(6.0)
    recv_nothing(conn, 5.9)
    assert conn.state is TcpState.TIME_WAIT
    recv_nothing(conn, 6.0)
    assert conn.closed and conn.error is None
    assert conn.next_deadline() is None


def test_time_wait_acks_retransmitted_fin_and_restarts_timer():
    conn = time_wait(0.0, config(msl=3.0))
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, ack=LOCAL_SEQ + 2, flags=FIN | ACK), 4.0)
    assert fields(recv_one(conn, 4.0)) == dict(
        seq=LOCAL_SEQ + 2, ack=REMOTE_SEQ + 2, flags=ACK, payload=b""
    )
    assert conn.next_deadline() == pytest.approx(10.0)


def test_time_wait_syn_gets_challenge_ack():
    conn = time_wait()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, ack=None, flags=SYN), 0.5)
    assert fields(recv_one(conn, 0.5)) == dict(
        seq=LOCAL_SEQ + 2, ack=REMOTE_SEQ + 2, flags=ACK, payload=b""
    )
    assert conn.state is TcpState.TIME_WAIT
    assert conn.counters.challenge_acks == 1


def test_time_wait_rst_closes():
    # RFC 9293 3.10.7.4 (second, TIME-WAIT): enter CLOSED.  Linux does the same by default
    # (net.ipv4.tcp_rfc1337 = 0).
    conn = time_wait()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 2, flags=RST), 0.5)
    assert conn.closed and conn.error is None


def test_time_wait_sends_no_data():
    conn = time_wait()
    assert conn.send(b"x") == 0
    recv_nothing(conn, 0.5)
