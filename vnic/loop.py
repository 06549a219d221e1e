"""The real-time run loop: one thread, one TAP fd, one FrameNode.

Each iteration sleeps in ``select`` until the port's fd is readable (the TAP fd, or with the TAP's
rings the RX ring's eventfd: :mod:`vnic.tap`) or the earliest deadline (node, held
frames, ``deadline_sources``) passes, then does one work pass: read every waiting frame (up to
``batch``, 256 by default: a whole burst of ACKs or of data frames goes in before the node's
``poll`` answers it, so the per-pass work of the node and of Python is paid once per burst) and
deliver it (``receive_frame``), release frames the fault injectors held back, run the ``on_step`` hooks
(e.g. the NDIS completion queue), call ``node.poll(now)`` and write what it returns. The
``run_until`` predicate is checked after every work pass.

Orientation: "outbound" is node -> port (``host->peer`` on a lab, ``WireFaults.a_to_b``),
"inbound" is port -> node (``peer->host``, ``WireFaults.b_to_a``). Capture happens at the TAP
fd: inbound frames as read (before faults), outbound frames as written (after faults; with the
TAP's rings: as queued on the TX ring, which writes them in order), so the pcapng shows what the
kernel peer sent and received.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import select
from collections.abc import Callable
from typing import Protocol

from vnic.clock import Clock, RealClock
from vnic.faults import WireFaults
from vnic.node import FrameNode, batch_receiver
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter

log = logging.getLogger(__name__)

#: (direction, frame) -> extra comment words for the capture (e.g. ``"epoch=2"``) or None
Annotator = Callable[[str, bytes], "str | None"]


class FramePort(Protocol):
    """What the loop needs from a TAP device (or anything fd-backed that moves frames).
    ``fileno()`` must be readable whenever ``read_frames`` has something to return."""

    def fileno(self) -> int: ...

    def read_frames(self, max_frames: int = 64) -> list[bytes]: ...

    def write(self, frame: bytes) -> bool: ...


@dataclasses.dataclass
class LoopStats:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    write_drops: int = 0
    iterations: int = 0
    waits: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RunLoop:
    """Drive ``node`` from ``port`` in real time. Not thread-safe; one loop per port."""

    def __init__(
        self,
        port: FramePort,
        node: FrameNode,
        clock: Clock | None = None,
        capture: PcapngWriter | None = None,
        faults: WireFaults | None = None,
        *,
        component: str = "host",
        peer_component: str = "peer",
        annotate: Annotator | None = None,
        batch: int = 256,
        max_wait: float = 0.05,
    ) -> None:
        self.port = port
        self.node = node
        self.clock = clock or RealClock()
        self.capture = capture
        self.faults = faults
        self.component = component
        self.peer_component = peer_component
        self.annotate = annotate
        self.batch = batch
        self.max_wait = max_wait
        self.stats = LoopStats()
        #: callables run once per iteration with ``now`` (before ``node.poll``)
        self.on_step: list[Callable[[float], None]] = []
        #: callables returning the next time a hook needs an iteration (or None)
        self.deadline_sources: list[Callable[[], float | None]] = []
        self._fd = port.fileno()
        # a port that writes a burst itself (TapDevice.write_frames) and counts the bytes
        self._write_frames = (getattr(port, "write_frames", None)
                              if hasattr(port, "bytes_written") else None)
        # frames held by fault delays: (release_time, seq, outbound?, frame)
        self._delayed: list[tuple[float, int, bool, bytes]] = []
        self._seq = 0
        self._more_input = False
        self._out_dir = f"{component}->{peer_component}"
        self._in_dir = f"{peer_component}->{component}"

    # -- frame movement ----------------------------------------------------------------------

    def _comment(self, direction: str, component: str, frame: bytes) -> str:
        text = f"dir={direction} component={component}"
        if self.annotate is not None:
            extra = self.annotate(direction, frame)
            if extra:
                text += " " + extra
        return text

    def _write(self, frame: bytes, now: float) -> None:
        st = self.stats
        if self.port.write(frame):
            st.frames_out += 1
            st.bytes_out += len(frame)
        else:
            st.write_drops += 1
        if self.capture is not None:
            self.capture.write_frame(
                frame, now, self._comment(self._out_dir, self.component, frame), DIR_OUTBOUND
            )

    def _hold(self, t: float, outbound: bool, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._delayed, (t, self._seq, outbound, frame))

    def transmit(self, frame: bytes, now: float) -> None:
        """Send one frame from the node towards the port (through the outbound faults)."""
        if self.faults is None:
            self._write(frame, now)
            return
        for t, f in self.faults.a_to_b.apply(frame, now):
            if t <= now:
                self._write(f, now)
            else:
                self._hold(t, True, f)

    def _receive(self, frames: list[bytes], now: float) -> None:
        st = self.stats
        st.frames_in += len(frames)
        node = self.node
        cap = self.capture
        faults = self.faults
        batch = batch_receiver(node) if cap is None and faults is None and len(frames) > 1 else None
        if batch is not None:
            # the whole read burst in one call (a node with the optional batch form, e.g. the
            # NIC: per-call work once per burst, as a NIC's interrupt moderation)
            st.bytes_in += sum(map(len, frames))
            batch(frames, now)
            return
        for frame in frames:
            st.bytes_in += len(frame)
            if cap is not None:
                cap.write_frame(
                    frame, now, self._comment(self._in_dir, self.peer_component, frame), DIR_INBOUND
                )
            if faults is None:
                node.receive_frame(frame, now)
                continue
            for t, f in faults.b_to_a.apply(frame, now):
                if t <= now:
                    node.receive_frame(f, now)
                else:
                    self._hold(t, False, f)

    def _release_due(self, now: float) -> None:
        if self.faults is not None:
            for t, f in self.faults.a_to_b.poll(now):
                self._hold(t, True, f)
            for t, f in self.faults.b_to_a.poll(now):
                self._hold(t, False, f)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, outbound, frame = heapq.heappop(delayed)
            if outbound:
                self._write(frame, now)
            else:
                self.node.receive_frame(frame, now)

    # -- the loop ----------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """Earliest time the loop must run even without input."""
        cands = [self.node.next_deadline()]
        if self._delayed:
            cands.append(self._delayed[0][0])
        if self.faults is not None:
            cands.append(self.faults.a_to_b.next_deadline())
            cands.append(self.faults.b_to_a.next_deadline())
        for src in self.deadline_sources:
            cands.append(src())
        return min((c for c in cands if c is not None), default=None)

    def wait(self, max_wait: float) -> None:
        """Sleep until the port is readable, the next wakeup, or ``max_wait`` seconds."""
        wake = self.next_wakeup()
        timeout = max_wait if wake is None else min(max_wait, wake - self.clock.now())
        if timeout <= 0:
            return
        self.stats.waits += 1
        select.select((self._fd,), (), (), timeout)

    def work(self) -> int:
        """One pass without waiting: input, held frames, hooks, ``node.poll``, output.

        Returns the number of frames read (== ``batch`` means more are probably waiting).
        """
        st = self.stats
        st.iterations += 1
        now = self.clock.now()
        frames = self.port.read_frames(self.batch)
        if frames:
            self._receive(frames, now)
        if self._delayed or self.faults is not None:
            self._release_due(now)
        for hook in self.on_step:
            hook(now)
        out = self.node.poll(now)
        if out:
            if self.faults is None and self.capture is None and self._write_frames is not None:
                port = self.port
                b0 = port.bytes_written  # type: ignore[attr-defined]
                n = self._write_frames(out)
                st.frames_out += n
                st.write_drops += len(out) - n
                st.bytes_out += port.bytes_written - b0  # type: ignore[attr-defined]
            elif self.faults is None and self.capture is None:
                write = self.port.write
                for frame in out:
                    if write(frame):
                        st.frames_out += 1
                        st.bytes_out += len(frame)
                    else:
                        st.write_drops += 1
            else:
                for frame in out:
                    self.transmit(frame, now)
        return len(frames)

    def step(self, max_wait: float) -> None:
        """Wait (at most ``max_wait`` s) for input or a deadline, then do one :meth:`work` pass."""
        if not self._more_input:
            self.wait(max_wait)
        self._more_input = self.work() >= self.batch

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until ``predicate()`` is true (checked after every iteration) or ``timeout`` s."""
        clock = self.clock
        end = clock.now() + timeout
        # work queued by the caller since the last run (e.g. a new connect) starts right away
        self._more_input = self.work() >= self.batch
        if predicate():
            return True
        while True:
            left = end - clock.now()
            if left <= 0:
                return predicate()
            self.step(min(left, self.max_wait))
            if predicate():
                return True

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)
