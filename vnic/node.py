"""The one interface the run loop knows: something attached to a wire."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def batch_receiver(node: object) -> Callable[[Sequence[bytes], float], None] | None:
    """``node.receive_frames`` when the batch form may be used, else None (deliver per frame).

    Not when ``receive_frame`` was replaced on the instance (a test or tool intercepting
    frames must see each one), and not when ``receive_frames`` only resolves through a
    wrapper's ``__getattr__`` forwarding to the node it wraps (a recorder such as
    ``vnic.offload_lab.WireWatch`` would be bypassed): the batch form must be the node's own.
    """
    inst = getattr(node, "__dict__", {})
    if "receive_frame" in inst:
        return None
    own = inst.get("receive_frames")
    if own is not None:
        return own  # type: ignore[no-any-return]
    if getattr(type(node), "receive_frames", None) is None:
        return None
    return node.receive_frames  # type: ignore[attr-defined, no-any-return]
