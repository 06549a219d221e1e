"""An in-memory Ethernet wire between two FrameNodes, on a virtual clock.

Deterministic: events live in a heap keyed by ``(time, sequence)``; time jumps to the next
event or the earliest deadline (nodes, fault injectors, hooks); nodes are polled in a fixed
order (A then B). Per-direction latency, optional bandwidth (bytes/s, serialization queue per
direction), the same seeded :mod:`vnic.faults` and pcapng capture as the TAP loop. A step limit
turns a livelock (time stops advancing, or a run that never settles) into
:class:`SimulationLivelock` with a description of what was pending.

Batched delivery: with neither bandwidth, fault injector nor capture, every frame a node returns
from one ``poll`` arrives at the same instant (constant latency), so the frames of one poll are
one heap event and reach a node that has ``receive_frames(frames, now)`` in one call (a node
without it gets one ``receive_frame`` call per frame).  Order, times and statistics are those of
per-frame delivery: the batch holds a contiguous run of what would have been consecutive heap
sequence numbers, and nothing else can be scheduled in between.  With bandwidth, faults or a
capture every frame stays its own event (per-frame times, per-frame hooks).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Callable
from typing import Literal

from vnic.clock import VirtualClock
from vnic.faults import FaultInjector, WireFaults
from vnic.node import FrameNode, batch_receiver
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter

log = logging.getLogger(__name__)

Annotator = Callable[[str, bytes], "str | None"]


class SimulationLivelock(RuntimeError):
    """The simulation made ``max_steps`` steps without the predicate becoming true."""


@dataclasses.dataclass
class WireStats:
    frames_a_to_b: int = 0
    bytes_a_to_b: int = 0
    frames_b_to_a: int = 0
    bytes_b_to_a: int = 0
    delivered_to_a: int = 0
    delivered_to_b: int = 0
    steps: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _pair(v: float | tuple[float, float]) -> tuple[float, float]:
    return (v, v) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


class SimWire:
    """Wire ``a`` <-> ``b``. ``run_until(pred, timeout)`` uses virtual seconds."""

    def __init__(
        self,
        a: FrameNode,
        b: FrameNode,
        *,
        clock: VirtualClock | None = None,
        latency: float | tuple[float, float] = 50e-6,
        bandwidth: float | tuple[float, float] | None = None,
        faults: WireFaults | None = None,
        capture: PcapngWriter | None = None,
        capture_point: Literal["send", "receive"] = "receive",
        names: tuple[str, str] = ("host", "peer"),
        annotate: Annotator | None = None,
        max_steps: int = 1_000_000,
    ) -> None:
        self.nodes = (a, b)
        self.clock = clock or VirtualClock()
        self.latency = _pair(latency)
        self.bandwidth = None if bandwidth is None else _pair(bandwidth)
        self.faults = faults
        self.capture = capture
        self.capture_point = capture_point
        self.names = names
        self.annotate = annotate
        self.max_steps = max_steps
        self.stats = WireStats()
        self.on_step: list[Callable[[float], None]] = []
        self.deadline_sources: list[Callable[[], float | None]] = []
        # (time, seq, dst index, frames): frames is a list, one frame or a whole poll's batch
        self._events: list[tuple[float, int, int, list[bytes]]] = []
        self._seq = 0
        self._link_free = [0.0, 0.0]
        self._dirs = (f"{names[0]}->{names[1]}", f"{names[1]}->{names[0]}")

    @property
    def now(self) -> float:
        return self.clock.now()

    def _injector(self, src: int) -> FaultInjector | None:
        if self.faults is None:
            return None
        return self.faults.a_to_b if src == 0 else self.faults.b_to_a

    def _capture(self, src: int, frame: bytes, t: float) -> None:
        assert self.capture is not None
        d = self._dirs[src]
        text = f"dir={d} component={self.names[src]}"
        if self.annotate is not None:
            extra = self.annotate(d, frame)
            if extra:
                text += " " + extra
        self.capture.write_frame(frame, t, text, DIR_OUTBOUND if src == 0 else DIR_INBOUND)

    def _schedule(self, src: int, t: float, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t + self.latency[src], self._seq, 1 - src, [frame]))

    def _batchable(self) -> bool:
        """True when every frame of one poll would get the same arrival time and no per-frame
        hook (bandwidth queue, fault injector, capture) has to see the frames one by one."""
        return self.bandwidth is None and self.faults is None and self.capture is None

    def transmit_many(self, src: int, frames: list[bytes], now: float | None = None) -> None:
        """Put ``frames`` on the wire from node ``src`` in order, as ``transmit`` each would."""
        if not isinstance(frames, list):
            frames = list(frames)
        if not frames:
            return
        if len(frames) == 1 or not self._batchable():
            for frame in frames:
                self.transmit(src, frame, now)
            return
        now = self.clock.now() if now is None else now
        st = self.stats
        nbytes = sum(map(len, frames))
        if src == 0:
            st.frames_a_to_b += len(frames)
            st.bytes_a_to_b += nbytes
        else:
            st.frames_b_to_a += len(frames)
            st.bytes_b_to_a += nbytes
        self._seq += 1
        heapq.heappush(self._events, (now + self.latency[src], self._seq, 1 - src, list(frames)))

    def transmit(self, src: int, frame: bytes, now: float | None = None) -> None:
        """Put ``frame`` on the wire from node ``src`` (0 = a, 1 = b)."""
        now = self.clock.now() if now is None else now
        st = self.stats
        if src == 0:
            st.frames_a_to_b += 1
            st.bytes_a_to_b += len(frame)
        else:
            st.frames_b_to_a += 1
            st.bytes_b_to_a += len(frame)
        if self.capture is not None and self.capture_point == "send":
            self._capture(src, frame, now)
        t = now
        if self.bandwidth is not None:
            start = max(now, self._link_free[src])
            t = start + len(frame) / self.bandwidth[src]
            self._link_free[src] = t
        inj = self._injector(src)
        if inj is None:
            self._schedule(src, t, frame)
            return
        for rt, f in inj.apply(frame, t):
            self._schedule(src, rt, f)

    def inject(self, dst: int, frame: bytes, at: float | None = None) -> None:
        """Deliver ``frame`` to node ``dst`` at virtual time ``at`` (tests)."""
        self._seq += 1
        heapq.heappush(self._events, (self.clock.now() if at is None else at, self._seq, dst, [frame]))

    def next_time(self) -> float | None:
        cands = [n.next_deadline() for n in self.nodes]
        if self._events:
            cands.append(self._events[0][0])
        if self.faults is not None:
            cands.append(self.faults.a_to_b.next_deadline())
            cands.append(self.faults.b_to_a.next_deadline())
        cands.extend(src() for src in self.deadline_sources)
        return min((c for c in cands if c is not None), default=None)

    def _step_at(self, t: float) -> None:
        clock = self.clock
        now = clock.advance_to(t)
        self.stats.steps += 1
        events = self._events
        nodes = self.nodes
        stats = self.stats
        while events and events[0][0] <= now:
            _, _, dst, frames = heapq.heappop(events)
            if dst == 0:
                stats.delivered_to_a += len(frames)
            else:
                stats.delivered_to_b += len(frames)
            node = nodes[dst]
            # looked up per event, not cached: a test may replace a node's methods meanwhile
            batch = (batch_receiver(node)
                     if len(frames) > 1 and self.capture is None else None)
            if batch is not None:
                batch(frames, now)
                continue
            for frame in frames:
                if self.capture is not None and self.capture_point == "receive":
                    self._capture(1 - dst, frame, now)
                node.receive_frame(frame, now)
        if self.faults is not None:
            for src, inj in ((0, self.faults.a_to_b), (1, self.faults.b_to_a)):
                for rt, f in inj.poll(now):
                    self._schedule(src, rt, f)
        for hook in self.on_step:
            hook(now)
        for i, node in enumerate(nodes):
            self.transmit_many(i, node.poll(now), now)

    def step(self) -> bool:
        """Advance to the next instant with work and do it; ``False`` when nothing is pending."""
        t = self.next_time()
        if t is None:
            return False
        self._step_at(max(t, self.clock.now()))
        return True

    def _describe(self) -> str:
        return (
            f"t={self.clock.now():.6f} pending_frames={sum(len(e[3]) for e in self._events)} "
            f"deadlines=(a={self.nodes[0].next_deadline()}, b={self.nodes[1].next_deadline()}) "
            f"stats={self.stats.as_dict()}"
        )

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until ``predicate()`` holds (True) or ``timeout`` virtual seconds pass (False).

        Raises :class:`SimulationLivelock` after ``max_steps`` steps in this call.
        """
        end = self.clock.now() + timeout
        # one poll at the current instant so freshly queued application work starts now
        self._step_at(self.clock.now())
        steps = 1
        while not predicate():
            t = self.next_time()
            if t is None or t > end:
                self.clock.advance_to(end)
                return predicate()
            self._step_at(max(t, self.clock.now()))
            steps += 1
            if steps > self.max_steps:
                raise SimulationLivelock(
                    f"simulation did not settle within {self.max_steps} steps: {self._describe()}"
                )
        return True

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_idle(self, timeout: float = 3600.0) -> None:
        """Run until nothing is pending at all (or ``timeout``)."""
        self.run_until(lambda: self.next_time() is None, timeout)
