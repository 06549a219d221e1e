"""RFC 6298 retransmission timer: RTO computation, backoff, Karn's algorithm, giving up."""

import pytest

from tcpip.tcp import TcpState
from tcpip.tcp_rtt import RttEstimator

from .conftest import (
    ACK,
    LOCAL_SEQ,
    MSS,
    PSH,
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


def test_estimator_first_and_second_sample():
    r = RttEstimator(1.0, 0.2, 60.0)
    assert r.rto == 1.0 and r.srtt is None
    r.sample(0.1)
    assert (r.srtt, r.rttvar) == pytest.approx((0.1, 0.05))
    assert r.rto == pytest.approx(0.3)
    r.sample(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert r.rto == pytest.approx(r.srtt + 4 * r.rttvar)


def test_estimator_clamps_and_backoff():
    r = RttEstimator(1.0, 0.2, 5.0)
    r.sample(0.01)
    assert r.rto == pytest.approx(0.2)  # RFC 6298 (2.4) minimum (Linux 200 ms)
    r.sample(100.0)
    assert r.rto == 5.0  # (2.5) maximum
    r = RttEstimator(1.0, 0.2, 5.0)
    seq = []
    for _ in range(5):
        seq.append(r.current_rto())
        r.on_timeout()
    assert seq == [1.0, 2.0, 4.0, 5.0, 5.0]
    r.reset_backoff()
    assert r.current_rto() == 1.0


def test_retransmission_with_exponential_backoff():
    conn = established()
    conn.send(b"d" * 100)
    first = recv_one(conn, 0.0)
    assert conn.next_deadline() == pytest.approx(1.0)
    recv_nothing(conn, 0.999)
    again = recv_one(conn, 1.0)
    assert fields(again) == fields(first)
    assert conn.next_deadline() == pytest.approx(3.0)
    assert fields(recv_one(conn, 3.0)) == fields(first)
    assert conn.next_deadline() == pytest.approx(7.0)
    assert conn.counters.timeouts == 2 and conn.counters.retransmissions == 2
    assert conn.retransmit_count == 2


def test_karn_no_sample_from_retransmitted_segment():
    conn = established()
    conn.send(b"d" * 100)
    recv(conn, 0.0)
    recv(conn, 1.0)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 101), 1.05)
    assert conn.rtt.srtt is None
    assert conn.retransmit_count == 0
    assert conn.rtt.backoff == 0


def test_rtt_sample_sets_rto():
    conn = established()
    conn.send(b"d" * 100)
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 101), 0.1)
    assert conn.rtt.srtt == pytest.approx(0.1)
    assert conn.rtt.rto == pytest.approx(0.3)
    conn.send(b"e" * 100)
    recv(conn, 0.2)
    assert conn.next_deadline() == pytest.approx(0.5)


def test_ack_of_everything_stops_the_timer_partial_ack_restarts_it():
    conn = established()
    conn.send(b"x" * 3000)
    assert len(recv(conn, 0.0)) == 3
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + MSS), 0.5)
    recv_nothing(conn, 0.5)
    # sample 0.5 -> RTO = 0.5 + 4 * 0.25 = 1.5, restarted at 0.5
    assert conn.next_deadline() == pytest.approx(2.0)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 3001), 0.6)
    recv_nothing(conn, 0.6)
    assert conn.next_deadline() is None


def test_give_up_after_max_retransmissions():
    conn = established(cfg=config(max_retransmissions=3))
    conn.send(b"lost")
    recv(conn, 0.0)
    times = []
    out = []
    while not conn.closed:
        t = conn.next_deadline()
        out = recv(conn, t)
        times.append(t)
    assert times == pytest.approx([1.0, 3.0, 7.0, 15.0])
    assert conn.error == "connection timed out"
    assert [s.flags for s in out] == [RST | ACK]
    assert out[0].seq == LOCAL_SEQ + 5
    assert conn.counters.rsts_out == 1 and conn.counters.timeouts == 4


def test_timeout_collapses_cwnd_and_goes_back_n():
    conn = established()
    conn.send(b"z" * (20 * MSS))
    assert len(recv(conn, 0.0)) == 10  # initial window: 10 segments
    out = recv(conn, 1.0)
    assert [(s.seq, len(s.payload)) for s in out] == [(LOCAL_SEQ + 1, MSS)]
    assert conn.cc.cwnd == MSS
    assert conn.cc.ssthresh == 5 * MSS
    # The retransmission is acknowledged: slow start resends the next two.
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + MSS), 1.1)
    out = recv(conn, 1.1)
    assert [s.seq for s in out] == [LOCAL_SEQ + 1 + MSS, LOCAL_SEQ + 1 + 2 * MSS]
    assert conn.counters.retransmissions == 3


def test_timeout_then_cumulative_ack_skips_what_arrived():
    conn = established()
    conn.send(b"z" * (4 * MSS))
    recv(conn, 0.0)
    recv(conn, 1.0)  # retransmits the first segment only
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + 4 * MSS), 1.1)
    recv_nothing(conn, 1.1)
    assert conn.snd_nxt == conn.snd_una == LOCAL_SEQ + 1 + 4 * MSS


def test_first_timeout_sets_ssthresh_later_ones_do_not():
    conn = established()
    conn.send(b"z" * (10 * MSS))
    recv(conn, 0.0)
    recv(conn, 1.0)
    assert conn.cc.ssthresh == 5 * MSS
    recv(conn, 3.0)
    assert conn.cc.ssthresh == 5 * MSS  # RFC 5681 (4): not again for the same segment


def test_retransmitted_data_is_byte_exact():
    conn = established()
    conn.send(bytes(range(200)))
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 51), 0.1)
    seg = recv_one(conn, 0.1 + conn.rtt.current_rto())
    assert seg.seq == LOCAL_SEQ + 51 and seg.payload == bytes(range(50, 200))
    assert seg.flags == PSH | ACK
    assert conn.state is TcpState.ESTABLISHED
    assert seg.ack == REMOTE_SEQ + 1


def test_timeout_retransmission_is_not_held_by_sender_sws():
    # Found by the pair test: 380 bytes in flight, window 380, max window 3000.  The
    # retransmission is smaller than an MSS and than half the max window, but must go out.
    conn = established(snd_wnd=3000, max_snd_wnd=3000)
    conn.send(b"k" * 3000)
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + 2620, window=380), 0.1)
    recv(conn, 0.1)
    seg = recv_one(conn, conn.next_deadline())
    assert (seg.seq, len(seg.payload)) == (LOCAL_SEQ + 1 + 2620, 380)


def test_pure_ack_after_go_back_n_uses_snd_max():
    # Found by the pair test: after a timeout SND.NXT moves back to SND.UNA; an ACK sent with
    # SEQ = SND.NXT would be "old" for a peer that already has that data, and both ends could
    # end up discarding each other's ACKs forever.
    conn = established()
    conn.send(b"m" * (3 * MSS))
    recv(conn, 0.0)
    recv(conn, 1.0)  # timeout: resend the first segment, SND.NXT = SND.UNA + MSS
    assert conn.snd_nxt == LOCAL_SEQ + 1 + MSS
    conn.on_segment(SEND(payload=b"data"), 1.1)
    ack = recv_one(conn, 1.1)
    assert ack.payload == b"" and ack.seq == LOCAL_SEQ + 1 + 3 * MSS


# ---- tail loss probe (RFC 8985 section 7) ---------------------------------------------------

TLP = dict(srtt=0.05, rttvar=0.025, rto=0.2)


def tlp_conn(**kw):
    base = dict(TLP)
    base.update(kw)
    return established(cfg=config(tail_loss_probe=True), **base)


def test_tlp_retransmits_the_last_segment_after_two_srtt():
    conn = tlp_conn()
    conn.send(b"t" * (3 * MSS))
    assert len(recv(conn, 0.0)) == 3
    assert conn.next_deadline() == pytest.approx(0.1)  # PTO = 2 * SRTT
    probe = recv_one(conn, 0.1)
    assert (probe.seq, len(probe.payload)) == (LOCAL_SEQ + 1 + 2 * MSS, MSS)
    assert conn.counters.tail_loss_probes == 1 and conn.counters.retransmissions == 1
    assert conn.counters.timeouts == 0 and conn.cc.cwnd == 10 * MSS  # no RTO response
    # Then the ordinary RTO (go-back-N from SND.UNA).
    assert conn.next_deadline() == pytest.approx(0.3)
    rto = recv_one(conn, conn.next_deadline())
    assert rto.seq == LOCAL_SEQ + 1 and conn.counters.timeouts == 1


def test_tlp_sends_new_data_ignoring_cwnd():
    conn = tlp_conn(cwnd=2 * MSS)
    conn.send(b"t" * (5 * MSS))
    assert len(recv(conn, 0.0)) == 2
    probe = recv_one(conn, 0.1)
    assert (probe.seq, len(probe.payload)) == (LOCAL_SEQ + 1 + 2 * MSS, MSS)
    assert conn.counters.retransmissions == 0 and conn.cc.cwnd == 2 * MSS


def test_tlp_with_one_segment_in_flight_waits_for_delayed_ack_so_rto_wins():
    conn = tlp_conn()
    conn.send(b"t" * 100)
    recv(conn, 0.0)
    # PTO = 2 * SRTT + 200 ms (worst-case delayed ACK) = 0.3 > RTO = 0.2: no probe.
    assert conn.next_deadline() == pytest.approx(0.2)
    recv_one(conn, 0.2)
    assert conn.counters.tail_loss_probes == 0 and conn.counters.timeouts == 1


def test_only_one_probe_per_tail_and_ack_rearms():
    conn = tlp_conn()
    conn.send(b"t" * (3 * MSS))
    recv(conn, 0.0)
    recv_one(conn, 0.1)  # probe
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + MSS), 0.12)
    recv_nothing(conn, 0.12)
    # The probe is still outstanding: no second PTO, the RTO runs.
    assert conn.next_deadline() == pytest.approx(0.12 + conn.rtt.current_rto())
    conn.on_segment(SEND(ack=LOCAL_SEQ + 1 + 3 * MSS), 0.15)
    conn.send(b"u" * (3 * MSS))
    recv(conn, 0.15)
    assert conn.next_deadline() == pytest.approx(0.15 + 2 * conn.rtt.srtt)  # PTO again


def test_export_reports_the_rto_not_the_probe_timeout():
    conn = tlp_conn()
    conn.send(b"t" * (3 * MSS))
    recv(conn, 0.0)
    snap = conn.export_state(0.0)
    assert snap.retransmit_timeout_delta == pytest.approx(0.2)
