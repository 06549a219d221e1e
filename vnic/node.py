"""The one interface the run loop knows: something attached to a wire."""

from __future__ import annotations

from typing import Protocol


class FrameNode(Protocol):
    """A sans-IO participant on an Ethernet wire (host stack, emulated NIC, simulated peer).

    The loop delivers each received frame with :meth:`receive_frame`, then calls :meth:`poll`
    and transmits every frame it returns, then waits for input or :meth:`next_deadline`.
    """

    def receive_frame(self, frame: bytes, now: float) -> None: ...

    def poll(self, now: float) -> list[bytes]: ...

    def next_deadline(self) -> float | None: ...
