"""Congestion control: RFC 5681 slow start / congestion avoidance / fast retransmit and fast
recovery, with the RFC 6582 NewReno modification for partial acknowledgments.  cwnd in bytes.

The controller only does arithmetic; the engine decides what to (re)transmit from the values
returned here.
"""

from __future__ import annotations

from .seq import seq_ge, seq_lt

# RFC 5681 section 3.2: fast retransmit after the third duplicate ACK.
DUPACK_THRESHOLD = 3
# RFC 5681 section 3.1: "the initial value of ssthresh SHOULD be set arbitrarily high".
INITIAL_SSTHRESH = 1 << 30


class NewReno:
    __slots__ = (
        "smss",
        "cwnd",
        "ssthresh",
        "in_recovery",
        "recover",
        "dup_acks",
        "_ca_acc",
        "_first_partial",
    )

    def __init__(self, smss: int, initial_window_segments: int, iss: int) -> None:
        self.smss = smss
        # RFC 6928 (IW10, what Linux uses) bounded as RFC 6928 section 2:
        # IW = min(N*MSS, max(2*MSS, 14600)); N=3..4 would be RFC 5681 (3.1) proper.
        self.cwnd = min(initial_window_segments * smss, max(2 * smss, 14600))
        self.ssthresh = INITIAL_SSTHRESH
        self.in_recovery = False
        # RFC 6582 section 3.2 step 1: recover <- initial send sequence number.
        self.recover = iss
        self.dup_acks = 0
        self._ca_acc = 0
        self._first_partial = True

    def set_smss(self, smss: int) -> None:
        self.smss = smss

    def on_new_ack(self, ack: int, acked: int, flight_after: int) -> tuple[bool, bool]:
        """New data acknowledged (``acked`` bytes; ``flight_after`` still outstanding).

        Returns ``(retransmit_head, restart_timer)``: NewReno asks to retransmit the first
        unacknowledged segment on a partial ACK, and to restart the timer on the first one.
        """
        self.dup_acks = 0
        smss = self.smss
        if self.in_recovery:
            if seq_ge(ack, self.recover):
                # RFC 6582 3.2 step 3 (full ACK), option (1):
                # cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
                self.cwnd = min(self.ssthresh, max(flight_after, smss) + smss)
                self.in_recovery = False
                self._ca_acc = 0
                return False, False
            # RFC 6582 3.2 step 3 (partial ACK): retransmit the first unacknowledged segment,
            # deflate cwnd by the amount acked, add back one SMSS if at least SMSS was acked.
            cwnd = self.cwnd - acked
            if acked >= smss:
                cwnd += smss
            self.cwnd = max(cwnd, smss)
            first = self._first_partial
            self._first_partial = False
            return True, first
        if self.cwnd < self.ssthresh:
            # RFC 5681 (2) with RFC 3465 byte counting, L = 1 SMSS.
            self.cwnd += acked if acked < smss else smss
        else:
            # RFC 5681 (3): about one SMSS per RTT (byte counting, RFC 3465 section 2.1).
            self._ca_acc += acked
            if self._ca_acc >= self.cwnd:
                self._ca_acc -= self.cwnd
                self.cwnd += smss
        return False, False

    def on_dup_ack(self, snd_una: int, snd_max: int, flight: int) -> bool:
        """A duplicate ACK (RFC 5681 section 2 definition).  Returns True to fast-retransmit."""
        self.dup_acks += 1
        if self.in_recovery:
            # RFC 5681 3.2 step 4 / RFC 6582 step 4: inflate by one SMSS per further dupack.
            self.cwnd += self.smss
            return False
        if self.dup_acks != DUPACK_THRESHOLD:
            return False
        # RFC 6582 3.2 step 2: only if the cumulative ACK covers more than recover.  recover is
        # stored exclusive (one past the highest sequence transmitted), so this is ">=".
        if seq_lt(snd_una, self.recover):
            return False
        # RFC 5681 (4): ssthresh = max(FlightSize / 2, 2*SMSS).
        self.ssthresh = max(flight // 2, 2 * self.smss)
        self.recover = snd_max
        # RFC 5681 3.2 step 3: cwnd = ssthresh + 3*SMSS.
        self.cwnd = self.ssthresh + DUPACK_THRESHOLD * self.smss
        self.in_recovery = True
        self._first_partial = True
        return True

    def on_timeout(self, flight: int, snd_max: int, first_timeout: bool) -> None:
        """The retransmission timer expired (RFC 5681 section 3.1, RFC 6582 section 3.2 step 6)."""
        if first_timeout:
            # RFC 5681 (4): only when the segment was not already retransmitted by the timer.
            self.ssthresh = max(flight // 2, 2 * self.smss)
        # RFC 5681 (3.1): LW = 1 full-sized segment.
        self.cwnd = self.smss
        self.in_recovery = False
        self.recover = snd_max
        self.dup_acks = 0
        self._ca_acc = 0

    def limited_transmit_allowance(self) -> int:
        """RFC 3042: on the first two duplicate ACKs up to 2 more SMSS of new data may be sent."""
        if self.in_recovery or self.dup_acks == 0:
            return 0
        return min(self.dup_acks, 2) * self.smss
