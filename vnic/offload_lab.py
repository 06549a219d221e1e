"""A host with the emulated chimney NIC, ready for any wire: the one place that wires
:class:`~tcpip.stack.HostStack` + :class:`~tcpip.offload.ChimneyHost` + :class:`ndis.Ndis`
(with a :class:`~ndis.checker.ConformanceChecker`) + :class:`~offload_target.miniport.OffloadTarget`
+ :class:`~offload_target.nic.NicNode`.

Tests, scenarios and ``vnic bench offload`` build the host side with :func:`build_offload_host`
and attach ``OffloadHost.node`` to a wire: one side of a :class:`vnic.simwire.SimWire` (virtual
clock) or the node of a :class:`vnic.loop.RunLoop` on a lab's TAP (real clock, kernel peer).

:class:`WireWatch` wraps the node (it is itself a FrameNode) and records, per TCP connection,
what crossed the wire on the host's side: frames the offload target built (IPv4 identification
in the upper half 0x8000-0xFFFF, reference T.1) versus frames the host stack built (lower half),
RSTs either way, retransmitted data, the peer's zero-window advertisements and the target's
probes while the peer's window is closed.  It parses headers with ``struct`` only (cheap enough
for bulk transfers over TAP).  A fragmented segment (the ``fragment`` wire fault) is seen through
its first fragment, the only one with the TCP header (its data count is that fragment's); later
fragments are not parsed.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from typing import Any

from ndis import ConformanceChecker, Ndis
from ndis.state import NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
from offload_target import table as table_mod
from offload_target.miniport import OffloadTarget
from offload_target.nic import NicNode
from tcpip.offload import ChimneyHost, ChimneyPolicy
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.seq import seq_gt, seq_lt
from tcpip.stack import HostStack
from tcpip.tcp import TcpConfig

__all__ = [
    "OffloadHost",
    "build_offload_host",
    "has_datapath",
    "WireWatch",
    "ConnWatch",
    "TARGET_IP_ID_MIN",
]

TARGET_IP_ID_MIN = 0x8000  # T.1: the target's half of the IPv4 identification space

RunUntil = Callable[[Callable[[], bool], float], bool]


def has_datapath() -> bool:
    """True when the C data path is built (otherwise the target's capacity is 0)."""
    return bool(getattr(table_mod, "HAS_DATAPATH", False))


@dataclasses.dataclass(eq=False)
class OffloadHost:
    """The host side of a chimney lab.  ``node`` is the FrameNode to put on the wire."""

    stack: HostStack
    chimney: ChimneyHost
    ndis: Ndis
    checker: ConformanceChecker | None
    target: OffloadTarget
    nic: NicNode
    node: Any  # ``nic``, or a WireWatch around it

    @property
    def watch(self) -> WireWatch | None:
        return self.node if isinstance(self.node, WireWatch) else None

    # -- offload / upload, driven by any ``run_until(predicate, timeout) -> bool`` ------------------
    def offload(self, sock: TcpSocket, run_until: RunUntil, timeout: float = 5.0) -> bool:
        """Offload one connection and run until the initiate completed; True if offloaded."""
        if self.chimney.offload(sock) is None:
            return False
        run_until(lambda: sock.offload_state is not OffloadState.OFFLOADING, timeout)
        return sock.offload_state is OffloadState.OFFLOADED

    def upload(self, sock: TcpSocket, run_until: RunUntil, timeout: float = 5.0) -> bool:
        """Terminate one connection and run until it is back in the host; True if it is."""
        if not self.chimney.terminate(sock):
            return False
        run_until(lambda: sock.offload_state is OffloadState.IN_HOST, timeout)
        return sock.offload_state is OffloadState.IN_HOST

    def settle(self, run_until: RunUntil, timeout: float = 5.0) -> bool:
        return run_until(lambda: not self.ndis.has_pending() and not self.chimney.pending, timeout)


def build_offload_host(
    mac: bytes,
    ip: bytes,
    prefix_len: int,
    *,
    gateway: bytes | None = None,
    capacity: int = 1024,
    tcp_config: TcpConfig | None = None,
    rng: random.Random | None = None,
    policy: ChimneyPolicy | None = None,
    params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS | None = None,
    checker: bool | ConformanceChecker = True,
    strict: bool = True,
    watch: bool = True,
    ticks_per_second: int = 1000,
    moderate: bool = True,
    name: str = "host",
    tso_max: int = 0,
) -> OffloadHost:
    """HostStack + ChimneyHost bound through NDIS (checked) to an OffloadTarget, as one node.

    ``checker``: True = a new ConformanceChecker (``strict`` raises on the first violation),
    False = none, or a checker to use.  ``watch``: wrap the NIC node in a :class:`WireWatch`.
    ``moderate``: the target's interrupt moderation (data-path events of a batch of received
    frames become NDIS calls at the next poll, ``OffloadTarget(moderate=True)``).
    ``tso_max``: on a TAP with virtio-net offload (``Lab(tap_offload=True)``) the largest
    super-segment payload, for both the host stack (``TcpConfig.tso_max``, unless
    ``tcp_config`` sets one) and the target's data path (``OffloadTarget(tso_max=)``); 0 (the
    default; a wire of MTU frames) = MSS-sized frames on both.
    """
    if tso_max and not (tcp_config and tcp_config.tso_max):
        tcp_config = dataclasses.replace(tcp_config or TcpConfig(), tso_max=tso_max)
    stack = HostStack(bytes(mac), bytes(ip), prefix_len, gateway=gateway, tcp_config=tcp_config,
                      rng=rng if rng is not None else random.Random(1), name=name)
    chk: ConformanceChecker | None
    if isinstance(checker, ConformanceChecker):
        chk = checker
    else:
        chk = ConformanceChecker(strict=strict) if checker else None
    ndis = Ndis(checker=chk) if chk is not None else Ndis()
    target = OffloadTarget(capacity, mac=stack.mac, ticks_per_second=ticks_per_second,
                           name=f"{name}-target", moderate=moderate, tso_max=tso_max)
    miniport = ndis.register_miniport(target, capabilities=target.capabilities, name="target")
    if params is None:
        params = NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(TicksPerSecond=ticks_per_second)
    chimney = ChimneyHost(stack, policy=policy, params=params)
    chimney.bind(ndis, miniport)
    nic = NicNode(stack, target, ndis, mac=stack.mac)
    node: Any = WireWatch(nic) if watch else nic
    return OffloadHost(stack, chimney, ndis, chk, target, nic, node)


# ---------------------------------------------------------------------------------------------
# what crossed the wire

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


@dataclasses.dataclass
class ConnWatch:
    """Frames of one connection seen at the host's side of the wire (``out`` = to the peer)."""

    out_frames: int = 0
    out_from_target: int = 0  # IPv4 identification >= 0x8000 (T.1)
    out_from_host: int = 0
    out_data_bytes: int = 0
    out_data_bytes_from_target: int = 0
    out_retransmitted: int = 0  # data segments starting below the highest sequence sent
    out_retransmitted_by_target: int = 0
    out_fins: int = 0
    rst_out: int = 0
    in_frames: int = 0
    in_data_bytes: int = 0
    rst_in: int = 0
    in_zero_windows: int = 0  # segments from the peer advertising a zero window
    probes_from_target: int = 0  # target frames sent while the peer's window was zero
    peer_window_zero: bool = False
    snd_max: int | None = None  # highest sequence number sent + 1 (data)

    @property
    def rsts(self) -> int:
        return self.rst_in + self.rst_out


class WireWatch:
    """A transparent FrameNode wrapper recording TCP frames per ``(local_port, remote_port)``.

    ``offloaded_ports`` (optional predicate on the local port) is not needed: the IP
    identification tells who built a frame.  ``phase`` is a free label the caller may set
    (e.g. ``"offloaded"``); counters are also kept per phase in ``by_phase``.
    """

    def __init__(self, node: Any) -> None:
        self.node = node
        self.conns: dict[tuple[int, int], ConnWatch] = {}
        self.phase = ""
        self.by_phase: dict[tuple[str, tuple[int, int]], ConnWatch] = {}
        self.rst_frames: list[tuple[str, bytes]] = []  # ("out"/"in", frame)

    def __getattr__(self, name: str) -> Any:  # the wrapped node's attributes (host, target ...)
        return getattr(self.node, name)

    def conn(self, local_port: int, remote_port: int | None = None) -> ConnWatch:
        """The record of a connection (by local port alone if it is unique)."""
        if remote_port is not None:
            return self.conns.setdefault((local_port, remote_port), ConnWatch())
        hits = [c for (lp, _rp), c in self.conns.items() if lp == local_port]
        if len(hits) == 1:
            return hits[0]
        return self.conns.setdefault((local_port, -1), ConnWatch()) if not hits else hits[0]

    def phase_conn(self, phase: str, local_port: int) -> ConnWatch:
        hits = [c for (ph, (lp, _rp)), c in self.by_phase.items() if ph == phase and lp == local_port]
        return hits[0] if hits else ConnWatch()

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.conns.values())

    # -- FrameNode -------------------------------------------------------------------------------
    def receive_frame(self, frame: bytes, now: float) -> None:
        self._record(frame, outbound=False)
        self.node.receive_frame(frame, now)

    def poll(self, now: float) -> list[bytes]:
        out = self.node.poll(now)
        for f in out:
            self._record(f, outbound=True)
        return out  # type: ignore[no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[no-any-return]

    # -- parsing (headers only) -----------------------------------------------------------------
    def _record(self, frame: bytes, *, outbound: bool) -> None:
        if len(frame) < 54:
            return
        off = 14
        ethertype = (frame[12] << 8) | frame[13]
        if ethertype == 0x8100:
            ethertype = (frame[16] << 8) | frame[17]
            off = 18
        if ethertype != 0x0800:
            return
        vihl = frame[off]
        ihl = (vihl & 0x0F) * 4
        if frame[off + 9] != 6 or len(frame) < off + ihl + 20:
            return
        if ((frame[off + 6] << 8) | frame[off + 7]) & 0x1FFF:
            return  # a later IPv4 fragment: no TCP header in it
        total_len = (frame[off + 2] << 8) | frame[off + 3]
        ident = (frame[off + 4] << 8) | frame[off + 5]
        t = off + ihl
        sport, dport, seq, _ack, doff, flags, window = struct.unpack_from("!HHIIBBH", frame, t)
        hlen = (doff >> 4) * 4
        plen = max(0, total_len - ihl - hlen)
        key = (sport, dport) if outbound else (dport, sport)
        recs = [self.conns.setdefault(key, ConnWatch())]
        if self.phase:
            recs.append(self.by_phase.setdefault((self.phase, key), ConnWatch()))
        if flags & _RST:
            self.rst_frames.append(("out" if outbound else "in", bytes(frame[:80])))
        for c in recs:
            if outbound:
                self._out(c, ident, seq, flags, plen)
            else:
                c.in_frames += 1
                c.in_data_bytes += plen
                if flags & _RST:
                    c.rst_in += 1
                if flags & _ACK and not flags & (_SYN | _RST):
                    c.peer_window_zero = window == 0
                    if window == 0:
                        c.in_zero_windows += 1

    @staticmethod
    def _out(c: ConnWatch, ident: int, seq: int, flags: int, plen: int) -> None:
        c.out_frames += 1
        from_target = ident >= TARGET_IP_ID_MIN
        if from_target:
            c.out_from_target += 1
            c.out_data_bytes_from_target += plen
            if c.peer_window_zero:
                c.probes_from_target += 1
        else:
            c.out_from_host += 1
        c.out_data_bytes += plen
        if flags & _RST:
            c.rst_out += 1
        if flags & _FIN:
            c.out_fins += 1
        if plen:
            end = (seq + plen) & 0xFFFFFFFF
            probe = c.peer_window_zero and plen <= 1  # a window probe repeats its byte
            if c.snd_max is not None and seq_lt(seq, c.snd_max) and not probe:
                c.out_retransmitted += 1
                if from_target:
                    c.out_retransmitted_by_target += 1
            if c.snd_max is None or seq_gt(end, c.snd_max):
                c.snd_max = end
