"""Keepalive (RFC 9293 3.8.4, RFC 1122 4.2.3.6): idle, interval, probe count."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    LOCAL_SEQ,
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

KA = dict(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0, keepalive_probes=3)


def ka_conn():
    conn = established(cfg=config(**KA), **KA)
    recv_nothing(conn, 0.0)
    return conn


def test_probe_after_idle_then_every_interval_then_give_up():
    conn = ka_conn()
    assert conn.next_deadline() == pytest.approx(10.0)
    probe = recv_one(conn, 10.0)
    # SEG.SEQ = SND.NXT - 1, no data (Linux sends no garbage octet).
    assert fields(probe) == dict(seq=LOCAL_SEQ, ack=REMOTE_SEQ + 1, flags=ACK, payload=b"")
    assert conn.next_deadline() == pytest.approx(12.0)
    recv_one(conn, 12.0)
    recv_one(conn, 14.0)
    assert conn.counters.keepalive_probes == 3
    out = recv(conn, 16.0)
    assert conn.closed and conn.error == "connection timed out (keepalive)"
    assert [s.flags for s in out] == [RST | ACK]


def test_answer_resets_probe_count_and_idle_timer():
    conn = ka_conn()
    recv_one(conn, 10.0)
    recv_one(conn, 12.0)
    conn.on_segment(SEND(), 12.1)  # the peer's ACK of our probe
    recv_nothing(conn, 12.1)
    assert conn.keepalive_probe_count == 0
    assert conn.next_deadline() == pytest.approx(22.1)


def test_traffic_postpones_keepalive():
    conn = ka_conn()
    conn.on_segment(SEND(payload=b"hi"), 8.0)
    recv(conn, 8.0)
    assert conn.next_deadline() == pytest.approx(18.0)


def test_we_answer_the_peers_keepalive_probe():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ), 100.0)
    ack = recv_one(conn, 100.0)
    assert fields(ack) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=ACK, payload=b"")
    assert conn.state is TcpState.ESTABLISHED


def test_peer_keepalive_with_garbage_octet_is_answered():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ, payload=b"\x00"), 100.0)
    assert recv_one(conn, 100.0).ack == REMOTE_SEQ + 1
    assert conn.receive_available() == 0


def test_disabled_by_default():
    conn = established()
    recv_nothing(conn, 0.0)
    assert conn.next_deadline() is None
    recv_nothing(conn, 1e6)


def test_no_probe_while_data_is_outstanding():
    conn = established(cfg=config(**KA, max_retransmissions=100), **KA)
    conn.send(b"unacked")
    recv(conn, 9.5)
    recv(conn, 10.0)
    assert conn.counters.keepalive_probes == 0
