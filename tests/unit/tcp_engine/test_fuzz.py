"""Property test: random segments (valid and hostile) and random API calls against a connection
in any state.  The engine must never raise, must only make RFC 9293 transitions, and must keep
its invariants (SND.UNA <= SND.NXT <= SND.MAX, bounded buffers, no data delivered twice)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpip.seq import seq_diff, seq_le
from tcpip.tcp import TcpState
from tcpip.tcp_segment import TcpFlags, TcpOptions

from .conftest import (
    LOCAL_SEQ,
    REMOTE_SEQ,
    SEND,
    close_wait,
    closing,
    config,
    established,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    syn_received,
    syn_sent,
    time_wait,
)

S = TcpState
# RFC 9293 figure 5 plus the transitions every state has to CLOSED (RST, abort, timeouts).
ALLOWED = {
    S.SYN_SENT: {S.SYN_RECEIVED, S.ESTABLISHED},
    S.SYN_RECEIVED: {S.ESTABLISHED, S.FIN_WAIT_1, S.CLOSE_WAIT},
    S.ESTABLISHED: {S.FIN_WAIT_1, S.CLOSE_WAIT},
    S.FIN_WAIT_1: {S.FIN_WAIT_2, S.CLOSING, S.TIME_WAIT},
    S.FIN_WAIT_2: {S.TIME_WAIT},
    S.CLOSE_WAIT: {S.LAST_ACK},
    S.CLOSING: {S.TIME_WAIT},
    S.LAST_ACK: set(),
    S.TIME_WAIT: set(),
    S.CLOSED: set(),
}

FACTORIES = {
    "syn_sent": lambda: syn_sent(0.0, config(timestamps=True))[0],
    "syn_received": lambda: syn_received(0.0, config(timestamps=True))[0],
    "established": lambda: established(timestamps_enabled=True, ts_recent=100, ts_recent_age=0.0),
    "established_sack": lambda: established(sack_enabled=True, snd_wscale=7, rcv_wscale=0),
    "fin_wait_1": fin_wait_1,
    "fin_wait_2": fin_wait_2,
    "close_wait": close_wait,
    "last_ack": last_ack,
    "closing": closing,
    "time_wait": time_wait,
}

flag_sets = st.sampled_from(
    [
        TcpFlags.ACK,
        TcpFlags.ACK | TcpFlags.PSH,
        TcpFlags.ACK | TcpFlags.FIN,
        TcpFlags.SYN,
        TcpFlags.SYN | TcpFlags.ACK,
        TcpFlags.RST,
        TcpFlags.RST | TcpFlags.ACK,
        TcpFlags.FIN,
        TcpFlags(0),
        TcpFlags.ACK | TcpFlags.URG,
        TcpFlags.SYN | TcpFlags.FIN | TcpFlags.RST | TcpFlags.ACK,
    ]
)

segments = st.builds(
    lambda flags, dseq, dack, size, window, ts, sack: SEND(
        seq=REMOTE_SEQ + 1 + dseq,
        ack=LOCAL_SEQ + 1 + dack,
        flags=flags,
        window=window,
        payload=bytes(size),
        options=TcpOptions(
            timestamp=ts, sack_blocks=((LOCAL_SEQ + 1, LOCAL_SEQ + 100),) if sack else ()
        ),
    ),
    flag_sets,
    st.one_of(st.integers(-3000, 3000), st.integers(-(2**31), 2**31)),
    st.one_of(st.integers(-100, 5000), st.integers(-(2**31), 2**31)),
    st.sampled_from([0, 1, 100, 1460, 3000]),
    st.sampled_from([0, 1, 1000, 65535]),
    st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    st.booleans(),
)

actions = st.one_of(
    st.tuples(st.just("seg"), segments),
    st.tuples(st.just("send"), st.integers(0, 70000)),
    st.tuples(st.just("receive"), st.integers(-1, 5000)),
    st.tuples(st.just("close"), st.none()),
    st.tuples(st.just("abort"), st.none()),
    st.tuples(st.just("time"), st.floats(0.0, 30.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FACTORIES)), st.lists(actions, max_size=40))
def test_random_input_never_breaks_the_engine(factory, script):
    conn = FACTORIES[factory]()
    seen: list[tuple[TcpState, TcpState]] = []
    conn.on_state_change = lambda c, old, new: seen.append((old, new))
    rcv0 = None if conn.state is S.SYN_SENT else conn.rcv_nxt
    eof0 = conn.eof_received
    now = 0.0
    delivered = 0
    for kind, arg in script:
        if kind == "seg":
            conn.on_segment(arg, now)
        elif kind == "send":
            n = conn.send(bytes(arg))
            assert 0 <= n <= arg
        elif kind == "receive":
            delivered += len(conn.receive(arg))
        elif kind == "close":
            conn.close()
        elif kind == "abort":
            conn.abort()
        else:
            now += arg
        for seg in conn.poll(now):
            assert 0 <= seg.window <= 0xFFFF
            assert len(seg.payload) <= 1460
        d = conn.next_deadline()
        assert d is None or d >= now or d == conn._now
        # invariants
        if conn.state not in (S.CLOSED, S.SYN_SENT, S.SYN_RECEIVED):
            assert seq_le(conn.snd_una, conn.snd_nxt) and seq_le(conn.snd_nxt, conn.snd_max)
            assert 0 <= seq_diff(conn.snd_max, conn.snd_una) <= len(conn._sbuf) + 2
        assert len(conn._sbuf) <= max(conn.config.send_buffer, 1)
        assert conn.receive_available() <= conn._rbuf_limit + (1 << conn.rcv_wscale)
        assert conn._ooo.nbytes <= conn._rbuf_limit + (1 << conn.rcv_wscale)
    for old, new in seen:
        assert new is S.CLOSED or new in ALLOWED[old], (old, new)
    # Every byte RCV.NXT moved over was delivered exactly once (the FIN counts one).
    if rcv0 is not None:
        fin = int(conn.eof_received) - int(eof0)
        assert delivered + conn.receive_available() == seq_diff(conn.rcv_nxt, rcv0) - fin
