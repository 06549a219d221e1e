"""The host TCP/IP stack: one interface, one IPv4 address, sans-IO (a ``vnic.node.FrameNode``).

Theory of operation
-------------------
``receive_frame`` walks the layers top-down and either hands the packet to a protocol or drops
it with a reason counted in :class:`StackCounters` (``counters.drops[reason]``).  Nothing in it
ever raises: codec failures arrive as ``DecodeError`` and are counted under their reason; any
other exception (a bug) is logged and counted as ``internal-error``.

- Ethernet: frames for our MAC or broadcast.  VLAN-tagged frames are dropped unless the stack
  was configured with that VLAN (then untagged frames are dropped and output is tagged).
- ARP: :class:`tcpip.neighbor.NeighborCache` learns, answers and resolves.
- IPv4: header checksum, destination = our address, valid source (RFC 1122 section 3.2.1.3).
  Fragments go to :class:`tcpip.reassembly.Reassembler` (RFC 1122 section 3.3.2: a host MUST
  reassemble); a completed datagram continues exactly as an unfragmented one would.  Its timer
  runs in ``poll``/``next_deadline`` like the neighbor cache's; a datagram that times out after
  its fragment zero arrived gets an ICMP Time Exceeded, code 1 (RFC 792, RFC 1122 3.3.2).
  Datagrams with options are counted and dropped.  The stack itself never fragments: DF is set
  on everything it sends (RFC 1191).
- ICMP: echo requests are answered (RFC 792, RFC 1122 section 3.2.2.6); the rest is counted.
- TCP: demultiplexed by 4-tuple in :meth:`HostStack._deliver_tcp` (the one place a later
  offload layer has to intercept) to ``tcpip.tcp.TcpConnection`` objects, listeners create
  connections from SYNs, everything else gets the RFC 9293 section 3.10.7.1 reset.

``poll(now)`` runs the application scheduler, then asks every connection that *may* have
output (it received a segment, a timer of it is due, it was just created, or someone called
:meth:`wake` after using its API) for segments, wraps them in IPv4 and Ethernet (the next hop
resolved through the neighbor cache, the gateway for off-link destinations) and returns the
frames.  Idle connections cost nothing per poll: their deadlines sit in a heap.

IPv4 identification values come from the lower half 0x0000-0x7FFF; the upper half belongs to
the offload target (chimney reference T.1), so the two never collide on one wire.
"""

from __future__ import annotations

import errno
import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcpip.addr import BROADCAST_MAC, four_tuple, ip_bytes, ip_str
from tcpip.aio import Scheduler
from tcpip.arp import parse_arp
from tcpip.errors import DecodeError
from tcpip.ethernet import (
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IPV4,
    VlanTag,
    build_ethernet,
    parse_ethernet,
)
from tcpip.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_TIME_EXCEEDED,
    build_icmp,
    parse_icmp,
)
from tcpip.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, Ipv4Packet, build_ipv4, parse_ipv4
from tcpip.neighbor import NeighborCache, NeighborConfig
from tcpip.reassembly import Expired, Reassembler, ReassemblyConfig
from tcpip.seq import seq_add
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

if TYPE_CHECKING:
    from tcpip.tcp import TcpConfig, TcpConnection

__all__ = ["HostStack", "StackCounters"]

log = logging.getLogger(__name__)

ConnKey = tuple[bytes, int, int]  # (remote IP, remote port, local port); the local IP is ours
# A parked (offloaded) connection's segment handler: (segment, source IP, destination IP, now).
ParkedHandler = Callable[[TcpSegment, bytes, bytes, float], None]

# RFC 6335 section 6 suggests 49152-65535; Linux uses net.ipv4.ip_local_port_range 32768-60999.
EPHEMERAL_PORTS = (32768, 60999)
IP_ID_MASK = 0x7FFF  # the host's half of the identification space (reference T.1)
_MAX_POLL_ROUNDS = 8  # scheduler <-> connections ping-pong inside one poll()
_RST_ACK = TcpFlags.RST | TcpFlags.ACK
_ICMP_FRAGMENT_REASSEMBLY_TIME_EXCEEDED = 1  # RFC 792, Time Exceeded Message, code 1
# RFC 792 / RFC 1122 section 3.2.2: ICMP error types (no ICMP error is sent about one)
_ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))


def _engine() -> Any:
    """The TCP engine module, imported on first use (the L2/L3 paths work without it)."""
    from tcpip import tcp

    return tcp


@dataclass(slots=True)
class StackCounters:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    arp_in: int = 0
    ipv4_in: int = 0
    ipv4_out: int = 0
    icmp_in: int = 0
    icmp_echo_requests: int = 0
    icmp_echo_replies: int = 0
    icmp_time_exceeded_out: int = 0  # reassembly timeouts reported to the source
    ip_fragments_in: int = 0  # fragments for us handed to the reassembler
    ip_reassembled: int = 0  # datagrams it completed (then counted like any other datagram)
    tcp_in: int = 0
    tcp_out: int = 0
    rst_out: int = 0  # resets the stack sent for unknown connections / closed ports
    connections_opened: int = 0
    connections_accepted: int = 0
    connections_closed: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    @property
    def total_drops(self) -> int:
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain data for reports and the CLI (``drops`` as a sorted dict)."""
        out: dict[str, Any] = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name != "drops"
        }
        out["drops"] = dict(sorted(self.drops.items()))
        return out


@dataclass(slots=True)
class _Listener:
    port: int
    on_accept: Callable[[TcpConnection], None]
    backlog: int
    embryonic: int = 0


class HostStack:
    """A host with one Ethernet interface and one IPv4 address.  See the module docstring."""

    def __init__(
        self,
        mac: bytes,
        ip: bytes,
        prefix_len: int,
        *,
        gateway: bytes | None = None,
        tcp_config: TcpConfig | None = None,
        rng: random.Random | None = None,
        name: str = "host",
        vlan_id: int | None = None,
        neighbor_config: NeighborConfig | None = None,
        ephemeral_ports: tuple[int, int] = EPHEMERAL_PORTS,
        syn_backlog: int = 4096,
        reassembly_config: ReassemblyConfig | None = None,
    ) -> None:
        """The first keyword arguments are those of docs/internals.md; the rest tune the stack:

        ``vlan_id``: accept only frames tagged with this 802.1Q VLAN and tag our output
        (None: untagged only).  ``neighbor_config``: ARP cache timers and bounds.
        ``ephemeral_ports``: the inclusive local port range for :meth:`connect`.
        ``syn_backlog``: default bound on embryonic connections per listener.
        ``reassembly_config``: IPv4 reassembly timeout and limits (:mod:`tcpip.reassembly`).
        """
        if not 0 <= prefix_len <= 32:
            raise ValueError(f"prefix length {prefix_len}")
        self.name = name
        self.mac = mac
        self.ip = ip_bytes(ip)
        self.prefix_len = prefix_len
        self.gateway = ip_bytes(gateway) if gateway is not None else None
        self._tcp_config = tcp_config
        self.rng = rng if rng is not None else random.Random()
        self.vlan_id = vlan_id
        self._vlan_tags = (VlanTag(ETH_P_8021Q, 0, False, vlan_id),) if vlan_id is not None else ()
        self.ephemeral_ports = ephemeral_ports
        self.syn_backlog = syn_backlog
        mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF
        self._mask = mask
        self._net = int.from_bytes(self.ip, "big") & mask
        self._subnet_broadcast = (self._net | (~mask & 0xFFFFFFFF)).to_bytes(4, "big")
        self.counters = StackCounters()
        self.neighbors = NeighborCache(mac, self.ip, neighbor_config, on_drop=self.counters.drop)
        self.reassembly = Reassembler(reassembly_config, on_drop=self.counters.drop, name=name)
        self.scheduler = Scheduler()
        self._conns: dict[ConnKey, TcpConnection] = {}
        self._keys: dict[int, ConnKey] = {}  # id(conn) -> key (the engine may be unhashable)
        self._listeners: dict[int, _Listener] = {}
        self._embryonic: dict[ConnKey, _Listener] = {}
        self._dirty: dict[ConnKey, None] = {}  # insertion-ordered set: deterministic replays
        # connections that used their burst budget (TcpConfig.burst_segments) in this poll():
        # serviced again only in the next one, after the loop wrote this poll's frames
        self._deferred: dict[ConnKey, None] = {}
        # Offload support (tcpip.offload): stable per-connection socket records that streams
        # hold, connections parked while the chimney owns them, and services polled with us.
        self._sockets: dict[ConnKey, Any] = {}
        self._parked: dict[ConnKey, ParkedHandler] = {}
        self._services: list[Any] = []
        self._deadlines: dict[ConnKey, float] = {}
        self._timers: list[tuple[float, int, ConnKey]] = []
        self._timer_seq = 0
        self._tx: list[bytes] = []
        self._ip_id = self.rng.randrange(IP_ID_MASK + 1)
        self._now = 0.0

    # ---- configuration and introspection --------------------------------------------------

    @property
    def tcp_config(self) -> TcpConfig:
        if self._tcp_config is None:
            self._tcp_config = _engine().TcpConfig()
        return self._tcp_config

    @property
    def now(self) -> float:
        """The latest time the stack was given (receive_frame / poll / advance_clock)."""
        return self._now

    def advance_clock(self, now: float) -> None:
        """Move the stack's clock to ``now`` (never back) without doing any work: for a node
        that runs something before the stack's own poll in the same pass that may call into
        the stack (the NIC's indications: a NeighborReachabilityQuery is answered with the age
        of the host's entry *now*, T.7)."""
        if now > self._now:
            self._now = now

    def connections(self) -> Iterator[TcpConnection]:
        return iter(list(self._conns.values()))

    def connection_count(self) -> int:
        return len(self._conns)

    def four_tuple(self, conn: TcpConnection) -> tuple[bytes, int, bytes, int] | None:
        """``(local_ip, local_port, remote_ip, remote_port)`` of a connection of this stack."""
        key = self.connection_key(conn)
        if key is None:
            return None
        return (self.ip, key[2], key[0], key[1])

    def find_connection(
        self, remote_ip: bytes, remote_port: int, local_port: int
    ) -> TcpConnection | None:
        return self._conns.get((remote_ip, remote_port, local_port))

    # ---- the application API --------------------------------------------------------------

    def connect(
        self,
        remote_ip: bytes | str,
        remote_port: int,
        local_port: int | None = None,
        *,
        now: float | None = None,
    ) -> TcpConnection:
        """Active open (RFC 9293 section 3.10.1).  The SYN leaves with the next :meth:`poll`."""
        rip = ip_bytes(remote_ip)
        t = self._now if now is None else now
        if local_port is None:
            local_port = self._ephemeral_port(rip, remote_port)
        key = (rip, remote_port, local_port)
        if key in self._conns or key in self._parked:
            raise OSError(errno.EADDRINUSE, f"{four_tuple(self.ip, local_port, rip, remote_port)}")
        iss = self.rng.getrandbits(32)  # RFC 9293 section 3.4.1 / RFC 6528, from the seeded rng
        conn = _engine().TcpConnection.connect(
            self.tcp_config, self.ip, local_port, rip, remote_port, iss, t
        )
        self._add(key, conn)
        self.counters.connections_opened += 1
        log.debug("%s: connect %s", self.name, four_tuple(self.ip, local_port, rip, remote_port))
        return conn

    def listen(
        self,
        port: int,
        on_accept: Callable[[TcpConnection], None],
        backlog: int | None = None,
    ) -> None:
        """Passive open on ``port``.  ``on_accept(conn)`` is called once a connection created
        from a SYN to this port is synchronized (left SYN-RECEIVED); embryonic connections
        beyond ``backlog`` are refused by dropping the SYN."""
        if port in self._listeners:
            raise OSError(errno.EADDRINUSE, f"port {port} already listening")
        self._listeners[port] = _Listener(port, on_accept, backlog or self.syn_backlog)
        log.info("%s: listening on %s:%d", self.name, ip_str(self.ip), port)

    def unlisten(self, port: int) -> None:
        if self._listeners.pop(port, None) is not None:
            log.info("%s: stopped listening on %s:%d", self.name, ip_str(self.ip), port)

    def wake(self, conn: TcpConnection) -> None:
        """Tell the stack that ``conn`` may have output (call after send/close/abort/receive
        from outside the streams API, which calls it for you)."""
        key = self._keys.get(id(conn))
        if key is None:
            key = getattr(conn, "key", None)  # a tcpip.offload_socket.TcpSocket
        if key is not None and key in self._conns:
            self._dirty[key] = None
        self.scheduler.notify(conn)
        if key is not None:
            self._notify(key, self._conns.get(key))

    # ---- offload support (tcpip.offload) ----------------------------------------------------

    def socket(self, conn: Any) -> Any:
        """The stable per-connection record (:class:`tcpip.offload_socket.TcpSocket`) that
        applications (the streams) hold: it routes their calls to the host connection or, while
        the connection is offloaded, to the chimney.  Created on first use."""
        from tcpip.offload_socket import TcpSocket

        if isinstance(conn, TcpSocket):
            return conn
        key = self._keys.get(id(conn))
        if key is None:
            raise KeyError(f"{conn!r} is not a connection of {self.name}")
        sock = self._sockets.get(key)
        if sock is None:
            sock = self._sockets[key] = TcpSocket(self, conn, key)
        return sock

    def socket_for_key(self, key: ConnKey) -> Any | None:
        return self._sockets.get(key)

    def connection_key(self, conn: Any) -> ConnKey | None:
        key = self._keys.get(id(conn))
        return key if key is not None else getattr(conn, "key", None)

    def detach(self, conn: TcpConnection, on_segment: ParkedHandler) -> ConnKey:
        """Take ``conn`` out of the demultiplexer while the chimney owns it: its 4-tuple stays
        reserved and segments for it go to ``on_segment`` (reference c.3: forwarded, or buffered
        during a terminate).  Its timers stop; the stable socket record stays."""
        key = self._keys.pop(id(conn))
        del self._conns[key]
        self._deadlines.pop(key, None)
        self._dirty.pop(key, None)
        self._deferred.pop(key, None)
        self._parked[key] = on_segment
        return key

    def attach(self, conn: TcpConnection, key: ConnKey) -> None:
        """Put ``conn`` (the detached one, or one rebuilt with ``TcpConnection.from_snapshot``)
        back under ``key``.  It is polled at once when it has something to do now (output
        pending, a timer due); otherwise its earliest timer is registered (an idle connection
        costs nothing until then: 10,000 resumed from one terminate tree are not all polled)."""
        self._parked.pop(key, None)
        self._conns[key] = conn
        self._keys[id(conn)] = key
        d = conn.next_deadline()
        if d is not None:
            now = self._now
            cnow = conn._now
            if d <= (cnow if cnow > now else now):
                self._dirty[key] = None
            else:
                self._deadlines[key] = d
                self._timer_seq += 1
                heapq.heappush(self._timers, (d, self._timer_seq, key))
        self._notify(key, conn)

    def release(self, key: ConnKey) -> None:
        """Forget a parked connection that will not come back (lost, reset, closed offloaded)."""
        if self._parked.pop(key, None) is not None:
            self.counters.connections_closed += 1
        sock = self._sockets.pop(key, None)
        if sock is not None:
            self.scheduler.notify(sock)

    def is_parked(self, key: ConnKey) -> bool:
        return key in self._parked

    def deliver_tcp(self, seg: TcpSegment, src_ip: bytes, dst_ip: bytes, now: float) -> None:
        """Process a segment as if it had just arrived (segments buffered during a terminate,
        processed after the resume, reference c.3)."""
        self._now = now
        self._deliver_tcp(seg, src_ip, dst_ip, now)

    def transmit(self, segments: list[TcpSegment], remote_ip: bytes, now: float) -> None:
        """Send segments a connection produced outside ``poll`` (e.g. ``flush_ack``)."""
        for seg in segments:
            self._send_tcp(seg, remote_ip, now)

    def next_hop(self, dst: bytes) -> bytes | None:
        """The next hop towards ``dst``: itself on link, else the gateway (None: no route)."""
        if self._on_link(dst):
            return dst
        return self.gateway

    def add_service(self, service: Any) -> None:
        """Poll ``service`` with the stack: ``service.poll(now)`` runs at the start of every
        :meth:`poll`, ``service.next_deadline()`` joins :meth:`next_deadline`."""
        if service not in self._services:
            self._services.append(service)

    def _notify(self, key: ConnKey, conn: Any) -> None:
        if conn is not None:
            self.scheduler.notify(conn)
        sock = self._sockets.get(key)
        if sock is not None:
            self.scheduler.notify(sock)

    # ---- FrameNode ------------------------------------------------------------------------

    def receive_frame(self, frame: bytes, now: float) -> None:
        self._now = now
        c = self.counters
        c.frames_in += 1
        c.bytes_in += len(frame)
        try:
            self._receive(memoryview(frame), now)
        except DecodeError as exc:
            c.drops[exc.reason] += 1
        except Exception:
            # A bug, never the peer's fault to crash us: count it, keep the stack alive.
            c.drops["internal-error"] += 1
            log.exception("%s: internal error on a received frame", self.name)

    def poll(self, now: float) -> list[bytes]:
        self._now = now
        if self._deferred:
            self._dirty.update(self._deferred)
            self._deferred = {}
        for service in self._services:
            service.poll(now)
        for _ in range(_MAX_POLL_ROUNDS):
            self.scheduler.run_ready(now)
            self._collect_due_timers(now)
            if not self._dirty:
                break
            self._service(now)
        for expired in self.reassembly.poll(now):
            self._reassembly_timed_out(expired, now)
        for mac, ethertype, payload in self.neighbors.poll(now):
            self._tx.append(build_ethernet(mac, self.mac, ethertype, payload, self._vlan_tags))
        out, self._tx = self._tx, []
        if out:
            c = self.counters
            c.frames_out += len(out)
            c.bytes_out += sum(len(f) for f in out)
        return out

    def next_deadline(self) -> float | None:
        if self._tx or self._dirty or self._deferred:
            return self._now
        best: float | None = None
        timers = self._timers
        while timers and self._deadlines.get(timers[0][2]) != timers[0][0]:
            heapq.heappop(timers)  # stale: the connection has a newer deadline or is gone
        if timers:
            best = timers[0][0]
        for d in (
            self.neighbors.next_deadline(),
            self.scheduler.next_deadline(),
            self.reassembly.next_deadline(),
        ):
            if d is not None and (best is None or d < best):
                best = d
        for service in self._services:
            d = service.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    # ---- receive path ---------------------------------------------------------------------

    def _receive(self, frame: memoryview, now: float) -> None:
        c = self.counters
        eth = parse_ethernet(frame)
        if eth.vlan_tags:
            if self.vlan_id is None or len(eth.vlan_tags) != 1 or eth.vlan_id != self.vlan_id:
                c.drops["vlan-tagged"] += 1
                return
        elif self.vlan_id is not None:
            c.drops["vlan-untagged"] += 1
            return
        if eth.src == self.mac:
            c.drops["mac-own-source"] += 1  # our own frame looped back (or a MAC clash)
            return
        l2_broadcast = False
        if eth.dst != self.mac:
            if eth.dst == BROADCAST_MAC:
                l2_broadcast = True
            elif eth.dst[0] & 1:
                c.drops["mac-multicast"] += 1
                return
            else:
                c.drops["mac-not-ours"] += 1
                return
        if eth.ethertype == ETH_P_IPV4:
            self._receive_ipv4(eth.src, eth.payload, l2_broadcast, now)
        elif eth.ethertype == ETH_P_ARP:
            arp = parse_arp(eth.payload)
            c.arp_in += 1
            self.neighbors.receive_arp(arp, now)
        else:
            c.drops["ethertype-unsupported"] += 1

    def _receive_ipv4(
        self, src_mac: bytes, payload: memoryview, l2_broadcast: bool, now: float
    ) -> None:
        c = self.counters
        ip = parse_ipv4(payload)
        c.ipv4_in += 1
        dst = ip.dst
        if dst != self.ip:
            if dst == b"\xff\xff\xff\xff" or dst == self._subnet_broadcast:
                c.drops["ip-broadcast"] += 1  # no broadcast services (no UDP)
            elif 224 <= dst[0] <= 239:
                c.drops["ip-multicast"] += 1
            else:
                c.drops["ip-not-ours"] += 1  # a host does not forward (RFC 1122 3.3.1.1)
            return
        if l2_broadcast:
            # RFC 1122 section 3.3.6: a unicast datagram received as a link-layer broadcast
            # SHOULD be silently discarded.
            c.drops["ip-unicast-in-l2-broadcast"] += 1
            return
        src = ip.src
        if not self._valid_source(src):
            c.drops["ip-bad-source"] += 1
            return
        if ip.is_fragment:
            # RFC 1122 section 3.3.2: a host MUST reassemble.  The whole datagram goes on
            # through the same checks and demultiplexing as an unfragmented one.
            c.ip_fragments_in += 1
            whole = self.reassembly.add(ip, now)
            if whole is None:
                return
            c.ip_reassembled += 1
            ip = whole
        if ip.options:
            c.drops["ip-options"] += 1
            return
        if self._on_link(src):
            self.neighbors.confirm(src, src_mac, now)
        proto = ip.protocol
        if proto == IPPROTO_TCP:
            seg = parse_tcp(ip.payload, src, dst)
            c.tcp_in += 1
            self._deliver_tcp(seg, src, dst, now)
        elif proto == IPPROTO_ICMP:
            self._receive_icmp(ip, now)
        else:
            # RFC 1122 section 3.2.2.1 suggests a protocol-unreachable; we only count.
            c.drops["ip-unknown-protocol"] += 1

    def _reassembly_timed_out(self, expired: Expired, now: float) -> None:
        """RFC 1122 section 3.3.2: a datagram whose reassembly timed out after fragment zero
        arrived gets an ICMP Time Exceeded (type 11, code 1) to its source (RFC 792: unused
        word, then the internet header and the first 64 bits of the original data).  Never
        about an ICMP error (RFC 1122 section 3.2.2)."""
        first = expired.first
        if not self.reassembly.config.time_exceeded or first is None:
            return
        if first.protocol == IPPROTO_ICMP and (
            not first.payload or first.payload[0] in _ICMP_ERROR_TYPES
        ):
            return
        msg = build_icmp(
            ICMP_TIME_EXCEEDED, _ICMP_FRAGMENT_REASSEMBLY_TIME_EXCEEDED, bytes(4), expired.quote
        )
        self.counters.icmp_time_exceeded_out += 1
        self._send_ip(first.src, IPPROTO_ICMP, msg, now)

    def _valid_source(self, src: bytes) -> bool:
        """RFC 1122 section 3.2.1.3: discard datagrams from 0.0.0.0, broadcast, multicast,
        class E, loopback, or our own address."""
        first = src[0]
        if first == 0 or first == 127 or first >= 224:
            return False
        return src != self.ip and src != self._subnet_broadcast

    def _receive_icmp(self, ip: Ipv4Packet, now: float) -> None:
        c = self.counters
        msg = parse_icmp(ip.payload)
        c.icmp_in += 1
        if msg.type == ICMP_ECHO_REQUEST:
            c.icmp_echo_requests += 1
            # RFC 792 "Echo or Echo Reply Message": swap the addresses, type 0, same identifier,
            # sequence and data (RFC 1122 section 3.2.2.6: MUST return the same data).
            reply = build_icmp(ICMP_ECHO_REPLY, 0, msg.rest, msg.payload)
            self._send_ip(ip.src, IPPROTO_ICMP, reply, now)
            c.icmp_echo_replies += 1
        else:
            c.drops["icmp-unhandled"] += 1

    def _deliver_tcp(self, seg: TcpSegment, src_ip: bytes, dst_ip: bytes, now: float) -> None:
        """Hand a checksummed segment for our address to its connection, a listener, or answer
        it with a reset.  The single TCP demultiplexing point (an offload layer intercepts
        here)."""
        key = (src_ip, seg.src_port, seg.dst_port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.on_segment(seg, now)
            self._dirty[key] = None
            self._notify(key, conn)
            listener = self._embryonic.get(key)
            if listener is not None:
                self._check_accepted(key, conn, listener)
            return
        parked = self._parked.get(key)
        if parked is not None:
            parked(seg, src_ip, dst_ip, now)  # the chimney owns this connection (c.3)
            return
        flags = seg.flags
        listener = self._listeners.get(seg.dst_port)
        if listener is None:
            self._reset_for(seg, src_ip, now, "tcp-closed-port")
            return
        # RFC 9293 section 3.10.7.2, LISTEN state.
        if flags & TcpFlags.RST:
            self.counters.drops["tcp-listen-rst"] += 1  # first: an incoming RST is ignored
            return
        if flags & TcpFlags.ACK:
            self._reset_for(seg, src_ip, now, None)  # second: any ACK gets <SEQ=SEG.ACK><RST>
            return
        if not flags & TcpFlags.SYN:
            self.counters.drops["tcp-listen-no-syn"] += 1  # fourth: drop anything else
            return
        if flags & TcpFlags.FIN:
            # SYN+FIN is a scan, not an open: Linux discards it in LISTEN, and so do we.
            self.counters.drops["tcp-listen-syn-fin"] += 1
            return
        if listener.embryonic >= listener.backlog:
            self.counters.drops["tcp-syn-backlog-full"] += 1
            return
        iss = self.rng.getrandbits(32)
        conn = _engine().TcpConnection.accept(
            self.tcp_config, dst_ip, seg.dst_port, src_ip, seg.src_port, iss, seg, now
        )
        self._add(key, conn)
        listener.embryonic += 1
        self._embryonic[key] = listener
        log.debug(
            "%s: SYN for listener, new connection %s",
            self.name,
            four_tuple(dst_ip, seg.dst_port, src_ip, seg.src_port),
        )
        self._check_accepted(key, conn, listener)

    def _reset_for(self, seg: TcpSegment, src_ip: bytes, now: float, drop: str | None) -> None:
        """RFC 9293 section 3.10.7.1 (CLOSED): reply to anything but a RST with a reset."""
        flags = seg.flags
        if flags & TcpFlags.RST:
            self.counters.drops["tcp-rst-for-unknown"] += 1  # never answer a RST
            return
        if drop is not None:
            self.counters.drops[drop] += 1
        if flags & TcpFlags.ACK:
            rst = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, TcpFlags.RST, 0, TcpOptions())
        else:
            rst = TcpSegment(
                seg.dst_port,
                seg.src_port,
                0,
                seq_add(seg.seq, seg.seg_len),
                _RST_ACK,
                0,
                TcpOptions(),
            )
        self.counters.rst_out += 1
        self._send_tcp(rst, src_ip, now)

    def _check_accepted(self, key: ConnKey, conn: TcpConnection, listener: _Listener) -> None:
        name = conn.state.name
        if name == "SYN_RECEIVED" or name == "LISTEN":
            return
        del self._embryonic[key]
        listener.embryonic -= 1
        if conn.closed or name == "CLOSED":
            return
        self.counters.connections_accepted += 1
        log.debug("%s: accepted %s", self.name, four_tuple(self.ip, key[2], key[0], key[1]))
        if self._listeners.get(listener.port) is not listener:
            # The listener closed while the handshake ran: nobody will ever accept this
            # connection, so reset it (what Linux does to its accept queue on close()).
            self.counters.drops["tcp-listener-gone"] += 1
            conn.abort()
            self._dirty[key] = None
            return
        try:
            listener.on_accept(conn)
        except Exception:
            self.counters.drops["accept-callback-error"] += 1
            log.exception("%s: on_accept for port %d raised", self.name, listener.port)

    # ---- connection bookkeeping and output -----------------------------------------------

    def _add(self, key: ConnKey, conn: TcpConnection) -> None:
        self._conns[key] = conn
        self._keys[id(conn)] = key
        self._dirty[key] = None

    def _remove(self, key: ConnKey, conn: TcpConnection) -> None:
        del self._conns[key]
        self._keys.pop(id(conn), None)
        self._deadlines.pop(key, None)
        self._dirty.pop(key, None)
        self._sockets.pop(key, None)
        listener = self._embryonic.pop(key, None)
        if listener is not None:
            listener.embryonic -= 1
        self.counters.connections_closed += 1
        log.debug(
            "%s: removed closed connection %s",
            self.name,
            four_tuple(self.ip, key[2], key[0], key[1]),
        )

    def _collect_due_timers(self, now: float) -> None:
        timers = self._timers
        deadlines = self._deadlines
        while timers and timers[0][0] <= now:
            d, _, key = heapq.heappop(timers)
            if deadlines.get(key) == d:
                del deadlines[key]
                self._dirty[key] = None

    def _service(self, now: float) -> None:
        dirty, self._dirty = self._dirty, {}
        deferred = self._deferred
        for key in dirty:
            if key in deferred:
                continue  # budget used up in this poll(); the next one goes on
            conn = self._conns.get(key)
            if conn is None:
                continue
            try:
                segments = conn.poll(now)
            except Exception:
                # An engine bug must not take the whole stack down: drop this connection.
                self.counters.drops["internal-error"] += 1
                log.exception("%s: connection %s failed in poll()", self.name, key)
                self._notify(key, conn)
                self._remove(key, conn)
                continue
            for seg in segments:
                self._send_tcp(seg, key[0], now)
            if conn._dirty:
                deferred[key] = None  # stopped by its burst budget (TcpConfig.burst_segments)
            self._notify(key, conn)
            if conn.closed:
                self._remove(key, conn)
                continue
            listener = self._embryonic.get(key)
            if listener is not None:
                self._check_accepted(key, conn, listener)
            d = conn.next_deadline()
            if d is None:
                self._deadlines.pop(key, None)
            elif self._deadlines.get(key) != d:
                self._deadlines[key] = d
                self._timer_seq += 1
                heapq.heappush(self._timers, (d, self._timer_seq, key))

    def _send_tcp(self, seg: TcpSegment, remote_ip: bytes, now: float) -> None:
        self.counters.tcp_out += 1
        self._send_ip(remote_ip, IPPROTO_TCP, build_tcp(seg, self.ip, remote_ip), now)

    def _send_ip(self, dst: bytes, protocol: int, payload: bytes, now: float) -> None:
        ident = self._ip_id
        self._ip_id = (ident + 1) & IP_ID_MASK
        packet = build_ipv4(self.ip, dst, protocol, payload, identification=ident)
        if self._on_link(dst):
            next_hop = dst
        elif self.gateway is not None:
            next_hop = self.gateway
        else:
            self.counters.drops["no-route"] += 1
            return
        self.counters.ipv4_out += 1
        mac = self.neighbors.resolve(next_hop, now)
        if mac is None:
            self.neighbors.hold(next_hop, ETH_P_IPV4, packet, now)
        else:
            self._tx.append(build_ethernet(mac, self.mac, ETH_P_IPV4, packet, self._vlan_tags))

    def _on_link(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self._mask) == self._net

    def _ephemeral_port(self, remote_ip: bytes, remote_port: int) -> int:
        # RFC 6056 section 3.3.1 (Algorithm 1): a random start, then the next free port.
        low, high = self.ephemeral_ports
        span = high - low + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = low + (start + i) % span
            key = (remote_ip, remote_port, port)
            if port not in self._listeners and key not in self._conns and key not in self._parked:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port")
