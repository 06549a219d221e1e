"""The neighbor (ARP) cache: IPv4 next hop -> MAC, sans-IO (RFC 826, RFC 1122 section 2.3.2).

Theory of operation
-------------------
Entries follow a reduced form of the Linux NUD state machine (RFC 4861 section 7.3.2 names,
which Linux also uses for ARP):

- ``INCOMPLETE``: a broadcast request is out; outbound packets wait in a small bounded queue.
  Requests are retried every ``retrans_time`` up to ``max_probes`` times (RFC 1122 section
  2.3.2.1: the rate of ARP requests for one address MUST be limited, recommended max 1/s);
  then the entry fails and the queued packets are dropped and counted.
- ``REACHABLE``: confirmed within ``reachable_time`` by a reply to us, or by
  :meth:`confirm` (upper-layer evidence, RFC 4861 section 7.3.1).
- ``STALE``: learned from a request (RFC 826 "merge"), or REACHABLE that aged.  Still used.
  The first use moves it to ``DELAY``.
- ``DELAY``: if nothing confirms it within ``delay_first_probe_time`` it moves to ``PROBE``:
  unicast requests to the cached MAC every ``retrans_time``; after ``max_probes`` without a
  reply the entry is removed (RFC 1122 section 2.3.2.1 "unicast poll").
- An unused STALE entry is garbage-collected after ``gc_stale_time``, unless it is pinned
  (:meth:`pin`: something else refers to it, e.g. a neighbor offloaded to a NIC; Linux never
  collects a referenced entry either).

Learning follows RFC 826 "Packet Reception": the sender of any ARP packet updates an existing
entry; a packet whose target is our address also creates one.  Requests for our address are
answered with a unicast reply.

Outputs are L2-agnostic: :meth:`poll` returns ``(dst_mac, ethertype, payload)`` triples (ARP
requests/replies and queued packets released by a resolution) and the caller frames them
(with its VLAN tag, if any).  Time is always passed in.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpip.addr import BROADCAST_MAC, ZERO_MAC, ip_str, mac_str
from tcpip.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp
from tcpip.ethernet import ETH_P_ARP

__all__ = [
    "NeighborCache",
    "NeighborConfig",
    "NeighborCounters",
    "NeighborEntry",
    "NeighborState",
    "Output",
]

log = logging.getLogger(__name__)

Output = tuple[bytes, int, bytes]  # (destination MAC, ethertype, payload)


class NeighborState(enum.Enum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    DELAY = "DELAY"
    PROBE = "PROBE"
    PERMANENT = "PERMANENT"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class NeighborConfig:
    """Defaults are Linux's (net.ipv4.neigh.default.*)."""

    reachable_time: float = 30.0  # base_reachable_time
    retrans_time: float = 1.0  # retrans_time_ms
    delay_first_probe_time: float = 5.0
    max_probes: int = 3  # mcast_solicit / ucast_solicit
    gc_stale_time: float = 60.0
    queue_len: int = 3  # packets held per unresolved address (Linux unres_qlen ~ 3 frames)
    max_entries: int = 1024  # gc_thresh3


@dataclass(slots=True)
class NeighborCounters:
    requests_sent: int = 0
    replies_sent: int = 0
    requests_received: int = 0
    replies_received: int = 0
    learned: int = 0
    updated: int = 0
    resolution_failures: int = 0
    queued: int = 0
    released: int = 0
    dropped_queue_full: int = 0
    dropped_unresolved: int = 0
    ignored: int = 0  # bogus sender (our own IP, a group MAC, 0.0.0.0 ...)
    address_conflicts: int = 0
    evicted: int = 0


@dataclass(slots=True)
class NeighborEntry:
    ip: bytes
    state: NeighborState
    mac: bytes | None = None
    updated: float = 0.0  # last confirmation (REACHABLE) or last change
    used: float = 0.0
    deadline: float | None = None  # next timer for this entry
    probes: int = 0
    queue: deque[tuple[int, bytes]] = field(default_factory=deque)


class NeighborCache:
    """ARP cache for one interface address ``ip``/``mac``."""

    def __init__(
        self,
        mac: bytes,
        ip: bytes,
        config: NeighborConfig | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_drop(reason, count)`` is told about every packet the cache drops."""
        self.on_drop = on_drop
        self.mac = mac
        self.ip = ip
        self.config = config or NeighborConfig()
        self.counters = NeighborCounters()
        self._entries: dict[bytes, NeighborEntry] = {}
        self._out: list[Output] = []
        self._pins: dict[bytes, int] = {}  # ip -> references that keep its entry from GC
        self._now = 0.0  # the latest time seen, for next_deadline() when output is waiting

    # ---- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ip: bytes) -> bool:
        return ip in self._entries

    def get(self, ip: bytes) -> NeighborEntry | None:
        return self._entries.get(ip)

    def entries(self) -> list[NeighborEntry]:
        return list(self._entries.values())

    # ---- the output path ------------------------------------------------------------------

    def resolve(self, ip: bytes, now: float) -> bytes | None:
        """The MAC for next hop ``ip``, or None after starting (or continuing) resolution.

        A usable entry (REACHABLE, STALE, DELAY, PROBE, PERMANENT) returns its MAC at once;
        using a STALE entry starts the DELAY timer.  An unknown address gets an INCOMPLETE
        entry and a broadcast request (sent by the next :meth:`poll`).
        """
        self._now = now
        e = self._entries.get(ip)
        if e is not None:
            if e.mac is not None:
                e.used = now
                if e.state is NeighborState.REACHABLE:
                    if now - e.updated > self.config.reachable_time:
                        self._set_state(e, NeighborState.DELAY, now)
                        e.deadline = now + self.config.delay_first_probe_time
                elif e.state is NeighborState.STALE:
                    self._set_state(e, NeighborState.DELAY, now)
                    e.deadline = now + self.config.delay_first_probe_time
                return e.mac
            return None  # INCOMPLETE: the retry timer is already running
        self._make_room(now)
        e = NeighborEntry(ip, NeighborState.INCOMPLETE, None, now, now)
        self._entries[ip] = e
        log.debug("neighbor %s: new, state=INCOMPLETE", ip_str(ip))
        self._send_request(e, now, BROADCAST_MAC)
        return None

    def hold(self, ip: bytes, ethertype: int, payload: bytes, now: float) -> bool:
        """Queue a packet for ``ip`` until it resolves; False when a packet had to be dropped.

        The queue is bounded per address; on overflow the *oldest* packet is dropped (as Linux
        does), so the most recent data goes out first when the answer comes.
        """
        e = self._entries.get(ip)
        if e is None or e.mac is not None:
            mac = self.resolve(ip, now)
            if mac is not None:  # resolved meanwhile: send at once
                self._out.append((mac, ethertype, payload))
                return True
            e = self._entries[ip]
        if self.config.queue_len <= 0:
            self._dropped("neighbor-queue-overflow", 1)
            return False
        dropped = False
        if len(e.queue) >= self.config.queue_len:
            e.queue.popleft()
            self._dropped("neighbor-queue-overflow", 1)
            dropped = True
        e.queue.append((ethertype, payload))
        self.counters.queued += 1
        return not dropped

    def add(self, ip: bytes, mac: bytes, now: float, permanent: bool = False) -> None:
        """Insert or overwrite an entry by configuration (REACHABLE, or PERMANENT: never ages)."""
        e = self._entries.get(ip)
        state = NeighborState.PERMANENT if permanent else NeighborState.REACHABLE
        if e is None:
            self._make_room(now)
            e = NeighborEntry(ip, state, mac, now, now)
            self._entries[ip] = e
            log.debug("neighbor %s: added %s state=%s", ip_str(ip), mac_str(mac), state)
        else:
            e.mac = mac
            e.updated = now
            self._set_state(e, state, now)
        e.deadline = None if permanent else now + self.config.reachable_time
        self._release(e)

    def remove(self, ip: bytes) -> None:
        e = self._entries.pop(ip, None)
        if e is not None and e.queue:
            self._dropped("neighbor-unresolved", len(e.queue))
            e.queue.clear()

    def confirm(self, ip: bytes, mac: bytes, now: float, *, at: float | None = None) -> None:
        """Upper-layer reachability confirmation (RFC 4861 section 7.3.1): a packet from ``ip``
        arrived from ``mac``.  Refreshes an existing entry with the same MAC only.

        ``at``: when the evidence was seen, if earlier than ``now`` (e.g. the last forward
        progress an offload target saw through the neighbor, T.7): the entry is REACHABLE as
        if confirmed then, so it ages from that time.  Evidence older than what confirmed a
        REACHABLE entry changes nothing."""
        e = self._entries.get(ip)
        if e is None or e.mac != mac or e.state is NeighborState.PERMANENT:
            return
        seen = now if at is None else min(at, now)
        if at is not None and e.state is NeighborState.REACHABLE and seen <= e.updated:
            return
        e.updated = seen
        if e.state is not NeighborState.REACHABLE:
            self._set_state(e, NeighborState.REACHABLE, now)
            e.probes = 0
        e.deadline = seen + self.config.reachable_time

    def probe(self, ip: bytes, now: float, mac: bytes | None = None) -> bool:
        """Start a unicast poll of ``ip`` now (RFC 1122 section 2.3.2.1), as a DELAY entry
        does when its timer fires: a usable entry moves to PROBE and a request goes to its
        cached MAC; the PROBE timer retries every ``retrans_time`` and removes the entry
        after ``max_probes`` unanswered requests.  A missing entry is created in PROBE with
        ``mac`` (when given).  True if a poll (or, INCOMPLETE, a resolution) is running;
        False for a PERMANENT entry or a missing one without ``mac``."""
        self._now = now
        e = self._entries.get(ip)
        if e is None:
            if mac is None:
                return False
            self._make_room(now)
            e = NeighborEntry(ip, NeighborState.PROBE, mac, now, now)
            self._entries[ip] = e
            log.debug("neighbor %s: new, state=PROBE %s", ip_str(ip), mac_str(mac))
        elif e.state is NeighborState.PERMANENT:
            return False
        elif e.mac is None or e.state is NeighborState.PROBE:
            return True  # INCOMPLETE (resolving) or already polling
        else:
            self._set_state(e, NeighborState.PROBE, now)
        e.probes = 0
        self._send_request(e, now, e.mac)  # type: ignore[arg-type]
        return True

    def pin(self, ip: bytes) -> None:
        """Keep ``ip``'s entry from garbage collection and eviction while something refers
        to it (counted: one :meth:`unpin` per pin).  Resolution failure still removes it."""
        self._pins[ip] = self._pins.get(ip, 0) + 1

    def unpin(self, ip: bytes, now: float) -> None:
        n = self._pins.get(ip, 0) - 1
        if n > 0:
            self._pins[ip] = n
            return
        self._pins.pop(ip, None)
        e = self._entries.get(ip)
        if e is not None and e.state is NeighborState.STALE and e.deadline is None:
            e.deadline = max(now, e.used + self.config.gc_stale_time)  # collectable again

    def pinned(self, ip: bytes) -> bool:
        return ip in self._pins

    # ---- the input path -------------------------------------------------------------------

    def receive_arp(self, arp: ArpPacket, now: float) -> None:
        """Process an ARP packet that arrived on our link (RFC 826 "Packet Reception")."""
        self._now = now
        if arp.op == ARP_REQUEST:
            self.counters.requests_received += 1
        else:
            self.counters.replies_received += 1
        sender_ip, sender_mac = arp.sender_ip, arp.sender_mac
        if sender_ip == self.ip and sender_mac != self.mac:
            # Someone else claims our address (RFC 5227 section 2.4): log it, learn nothing.
            self.counters.address_conflicts += 1
            log.warning("ARP: %s claims our address %s", mac_str(sender_mac), ip_str(self.ip))
            return
        if sender_mac[0] & 1 or sender_mac == ZERO_MAC or sender_ip == b"\x00\x00\x00\x00":
            # A group or zero sender MAC, or an ARP probe (RFC 5227 section 2.1.1, sender IP
            # 0.0.0.0), must not enter the cache.  A probe for our address is still answered.
            self.counters.ignored += 1
            if arp.op == ARP_REQUEST and arp.target_ip == self.ip and not sender_mac[0] & 1:
                self._send_reply(arp)
            return
        for_us = arp.target_ip == self.ip
        e = self._entries.get(sender_ip)
        if e is not None and e.state is not NeighborState.PERMANENT:
            # RFC 826: "If the pair <protocol type, sender protocol address> is already in my
            # translation table, update the sender hardware address field" (merge_flag).
            changed = e.mac != sender_mac
            e.mac = sender_mac
            e.updated = now
            if arp.op == ARP_REPLY and for_us:
                # A reply to us confirms reachability (it answers our request or probe).
                self._set_state(e, NeighborState.REACHABLE, now)
                e.deadline = now + self.config.reachable_time
            elif changed or e.state is NeighborState.INCOMPLETE:
                self._set_state(e, NeighborState.STALE, now)
                e.deadline = now + self.config.gc_stale_time
            e.probes = 0
            self.counters.updated += 1
            self._release(e)
        elif e is None and for_us:
            # RFC 826: "If Am I the target protocol address? ... If merge_flag is false, add the
            # triplet".  Linux creates it STALE (usable, verified on first use).
            self._make_room(now)
            e = NeighborEntry(sender_ip, NeighborState.STALE, sender_mac, now, now)
            e.deadline = now + self.config.gc_stale_time
            self._entries[sender_ip] = e
            self.counters.learned += 1
            log.debug("neighbor %s: learned %s state=STALE", ip_str(sender_ip), mac_str(sender_mac))
        if arp.op == ARP_REQUEST and for_us:
            self._send_reply(arp)

    # ---- timers ---------------------------------------------------------------------------

    def poll(self, now: float) -> list[Output]:
        """Fire due timers; return everything to transmit (ARP and released packets)."""
        self._now = now
        for e in [
            e for e in self._entries.values() if e.deadline is not None and e.deadline <= now
        ]:
            self._timer(e, now)
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        if self._out:
            return self._now  # output is waiting: poll again at once
        deadlines = [e.deadline for e in self._entries.values() if e.deadline is not None]
        return min(deadlines) if deadlines else None

    def _timer(self, e: NeighborEntry, now: float) -> None:
        cfg = self.config
        st = e.state
        if st is NeighborState.INCOMPLETE or st is NeighborState.PROBE:
            if e.probes >= cfg.max_probes:
                self._fail(e)
            else:
                self._send_request(e, now, BROADCAST_MAC if e.mac is None else e.mac)
        elif st is NeighborState.REACHABLE:
            self._set_state(e, NeighborState.STALE, now)
            e.deadline = e.updated + cfg.reachable_time + cfg.gc_stale_time
            if e.deadline <= now:
                e.deadline = now + cfg.gc_stale_time
        elif st is NeighborState.DELAY:
            # Nothing confirmed the entry (a confirmation moves it to REACHABLE): unicast poll.
            self._set_state(e, NeighborState.PROBE, now)
            e.probes = 0
            self._send_request(e, now, e.mac or BROADCAST_MAC)
        elif st is NeighborState.STALE:
            if e.ip in self._pins:
                e.deadline = None  # referenced: not collected (unpin re-arms the timer)
            elif now - e.used >= cfg.gc_stale_time:
                log.debug("neighbor %s: garbage-collected", ip_str(e.ip))
                del self._entries[e.ip]
            else:
                e.deadline = e.used + cfg.gc_stale_time
        else:  # PERMANENT never has a deadline
            e.deadline = None

    # ---- helpers --------------------------------------------------------------------------

    def _set_state(self, e: NeighborEntry, state: NeighborState, now: float) -> None:
        if e.state is not state:
            log.debug("neighbor %s: state=%s=>%s", ip_str(e.ip), e.state, state)
            e.state = state

    def _send_request(self, e: NeighborEntry, now: float, dst_mac: bytes) -> None:
        # RFC 826: target hardware address is "don't care" in a request; Linux sends zeros.
        self._out.append(
            (dst_mac, ETH_P_ARP, build_arp(ARP_REQUEST, self.mac, self.ip, ZERO_MAC, e.ip))
        )
        e.probes += 1
        e.deadline = now + self.config.retrans_time
        self.counters.requests_sent += 1

    def _send_reply(self, arp: ArpPacket) -> None:
        # RFC 826: swap sender and target, put our address in the sender fields, opcode reply.
        self._out.append(
            (
                arp.sender_mac,
                ETH_P_ARP,
                build_arp(ARP_REPLY, self.mac, self.ip, arp.sender_mac, arp.sender_ip),
            )
        )
        self.counters.replies_sent += 1

    def _dropped(self, reason: str, n: int) -> None:
        if reason == "neighbor-queue-overflow":
            self.counters.dropped_queue_full += n
        else:
            self.counters.dropped_unresolved += n
        if self.on_drop is not None:
            self.on_drop(reason, n)

    def _release(self, e: NeighborEntry) -> None:
        if e.queue and e.mac is not None:
            for ethertype, payload in e.queue:
                self._out.append((e.mac, ethertype, payload))
            self.counters.released += len(e.queue)
            e.queue.clear()

    def _fail(self, e: NeighborEntry) -> None:
        self.counters.resolution_failures += 1
        dropped = len(e.queue)
        if dropped:
            self._dropped("neighbor-unresolved", dropped)
        log.info(
            "neighbor %s: resolution failed after %d probes, %d packets dropped",
            ip_str(e.ip),
            e.probes,
            dropped,
        )
        del self._entries[e.ip]

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self.config.max_entries:
            return
        # Evict the least recently used non-permanent entry (Linux forced GC does similar).
        victims = [
            e for e in self._entries.values()
            if e.state is not NeighborState.PERMANENT and e.ip not in self._pins
        ]
        if not victims:
            return
        victim = min(victims, key=lambda e: e.used)
        self.remove(victim.ip)
        self.counters.evicted += 1
