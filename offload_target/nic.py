"""The emulated chimney NIC as the run loop sees it: a ``vnic.node.FrameNode``.

:class:`NicNode` sits between the wire and the host stack.  Frames from the wire go to the
offload target's data path (``table.process_frame``); what it does not consume
(``FRAME_NOT_OURS``, ``FRAME_PASS_UP``) goes up the ordinary receive path: through NDIS
(``NdisMIndicateReceiveNetBufferLists``) when a bound protocol implements
``ReceiveNetBufferLists`` (the host's :class:`tcpip.offload.ChimneyHost` does), else straight
into ``host.receive_frame``.  ``poll`` runs the data path's timers, delivers NDIS completions and
work items (the miniport's deferred handler work), lets the host stack run, and returns every
frame to transmit: the data path's and the host stack's.

The NDIS ordinary *send* path (``NdisSendNetBufferLists`` / ``MiniportSendNetBufferLists``) is
not modelled: the host stack's own frames go straight to the wire.  The loop therefore sees the
NIC and the host as one node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ndis.blocks import NET_BUFFER_LIST
from ndis.driver import Protocol
from offload_target.miniport import FRAME_CONSUMED, OffloadTarget

log = logging.getLogger(__name__)

__all__ = ["NicNode"]

_MAX_ROUNDS = 16  # poll rounds until NDIS and the host are quiet (each round is cheap when idle)


class NicNode:
    """``NicNode(host, target, ndis, *, mac)``: host = the host stack (a FrameNode), target =
    the :class:`OffloadTarget` (registered with ``ndis``), ndis = the ``ndis.Ndis`` instance."""

    def __init__(self, host: Any, target: OffloadTarget, ndis: Any, *, mac: bytes) -> None:
        self.host = host
        self.target = target
        self.ndis = ndis
        self.mac = bytes(mac)
        self.now = 0.0
        self.counters: dict[str, int] = {"frames_in": 0, "frames_out": 0, "passed_up": 0,
                                          "consumed": 0}
        # the target runs first in poll and its indications call into the host (T.7 answers
        # the age of the host's neighbor entry): the host's clock must say now, not its last
        # poll (HostStack.advance_clock; a host without one keeps its own clock)
        self._advance_host_clock = getattr(host, "advance_clock", None)

    # -- FrameNode -------------------------------------------------------------------------------
    def receive_frame(self, frame: bytes, now: float) -> None:
        self.now = max(self.now, now)
        self.counters["frames_in"] += 1
        verdict = self.target.receive_frame(frame, now)
        if verdict == FRAME_CONSUMED:
            self.counters["consumed"] += 1
        else:
            self.counters["passed_up"] += 1
            self._indicate_up(frame, now)

    def receive_frames(self, frames: Sequence[bytes], now: float) -> None:
        """Frames arriving together at ``now`` (the optional batch form of the FrameNode
        contract): the same as ``receive_frame`` for each in order, with the per-call work
        (clock, counters) done once per batch."""
        if now > self.now:
            self.now = now
        n = len(frames)
        consumed = self.target.receive_frames(frames, now, lambda f: self._indicate_up(f, now))
        c = self.counters
        c["frames_in"] += n
        c["consumed"] += consumed
        c["passed_up"] += n - consumed

    def poll(self, now: float) -> list[bytes]:
        self.now = max(self.now, now)
        if self._advance_host_clock is not None:
            self._advance_host_clock(now)
        out: list[bytes] = []
        for _ in range(_MAX_ROUNDS):
            out += self.target.poll(now)
            if self.ndis.has_pending():
                self.ndis.deliver_pending()
            out += self.target.poll(now)
            out += self.host.poll(now)
            if not self.ndis.has_pending() and not self.target.outbox:
                break
        self.counters["frames_out"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        cands = [t for t in (self.host.next_deadline(), self.target.next_deadline()) if t is not None]
        if self.ndis.has_pending() or self.target.outbox:
            cands.append(self.now)
        return min(cands) if cands else None

    # -- the ordinary receive path (a.5) ----------------------------------------------------------
    def _ndis_receivers(self) -> list[Any]:
        handle = getattr(self.target, "ndis", None)
        bindings = getattr(handle, "bindings", [])
        return [b for b in bindings
                if type(b.protocol).ReceiveNetBufferLists is not Protocol.ReceiveNetBufferLists]

    def _indicate_up(self, frame: bytes, now: float) -> None:
        if self._ndis_receivers():
            nbl = NET_BUFFER_LIST(frame, label="rx")
            self.target.ndis.NdisMIndicateReceiveNetBufferLists(nbl)
        else:
            self.host.receive_frame(frame, now)
