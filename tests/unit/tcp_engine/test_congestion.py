"""RFC 5681 slow start / congestion avoidance / fast retransmit, RFC 6582 NewReno, RFC 3042."""

from .conftest import (
    LOCAL_SEQ,
    MSS,
    SEND,
    config,
    established,
    recv,
    recv_nothing,
)

BASE = LOCAL_SEQ + 1


def dupack(conn, now=0.1):
    conn.on_segment(SEND(ack=conn.snd_una), now)
    return recv(conn, now)


def test_initial_window_is_ten_segments():
    conn = established()
    conn.send(b"a" * (30 * MSS))
    assert len(recv(conn)) == 10
    assert conn.cc.cwnd == 10 * MSS


def test_slow_start_grows_one_mss_per_ack():
    conn = established()
    conn.send(b"a" * (30 * MSS))
    recv(conn)
    conn.on_segment(SEND(ack=BASE + MSS), 0.1)
    assert conn.cc.cwnd == 11 * MSS
    assert len(recv(conn, 0.1)) == 2  # one freed + one from growth
    # A stretch ACK of two segments still grows by one SMSS (RFC 3465 with L = 1 SMSS).
    conn.on_segment(SEND(ack=BASE + 3 * MSS), 0.2)
    assert conn.cc.cwnd == 12 * MSS
    assert len(recv(conn, 0.2)) == 3


def test_congestion_avoidance_grows_one_mss_per_window():
    conn = established(cwnd=10 * MSS, ssthresh=5 * MSS)
    conn.send(b"a" * (40 * MSS))
    recv(conn)
    for i in range(1, 10):
        conn.on_segment(SEND(ack=BASE + i * MSS), 0.1 * i)
        recv(conn, 0.1 * i)
    assert conn.cc.cwnd == 10 * MSS
    conn.on_segment(SEND(ack=BASE + 10 * MSS), 1.0)
    assert conn.cc.cwnd == 11 * MSS


def test_fast_retransmit_on_third_dupack():
    conn = established(cfg=config(limited_transmit=False))
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    assert dupack(conn) == []
    assert dupack(conn) == []
    out = dupack(conn)
    assert [(s.seq, len(s.payload)) for s in out] == [(BASE, MSS)]
    assert conn.counters.fast_retransmits == 1 and conn.counters.dup_acks == 3
    assert conn.counters.retransmissions == 1
    assert conn.cc.in_recovery
    assert conn.cc.ssthresh == 5 * MSS
    assert conn.cc.cwnd == 8 * MSS


def test_limited_transmit_sends_new_data_on_first_two_dupacks():
    conn = established()
    conn.send(b"a" * (20 * MSS))
    recv(conn)
    assert [s.seq for s in dupack(conn)] == [BASE + 10 * MSS]
    assert [s.seq for s in dupack(conn)] == [BASE + 11 * MSS]
    out = dupack(conn)
    assert [s.seq for s in out] == [BASE]
    assert conn.cc.ssthresh == 6 * MSS  # FlightSize was 12 segments


def test_fast_recovery_inflates_then_sends_new_data():
    conn = established(cfg=config(limited_transmit=False))
    conn.send(b"a" * (20 * MSS))
    recv(conn)
    for _ in range(3):
        dupack(conn)
    # cwnd = 8 MSS with 10 MSS in flight: each further dupack adds one MSS.
    assert dupack(conn) == []
    assert dupack(conn) == []
    out = dupack(conn)
    assert [s.seq for s in out] == [BASE + 10 * MSS]
    assert conn.cc.cwnd == 11 * MSS


def test_newreno_partial_ack_retransmits_next_hole_and_stays_in_recovery():
    conn = established(cfg=config(limited_transmit=False))
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    for _ in range(3):
        dupack(conn)
    # Partial ACK: the first three segments arrived, the fourth was lost too.
    conn.on_segment(SEND(ack=BASE + 3 * MSS), 0.2)
    out = recv(conn, 0.2)
    assert (out[0].seq, len(out[0].payload)) == (BASE + 3 * MSS, MSS)
    assert conn.cc.in_recovery
    # cwnd deflated by the 3 MSS acked, plus one MSS back (RFC 6582 3.2 step 3).
    assert conn.cc.cwnd == 8 * MSS - 3 * MSS + MSS


def test_newreno_full_ack_exits_recovery():
    conn = established(cfg=config(limited_transmit=False))
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    for _ in range(3):
        dupack(conn)
    conn.on_segment(SEND(ack=BASE + 10 * MSS), 0.3)
    assert not conn.cc.in_recovery
    assert conn.cc.cwnd == min(5 * MSS, MSS + MSS)
    recv_nothing(conn, 0.3)
    assert conn.next_deadline() is None


def test_no_second_fast_retransmit_for_the_same_window():
    conn = established(cfg=config(limited_transmit=False))
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    for _ in range(9):
        dupack(conn)
    assert conn.counters.fast_retransmits == 1


def test_segments_with_data_or_window_change_are_not_dupacks():
    conn = established()
    conn.send(b"a" * (5 * MSS))
    recv(conn)
    conn.on_segment(SEND(ack=BASE, payload=b"x"), 0.1)
    conn.on_segment(SEND(seq=conn.rcv_nxt, ack=BASE, window=30000), 0.1)
    assert conn.counters.dup_acks == 0
    assert conn.cc.dup_acks == 0


def test_no_dupacks_when_nothing_outstanding():
    conn = established()
    for _ in range(5):
        conn.on_segment(SEND(), 0.1)
    assert conn.counters.dup_acks == 0


def test_with_sack_new_sack_information_makes_a_duplicate_ack_whatever_the_window():
    # Found against Linux over TAP: with SACK its duplicate ACKs carry changing windows; RFC
    # 6675 section 2 counts an ACK with new SACK information as a duplicate.
    from tcpip.tcp_segment import TcpOptions

    conn = established(cfg=config(limited_transmit=False), sack_enabled=True)
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    out = []
    for i in range(1, 4):
        blk = ((BASE + MSS, BASE + (i + 1) * MSS),)
        conn.on_segment(
            SEND(ack=BASE, window=60000 - i * 1000, options=TcpOptions(sack_blocks=blk)), 0.1
        )
        out += recv(conn, 0.1)
    assert conn.counters.fast_retransmits == 1
    assert [(s.seq, len(s.payload)) for s in out] == [(BASE, MSS)]


def test_with_sack_repeated_old_sack_information_is_not_a_duplicate_when_window_changes():
    from tcpip.tcp_segment import TcpOptions

    conn = established(cfg=config(limited_transmit=False), sack_enabled=True)
    conn.send(b"a" * (10 * MSS))
    recv(conn)
    blk = ((BASE + MSS, BASE + 2 * MSS),)
    for i in range(1, 5):
        conn.on_segment(
            SEND(ack=BASE, window=60000 - i * 1000, options=TcpOptions(sack_blocks=blk)), 0.1
        )
    assert conn.counters.dup_acks == 1 and conn.counters.fast_retransmits == 0
