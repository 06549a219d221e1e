"""IPv4 reassembly (RFC 791 section 3.2, RFC 815, RFC 1122 section 3.3.2), sans-IO.

RFC 1122 section 3.3.2: a host MUST reassemble IP datagrams.  :class:`Reassembler` takes the
fragments the stack receives (already parsed and checked: header checksum, our destination, a
valid source) with the time, and returns the whole datagram once its last hole is filled::

    whole = reassembler.add(ip, now)      # an Ipv4Packet (the datagram) or None (not yet / dropped)
    expired = reassembler.poll(now)       # datagrams given up by the timer ([Expired, ...])
    reassembler.next_deadline()           # when poll() has something to do, or None

Theory of operation
-------------------
Fragments belong together when they share (source, destination, protocol, identification)
(RFC 791 section 3.2, "Reassembly": the "bufid").  Each datagram being reassembled keeps the
data it received as a list of *disjoint* ``(start, end, octets)`` intervals, sorted by start.
This is RFC 815's hole-descriptor list turned inside out: the holes are the gaps between the
intervals (and after the last one, up to the end the last fragment announced), so the
datagram is complete exactly when the end is known and the intervals hold ``end`` octets.
Disjoint intervals make that test a comparison of two integers and make overlaps visible: a
new fragment is compared, octet for octet, with every interval it overlaps (found by
bisection); only the parts that fall into holes are stored.

- Order does not matter; an identical re-send (or an overlap with identical octets) adds
  nothing and is counted as ``duplicates``.
- An overlap with *different* octets drops the whole datagram (``overlaps``).  RFC 791 lets
  the later copy win, but accepting either copy lets a forged fragment rewrite a segment
  (RFC 1858, RFC 3128 attacks); Linux drops overlapping IPv4 fragments and RFC 5722 makes it
  the rule for IPv6.
- RFC 791 section 3.2: "the data of all but the last fragment must be a multiple of 8
  octets"; a fragment with MF set and a length that is not a positive multiple of 8 is
  dropped (``bad_length``: the fragment only, nothing it carries can be placed).
- RFC 791 section 3.1: a datagram is at most 65535 octets; a fragment that would end beyond
  ``max_datagram_size`` drops its datagram (``too_big``).
- A fragment that contradicts the known end (a second last fragment with another end, data
  beyond the end, or a last fragment ending before data already received) drops the datagram
  (``inconsistent``), as Linux's ``ip_frag_queue`` does.

The reassembled datagram carries the header of fragment zero with MF clear, offset 0 and the
total length of the whole (RFC 791 section 3.2: the options of fragment zero only, "the
internet header of the first fragment" is the header of the datagram) and a fresh header
checksum; it is a :class:`tcpip.ipv4.Ipv4Packet` with the whole payload, so the caller goes on
exactly as with an unfragmented datagram.  The ECN field is fragment zero's: RFC 3168 section
5.3 (CE in any fragment marks the datagram) is not applied, the stack does not use ECN.

Limits (:class:`ReassemblyConfig`):

- ``timeout``: RFC 1122 section 3.3.2 wants a fixed reassembly timeout (not one set from the
  TTL) and recommends 60 to 120 s; the default is Linux's ``net.ipv4.ipfrag_time``, 30 s, the
  value the peers this emulator meets use.  The timer starts with a datagram's first fragment
  and is not restarted by later ones.  Because every datagram gets the same timeout and time
  never goes back here (an earlier ``now`` is taken as the latest one seen), datagrams expire
  in the order they were created: the dict that holds them *is* the timer queue, its first
  entry the next deadline.
- ``max_datagrams`` and ``max_bytes`` (payload octets held, default 4 MiB like Linux's
  ``ipfrag_high_thresh``): beyond either, the oldest datagram is evicted (``evicted``).

An expired datagram whose fragment zero arrived is reported by :meth:`Reassembler.poll` with
the quote an ICMP Time Exceeded message needs (RFC 792: the internet header and the first 64
bits of the original data; RFC 1122 section 3.3.2: sent "if fragment zero has been received");
the stack sends it.  Every drop is counted in :class:`ReassemblyCounters` and reported to
``on_drop(reason, 1)`` (the stack's ``drops`` counter) in datagrams (fragments for
``bad_length``); completion and every datagram drop are logged at DEBUG with the key.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpip.addr import ip_str
from tcpip.checksum import internet_checksum
from tcpip.ipv4 import Ipv4Packet

__all__ = [
    "Expired",
    "Reassembler",
    "ReassemblyConfig",
    "ReassemblyCounters",
    "ReassemblyKey",
    "DROP_REASONS",
]

log = logging.getLogger(__name__)

# (source, destination, protocol, identification): RFC 791 section 3.2, "bufid"
ReassemblyKey = tuple[bytes, bytes, int, int]

# counter name -> the stack's drop reason
DROP_REASONS = {
    "timeouts": "ip-frag-timeout",
    "overlaps": "ip-frag-overlap",
    "evicted": "ip-frag-evicted",
    "too_big": "ip-frag-too-big",
    "bad_length": "ip-frag-bad-length",
    "inconsistent": "ip-frag-inconsistent",
}

_HDR = struct.Struct("!BBHHHBBH4s4s")
_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_FLAG_RESERVED = 0x8000


@dataclass(slots=True)
class ReassemblyConfig:
    """Limits; see the module docstring for where each default comes from."""

    timeout: float = 30.0  # Linux net.ipv4.ipfrag_time (RFC 1122 3.3.2 recommends 60-120 s)
    max_datagrams: int = 256  # datagrams being reassembled at once
    max_bytes: int = 4 << 20  # payload octets held, all datagrams (Linux ipfrag_high_thresh)
    max_datagram_size: int = 65535  # RFC 791 section 3.1: Total Length is 16 bits
    time_exceeded: bool = True  # the stack sends ICMP Time Exceeded (code 1) on a timeout

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"reassembly timeout must be > 0, not {self.timeout}")
        if self.max_datagrams < 1 or self.max_bytes < 1:
            raise ValueError("max_datagrams and max_bytes must be >= 1")
        # RFC 1122 section 3.3.2: EMTU_R MUST be >= 576
        if not 576 <= self.max_datagram_size <= 65535:
            raise ValueError(f"max_datagram_size must be within 576..65535, "
                             f"not {self.max_datagram_size}")


@dataclass(slots=True)
class ReassemblyCounters:
    fragments_in: int = 0
    reassembled: int = 0  # datagrams completed
    duplicates: int = 0  # fragments that added nothing (identical octets only)
    timeouts: int = 0  # datagrams given up by the timer
    overlaps: int = 0  # datagrams dropped: overlapping fragments with different octets
    evicted: int = 0  # datagrams dropped: max_datagrams / max_bytes
    too_big: int = 0  # datagrams dropped: beyond max_datagram_size
    bad_length: int = 0  # fragments dropped: MF set, length not a positive multiple of 8
    inconsistent: int = 0  # datagrams dropped: fragments disagree about the end
    time_exceeded: int = 0  # expired datagrams with fragment zero (an ICMP error is due)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(slots=True, frozen=True)
class Expired:
    """A datagram the timer gave up; ``quote`` is fragment zero's header as received plus its
    first 8 data octets (RFC 792, Time Exceeded Message), ``b""`` without fragment zero."""

    key: ReassemblyKey
    quote: bytes
    first: Ipv4Packet | None = None  # fragment zero's header fields (payload: 8 octets)


@dataclass(slots=True, eq=False)
class _Partial:
    deadline: float
    starts: list[int] = field(default_factory=list)  # parts[i][0], for bisection
    parts: list[tuple[int, int, bytes]] = field(default_factory=list)  # disjoint, sorted
    held: int = 0  # octets in parts
    end: int | None = None  # payload length, once the last fragment (MF clear) arrived
    stop: int = 0  # highest end of any part
    first: Ipv4Packet | None = None  # fragment zero (payload: its first 8 octets)
    fragments: int = 0


def _key_str(key: ReassemblyKey) -> str:
    return f"{ip_str(key[0])}->{ip_str(key[1])} proto {key[2]} id {key[3]:#06x}"


def _header_as_received(ip: Ipv4Packet) -> bytes:
    """The header octets ``ip`` was parsed from (total length and checksum as received)."""
    frag = ip.fragment_offset
    if ip.dont_fragment:
        frag |= _FLAG_DF
    if ip.more_fragments:
        frag |= _FLAG_MF
    if ip.reserved_flag:
        frag |= _FLAG_RESERVED
    return _HDR.pack(0x40 | (ip.header_length >> 2), (ip.dscp << 2) | ip.ecn, ip.total_length,
                     ip.identification, frag, ip.ttl, ip.protocol, ip.checksum, ip.src,
                     ip.dst) + ip.options


class Reassembler:
    """Datagrams being reassembled, by :data:`ReassemblyKey`.  See the module docstring."""

    def __init__(
        self,
        config: ReassemblyConfig | None = None,
        on_drop: Callable[[str, int], None] | None = None,
        name: str = "host",
    ) -> None:
        """``on_drop(reason, count)`` is told about every drop (reasons: :data:`DROP_REASONS`)."""
        self.config = config or ReassemblyConfig()
        self.on_drop = on_drop
        self.name = name
        self.counters = ReassemblyCounters()
        self._partials: dict[ReassemblyKey, _Partial] = {}  # creation order = deadline order
        self._held = 0
        self._now = float("-inf")
        self._expired: list[Expired] = []

    def __len__(self) -> int:
        return len(self._partials)

    @property
    def held_bytes(self) -> int:
        """Payload octets held for incomplete datagrams."""
        return self._held

    def keys(self) -> list[ReassemblyKey]:
        return list(self._partials)

    # ---- timers ---------------------------------------------------------------------------

    def poll(self, now: float) -> list[Expired]:
        """Give up datagrams whose timer ran out; return them (for ICMP Time Exceeded)."""
        self._advance(now)
        out, self._expired = self._expired, []
        return out

    def next_deadline(self) -> float | None:
        if self._expired:
            return self._now
        for d in self._partials.values():
            return d.deadline  # the first one is the earliest (module docstring)
        return None

    def _advance(self, now: float) -> None:
        if now > self._now:
            self._now = now
        now = self._now
        partials = self._partials
        while partials:
            key, d = next(iter(partials.items()))
            if d.deadline > now:
                break
            # RFC 1122 section 3.3.2: "If this timeout expires, the partially-reassembled
            # datagram MUST be discarded and an ICMP Time Exceeded message sent to the source
            # host (if fragment zero has been received)."
            self._drop(key, "timeouts", f"timed out after {self.config.timeout:g} s")
            first = d.first
            if first is not None:
                self.counters.time_exceeded += 1
                self._expired.append(
                    Expired(key, _header_as_received(first) + bytes(first.payload), first))

    # ---- fragments ------------------------------------------------------------------------

    def add(self, ip: Ipv4Packet, now: float) -> Ipv4Packet | None:
        """Take one fragment (``ip.is_fragment``); the whole datagram when it completes one."""
        self._advance(now)
        c = self.counters
        c.fragments_in += 1
        cfg = self.config
        key = (ip.src, ip.dst, ip.protocol, ip.identification)
        data = ip.payload
        n = len(data)
        start = ip.fragment_offset * 8  # RFC 791: the offset counts 8-octet units
        end = start + n
        more = ip.more_fragments
        if more and (n == 0 or n % 8):
            # RFC 791 section 3.2: the data of all but the last fragment is a multiple of 8
            c.bad_length += 1
            self._count_drop("bad_length")
            log.debug("%s: reassembly %s: fragment at %d with MF and %d octets dropped",
                      self.name, _key_str(key), start, n)
            return None
        if ip.header_length + end > cfg.max_datagram_size:
            # RFC 791 section 3.1: Total Length (and so the reassembled datagram) <= 65535
            self._drop(key, "too_big", f"fragment ends at {end}", count_missing=True)
            return None
        d = self._partials.get(key)
        if d is None:
            while len(self._partials) >= cfg.max_datagrams:
                self._evict_oldest()
            d = self._partials[key] = _Partial(self._now + cfg.timeout)
        d.fragments += 1
        if not more:
            if (d.end is not None and d.end != end) or d.stop > end:
                self._drop(key, "inconsistent", f"last fragment ends at {end}, data to "
                                                f"{max(d.stop, d.end or 0)}")
                return None
            d.end = end
        elif d.end is not None and end > d.end:
            self._drop(key, "inconsistent", f"fragment ends at {end}, beyond the end {d.end}")
            return None
        added = self._insert(d, start, end, data)
        if added is None:
            self._drop(key, "overlaps", f"fragment {start}..{end} overlaps with other octets")
            return None
        if added == 0 and n:
            c.duplicates += 1
        if start == 0 and d.first is None:
            d.first = dataclasses.replace(ip, payload=bytes(data[:8]))
        d.held += added
        self._held += added
        if end > d.stop:
            d.stop = end
        if d.end is not None and d.held == d.end and d.first is not None:
            return self._complete(key, d)
        while self._held > cfg.max_bytes:
            evicted = self._evict_oldest()
            if evicted == key:
                return None
        return None

    @staticmethod
    def _insert(d: _Partial, start: int, end: int, data: bytes | memoryview) -> int | None:
        """Store the parts of ``data`` (octets ``start..end``) that fall into holes; the octets
        added, or None when an overlapped part holds other octets (nothing is stored then)."""
        starts, parts = d.starts, d.parts
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or parts[i][1] <= start:
            i += 1  # parts[i] is the first that may overlap
        j = i
        pos = start
        new: list[tuple[int, int, bytes]] = []
        while j < len(parts) and parts[j][0] < end:
            ps, pe, pd = parts[j]
            lo, hi = max(ps, start), min(pe, end)
            if data[lo - start : hi - start] != pd[lo - ps : hi - ps]:
                return None
            if ps > pos:
                new.append((pos, ps, bytes(data[pos - start : ps - start])))
            if pe > pos:
                pos = pe
            j += 1
        if pos < end:
            new.append((pos, end, bytes(data[pos - start :])))
        if not new:
            return 0
        merged = sorted(parts[i:j] + new)
        parts[i:j] = merged
        starts[i:j] = [p[0] for p in merged]
        return sum(p[1] - p[0] for p in new)

    def _complete(self, key: ReassemblyKey, d: _Partial) -> Ipv4Packet | None:
        del self._partials[key]
        self._held -= d.held
        first = d.first
        assert first is not None and d.end is not None
        total = first.header_length + d.end
        if total > self.config.max_datagram_size:
            # fragment zero's header (its options) is longer than the last fragment's
            self._count_drop("too_big")
            self.counters.too_big += 1
            log.debug("%s: reassembly %s: %d octets, too big: dropped", self.name,
                      _key_str(key), total)
            return None
        payload = b"".join(p[2] for p in d.parts)
        flags = (_FLAG_DF if first.dont_fragment else 0) | (
            _FLAG_RESERVED if first.reserved_flag else 0)
        # the header of fragment zero with MF clear, offset 0 and the whole length (RFC 791
        # section 3.2), and its checksum recomputed
        header = _HDR.pack(0x40 | (first.header_length >> 2), (first.dscp << 2) | first.ecn,
                           total, first.identification, flags, first.ttl, first.protocol, 0,
                           first.src, first.dst) + first.options
        self.counters.reassembled += 1
        log.debug("%s: reassembled %s: %d octets from %d fragments", self.name, _key_str(key),
                  total, d.fragments)
        return Ipv4Packet(
            first.src,
            first.dst,
            first.protocol,
            payload,
            ttl=first.ttl,
            identification=first.identification,
            dont_fragment=first.dont_fragment,
            more_fragments=False,
            fragment_offset=0,
            dscp=first.dscp,
            ecn=first.ecn,
            options=first.options,
            total_length=total,
            checksum=internet_checksum(header),
            reserved_flag=first.reserved_flag,
        )

    # ---- drops ----------------------------------------------------------------------------

    def _count_drop(self, counter: str) -> None:
        if self.on_drop is not None:
            self.on_drop(DROP_REASONS[counter], 1)

    def _drop(self, key: ReassemblyKey, counter: str, why: str,
              count_missing: bool = False) -> None:
        """Give up the datagram ``key`` (its fragments are freed) and count it under
        ``counter``; ``count_missing``: count even when nothing of it is held yet."""
        d = self._partials.pop(key, None)
        if d is None and not count_missing:
            return
        if d is not None:
            self._held -= d.held
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        self._count_drop(counter)
        log.debug("%s: reassembly %s dropped (%s): %s; %d fragments, %d octets held",
                  self.name, _key_str(key), counter, why, d.fragments if d else 0,
                  d.held if d else 0)

    def _evict_oldest(self) -> ReassemblyKey:
        key = next(iter(self._partials))
        self._drop(key, "evicted", f"limits (max_datagrams {self.config.max_datagrams}, "
                                   f"max_bytes {self.config.max_bytes})")
        return key
