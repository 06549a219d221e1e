"""Small test helpers shared by unit, sim and system tests (no I/O, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


# ---- frame inspection (RST accounting) ------------------------------------------------------

TCP_RST = 0x04


def tcp_flags(frame: bytes) -> int | None:
    """The TCP flags byte of an untagged Ethernet/IPv4/TCP frame, or None for anything else."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    off = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < off + 14:
        return None
    return frame[off + 13]


def is_rst(frame: bytes) -> bool:
    flags = tcp_flags(frame)
    return flags is not None and bool(flags & TCP_RST)


class FrameRecorder:
    """Wraps a FrameNode and records what it transmits (before any wire fault): every RST
    frame, and the number of frames.  Transparent to the wire (same FrameNode API)."""

    def __init__(self, node: FrameNode) -> None:
        self.node = node
        self.frames_out = 0
        self.rst_frames: list[bytes] = []
        self.rst_times: list[float] = []

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.node.receive_frame(frame, now)

    def poll(self, now: float) -> list[bytes]:
        out = self.node.poll(now)
        self.frames_out += len(out)
        for frame in out:
            if is_rst(frame):
                self.rst_frames.append(frame)
                self.rst_times.append(now)
        return out

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()


def tcp_connection(conn: Any) -> Any:
    """The host ``TcpConnection`` behind what the streams hand out (``get_extra_info(
    "connection")``): the stack's stable socket record (``tcpip.offload_socket.TcpSocket``,
    whose ``host_connection`` is the engine while the connection is in the host) or, in older
    stacks, the connection itself.  Tests read engine details (``rcv_nxt``, state hooks) here."""
    engine = getattr(conn, "host_connection", None)
    return engine if engine is not None else conn


class Echo:
    """A frame node that replies to every frame with b"re:" + frame on its next poll."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self._out: list[bytes] = []

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.received.append((now, frame))
        self._out.append(b"re:" + frame)

    def poll(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return None


class BatchEcho(Echo):
    """Echo with the optional batch method; records how frames arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []  # batch sizes of receive_frames calls (1 = receive_frame)

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.calls.append(1)
        super().receive_frame(frame, now)

    def receive_frames(self, frames: Sequence[bytes], now: float) -> None:
        self.calls.append(len(frames))
        for f in frames:
            Echo.receive_frame(self, f, now)
