"""Seeded wire faults, applied in user space on one direction of a wire.

A :class:`FaultInjector` takes each frame with the time it is put on the wire and returns the
frames to deliver with their release times::

    out = injector.apply(frame, now)      # -> [(release_time, frame), ...]  ([] = dropped/held)
    out += injector.poll(now)             # held frames whose hold expired
    injector.next_deadline()              # when poll() has something, or None

Faults (all probabilities per eligible frame, decided in a fixed order from one seeded
``random.Random`` so a seed replays exactly): loss (Bernoulli ``loss`` or Gilbert-Elliott
bursts), corrupt (flip a byte, optionally sparing the Ethernet header), truncate, fragment
(split an IPv4 frame into IPv4 fragments, see :func:`fragment_frame`), duplicate, reorder (hold
the frame back until ``reorder_gap`` later frames passed, or ``reorder_delay``), delay (fixed +
uniform jitter).  Duplicate, reorder and delay act on a fragmented frame's fragments together
(both copies, all held, all late); ``fragment_reorder`` sends the fragments last first,
``fragment_loss`` drops single fragments.  ``FaultSpec.match`` restricts everything to frames a predicate
accepts (e.g. :func:`tcp_data_only`), ``start``/``stop`` to a time window, ``skip``/``count`` to
the N matching frames after the first K, and ``FaultInjector.enabled`` switches it at run time
(e.g. on for the first frames after a connection is handed back).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from tcpip.checksum import internet_checksum

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
    fragment: float = 0.0  # split IPv4 frames into fragments (fragment_frame) ...
    fragment_size: int = 512  # ... of this many payload octets each (a multiple of 8)
    fragment_reorder: bool = False  # send the fragments of a frame in reverse order
    fragment_loss: float = 0.0  # drop each fragment of a fragmented frame with this probability
    match: FramePredicate | None = None
    start: float | None = None  # only frames put on the wire in [start, stop)
    stop: float | None = None
    skip: int = 0  # let the first `skip` matching frames through untouched ...
    count: int | None = None  # ... then affect at most `count` matching frames

    def __post_init__(self) -> None:
        if (isinstance(self.fragment_size, bool) or not isinstance(self.fragment_size, int)
                or self.fragment_size < 8 or self.fragment_size % 8):
            # RFC 791 section 3.1: the fragment offset counts 8-octet units, so every fragment
            # but the last carries a multiple of 8 octets
            raise ValueError(f"fragment_size must be a positive multiple of 8 (RFC 791: "
                             f"fragment offsets count 8-octet units), not {self.fragment_size!r}")

    @property
    def is_noop(self) -> bool:
        return not (self.loss or self.gilbert or self.duplicate or self.reorder or self.delay
                    or self.jitter or self.corrupt or self.truncate or self.fragment)

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
    fragmented: int = 0  # frames split into IPv4 fragments ...
    fragments: int = 0  # ... and the fragments made of them
    fragments_lost: int = 0  # fragments dropped by fragment_loss (not in `dropped`)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- predicates for FaultSpec.match --------------------------------------------------------------


def _tcp_offset(frame: bytes) -> int | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    if ((frame[20] << 8) | frame[21]) & 0x1FFF:
        return None  # a later IPv4 fragment: no TCP header in it
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


def tcp_control_only(frame: bytes) -> bool:
    """IPv4/TCP frames without payload: pure ACKs, SYN/FIN/RST without data (not ARP)."""
    return _tcp_offset(frame) is not None and not tcp_data_only(frame)


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


# --- IPv4 fragmentation ---------------------------------------------------------------------------


def _copied_options(options: bytes) -> bytes | None:
    """The options of ``options`` whose copied flag is set (RFC 791 section 3.1: "the copied
    flag indicates that this option is copied into all fragments on fragmentation"), padded
    with End of Option List octets to a multiple of 4; None when the options are malformed."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # End of Option List
            break
        if kind == 1:  # No Operation: copied flag 0
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            return None
        length = options[i + 1]
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_frame(frame: bytes, size: int, *, reverse: bool = False) -> list[bytes] | None:
    """Split the IPv4 datagram in ``frame`` into fragments of at most ``size`` payload octets
    (a multiple of 8), each behind a copy of the frame's Ethernet header (and 802.1Q tag);
    ``reverse``: the last fragment first.  None (leave the frame as it is) when the frame is not
    IPv4 with a well-formed header and a correct header checksum, or its payload fits in ``size``.

    RFC 791 section 3.2, "An Example Fragmentation Procedure": every fragment gets a copy of the
    header with its own Total Length, Fragment Offset (the original offset plus its position in
    8-octet units), MF set on all but the last (the last keeps the original MF, so a fragment
    can be fragmented again) and the header checksum recomputed; the identification is kept.
    The first fragment carries all options, the others only those with the copied flag.

    This is a fault injector, not a router: a datagram with DF set is fragmented as well (DF
    stays set in every fragment); a router would drop it and send ICMP "fragmentation needed"
    (RFC 1191) instead.  Ethernet padding after the datagram is not copied.
    """
    if size < 8 or size % 8:
        raise ValueError(f"fragment size must be a positive multiple of 8, not {size}")
    off = 14
    if len(frame) >= 18 and frame[12:14] == b"\x81\x00":
        off = 18
    if len(frame) < off + 20 or frame[off - 2 : off] != b"\x08\x00":
        return None
    vihl = frame[off]
    ihl = (vihl & 0x0F) * 4
    total = int.from_bytes(frame[off + 2 : off + 4], "big")
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or len(frame) < off + total:
        return None
    if total - ihl <= size or internet_checksum(frame[off : off + ihl]) != 0:
        return None  # fits as it is, or a damaged header (recomputing would repair it)
    options = frame[off + 20 : off + ihl]
    later = _copied_options(options) if options else b""
    if later is None:
        return None
    l2 = frame[:off]
    fixed = frame[off : off + 20]
    flags = int.from_bytes(fixed[6:8], "big")
    keep = flags & 0xC000  # reserved bit and DF, as they were
    base = flags & 0x1FFF
    last_mf = flags & 0x2000
    payload = frame[off + ihl : off + total]
    out = []
    for pos in range(0, len(payload), size):
        piece = payload[pos : pos + size]
        opts = options if pos == 0 else later
        hlen = 20 + len(opts)
        mf = last_mf if pos + size >= len(payload) else 0x2000
        hdr = bytearray(fixed)
        hdr[0] = 0x40 | (hlen >> 2)
        hdr[2:4] = (hlen + len(piece)).to_bytes(2, "big")
        hdr[6:8] = (keep | mf | (base + pos // 8)).to_bytes(2, "big")
        hdr[10:12] = b"\x00\x00"
        hdr += opts
        hdr[10:12] = internet_checksum(hdr).to_bytes(2, "big")
        out.append(l2 + bytes(hdr) + piece)
    if reverse:
        out.reverse()
    return out


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
        frames = [frame]
        if s.fragment and rnd() < s.fragment:
            pieces = fragment_frame(frame, s.fragment_size, reverse=s.fragment_reorder)
            if pieces is not None:
                frames = pieces
                c.fragmented += 1
                c.fragments += len(pieces)
                if s.fragment_loss:
                    # single fragments lost: the receiver's reassembly times out (RFC 1122
                    # 3.3.2) and TCP retransmits the whole segment
                    kept = [f for f in pieces if rnd() >= s.fragment_loss]
                    c.fragments_lost += len(pieces) - len(kept)
                    frames = kept
                    if not kept:
                        return released
        copies = 2 if s.duplicate and rnd() < s.duplicate else 1
        if copies == 2:
            c.duplicated += 1
        t = now
        if s.delay or s.jitter:
            t = now + s.delay + (rnd() * s.jitter if s.jitter else 0.0)
            c.delayed += 1
        if s.reorder and rnd() < s.reorder:
            c.reordered += 1
            deadline = max(t, now + s.reorder_delay)
            self._held.extend([s.reorder_gap, deadline, f] for f in frames)
            c.delivered += (copies - 1) * len(frames)
            out = released
            if copies == 2:  # the duplicate goes ahead, the original arrives late
                out.extend((t, f) for f in frames)
            return out
        c.delivered += copies * len(frames)
        out = released
        out.extend((t, f) for f in frames)
        if copies == 2:
            out.extend((t, f) for f in frames)
        return out

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
