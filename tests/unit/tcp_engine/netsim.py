"""An in-memory, seeded, lossy / reordering / duplicating pipe between two TCP engines with a
virtual clock (used by test_pair.py and benchmarks/bench_tcp_engine.py)."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from tcpip.addr import ip_bytes
from tcpip.tcp import TcpConfig, TcpConnection, is_listen_syn
from tcpip.tcp_segment import TcpSegment

A_IP = ip_bytes("198.18.0.2")
B_IP = ip_bytes("198.18.0.1")
A_PORT = 40000
B_PORT = 7


@dataclass
class LinkFaults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability of an extra random delay
    delay: float = 0.005  # one-way base delay (seconds)
    jitter: float = 0.0
    reorder_delay: float = 0.02


@dataclass(order=True)
class _InFlight:
    at: float
    n: int
    dst: str = field(compare=False)
    seg: TcpSegment = field(compare=False)


class Pipe:
    """Client ``a`` (active open) and server ``b`` (passive open through a listener)."""

    def __init__(
        self,
        seed: int = 0,
        faults: LinkFaults | None = None,
        config_a: TcpConfig | None = None,
        config_b: TcpConfig | None = None,
        iss_a: int = 1000,
        iss_b: int = 900000,
        now: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or LinkFaults()
        self.now = now
        self.config_b = config_b or TcpConfig()
        self.iss_b = iss_b
        self.a = TcpConnection.connect(
            config_a or TcpConfig(), A_IP, A_PORT, B_IP, B_PORT, iss_a, now
        )
        self.b: TcpConnection | None = None
        self._q: list[_InFlight] = []
        self._n = 0
        self.delivered = 0
        self.dropped = 0
        self.wake_at: float | None = None  # an extra deadline (e.g. the end of a handoff gap)

    def _transmit(self, dst: str, segs: list[TcpSegment]) -> None:
        f = self.faults
        rng = self.rng
        for seg in segs:
            if f.loss and rng.random() < f.loss:
                self.dropped += 1
                continue
            copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
            for _ in range(copies):
                d = f.delay + (rng.random() * f.jitter if f.jitter else 0.0)
                if f.reorder and rng.random() < f.reorder:
                    d += rng.random() * f.reorder_delay
                self._n += 1
                heapq.heappush(self._q, _InFlight(self.now + d, self._n, dst, seg))

    def _deliver(self, item: _InFlight) -> None:
        self.delivered += 1
        if item.dst == "a":
            self.a.on_segment(item.seg, self.now)
            return
        if self.b is None or (self.b.closed and is_listen_syn(item.seg)):
            if is_listen_syn(item.seg):
                self.b = TcpConnection.accept(
                    self.config_b, B_IP, B_PORT, A_IP, A_PORT, self.iss_b, item.seg, self.now
                )
            return
        self.b.on_segment(item.seg, self.now)

    def poll(self) -> None:
        self._transmit("b", self.a.poll(self.now))
        if self.b is not None:
            self._transmit("a", self.b.poll(self.now))

    def next_time(self) -> float | None:
        cands = [
            t
            for t in (self.a.next_deadline(), self.b.next_deadline() if self.b else None)
            if t is not None
        ]
        if self._q:
            cands.append(self._q[0].at)
        if self.wake_at is not None:
            cands.append(self.wake_at)
        return min(cands) if cands else None

    def step(self) -> bool:
        """Poll both, advance the virtual clock to the next event, deliver what is due."""
        self.poll()
        t = self.next_time()
        if t is None:
            return False
        if t > self.now:
            self.now = t
        while self._q and self._q[0].at <= self.now:
            self._deliver(heapq.heappop(self._q))
        return True
