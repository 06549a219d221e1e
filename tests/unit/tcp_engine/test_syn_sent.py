"""SYN-SENT: active open (RFC 9293 3.10.7.3), including simultaneous open."""

import pytest

from tcpip.tcp import TcpState
from tcpip.tcp_segment import TcpOptions

from .conftest import (
    ACK,
    LOCAL_SEQ,
    PSH,
    REMOTE_SEQ,
    RST,
    SEND,
    SYN,
    config,
    fields,
    recv,
    recv_nothing,
    recv_one,
    syn_sent,
)


def synack(**kw):
    opts = kw.pop("options", TcpOptions(mss=1460))
    base = dict(seq=REMOTE_SEQ, ack=LOCAL_SEQ + 1, flags=SYN | ACK, window=65535, options=opts)
    base.update(kw)
    return SEND(**base)


def test_connect_sends_syn_with_options():
    conn, syn = syn_sent()
    assert conn.state is TcpState.SYN_SENT
    assert fields(syn) == dict(seq=LOCAL_SEQ, ack=0, flags=SYN, payload=b"")
    assert syn.window == 65535
    assert syn.options.mss == 1460
    assert syn.options.wscale == 0  # we can scale (64 KiB buffer needs no shift)
    assert syn.options.timestamp is None  # disabled in the test config
    assert syn.options.sack_permitted is False


def test_syn_carries_timestamp_when_enabled():
    conn, syn = syn_sent(2.5, config(timestamps=True, sack_permitted=True))
    assert syn.options.timestamp == ((2500 + LOCAL_SEQ) & 0xFFFFFFFF, 0)
    assert syn.options.sack_permitted


def test_syn_ack_establishes_and_acks():
    conn, _ = syn_sent()
    conn.on_segment(synack(), 0.1)
    assert conn.state is TcpState.ESTABLISHED
    assert fields(recv_one(conn, 0.1)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=ACK, payload=b""
    )
    # RTT sample from the (not retransmitted) SYN: 100 ms.
    assert conn.rtt.srtt == pytest.approx(0.1)
    assert conn.next_deadline() is None


def test_syn_ack_without_window_scale_disables_scaling():
    conn, _ = syn_sent(0.0, config(receive_buffer=1 << 20))
    conn.on_segment(synack(), 0.1)
    assert (conn.snd_wscale, conn.rcv_wscale) == (0, 0)
    ack = recv_one(conn, 0.1)
    assert ack.window == 65535  # 1 MiB cannot be expressed without scaling


def test_syn_ack_with_window_scale_enables_it_both_ways():
    conn, _ = syn_sent(0.0, config(receive_buffer=1 << 20))
    conn.on_segment(synack(options=TcpOptions(mss=1460, wscale=7)), 0.1)
    assert (conn.snd_wscale, conn.rcv_wscale) == (7, 5)
    ack = recv_one(conn, 0.1)
    assert ack.window == (1 << 20) >> 5


def test_syn_ack_with_bad_ack_gets_rst():
    conn, _ = syn_sent()
    conn.on_segment(synack(ack=LOCAL_SEQ + 77), 0.1)
    assert conn.state is TcpState.SYN_SENT
    rst = recv_one(conn, 0.1)
    assert (rst.seq, rst.flags) == (LOCAL_SEQ + 77, RST)


def test_rst_with_acceptable_ack_refuses():
    conn, _ = syn_sent()
    conn.on_segment(SEND(seq=0, ack=LOCAL_SEQ + 1, flags=RST | ACK), 0.1)
    assert conn.closed and conn.reset_received
    assert conn.error == "connection refused"
    assert conn.counters.rsts_in == 1
    recv_nothing(conn, 0.1)


def test_rst_without_ack_is_ignored():
    conn, _ = syn_sent()
    conn.on_segment(SEND(seq=0, ack=None, flags=RST), 0.1)
    assert conn.state is TcpState.SYN_SENT


def test_rst_with_bad_ack_is_ignored():
    conn, _ = syn_sent()
    conn.on_segment(SEND(seq=0, ack=LOCAL_SEQ + 9, flags=RST | ACK), 0.1)
    assert conn.state is TcpState.SYN_SENT
    recv_nothing(conn, 0.1)


def test_plain_ack_is_dropped():
    conn, _ = syn_sent()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1), 0.1)
    assert conn.state is TcpState.SYN_SENT
    recv_nothing(conn, 0.1)


def test_simultaneous_open():
    conn, _ = syn_sent()
    conn.on_segment(SEND(seq=REMOTE_SEQ, ack=None, flags=SYN, options=TcpOptions(mss=1460)), 0.1)
    assert conn.state is TcpState.SYN_RECEIVED
    sa = recv_one(conn, 0.1)
    assert fields(sa) == dict(seq=LOCAL_SEQ, ack=REMOTE_SEQ + 1, flags=SYN | ACK, payload=b"")
    # The peer's SYN-ACK (its answer to our SYN) completes the open.
    conn.on_segment(synack(), 0.2)
    assert conn.state is TcpState.ESTABLISHED
    assert fields(recv_one(conn, 0.2)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=ACK, payload=b""
    )


def test_simultaneous_open_completed_by_plain_ack():
    conn, _ = syn_sent()
    conn.on_segment(SEND(seq=REMOTE_SEQ, ack=None, flags=SYN, options=TcpOptions(mss=1460)), 0.1)
    recv_one(conn, 0.1)
    conn.on_segment(SEND(), 0.2)
    assert conn.state is TcpState.ESTABLISHED


def test_syn_retransmission_backoff_and_give_up():
    conn, _ = syn_sent(0.0, config(max_syn_retransmissions=3))
    times = []
    now = 0.0
    while not conn.closed:
        now = conn.next_deadline()
        for s in recv(conn, now):
            assert fields(s) == dict(seq=LOCAL_SEQ, ack=0, flags=SYN, payload=b"")
            times.append(now)
    assert times == pytest.approx([1.0, 3.0, 7.0])
    assert now == pytest.approx(15.0)
    assert conn.error == "connection timed out"
    assert conn.counters.rsts_out == 0  # nothing to reset: the peer never answered
    assert conn.counters.retransmissions == 3


def test_karn_no_rtt_sample_from_retransmitted_syn():
    conn, _ = syn_sent()
    recv_one(conn, 1.0)  # retransmitted SYN
    conn.on_segment(synack(), 1.1)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.rtt.srtt is None


def test_close_in_syn_sent_deletes_the_tcb():
    conn, _ = syn_sent()
    conn.close()
    assert conn.closed and conn.error is None
    recv_nothing(conn, 5.0)


def test_data_queued_before_establishment_is_sent_after():
    conn, _ = syn_sent()
    assert conn.send(b"GET / HTTP/1.0\r\n\r\n") == 18
    recv_nothing(conn, 0.0)
    conn.on_segment(synack(), 0.1)
    seg = recv_one(conn, 0.1)  # the data segment carries the handshake ACK
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=PSH | ACK, payload=b"GET / HTTP/1.0\r\n\r\n"
    )
