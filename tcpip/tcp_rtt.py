"""Retransmission timer arithmetic: RFC 6298 SRTT / RTTVAR / RTO with exponential backoff.

Sans-IO: samples are given in seconds by the engine (from timestamps, RFC 7323 section 4, or from
timing one segment at a time with Karn's algorithm, RFC 6298 section 3).
"""

from __future__ import annotations

# RFC 6298 (2.3): alpha = 1/8, beta = 1/4.
ALPHA = 0.125
BETA = 0.25
# RFC 6298 (2.3): K = 4.
K = 4
# RFC 6298 (2.1)/(2.3): clock granularity G.  Our timestamp clock ticks in milliseconds
# (RFC 7323 section 5.4 allows 1 ms .. 1 s); Linux also uses 1 ms.
CLOCK_GRANULARITY = 0.001


class RttEstimator:
    """RFC 6298 RTO estimator.

    ``rto`` is the base RTO (no backoff); ``current_rto()`` applies ``backoff`` (5.5: the timer
    value doubles on each expiry) and clamps to ``max_rto`` (2.5).
    """

    __slots__ = ("srtt", "rttvar", "rto", "backoff", "min_rto", "max_rto")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.min_rto = min_rto
        self.max_rto = max_rto
        # RFC 6298 (2.1): until a measurement is made, RTO <- 1 second (configurable).
        self.rto = min(max(initial_rto, min_rto), max_rto)
        self.backoff = 0

    def sample(self, r: float) -> None:
        """Feed one RTT measurement ``r`` (seconds)."""
        if r < 0:
            return
        srtt = self.srtt
        if srtt is None:
            # RFC 6298 (2.2): first measurement.
            self.srtt = srtt = r
            self.rttvar = rttvar = r / 2
        else:
            # RFC 6298 (2.3): RTTVAR first (uses the old SRTT), then SRTT.
            rttvar = (1 - BETA) * self.rttvar + BETA * abs(srtt - r)  # type: ignore[operator]
            srtt = (1 - ALPHA) * srtt + ALPHA * r
            self.srtt = srtt
            self.rttvar = rttvar
        rto = srtt + max(CLOCK_GRANULARITY, K * rttvar)
        # RFC 6298 (2.4) minimum and (2.5) maximum.
        if rto < self.min_rto:
            rto = self.min_rto
        elif rto > self.max_rto:
            rto = self.max_rto
        self.rto = rto

    def current_rto(self) -> float:
        """The timer value to use now: base RTO doubled ``backoff`` times (RFC 6298 5.5)."""
        if self.backoff == 0:
            return self.rto
        rto = self.rto * (1 << min(self.backoff, 30))
        return self.max_rto if rto > self.max_rto else rto

    def on_timeout(self) -> None:
        # RFC 6298 (5.5): back off the timer.
        self.backoff += 1

    def reset_backoff(self) -> None:
        # RFC 6298 (5.7) note / Linux: new data acknowledged -> the backed-off value is dropped.
        self.backoff = 0
