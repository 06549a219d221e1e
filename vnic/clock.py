"""Clocks: real (monotonic seconds) for the TAP loop, virtual for the in-memory wire."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class RealClock:
    """``time.monotonic()``; the origin is arbitrary, only differences matter."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    @property
    def is_virtual(self) -> bool:
        return False


class VirtualClock:
    """Time that moves only when told to (deterministic simulation). Never goes backwards."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> float:
        """Move to ``t`` (a no-op if ``t`` is in the past); returns the new time."""
        if t > self._now:
            self._now = float(t)
        return self._now

    def advance_by(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("a virtual clock cannot go backwards")
        return self.advance_to(self._now + dt)

    @property
    def is_virtual(self) -> bool:
        return True
