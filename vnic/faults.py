"""Seeded wire faults, applied in user space on one direction of a wire.

A :class:`FaultInjector` takes each frame with the time it is put on the wire and returns the
frames to deliver with their release times::

    out = injector.apply(frame, now)      # -> [(release_time, frame), ...]  ([] = dropped/held)
    out += injector.poll(now)             # held frames whose hold expired
    injector.next_deadline()              # when poll() has something, or None

Faults (all probabilities per eligible frame, decided in a fixed order from one seeded
``random.Random`` so a seed replays exactly): loss (Bernoulli ``loss`` or Gilbert-Elliott
bursts), corrupt (flip a byte, optionally sparing the Ethernet header), truncate, duplicate,
reorder (hold the frame back until ``reorder_gap`` later frames passed, or ``reorder_delay``),
delay (fixed + uniform jitter). ``FaultSpec.match`` restricts everything to frames a predicate
accepts (e.g. :func:`tcp_data_only`), ``start``/``stop`` to a time window, ``skip``/``count`` to
the N matching frames after the first K, and ``FaultInjector.enabled`` switches it at run time
(e.g. on for the first frames after a connection is handed back).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

FramePredicate = Callable[[bytes], bool]


@dataclasses.dataclass
class GilbertElliott:
    """Two-state burst loss: Good --p--> Bad, Bad --r--> Good; loss prob per state."""

    p: float = 0.01  # P(good -> bad) per frame
    r: float = 0.3  # P(bad -> good) per frame
    loss_good: float = 0.0
    loss_bad: float = 1.0


@dataclasses.dataclass
class FaultSpec:
    """What to do to one direction of the wire. Defaults are a perfect wire."""

    loss: float = 0.0
    gilbert: GilbertElliott | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_gap: int = 3  # frames that overtake a held frame ...
    reorder_delay: float = 0.05  # ... or seconds, whichever comes first
    delay: float = 0.0
    jitter: float = 0.0  # uniform extra 0..jitter seconds (may reorder frames)
    corrupt: float = 0.0
    corrupt_keep_ethernet: bool = True  # never flip bytes of the 14-byte Ethernet header
    truncate: float = 0.0
    truncate_min: int = 14  # truncated length is uniform in [truncate_min, len-1]
    match: FramePredicate | None = None
    start: float | None = None  # only frames put on the wire in [start, stop)
    stop: float | None = None
    skip: int = 0  # let the first `skip` matching frames through untouched ...
    count: int | None = None  # ... then affect at most `count` matching frames

    @property
    def is_noop(self) -> bool:
        return not (self.loss or self.gilbert or self.duplicate or self.reorder or self.delay
                    or self.jitter or self.corrupt or self.truncate)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultSpec:
        """From a scenario/TOML table (``gilbert`` may be a table; ``match`` is not accepted)."""
        d = dict(d)
        ge = d.pop("gilbert", None)
        fields = {f.name for f in dataclasses.fields(cls)} - {"match", "gilbert"}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        spec = cls(**d)
        if ge is not None:
            spec.gilbert = GilbertElliott(**ge) if isinstance(ge, dict) else ge
        return spec


@dataclasses.dataclass
class FaultCounters:
    frames_in: int = 0
    eligible: int = 0
    delivered: int = 0
    dropped: int = 0
    burst_dropped: int = 0  # of `dropped`, while Gilbert-Elliott was in the bad state
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    corrupted: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- predicates for FaultSpec.match --------------------------------------------------------------


def _tcp_offset(frame: bytes) -> int | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    off = 14 + (frame[14] & 0x0F) * 4
    return off if len(frame) >= off + 20 else None


def is_tcp(frame: bytes) -> bool:
    return _tcp_offset(frame) is not None


def tcp_data_only(frame: bytes) -> bool:
    """IPv4/TCP frames carrying payload (pure ACKs, SYNs without data, ARP pass untouched)."""
    off = _tcp_offset(frame)
    if off is None:
        return False
    ip_total = int.from_bytes(frame[16:18], "big")
    ip_hlen = (frame[14] & 0x0F) * 4
    tcp_hlen = (frame[off + 12] >> 4) * 4
    return ip_total - ip_hlen - tcp_hlen > 0


def tcp_port(port: int) -> FramePredicate:
    """TCP frames to or from ``port``."""

    def pred(frame: bytes) -> bool:
        off = _tcp_offset(frame)
        if off is None:
            return False
        return port in (int.from_bytes(frame[off : off + 2], "big"),
                        int.from_bytes(frame[off + 2 : off + 4], "big"))

    return pred


def tcp_flow(port_a: int, port_b: int) -> FramePredicate:
    """TCP frames of the connection between ``port_a`` and ``port_b`` (either direction)."""
    ports = {(port_a, port_b), (port_b, port_a)}

    def pred(frame: bytes) -> bool:
        off = _tcp_offset(frame)
        if off is None:
            return False
        return (int.from_bytes(frame[off : off + 2], "big"),
                int.from_bytes(frame[off + 2 : off + 4], "big")) in ports

    return pred


def all_of(*preds: FramePredicate) -> FramePredicate:
    return lambda frame: all(p(frame) for p in preds)


def any_of(*preds: FramePredicate) -> FramePredicate:
    return lambda frame: any(p(frame) for p in preds)


# --- the injector ----------------------------------------------------------------------------


class FaultInjector:
    """One direction's faults. Deterministic for a given seed and input sequence."""

    def __init__(self, spec: FaultSpec | None = None, seed: int = 0,
                 rng: random.Random | None = None) -> None:
        self.spec = spec or FaultSpec()
        self.rng = rng or random.Random(seed)
        self.counters = FaultCounters()
        #: switch faults on/off at run time (e.g. only while a handoff is in flight)
        self.enabled = True
        self.matched = 0  # frames that passed enabled/window/match (for skip/count)
        self._ge_bad = False
        # held back for reordering: [frames still to overtake, deadline, frame]
        self._held: list[list[Any]] = []

    def _eligible(self, frame: bytes, now: float) -> bool:
        s = self.spec
        if not self.enabled:
            return False
        if s.start is not None and now < s.start:
            return False
        if s.stop is not None and now >= s.stop:
            return False
        if s.match is not None and not s.match(frame):
            return False
        self.matched += 1
        if self.matched <= s.skip:
            return False
        return s.count is None or self.matched - s.skip <= s.count

    def _lost(self) -> bool:
        s = self.spec
        rnd = self.rng.random
        if s.gilbert is not None:
            ge = s.gilbert
            if self._ge_bad:
                if rnd() < ge.r:
                    self._ge_bad = False
            elif rnd() < ge.p:
                self._ge_bad = True
            p = ge.loss_bad if self._ge_bad else ge.loss_good
            if p and rnd() < p:
                if self._ge_bad:
                    self.counters.burst_dropped += 1
                return True
        return bool(s.loss) and rnd() < s.loss

    def _corrupt(self, frame: bytes) -> bytes:
        first = 14 if self.spec.corrupt_keep_ethernet else 0
        if len(frame) <= first:
            return frame
        buf = bytearray(frame)
        i = self.rng.randrange(first, len(buf))
        buf[i] ^= self.rng.randrange(1, 256)
        return bytes(buf)

    def _release_overtaken(self, now: float) -> list[tuple[float, bytes]]:
        out = []
        keep = []
        for h in self._held:
            h[0] -= 1
            if h[0] <= 0:
                out.append((now, h[2]))
            else:
                keep.append(h)
        self._held = keep
        self.counters.delivered += len(out)
        return out

    def apply(self, frame: bytes, now: float) -> list[tuple[float, bytes]]:
        """Frames to deliver for one frame put on the wire at ``now`` (release time >= now)."""
        c = self.counters
        c.frames_in += 1
        s = self.spec
        if s.is_noop or not self._eligible(frame, now):
            c.delivered += 1
            return [(now, frame), *self._release_overtaken(now)] if self._held else [(now, frame)]
        c.eligible += 1
        rnd = self.rng.random
        released = self._release_overtaken(now) if self._held else []
        if self._lost():
            c.dropped += 1
            return released
        if s.corrupt and rnd() < s.corrupt:
            frame = self._corrupt(frame)
            c.corrupted += 1
        if s.truncate and rnd() < s.truncate and len(frame) > s.truncate_min + 1:
            frame = frame[: self.rng.randrange(s.truncate_min, len(frame))]
            c.truncated += 1
        copies = 2 if s.duplicate and rnd() < s.duplicate else 1
        if copies == 2:
            c.duplicated += 1
        t = now
        if s.delay or s.jitter:
            t = now + s.delay + (rnd() * s.jitter if s.jitter else 0.0)
            c.delayed += 1
        if s.reorder and rnd() < s.reorder:
            c.reordered += 1
            self._held.append([s.reorder_gap, max(t, now + s.reorder_delay), frame])
            c.delivered += copies - 1
            out = released
            if copies == 2:  # the duplicate goes ahead, the original arrives late
                out.append((t, frame))
            return out
        c.delivered += copies
        return [*released, (t, frame)] + ([(t, frame)] if copies == 2 else [])

    def poll(self, now: float) -> list[tuple[float, bytes]]:
        """Held frames whose reorder deadline passed."""
        if not self._held:
            return []
        out = []
        keep = []
        for h in self._held:
            if h[1] <= now:
                out.append((now, h[2]))
                self.counters.delivered += 1
            else:
                keep.append(h)
        self._held = keep
        return out

    def next_deadline(self) -> float | None:
        return min((h[1] for h in self._held), default=None)

    def flush(self, now: float) -> list[tuple[float, bytes]]:
        """Release every held frame now."""
        out = [(now, h[2]) for h in self._held]
        self.counters.delivered += len(out)
        self._held = []
        return out

    @property
    def held(self) -> int:
        return len(self._held)


@dataclasses.dataclass
class WireFaults:
    """Faults for both directions of a wire. ``a_to_b`` = host->peer on a TAP lab."""

    a_to_b: FaultInjector = dataclasses.field(default_factory=FaultInjector)
    b_to_a: FaultInjector = dataclasses.field(default_factory=FaultInjector)

    @classmethod
    def from_specs(cls, a_to_b: FaultSpec | None = None, b_to_a: FaultSpec | None = None,
                   seed: int = 0) -> WireFaults:
        # independent, reproducible streams per direction
        return cls(FaultInjector(a_to_b, rng=random.Random(f"{seed}:a->b")),
                   FaultInjector(b_to_a, rng=random.Random(f"{seed}:b->a")))

    def counters(self) -> dict[str, dict[str, int]]:
        return {"a_to_b": self.a_to_b.counters.as_dict(), "b_to_a": self.b_to_a.counters.as_dict()}
