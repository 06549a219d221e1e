"""The one interface the run loop knows: something attached to a wire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class FrameNode(Protocol):
    """A sans-IO participant on an Ethernet wire (host stack, emulated NIC, simulated peer).

    The loop delivers each received frame with :meth:`receive_frame`, then calls :meth:`poll`
    and transmits every frame it returns, then waits for input or :meth:`next_deadline`.

    Optional: a node may also offer ``receive_frames(frames, now)`` (see
    :class:`BatchFrameNode`); a loop that has several frames arriving at the same instant may
    then deliver them in one call.  A node without it gets one ``receive_frame`` per frame.
    """

    def receive_frame(self, frame: bytes, now: float) -> None: ...

    def poll(self, now: float) -> list[bytes]: ...

    def next_deadline(self) -> float | None: ...


class BatchFrameNode(FrameNode, Protocol):
    """A :class:`FrameNode` that also takes frames in batches.

    ``receive_frames(frames, now)`` must have exactly the effect of ``receive_frame(f, now)``
    for each frame in order (the same state, output, counters and upcalls, in the same order);
    it exists only to do the per-call work once per batch.  The loop calls it only for frames
    that arrive at the same ``now`` with no per-frame hook (capture, faults) in between.
    """

    def receive_frames(self, frames: Sequence[bytes], now: float) -> None: ...
