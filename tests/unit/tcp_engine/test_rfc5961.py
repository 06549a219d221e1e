"""RFC 5961: blind RST / SYN / data injection mitigations and the challenge ACK rate limit."""

import pytest

from tcpip.tcp import TcpState

from .conftest import (
    ACK,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    RST,
    SEND,
    SYN,
    close_wait,
    closing,
    config,
    established,
    fields,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    recv,
    recv_nothing,
    recv_one,
    time_wait,
)

CHALLENGE = dict(seq=LOCAL_SEQ + 1, ack=REMOTE_SEQ + 1, flags=ACK, payload=b"")


def test_rst_exactly_at_rcv_nxt_resets():
    conn = established()
    conn.on_segment(SEND(flags=RST, ack=None), 0.0)
    assert conn.closed and conn.reset_received
    assert conn.counters.rsts_in == 1
    recv_nothing(conn)


def test_in_window_rst_not_at_rcv_nxt_gets_challenge_ack():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1000, flags=RST, ack=None), 0.0)
    assert conn.state is TcpState.ESTABLISHED
    assert fields(recv_one(conn)) == CHALLENGE
    assert conn.counters.challenge_acks == 1 and conn.counters.rsts_in == 0


def test_out_of_window_rst_is_dropped_silently():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1 + 100000, flags=RST, ack=None), 0.0)
    conn.on_segment(SEND(seq=REMOTE_SEQ - 5, flags=RST, ack=None), 0.0)
    assert conn.state is TcpState.ESTABLISHED
    recv_nothing(conn)


def test_syn_in_synchronized_state_gets_challenge_ack():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, flags=SYN, ack=None), 0.0)
    assert conn.state is TcpState.ESTABLISHED
    assert fields(recv_one(conn)) == CHALLENGE
    assert conn.counters.challenge_acks == 1


def test_out_of_window_syn_is_acked_not_reset():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ - 40000, flags=SYN, ack=None), 0.0)
    assert conn.state is TcpState.ESTABLISHED
    assert fields(recv_one(conn)) == CHALLENGE


def test_ack_too_old_is_challenged_and_data_dropped():
    conn = established(max_snd_wnd=MSS, snd_wnd=MSS)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 - 5000, payload=b"inject"), 0.0)
    assert conn.receive_available() == 0
    assert fields(recv_one(conn)) == CHALLENGE
    assert conn.counters.challenge_acks == 1


def test_slightly_old_ack_is_accepted_with_its_data():
    conn = established(max_snd_wnd=MSS, snd_wnd=MSS)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 - 100, payload=b"fine"), 0.0)
    assert conn.receive() == b"fine"


def test_ack_of_unsent_data_is_answered_and_dropped():
    conn = established()
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + 10, payload=b"inject"), 0.0)
    assert conn.receive_available() == 0
    assert fields(recv_one(conn)) == CHALLENGE


def test_challenge_acks_are_rate_limited():
    conn = established(cfg=config(challenge_ack_limit=2, challenge_ack_interval=1.0))
    for i in range(4):
        conn.on_segment(SEND(seq=REMOTE_SEQ + 500 + i, flags=RST, ack=None), 0.1)
        recv(conn, 0.1)
    assert conn.counters.challenge_acks == 2
    conn.on_segment(SEND(seq=REMOTE_SEQ + 600, flags=RST, ack=None), 1.2)
    assert len(recv(conn, 1.2)) == 1
    assert conn.counters.challenge_acks == 3


def test_pure_ack_out_of_window_answers_are_rate_limited():
    conn = established()
    conn.on_segment(SEND(seq=REMOTE_SEQ - 3000), 0.0)
    assert len(recv(conn, 0.0)) == 1
    conn.on_segment(SEND(seq=REMOTE_SEQ - 3000), 0.1)
    recv_nothing(conn, 0.1)  # Linux tcp_invalid_ratelimit: 500 ms
    conn.on_segment(SEND(seq=REMOTE_SEQ - 3000), 0.6)
    assert len(recv(conn, 0.6)) == 1


# ---- per-state RST / SYN handling (RFC 9293 3.10.7.4 second and fourth, RFC 5961) -----------

STATES = {
    "established": (established, "connection reset"),
    "fin_wait_1": (fin_wait_1, "connection reset"),
    "fin_wait_2": (fin_wait_2, "connection reset"),
    "close_wait": (close_wait, "connection reset"),
    "closing": (closing, None),  # 3.10.7.4: CLOSING / LAST-ACK / TIME-WAIT just close
    "last_ack": (last_ack, None),
    "time_wait": (time_wait, None),
}


@pytest.mark.parametrize("name", sorted(STATES))
def test_rst_at_rcv_nxt_closes_every_synchronized_state(name):
    make, error = STATES[name]
    conn = make()
    recv(conn, 0.0)
    conn.on_segment(SEND(seq=conn.rcv_nxt, flags=RST, ack=None), 0.5)
    assert conn.closed and conn.reset_received and conn.error == error
    recv_nothing(conn, 0.5)
    assert conn.next_deadline() is None


@pytest.mark.parametrize("name", sorted(STATES))
def test_in_window_rst_off_rcv_nxt_is_challenged_in_every_state(name):
    make, _ = STATES[name]
    conn = make()
    recv(conn, 0.0)
    state = conn.state
    conn.on_segment(SEND(seq=conn.rcv_nxt + 10, flags=RST, ack=None), 0.5)
    assert conn.state is state
    ack = recv_one(conn, 0.5)
    assert ack.flags == ACK and ack.ack == conn.rcv_nxt


@pytest.mark.parametrize("name", sorted(STATES))
def test_syn_is_challenged_in_every_state(name):
    make, _ = STATES[name]
    conn = make()
    recv(conn, 0.0)
    state = conn.state
    conn.on_segment(SEND(seq=conn.rcv_nxt, flags=SYN, ack=None), 0.5)
    assert conn.state is state and not conn.reset_received
    assert recv_one(conn, 0.5).flags == ACK
