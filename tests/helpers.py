"""Small test helpers shared by unit tests (no I/O, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vnic.node import FrameNode


class FramePair:
    """Two FrameNodes joined back to back by an ideal in-memory wire, on a virtual clock.

    Every frame a node returns from ``poll`` is delivered to the other node at the same
    virtual instant; ``tap`` (if given) sees each frame as ``tap(sender_index, frame)`` and may
    return None to drop it.  The clock jumps to the earliest ``next_deadline`` when both nodes
    are idle.
    """

    def __init__(
        self,
        a: FrameNode,
        b: FrameNode,
        *,
        now: float = 0.0,
        tap: Callable[[int, bytes], bytes | None] | None = None,
    ) -> None:
        self.nodes: Sequence[FrameNode] = (a, b)
        self.now = now
        self.tap = tap
        self.frames: list[tuple[float, int, bytes]] = []  # (time, sender index, frame)

    def step(self) -> bool:
        """Poll both nodes once at ``now`` and deliver their frames; True if any moved."""
        moved = False
        for i, node in enumerate(self.nodes):
            other = self.nodes[1 - i]
            for frame in node.poll(self.now):
                self.frames.append((self.now, i, frame))
                if self.tap is not None:
                    frame = self.tap(i, frame)
                    if frame is None:
                        continue
                other.receive_frame(frame, self.now)
                moved = True
        return moved

    def run_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 60.0,
        max_steps: int = 1_000_000,
    ) -> float:
        """Step until ``condition()``; returns the virtual time taken.  Raises AssertionError if
        the pair goes quiet (no frames, no deadlines) or ``timeout`` virtual seconds pass."""
        start = self.now
        for _ in range(max_steps):
            if condition():
                return self.now - start
            if self.step():
                continue
            if condition():
                return self.now - start
            deadlines = [d for d in (n.next_deadline() for n in self.nodes) if d is not None]
            if not deadlines:
                raise AssertionError(f"quiescent at t={self.now:.6f} and the condition is false")
            nxt = min(deadlines)
            if nxt > self.now:
                self.now = nxt
            if self.now - start > timeout:
                raise AssertionError(f"condition still false after {timeout} virtual seconds")
        raise AssertionError(f"condition still false after {max_steps} steps")
