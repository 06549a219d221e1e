"""LISTEN -> SYN-RECEIVED (passive open through ``accept``) and SYN-RECEIVED behaviour."""

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
    SYN,
    config,
    fields,
    peer_syn,
    recv,
    recv_nothing,
    recv_one,
    syn_received,
)


def test_syn_ack_answers_the_syn():
    conn, synack = syn_received()
    assert conn.state is TcpState.SYN_RECEIVED
    assert fields(synack) == dict(seq=LOCAL_SEQ, ack=REMOTE_SEQ + 1, flags=SYN | ACK, payload=b"")
    assert synack.options.mss == 1460
    assert synack.window == 65535  # never scaled in a SYN (RFC 7323 2.2)
    # The peer offered no window scale, no timestamps: we answer with neither.
    assert synack.options.wscale is None and synack.options.timestamp is None


def test_linux_syn_options_are_answered():
    cfg = config(timestamps=True, receive_buffer=1 << 20)
    conn, synack = syn_received(0.5, cfg, syn=peer_syn())
    o = synack.options
    assert o.wscale == 5  # smallest shift that covers 1 MiB
    assert o.timestamp == ((500 + LOCAL_SEQ) & 0xFFFFFFFF, 123456)
    assert o.sack_permitted is False  # config default: do not advertise SACK
    assert conn.snd_wscale == 7 and conn.rcv_wscale == 5
    assert conn.ts_enabled and not conn.sack_enabled


def test_sack_permitted_when_configured():
    conn, synack = syn_received(0.0, config(sack_permitted=True), syn=peer_syn())
    assert synack.options.sack_permitted and conn.sack_enabled


def test_wscale_above_14_is_clamped():
    conn, _ = syn_received(0.0, config(), syn=peer_syn(options=dict(wscale=15)))
    assert conn.snd_wscale == 14


def test_no_window_scaling_when_peer_does_not_offer_it():
    conn, synack = syn_received(0.0, config(receive_buffer=1 << 20))
    assert synack.options.wscale is None
    assert conn.rcv_wscale == 0 and conn.snd_wscale == 0


def test_handshake_ack_establishes_and_scales_the_window():
    conn, _ = syn_received(0.0, config(), syn=peer_syn(options=dict(timestamp=None)))
    conn.on_segment(SEND(window=100), 0.1)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.snd_wnd == 100 << 7
    recv_nothing(conn, 0.1)


def test_handshake_ack_with_data_is_delivered():
    conn, _ = syn_received()
    conn.on_segment(SEND(flags=PSH | ACK, payload=b"hello"), 0.1)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.receive() == b"hello"
    assert fields(recv_one(conn, 0.1)) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 6, flags=ACK, payload=b""
    )


def test_unacceptable_ack_is_answered_with_rst():
    conn, _ = syn_received()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 500), 0.1)
    assert conn.state is TcpState.SYN_RECEIVED
    rst = recv_one(conn, 0.1)
    assert (rst.seq, rst.flags) == (LOCAL_SEQ + 500, RST)


def test_rst_closes():
    conn, _ = syn_received()
    conn.on_segment(SEND(flags=RST, ack=None), 0.1)
    assert conn.closed and conn.reset_received
    recv_nothing(conn, 0.1)


def test_duplicate_syn_resends_syn_ack():
    conn, _ = syn_received()
    conn.on_segment(peer_syn(options=dict(wscale=None, timestamp=None)), 0.2)
    synack = recv_one(conn, 0.2)
    assert synack.flags == SYN | ACK and synack.seq == LOCAL_SEQ
    assert conn.counters.retransmissions == 1


def test_syn_ack_retransmitted_with_backoff_then_gives_up():
    conn, _ = syn_received(0.0, config(max_syn_retransmissions=2))
    assert conn.next_deadline() == pytest.approx(1.0)
    recv_nothing(conn, 0.99)
    assert recv_one(conn, 1.0).flags == SYN | ACK
    assert conn.next_deadline() == pytest.approx(3.0)
    assert recv_one(conn, 3.0).flags == SYN | ACK
    assert conn.next_deadline() == pytest.approx(7.0)
    out = recv(conn, 7.0)
    assert conn.closed and conn.error == "connection timed out"
    assert [s.flags & RST for s in out] == [RST]


def test_close_in_syn_received_sends_fin_after_handshake():
    conn, _ = syn_received()
    conn.close()
    assert conn.state is TcpState.SYN_RECEIVED
    recv_nothing(conn, 0.0)
    conn.on_segment(SEND(), 0.1)
    assert conn.state is TcpState.FIN_WAIT_1
    fin = recv_one(conn, 0.1)
    assert fields(fin) == dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=FIN | ACK, payload=b"")


def test_data_queued_in_syn_received_is_sent_after_handshake():
    conn, _ = syn_received()
    assert conn.send(b"banner") == 6
    recv_nothing(conn, 0.0)
    conn.on_segment(SEND(), 0.1)
    seg = recv_one(conn, 0.1)
    assert fields(seg) == dict(
        seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=PSH | ACK, payload=b"banner"
    )


def test_peer_mss_limits_segment_size():
    conn, _ = syn_received(syn=peer_syn(options=dict(mss=1000, wscale=None, timestamp=None)))
    conn.on_segment(SEND(), 0.1)
    conn.send(b"x" * 2500)
    assert [len(s.payload) for s in recv(conn, 0.1)] == [1000, 1000, 500]


def test_no_mss_option_means_536():
    conn, _ = syn_received(syn=peer_syn(options=dict(mss=None, wscale=None, timestamp=None)))
    conn.on_segment(SEND(), 0.1)
    conn.send(b"x" * 600)
    conn.nodelay = True
    assert [len(s.payload) for s in recv(conn, 0.1)] == [536, 64]


def test_our_mss_is_clamped_to_the_mtu():
    conn, synack = syn_received(0.0, config(mss=9000))
    assert synack.options.mss == 1460


def test_data_on_the_syn_is_not_acknowledged():
    conn, synack = syn_received(
        syn=peer_syn(payload=b"early", options=dict(wscale=None, timestamp=None))
    )
    assert synack.ack == REMOTE_SEQ + 1  # only the SYN
    conn.on_segment(SEND(payload=b"early"), 0.1)  # the peer sends it again
    assert conn.receive() == b"early"


def test_handshake_ack_with_fin_goes_to_close_wait():
    conn, _ = syn_received()
    conn.on_segment(SEND(flags=FIN | ACK, payload=b"q"), 0.1)
    assert conn.state is TcpState.CLOSE_WAIT and conn.eof_received
    assert conn.receive() == b"q"
    assert recv_one(conn, 0.1).ack == REMOTE_SEQ + 3
