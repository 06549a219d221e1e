"""The host side of the TCP chimney: offload live connections of a :class:`HostStack` to an
offload target through NDIS, keep serving their applications while offloaded, and resume them
in the host when they are handed back (reference sections a.2 - a.4, c.1 - c.5, d.1 - d.9).

Theory of operation
-------------------
:class:`ChimneyHost` is an :class:`ndis.Protocol` bound to a miniport with
``ndis.open_adapter`` (:meth:`ChimneyHost.bind`) and attached to one stack, whose ``poll`` it
joins as a service (deferred work: receive returns, uploads the target asked for, re-enabling
receive indications).  Every state operation is asynchronous: the run loop delivers the
completions with ``ndis.deliver_pending()``.

Per connection (4-tuple) the offload state is InHost -> Offloading -> Offloaded -> Uploading
-> InHost (c.1), logged one line per change.  Applications hold the stack's stable
:class:`~tcpip.offload_socket.TcpSocket`; while the connection is not in the host its engine is
an :class:`OffloadedConnection`, which turns writes into ``NdisOffloadTcpSend`` NBLs, serves
reads from receive indications and posted receives, and turns close/abort into
``NdisOffloadTcpDisconnect`` (graceful / abortive).

* offload: flush the host connection's output and owed ACK (T.4), export its TCB, convert it
  (:mod:`tcpip.offload_convert`), take it out of the stack's demultiplexer
  (``stack.detach``) and send a neighbor -> path -> TCP tree down.  Neighbor and path objects
  are shared by every connection with the same next hop / same addresses and reference
  counted (c.3); an already-offloaded one is linked, not offloaded again.
* while Offloading, segments the ordinary path delivers for the connection are held and
  forwarded after the offload completed (V16); while Offloaded they are forwarded at once
  with ``NdisOffloadTcpForward``; while Uploading they are held and processed by the host
  after the resume (c.3, d.3 step 3).
* terminate: only when no query/update is outstanding (V13); neighbor and path objects go in
  the same tree as their last dependents (V14).  ``ProtocolTerminateOffloadComplete`` rebuilds
  a ``TcpConnection`` with ``from_snapshot`` from the returned delegated state, the send data
  in ``NetBufferListChain`` (plus sends the target refused with UPLOAD_IN_PROGRESS) and
  ``BufferedData`` (delivered first, then returned with ``NdisOffloadTcpReceiveReturn``), puts
  it back under its 4-tuple (``stack.attach``) and processes the held segments.  A block
  Status of FAILURE means the connection is lost: the application sees ConnectionResetError.
* the target asks for uploads with ``TcpIndicateRetrieve`` (mandatory reasons always, optional
  ones per :attr:`ChimneyPolicy.upload_on_optional_reasons`), after ``TcpIndicateAbort`` (the
  host always uploads) and with ``NDIS_STATUS_UPLOAD_ALL`` (everything; no new offloads until
  ``NDIS_STATUS_OFFLOAD_RESUME``, d.8).
* neighbor reachability (T.7): a ``NeighborReachabilityQuery`` is answered with the age of the
  host's REACHABLE entry, or 0.  After a 0 the host queries the neighbor's NicReachabilityDelta
  ``delay_first_probe_time`` later (at once when its own entry is in DELAY): forward progress
  the NIC saw within ``reachable_time`` confirms the entry as of then; otherwise the entry is
  polled with unicast ARP, and if that goes unanswered the neighbor is invalidated (d.6), so
  every connection through it comes back; a failed NRD query uploads them (d.5).  An offloaded
  neighbor pins the host's entry (never garbage-collected while the NIC sends through it).

Conventions picked where the reference leaves a choice
------------------------------------------------------
* A forwarded segment (``NdisOffloadTcpForward``) is one NBL holding the Ethernet frame as it
  would have arrived (our MAC <- the neighbor's MAC, IPv4, TCP; the stack's VLAN tag if any).
* Receive indications are accepted up to :attr:`ChimneyPolicy.receive_limit` bytes buffered
  for the application; the rest is refused (PARTIALLY_ACCEPTED / NOT_ACCEPTED, a.4) and a
  zero-byte post re-enables indications once the application read (T.2).  The NBLs of an
  accepted indication are returned from the next ``poll``, never from inside the indication.
* Undelivered receive data goes down as ``BufferedData`` unless the peer's FIN was already
  received (then it stays in the socket so the EOF cannot overtake it).
* ``TcpIndicateSendBacklogChange`` (b.14) is counted and its value kept per connection
  (``status()``).  With :attr:`ChimneyPolicy.honour_send_backlog` the host hands down at most
  ``max(value, send_backlog_floor)`` bytes beyond the completed ones (never more than
  ``send_limit``); the rest stays in the application's stream (backpressure, in order) and
  goes down as sends complete, or to the resumed connection after an upload.  Before the
  first indication the floor is the limit.  The send data of the initiate is handed down
  whole (T.3: it is the sequence space from SndUna).
* After a local abortive disconnect or a ``TcpIndicateAbort`` the connection is uploaded to
  free the target's context but not rebuilt; a returned TIME_WAIT / CLOSED state ends the
  connection (the engine cannot import those states).  A lost connection (FAILURE) is not
  reset on the wire: the stack answers the peer's next segment with a RST (RFC 9293 3.10.7.1).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ndis.blocks import (
    NDIS_OFFLOAD_HANDLE,
    NET_BUFFER_LIST,
    OffloadBlockList,
    OffloadNode,
    add_dependents,
    chain_blocks,
    invalidate_tree,
    iter_blocks,
    iter_nbls,
    link_nbls,
    list_blocks,
    new_offload_block,
    query_tree,
    reference_block,
    terminate_connections,
    terminate_tree,
    update_tree,
)
from ndis.driver import NDIS_BIND_PARAMETERS, NDIS_STATUS_INDICATION, Protocol
from ndis.state import (
    INDICATE_OFFLOAD_EVENT,
    NDIS_DEVICE_POWER_STATE,
    NDIS_TCP_CONNECTION_OFFLOAD,
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    OID_PNP_SET_POWER,
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_DISCONNECT_GRACEFUL_CLOSE,
    TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_UPDATE_RCV_WND,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_DELEGATED,
    TCP_UPLOAD_REASON,
    OffloadLayer,
)
from ndis.status import OFFLOADED_STATUSES, NdisStatus, status_name
from tcpip.addr import ip_str, mac_str
from tcpip.ethernet import ETH_P_IPV4, build_ethernet
from tcpip.ipv4 import IPPROTO_TCP, build_ipv4
from tcpip.neighbor import NeighborEntry, NeighborState
from tcpip.offload_convert import (
    DEFAULT_TICKS_PER_SECOND,
    SEND_CHUNK,
    ConversionError,
    TcpCachedExtras,
    from_ticks,
    nbl_chain_bytes,
    neighbor_state,
    pad_mac,
    path_state,
    snapshot_from_delegated,
    tcp_cached_from_snapshot,
    tcp_state_from_snapshot,
    to_ticks,
)
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.tcb import EXPORTABLE_STATES, TcbSnapshot, TcpState
from tcpip.tcp import TcpConnection
from tcpip.tcp import logger as _tcp_logger
from tcpip.tcp_segment import TcpSegment, build_tcp

if TYPE_CHECKING:
    from ndis.ndis import NDIS_BINDING_HANDLE, NDIS_MINIPORT_HANDLE, Ndis
    from tcpip.stack import ConnKey, HostStack

__all__ = [
    "ChimneyHost",
    "ChimneyPolicy",
    "OffloadHandleInfo",
    "OffloadState",
    "OffloadedConnection",
    "MANDATORY_UPLOAD_REASONS",
]

log = logging.getLogger(__name__)

# b.14: the host must upload for these reasons; the others are optional.
MANDATORY_UPLOAD_REASONS = frozenset(
    {
        TCP_UPLOAD_REASON.ReceivedUrgentData,
        TCP_UPLOAD_REASON.TimeoutExpiration,
        TCP_UPLOAD_REASON.InvalidState,
        TCP_UPLOAD_REASON.UploadRequested,
        TCP_UPLOAD_REASON.HardwareFailure,
    }
)
_TRANSITIONAL = (OffloadState.OFFLOADING, OffloadState.UPLOADING)
# hoisted for the resume path (an Enum member lookup costs about 50 ns, per connection)
_IN_HOST = OffloadState.IN_HOST
_SUCCESS = NdisStatus.SUCCESS


@dataclass
class ChimneyPolicy:
    """Host choices the reference leaves open."""

    upload_on_optional_reasons: bool = True  # b.14: honour optional TcpIndicateRetrieve reasons
    send_chunk: int = SEND_CHUNK  # bytes per send NBL (initiate send data and app writes)
    post_receive_size: int = 0  # >0: keep one posted receive of this size (T.2); 0: indications
    receive_limit: int | None = None  # bytes buffered for the app (None: TcpConfig.receive_buffer)
    send_limit: int | None = None  # bytes outstanding at the target (None: TcpConfig.send_buffer)
    set_source_mac: bool = True  # b.8 DlSourceAddress = the stack's MAC (False: zero)
    path_mtu: int = 1500
    hand_down_buffered_data: bool = True  # initiate BufferedData (False: keep it in the socket)
    cached: TcpCachedExtras = field(default_factory=TcpCachedExtras)
    # b.13/b.14: keep at most max(the target's preferred send backlog, send_backlog_floor)
    # bytes outstanding at the target (and never more than send_limit).  Off by default: the
    # value is the target's preference ("preferred number of outstanding send bytes"), not a
    # limit the host must keep.  On, it costs the offloaded upload no throughput in
    # ``vnic bench offload`` (simulated wire, TAP, TAP with TSO: same figures either way).
    honour_send_backlog: bool = False
    send_backlog_floor: int = 64 * 1024  # the limit before the first indication, and below it


@dataclass(frozen=True)
class OffloadHandleInfo:
    """What :meth:`ChimneyHost.offload` started: the handles of the objects in the tree."""

    key: ConnKey
    name: str
    tcp: NDIS_OFFLOAD_HANDLE
    path: NDIS_OFFLOAD_HANDLE
    neighbor: NDIS_OFFLOAD_HANDLE


@dataclass(eq=False)
class _Shared:
    """A neighbor or path object shared by connections (c.3 reference counting)."""

    layer: OffloadLayer
    key: Any  # next-hop IP (neighbor) or (source, destination) (path)
    handle: NDIS_OFFLOAD_HANDLE
    node: OffloadNode
    parent: _Shared | None = None
    phase: str = "new"  # new / offloading / offloaded / terminating / gone
    state: Any = None  # the full state offloaded (Neighbor/PathOffloadState)
    update_pending: bool = False  # c.3: one update (or invalidate) at a time per object
    invalidated: bool = False  # d.6: never updated again; terminated with its dependents
    dependents: set[int] = field(default_factory=set)  # id() of live path _Shared / records
    # T.7, neighbors only: the host's follow-up of a NeighborReachabilityQuery it answered
    # with HRD 0 (or of its own entry in DELAY): query NRD, then confirm or probe
    followup_at: float | None = None  # when to query NRD (stack time)
    nrd_query_pending: bool = False  # one NRD query at a time
    probing: bool = False  # the host's entry is being polled with unicast ARP

    @property
    def label(self) -> str:
        return self.handle.label

    @property
    def busy(self) -> bool:
        """An update, invalidate or NRD query is outstanding: not terminated meanwhile."""
        return self.update_pending or self.nrd_query_pending


class OffloadedConnection:
    """The engine of a :class:`TcpSocket` while its connection is not in the host: the chimney
    I/O side of one offloaded connection (and the host's record of it)."""

    # (slots: a terminate tree of 10,000 connections frees 10,000 records at once)
    __slots__ = (
        "chimney", "sock", "key", "name", "host_conn", "base", "handle", "node", "path", "phase",
        "state", "_eof", "awaiting_buffered", "reset_received", "error", "_closed", "rbuf",
        "outstanding", "unsent", "sends_in_flight", "refused", "posts_in_flight",
        "close_requested", "close_done", "abort_requested", "aborted", "upload_wanted",
        "pending_ops", "update_pending", "held", "last_query", "query_callbacks", "send_backlog",
        "__weakref__",
    )

    def __init__(
        self,
        chimney: ChimneyHost,
        sock: TcpSocket,
        host_conn: Any,
        base: TcbSnapshot,
        handle: NDIS_OFFLOAD_HANDLE,
        path: _Shared,
    ) -> None:
        self.chimney = chimney
        self.sock = sock
        self.key = sock.key
        self.name = sock.name
        self.host_conn = host_conn  # the detached TcpConnection (used if the offload fails)
        self.base = base  # offload-time snapshot: const/cached state, ISS/IRS (b.19)
        self.handle = handle
        self.node = OffloadNode(OffloadLayer.TCP, handle, label=handle.label)
        self.path = path
        self.phase = OffloadState.OFFLOADING
        # what the application sees
        self.state: TcpState = base.state
        self._eof = base.fin_received
        self.awaiting_buffered = 0  # BufferedData bytes handed down, not yet delivered back
        self.reset_received = False
        self.error: str | None = None
        self._closed = False
        self.rbuf = bytearray()
        # send side
        self.outstanding = 0  # bytes handed to the target and not completed
        self.unsent: list[tuple[int, bytes]] = []  # (seqno, bytes) refused by the target
        self.sends_in_flight = 0
        # receive side
        self.refused = False  # an indication was (partly) refused: post to re-enable (T.2)
        self.posts_in_flight = 0
        # requests the host honours later
        self.close_requested = False
        self.close_done = False  # a graceful disconnect completed
        self.abort_requested = False
        self.aborted = False  # abortive disconnect done or RST indicated: never rebuilt
        self.upload_wanted = False
        self.pending_ops = 0  # outstanding query/update (V13)
        self.update_pending = False
        self.held: list[tuple[TcpSegment, bytes, bytes]] = []  # segments to forward / process
        self.last_query: TCP_OFFLOAD_STATE_DELEGATED | None = None
        self.query_callbacks: list[Callable[[TCP_OFFLOAD_STATE_DELEGATED | None], None]] = []
        self.send_backlog: int | None = None

    def __repr__(self) -> str:
        return f"<OffloadedConnection {self.name} {self.phase} {self.state}>"

    def on_segment(self, seg: TcpSegment, src: bytes, dst: bytes, now: float) -> None:
        """What the host stack does with a segment of this connection while it is not in the
        host (``HostStack.detach``): forward it to the target (V16: only once the offload
        completed), else hold it for the resumed connection (c.3).  (A method: a closure per
        connection would be four objects made at offload and freed at upload.)"""
        if self.phase is OffloadState.OFFLOADED:
            self.chimney._forward(self, seg, src, dst)
        else:
            self.chimney.counters["held_segments"] += 1
            self.held.append((seg, src, dst))

    # ---- the connection surface (tcpip.offload_socket) ----------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def eof_received(self) -> bool:
        """The peer's FIN, visible only after every byte before it reached the app."""
        return self._eof and self.awaiting_buffered == 0

    @eof_received.setter
    def eof_received(self, value: bool) -> None:
        self._eof = value

    def _delivered(self, n: int) -> None:
        self.awaiting_buffered = max(0, self.awaiting_buffered - n)

    @property
    def counters(self) -> None:
        return None

    def send_space(self) -> int:
        # c.3 / V13: no sends after NdisTerminateOffload; none before the offload completed
        if (
            self.phase is not OffloadState.OFFLOADED
            or self.close_requested
            or self.abort_requested
            or self.aborted
            or self._closed
        ):
            return 0
        chimney = self.chimney
        limit = chimney.send_limit
        policy = chimney.policy
        if policy.honour_send_backlog:
            # b.14: the target's preferred outstanding bytes, never below the floor (a zero or
            # tiny value must not stall the connection; none indicated yet: the floor)
            backlog = self.send_backlog or 0
            floor = policy.send_backlog_floor
            limit = min(limit, backlog if backlog > floor else floor)
        return max(0, limit - self.outstanding)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        n = min(len(data), self.send_space())
        if n <= 0:
            return 0
        with memoryview(data) as view:
            # no copy here: _send copies the bytes into its NBLs before it returns
            self.chimney._send(self, view[:n])
        return n

    def receive_available(self) -> int:
        return len(self.rbuf)

    def receive(self, max_bytes: int = -1) -> bytes:
        if not self.rbuf or max_bytes == 0:
            return b""
        if 0 <= max_bytes < len(self.rbuf):
            data = bytes(self.rbuf[:max_bytes])
            del self.rbuf[:max_bytes]
        else:
            data = bytes(self.rbuf)
            self.rbuf.clear()
        self.chimney._room_freed(self)
        return data

    def close(self) -> None:
        if self.close_requested or self._closed:
            return
        self.close_requested = True
        if self.phase is OffloadState.OFFLOADED:
            self.chimney._disconnect(self, TCP_DISCONNECT_GRACEFUL_CLOSE)
        # else: applied to the host connection after the resume (or failed offload)

    def abort(self) -> None:
        if self.abort_requested or self._closed:
            return
        self.abort_requested = True
        if self.error is None:
            self.error = "aborted"
        if self.phase is OffloadState.OFFLOADED:
            self.chimney._disconnect(self, TCP_DISCONNECT_ABORTIVE_CLOSE)
        self.chimney._notify(self)


class ChimneyHost(Protocol):
    """The chimney protocol driver of one :class:`HostStack` (see the module docstring)."""

    def __init__(
        self,
        stack: HostStack,
        *,
        policy: ChimneyPolicy | None = None,
        params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS | None = None,
        name: str = "chimney",
    ) -> None:
        self.stack = stack
        self.name = name
        self.policy = policy if policy is not None else ChimneyPolicy()
        self.params = params if params is not None else NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS()
        self.capabilities: NDIS_TCP_CONNECTION_OFFLOAD | None = None
        self.chimney_enabled = False
        self.paused = False  # NDIS_STATUS_OFFLOAD_PAUSE
        self.upload_all_latched = False  # NDIS_STATUS_UPLOAD_ALL until OFFLOAD_RESUME (d.8)
        self._upload_all_pending = False
        # d.9: the device power state the host asked for; not D0 = no offloads.  A low-power
        # request waits here until every connection is back (power_request), then goes down
        # as OID_PNP_SET_POWER; power_callback gets the final status.
        self.power_state = NDIS_DEVICE_POWER_STATE.NdisDeviceStateD0
        self._power_request: NDIS_DEVICE_POWER_STATE | None = None
        self._power_callback: Callable[[int], None] | None = None
        self._power_oid_pending = False
        self.records: dict[ConnKey, OffloadedConnection] = {}
        self._by_handle: dict[int, Any] = {}  # id(handle) -> record or _Shared
        self._neighbors: dict[bytes, _Shared] = {}
        self._paths: dict[tuple[bytes, bytes], _Shared] = {}
        self._ops: dict[int, tuple[str, OffloadBlockList]] = {}  # outstanding state operations
        self._returns: list[NET_BUFFER_LIST] = []  # indicated NBLs to return (deferred)
        self._seq = itertools.count(1)  # send NBL order (resume sorts refused pieces by it)
        self._labels = itertools.count(1)
        #: handoff observers ``fn(event, info)`` (e.g. :class:`vnic.capture.HandoffRecorder`):
        #: ``offload-start`` (``snapshot``: the TcbSnapshot handed down), ``offload-complete``,
        #: ``offload-failed`` (``status``), ``upload-requested`` (``reason``),
        #: ``terminate-start``, ``terminate-complete`` (``status``, ``outcome``, ``delegated``,
        #: ``send_bytes``, ``refused_bytes``, ``buffered``), ``receive-delivered`` (``data``
        #: the target delivered to the host).  ``info`` always has ``key``, ``name``, ``sock``.
        #: Called synchronously; an observer must not call back into the chimney.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        self.counters: dict[str, int] = {
            "offloads": 0, "offload_failures": 0, "uploads": 0, "lost": 0, "forwarded": 0,
            "held_segments": 0, "send_nbls": 0, "bytes_sent": 0, "bytes_received": 0,
            "indications": 0, "posts": 0, "retrieve_requests": 0, "queries": 0, "updates": 0, "refused_send_bytes": 0,
            "send_backlog_indications": 0,
            # T.7 follow-up: NRD queries sent, entries confirmed by the NIC's progress, unicast
            # polls started, neighbors invalidated because the poll went unanswered
            "reachability_queries": 0, "reachability_confirmed": 0, "reachability_probes": 0,
            "reachability_invalidations": 0, "reachability_query_failures": 0,
        }
        stack.add_service(self)

    # ---- binding -------------------------------------------------------------------------------

    def bind(self, ndis: Ndis, miniport: NDIS_MINIPORT_HANDLE) -> NDIS_BINDING_HANDLE:
        """NdisOpenAdapterEx + OID_TCP_CONNECTION_OFFLOAD_PARAMETERS (a.1, b.16)."""
        binding = ndis.open_adapter(self, miniport)
        if self.chimney_enabled:
            status = binding.NdisSetTcpConnectionOffloadParameters(self.params)
            if status != NdisStatus.SUCCESS:
                log.warning("%s: offload parameters refused (%s)", self.name, status_name(status))
                self.chimney_enabled = False
        return binding

    def BindAdapter(self, BindParameters: NDIS_BIND_PARAMETERS) -> None:  # noqa: N802,N803
        self.capabilities = BindParameters.TcpConnectionOffloadCapabilities
        self.chimney_enabled = bool(BindParameters.ChimneyEnabled and self.capabilities)
        log.info("%s: bound to %s, chimney %s", self.name, BindParameters.MiniportName,
                 "enabled" if self.chimney_enabled else "disabled")

    @property
    def tps(self) -> int:
        return self.params.TicksPerSecond or DEFAULT_TICKS_PER_SECOND

    @property
    def send_limit(self) -> int:
        lim = self.policy.send_limit
        return lim if lim is not None else self.stack.tcp_config.send_buffer

    @property
    def receive_limit(self) -> int:
        lim = self.policy.receive_limit
        return lim if lim is not None else self.stack.tcp_config.receive_buffer

    # ---- introspection -------------------------------------------------------------------------

    def offload_state(self, conn: Any) -> OffloadState:
        key = self.stack.connection_key(conn)
        rec = self.records.get(key) if key is not None else None
        return rec.phase if rec is not None else OffloadState.IN_HOST

    @property
    def pending(self) -> bool:
        """True while a state operation is outstanding or deferred work waits for ``poll``
        (a T.7 follow-up step due now included; one due later is not pending)."""
        if self._ops or self._has_work():
            return True
        due = self._reachability_deadline() if self._neighbors else None
        return due is not None and due <= self.stack.now

    @property
    def outstanding_operations(self) -> int:
        return len(self._ops)

    def offloaded_count(self) -> int:
        return sum(1 for r in self.records.values() if r.phase is OffloadState.OFFLOADED)

    def status(self) -> list[dict[str, Any]]:
        """One plain dict per connection the chimney owns (for CLIs and reports)."""
        return [
            {
                "connection": r.name, "offload_state": str(r.phase), "tcp_state": str(r.state),
                "handle": r.handle.label, "outstanding_send": r.outstanding,
                "buffered_receive": len(r.rbuf), "upload_wanted": r.upload_wanted,
                "send_backlog": r.send_backlog,
            }
            for r in self.records.values()
        ]

    # ---- policy API ----------------------------------------------------------------------------

    def can_offload(self) -> bool:
        if not self.chimney_enabled or self.paused or self.upload_all_latched:
            return False
        if self.power_state is not NDIS_DEVICE_POWER_STATE.NdisDeviceStateD0:
            return False
        cap = self.capabilities.TcpConnectionOffloadCapacity if self.capabilities else 0
        return cap <= 0 or len(self.records) < cap

    def offload(self, conn: Any) -> OffloadHandleInfo | None:
        """Start offloading one connection (a ``TcpConnection`` of the stack or its socket).
        Returns the handles of the tree sent down, or None when the connection stays in the
        host (chimney disabled/paused, capacity, state not offloadable (b.14), next hop not
        resolved, or its neighbor/path is in transition)."""
        infos = self.offload_many([conn])
        return infos[0] if infos else None

    def offload_many(self, conns: Iterable[Any]) -> list[OffloadHandleInfo]:
        """Offload several connections in one initiate tree (shared neighbor/path blocks)."""
        now = self.stack.now
        batch: list[OffloadedConnection] = []
        for c in conns:
            if not self.can_offload():
                break
            prepared = self._prepare(c, now)
            if prepared is not None:
                batch.append(prepared)
        if not batch:
            return []
        return self._initiate(batch)

    def terminate(self, conn: Any) -> bool:
        """Upload one connection (asynchronous; True if it is or will be uploaded)."""
        rec = self._record(conn)
        if rec is None or rec.phase is OffloadState.UPLOADING:
            return rec is not None
        rec.upload_wanted = True
        self._service_uploads()
        return True

    def set_power(self, state: int, callback: Callable[[int], None] | None = None) -> bool:
        """Change the device power state (d.9).  A low-power state (D1-D3): no new offloads,
        every connection is uploaded, then OID_PNP_SET_POWER goes down (the target may pend it
        until its last object is gone).  D0: the OID at once; offloads may start again.
        ``callback(status)`` gets the OID's final status.  False if a power change is still
        in progress (nothing is done then)."""
        state = NDIS_DEVICE_POWER_STATE(state)
        if state is NDIS_DEVICE_POWER_STATE.NdisDeviceStateUnspecified:
            raise ValueError("a power state is D0 .. D3")
        if self._power_request is not None or self._power_oid_pending:
            return False
        self.power_state = state
        self._power_callback = callback
        log.info("%s: power state %s requested", self.name, state.name)
        if state is NDIS_DEVICE_POWER_STATE.NdisDeviceStateD0:
            self._send_power(state)
        else:
            self._power_request = state
            self.terminate_all()
            self._power_ready()
        return True

    def _power_ready(self) -> None:
        """d.9: the low-power OID goes down once every connection was uploaded."""
        if self._power_request is not None and not self.records:
            state, self._power_request = self._power_request, None
            self._send_power(state)

    def _send_power(self, state: NDIS_DEVICE_POWER_STATE) -> None:
        status = self.binding.NdisSetPower(state)
        if status == NdisStatus.PENDING:
            self._power_oid_pending = True
        else:
            self._power_done(status)

    def _power_done(self, status: int) -> None:
        log.info("%s: OID_PNP_SET_POWER %s: %s", self.name, self.power_state.name,
                 status_name(status))
        cb, self._power_callback = self._power_callback, None
        if cb is not None:
            cb(status)

    def OidRequestComplete(self, Oid: int, Status: int) -> None:  # noqa: N802,N803
        if Oid == OID_PNP_SET_POWER and self._power_oid_pending:
            self._power_oid_pending = False
            self._power_done(Status)

    def terminate_all(self) -> int:
        """Upload every connection (as for NDIS_STATUS_UPLOAD_ALL, without the latch)."""
        for rec in self.records.values():
            rec.upload_wanted = True
        self._upload_all_pending = True
        return self._service_uploads()

    def query(
        self,
        conn: Any,
        callback: Callable[[TCP_OFFLOAD_STATE_DELEGATED | None], None] | None = None,
    ) -> bool:
        """NdisQueryOffloadState for one offloaded connection's delegated state (a.2).  The
        result lands in ``record.last_query`` and is passed to ``callback`` (None on
        failure)."""
        rec = self._record(conn)
        if rec is None or rec.phase is not OffloadState.OFFLOADED:
            return False
        root = query_tree([rec.node], lambda n: TCP_OFFLOAD_STATE_DELEGATED())
        rec.pending_ops += 1
        if callback is not None:
            rec.query_callbacks.append(callback)
        self._ops[id(root)] = ("query", root)
        self.counters["queries"] += 1
        self.binding.NdisQueryOffloadState(root)
        return True

    def update(
        self,
        conn: Any,
        *,
        keepalive: bool | None = None,
        keepalive_idle: float | None = None,
        keepalive_interval: float | None = None,
        keepalive_probes: int | None = None,
        initial_rcv_wnd: int | None = None,
        nodelay: bool | None = None,
    ) -> bool:
        """NdisUpdateOffload of the connection's cached state (b.12, c.3: one update at a time,
        never while offloading).  The host owns cached state: the change also applies after
        the resume."""
        rec = self._record(conn)
        if rec is None or rec.phase is not OffloadState.OFFLOADED or rec.update_pending:
            return False
        old = rec.base
        changes: dict[str, Any] = {}
        for name, value in (
            ("keepalive", keepalive), ("keepalive_idle", keepalive_idle),
            ("keepalive_interval", keepalive_interval), ("keepalive_probes", keepalive_probes),
            ("initial_rcv_wnd", initial_rcv_wnd), ("nodelay", nodelay),
        ):
            if value is not None:
                changes[name] = value
        new = dataclasses.replace(old, **changes)
        flags = 0
        if any(k.startswith("keepalive") for k in changes):
            flags |= TCP_FLAG_KEEP_ALIVE_RESTART
        if "initial_rcv_wnd" in changes and new.initial_rcv_wnd != old.initial_rcv_wnd:
            flags |= TCP_FLAG_UPDATE_RCV_WND
        cached = tcp_cached_from_snapshot(new, self.tps, self.policy.cached, flags=flags)
        rec.base = new
        root = update_tree([(rec.node, cached)])
        rec.pending_ops += 1
        rec.update_pending = True
        self._ops[id(root)] = ("update", root)
        self.counters["updates"] += 1
        self.binding.NdisUpdateOffload(root)
        return True

    def update_neighbor(self, next_hop: bytes, mac: bytes) -> bool:
        """NdisUpdateOffload of a neighbor's cached DlDestinationAddress after an ARP change
        (b.8, b.19).  Called by :meth:`poll` when the neighbor cache disagrees."""
        nb = self._neighbors.get(next_hop)
        if nb is None or nb.phase != "offloaded" or nb.update_pending or nb.invalidated:
            return False  # c.3: never while offloading or invalidated, one update at a time
        # (T.7: the cached HostReachabilityDelta goes with it, so it must be the current one:
        # the target sets HRT = now - HRD from every update)
        cached = dataclasses.replace(nb.state.Cached, DlDestinationAddress=pad_mac(mac),
                                     HostReachabilityDelta=self._host_reachability_delta(next_hop))
        nb.state.Cached = cached
        return self._update_shared(nb, cached)

    def update_path_mtu(self, destination: bytes, mtu: int) -> bool:
        """NdisUpdateOffload of a path's cached PathMtu (b.9, e.g. after ICMP too big)."""
        pa = self._paths.get((self.stack.ip, destination))
        if pa is None or pa.phase != "offloaded" or pa.update_pending or pa.invalidated:
            return False
        cached = dataclasses.replace(pa.state.Cached, PathMtu=mtu)
        pa.state.Cached = cached
        return self._update_shared(pa, cached)

    def invalidate_neighbor(self, next_hop: bytes) -> bool:
        """NdisInvalidateOffload of a neighbor (d.6, e.g. after an ICMP redirect); once it
        completed, every connection through it is uploaded and the neighbor goes with the
        last of them."""
        nb = self._neighbors.get(next_hop)
        if nb is None or nb.phase != "offloaded" or nb.update_pending or nb.invalidated:
            return False
        nb.update_pending = True  # busy: no update, no terminate until it completed (V13)
        root = invalidate_tree([nb.node])
        self._ops[id(root)] = ("invalidate", root)
        log.info("%s: invalidate %s", self.name, nb.label)
        self.binding.NdisInvalidateOffload(root)
        return True

    def _update_shared(self, obj: _Shared, cached: Any) -> bool:
        obj.update_pending = True
        root = update_tree([(obj.node, cached)])
        self._ops[id(root)] = ("update", root)
        self.counters["updates"] += 1
        log.info("%s: update %s", self.name, obj.label)
        self.binding.NdisUpdateOffload(root)
        return True

    def _check_neighbors(self) -> None:
        now = self.stack.now
        cache = self.stack.neighbors
        for nb in list(self._neighbors.values()):
            if nb.phase != "offloaded" or nb.update_pending or nb.invalidated:
                continue
            entry = cache.get(nb.key)
            if entry is not None and entry.mac is not None:
                if pad_mac(entry.mac) != nb.state.Cached.DlDestinationAddress:
                    self.update_neighbor(nb.key, entry.mac)
            due = self._reachability_due(nb, entry, now)
            if due is not None and due <= now:
                self._reachability_step(nb, entry, now)

    # ---- T.7: the host's follow-up of a NeighborReachabilityQuery ------------------------------

    def _reachability_due(
        self, nb: _Shared, entry: NeighborEntry | None, now: float
    ) -> float | None:
        """When :meth:`poll` has the next T.7 follow-up step to take for ``nb`` (None: none,
        or only after an outstanding operation completed).  ``poll`` and ``next_deadline``
        both decide from here, so a deadline always means work."""
        if nb.phase != "offloaded" or nb.invalidated or nb.busy:
            return None
        if nb.probing:
            # watching the unicast poll: done once the entry is no longer being probed
            if entry is not None and entry.state in (NeighborState.PROBE, NeighborState.INCOMPLETE):
                return None
            return now
        if entry is not None and entry.state is NeighborState.DELAY:
            return now  # T.7: "when the host's NCE is in DELAY it queries NRD before sending"
        return nb.followup_at

    def _reachability_deadline(self) -> float | None:
        now = self.stack.now
        cache = self.stack.neighbors
        best: float | None = None
        for nb in self._neighbors.values():
            due = self._reachability_due(nb, cache.get(nb.key), now)
            if due is not None and (best is None or due < best):
                best = due
        return best

    def _reachability_step(self, nb: _Shared, entry: NeighborEntry | None, now: float) -> None:
        where = f"{self.name}: {nb.label} ({ip_str(nb.key)})"
        if nb.probing:
            nb.probing = False
            if entry is None:
                # T.7 / d.6: the poll went unanswered (the cache removed the entry): invalidate;
                # the target then asks for the upload of every connection through it
                self.counters["reachability_invalidations"] += 1
                log.info("%s: unicast ARP unanswered, invalidating the neighbor (T.7, d.6)", where)
                self.invalidate_neighbor(nb.key)
            else:
                log.info("%s: reachable again (%s)", where, entry.state)
            return
        delayed = entry is not None and entry.state is NeighborState.DELAY
        nb.followup_at = None
        if not delayed and entry is not None and entry.state is NeighborState.REACHABLE:
            log.debug("%s: confirmed meanwhile, no NRD query", where)
            return
        self._query_nrd(nb, "entry in DELAY" if delayed else "HRD 0 follow-up")

    def _query_nrd(self, nb: _Shared, why: str) -> None:
        """NdisQueryOffloadState of the neighbor's DELEGATED state: its NicReachabilityDelta
        (T.7).  Never while it is being offloaded, updated or invalidated (c.3)."""
        root = query_tree([nb.node], lambda n: NEIGHBOR_OFFLOAD_STATE_DELEGATED())
        nb.nrd_query_pending = True
        self._ops[id(root)] = ("query", root)
        self.counters["reachability_queries"] += 1
        log.info("%s: %s (%s) NRD query (%s, T.7)", self.name, nb.label, ip_str(nb.key), why)
        self.binding.NdisQueryOffloadState(root)

    def _nrd_answered(self, nb: _Shared, block: OffloadBlockList) -> None:
        """T.7: recent forward progress at the NIC confirms the host's entry; none makes the
        host poll the neighbor with unicast ARP now.  A failed query (d.5) uploads the
        connections through the neighbor."""
        nb.nrd_query_pending = False
        if nb.phase != "offloaded" or nb.invalidated:
            return
        now = self.stack.now
        cache = self.stack.neighbors
        where = f"{self.name}: {nb.label} ({ip_str(nb.key)})"
        deleg = block.state
        if not isinstance(deleg, NEIGHBOR_OFFLOAD_STATE_DELEGATED):
            deleg = getattr(deleg, "Delegated", None)
        if block.Status != NdisStatus.SUCCESS or not isinstance(deleg, NEIGHBOR_OFFLOAD_STATE_DELEGATED):
            # d.5: a failed query means the host uploads what it could not query: the
            # neighbor, so every connection through it (the neighbor goes with the last one)
            self.counters["reachability_query_failures"] += 1
            log.info("%s: NRD query %s, uploading its connections (d.5)", where,
                     status_name(block.Status))
            for r in self.records.values():
                if r.path.parent is nb:
                    r.upload_wanted = True
            return
        age = from_ticks(deleg.NicReachabilityDelta, self.tps)  # NIC ticks (b.16) -> s
        mac = bytes(nb.state.Cached.DlDestinationAddress[:6])
        if age is not None and age < cache.config.reachable_time:
            # the NIC saw the neighbor answer ``age`` seconds ago: REACHABLE as of then (for
            # the MAC the NIC sends to; a different one in the entry is updated by poll)
            entry = cache.get(nb.key)
            if entry is None or entry.mac != mac:
                log.info("%s: NIC progress %.3f s ago, but no entry for %s to confirm", where,
                         age, mac_str(mac))
                return
            cache.confirm(nb.key, mac, now, at=now - age)
            self.counters["reachability_confirmed"] += 1
            log.info("%s: confirmed by the NIC's forward progress %.3f s ago (T.7)", where, age)
            return
        why = f"no forward progress for {age:.3f} s"
        if cache.probe(nb.key, now, mac):
            nb.probing = True
            self.counters["reachability_probes"] += 1
            log.info("%s: %s, probing with unicast ARP (T.7)", where, why)
        else:
            log.info("%s: %s, but its entry cannot be probed", where, why)

    # ---- the stack service (run from HostStack.poll) -------------------------------------------

    def poll(self, now: float) -> None:
        if self._returns:
            returns, self._returns = self._returns, []
            self.binding.NdisOffloadTcpReceiveReturn(link_nbls(returns))  # type: ignore[arg-type]
        for rec in list(self.records.values()):
            if rec.phase is OffloadState.OFFLOADED and rec.refused and not rec.upload_wanted:
                self._room_freed(rec)
        if self._neighbors:
            self._check_neighbors()
        self._service_uploads()

    def next_deadline(self) -> float | None:
        if self._has_work():
            return self.stack.now
        # T.7: the follow-up of a NeighborReachabilityQuery (a timer, or a step due now)
        return self._reachability_deadline() if self._neighbors else None

    def _has_work(self) -> bool:
        if self._returns:
            return True
        return any(
            r.upload_wanted and r.phase is OffloadState.OFFLOADED and r.pending_ops == 0
            for r in self.records.values()
        )

    # ---- offload -------------------------------------------------------------------------------

    def _record(self, conn: Any) -> OffloadedConnection | None:
        if isinstance(conn, OffloadedConnection):
            return conn
        key = self.stack.connection_key(conn)
        return self.records.get(key) if key is not None else None

    def _prepare(self, conn: Any, now: float) -> OffloadedConnection | None:
        stack = self.stack
        try:
            sock = stack.socket(conn) if not isinstance(conn, TcpSocket) else conn
        except KeyError:
            return None  # not (or no longer) a connection of this stack
        if sock.offload_state is not OffloadState.IN_HOST or sock.key in self.records:
            return None  # V12: never initiate an object being offloaded / offloaded
        host = sock.engine
        key = sock.key
        if host.state not in EXPORTABLE_STATES:
            log.debug("%s: %s not offloadable in %s (b.14)", self.name, sock.name, host.state)
            return None
        next_hop = stack.next_hop(key[0])
        entry = stack.neighbors.get(next_hop) if next_hop is not None else None
        if entry is None or entry.mac is None:
            log.debug("%s: %s next hop unresolved", self.name, sock.name)
            return None
        nb = self._neighbors.get(next_hop)  # type: ignore[arg-type]
        pk = (stack.ip, key[0])
        pa = self._paths.get(pk)
        usable = ("offloaded", "new")  # "new": created for this same batch
        if (nb is not None and (nb.phase not in usable or nb.invalidated)) or (
            pa is not None and (pa.phase not in usable or pa.invalidated)
        ):
            log.debug("%s: %s neighbor/path in transition, not now (c.3)", self.name, sock.name)
            return None
        # T.4: everything ready goes out from the host first; owed ACKs are flushed (delayed
        # ACK is not carried)
        stack.transmit(host.poll(now), key[0], now)
        stack.transmit(host.flush_ack(now), key[0], now)
        stack.wake(host)
        if host.state not in EXPORTABLE_STATES:
            return None
        try:
            snap: TcbSnapshot = host.export_state(now)
        except ValueError as exc:
            log.warning("%s: %s export refused: %s", self.name, sock.name, exc)
            return None
        return self._make_record(sock, host, snap, next_hop, entry.mac)  # type: ignore[arg-type]

    def _make_record(
        self, sock: TcpSocket, host: Any, snap: TcbSnapshot, next_hop: bytes, mac: bytes
    ) -> OffloadedConnection:
        stack = self.stack
        n = next(self._labels)
        nb = self._neighbors.get(next_hop)
        if nb is None:
            h = NDIS_OFFLOAD_HANDLE(f"N{n}:{ip_str(next_hop)}")
            nb = _Shared(OffloadLayer.NEIGHBOR, next_hop, h, OffloadNode(OffloadLayer.NEIGHBOR, h, label=h.label))
            # T.7: HRT = now - HRD and NRT = now - NRD, equal at offload: the host's own last
            # confirmation is all either side knows of the neighbor's reachability so far
            hrd = self._host_reachability_delta(next_hop)
            nb.state = neighbor_state(
                mac,
                source_mac=stack.mac if self.policy.set_source_mac else None,
                vlan_id=stack.vlan_id or 0,
                host_reachability_delta=hrd,
                nic_reachability_delta=hrd,
            )
            self._neighbors[next_hop] = nb
            self._by_handle[id(h)] = nb
            # T.7: the host's entry lives as long as the offloaded neighbor refers to it (it
            # is confirmed from the NIC's forward progress, never garbage-collected meanwhile)
            stack.neighbors.pin(next_hop)
        pk = (stack.ip, sock.key[0])
        pa = self._paths.get(pk)
        if pa is None:
            h = NDIS_OFFLOAD_HANDLE(f"P{n}:{ip_str(sock.key[0])}")
            pa = _Shared(OffloadLayer.PATH, pk, h, OffloadNode(OffloadLayer.PATH, h, label=h.label), parent=nb)
            pa.state = path_state(stack.ip, sock.key[0], self.policy.path_mtu)
            self._paths[pk] = pa
            self._by_handle[id(h)] = pa
            nb.node.children.append(pa.node)
            nb.dependents.add(id(pa))
        h = NDIS_OFFLOAD_HANDLE(f"T{n}:{sock.key[2]}")
        rec = OffloadedConnection(self, sock, host, snap, h, pa)
        pa.node.children.append(rec.node)
        pa.dependents.add(id(rec))
        self.records[sock.key] = rec
        self._by_handle[id(h)] = rec
        return rec

    def _initiate(self, batch: list[OffloadedConnection]) -> list[OffloadHandleInfo]:
        stack = self.stack
        infos: list[OffloadHandleInfo] = []
        # neighbor -> path -> [tcp] grouping, in first-seen order
        groups: dict[int, tuple[_Shared, dict[int, tuple[_Shared, list[OffloadedConnection]]]]] = {}
        for rec in batch:
            pa = rec.path
            nb = pa.parent
            assert nb is not None
            g = groups.setdefault(id(nb), (nb, {}))
            g[1].setdefault(id(pa), (pa, []))[1].append(rec)
        roots = []
        for nb, paths in groups.values():
            pblocks = []
            for pa, recs in paths.values():
                tblocks = []
                for rec in recs:
                    # undelivered data before an already-received FIN stays in the socket
                    hand_down = self.policy.hand_down_buffered_data and not rec.base.fin_received
                    snap = rec.base
                    if not hand_down and snap.buffered_receive:
                        # keep undelivered data in the socket; the target starts empty
                        rec.rbuf += snap.buffered_receive
                        snap = dataclasses.replace(snap, buffered_receive=b"")
                    state, chain = tcp_state_from_snapshot(
                        snap, self.tps, extras=self.policy.cached, chunk=self.policy.send_chunk,
                        label=rec.handle.label,
                    )
                    for nbl in iter_nbls(chain):
                        self._tag_send(rec, nbl)
                    rec.outstanding = len(snap.send_data)
                    rec.awaiting_buffered = len(snap.buffered_receive)  # T.2: delivered first
                    if self.observers:
                        self._observe("offload-start", rec, snapshot=snap)
                    tb = new_offload_block(state, rec.handle, label=rec.handle.label, send_data=chain)
                    tblocks.append(tb)
                if pa.phase == "new":
                    pb = new_offload_block(pa.state, pa.handle, label=pa.label)
                    pa.phase = "offloading"
                else:
                    pb = reference_block(pa.handle, OffloadLayer.PATH, label=pa.label)  # linker (b.5)
                add_dependents(pb, *tblocks)
                pblocks.append(pb)
            if nb.phase == "new":
                nblock = new_offload_block(nb.state, nb.handle, label=nb.label)
                nb.phase = "offloading"
            else:
                nblock = reference_block(nb.handle, OffloadLayer.NEIGHBOR, label=nb.label)
            add_dependents(nblock, *pblocks)
            roots.append(nblock)
        root = chain_blocks(*roots)
        assert root is not None
        for rec in batch:
            # the chimney owns the connection from now on: the host stops processing it (c.2)
            stack.detach(rec.host_conn, rec.on_segment)
            rec.sock.swap(rec, OffloadState.OFFLOADING)
            self._log_phase(rec, OffloadState.IN_HOST, OffloadState.OFFLOADING)
            infos.append(OffloadHandleInfo(rec.key, rec.name, rec.handle, rec.path.handle,
                                           rec.path.parent.handle))  # type: ignore[union-attr]
        self._ops[id(root)] = ("initiate", root)
        self.binding.NdisInitiateOffload(root)
        return infos

    def _tag_send(self, rec: OffloadedConnection, nbl: NET_BUFFER_LIST) -> None:
        nbl.ProtocolReserved[0] = rec
        nbl.ProtocolReserved[1] = (next(self._seq), nbl.DataOffset)

    def InitiateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        root = OffloadBlockList
        self._ops.pop(id(root), None)
        resumed: list[OffloadedConnection] = []
        for block in iter_blocks(root):
            # linkers name objects that are already "offloaded": only the new ones change here
            obj = self._by_handle.get(id(block.OffloadHandle))
            ok = block.Status in OFFLOADED_STATUSES
            if isinstance(obj, _Shared):
                if obj.phase != "offloading":
                    continue
                if ok:
                    obj.phase = "offloaded"
                else:
                    log.info("%s: %s offload failed (%s)", self.name, obj.label, status_name(block.Status))
                    self._forget_shared(obj)
            elif isinstance(obj, OffloadedConnection) and obj.phase is OffloadState.OFFLOADING:
                if ok:
                    self._offloaded(obj)
                else:
                    resumed.append(obj)
                    self._offload_failed(obj, block.Status)
        self._drop_unreferenced()

    def _offloaded(self, rec: OffloadedConnection) -> None:
        self._set_phase(rec, OffloadState.OFFLOADED)
        if self.observers:
            self._observe("offload-complete", rec)
        self.counters["offloads"] += 1
        rec.host_conn = None
        held, rec.held = rec.held, []
        for seg, src, dst in held:
            self._forward(rec, seg, src, dst)  # V16: only now that the offload completed
        if rec.abort_requested:
            self._disconnect(rec, TCP_DISCONNECT_ABORTIVE_CLOSE)
        elif rec.close_requested:
            self._disconnect(rec, TCP_DISCONNECT_GRACEFUL_CLOSE)
        if self.policy.post_receive_size > 0:
            self._room_freed(rec)
        self._notify(rec)

    def _offload_failed(self, rec: OffloadedConnection, status: int) -> None:
        """d.7: the connection stays in the host; its send NBLs were not touched."""
        self.counters["offload_failures"] += 1
        log.info("%s: %s offload failed (%s), stays in the host", self.name, rec.name, status_name(status))
        if self.observers:
            self._observe("offload-failed", rec, status=status_name(status))
        self._unlink(rec)
        conn = rec.host_conn
        self.stack.attach(conn, rec.key)
        if rec.rbuf:  # kept back by hand_down_buffered_data=False: the host still has it
            rec.rbuf.clear()
        rec.sock.swap(conn, OffloadState.IN_HOST)
        self._log_phase(rec, rec.phase, OffloadState.IN_HOST)
        rec.phase = OffloadState.IN_HOST
        self._finish_in_host(rec, conn)

    def _finish_in_host(self, rec: OffloadedConnection, conn: Any) -> None:
        """After ``stack.attach(conn)`` (which marks it for polling and notifies it): apply
        what the application asked for meanwhile, then the segments held for it."""
        now = self.stack.now
        if rec.abort_requested:
            conn.abort()
            self.stack.wake(conn)
        elif rec.close_requested and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            conn.close()
            self.stack.wake(conn)
        if rec.held:
            held, rec.held = rec.held, []
            for seg, src, dst in held:
                self.stack.deliver_tcp(seg, src, dst, now)  # c.3: processed by the host now

    # ---- segments for a connection the chimney owns (c.3) --------------------------------------

    def _forward(self, rec: OffloadedConnection, seg: TcpSegment, src: bytes, dst: bytes) -> None:
        """NdisOffloadTcpForward: the segment as the Ethernet frame it arrived in."""
        stack = self.stack
        packet = build_ipv4(src, dst, IPPROTO_TCP, build_tcp(seg, src, dst))
        nb = rec.path.parent
        peer_mac = bytes(nb.state.Cached.DlDestinationAddress[:6]) if nb is not None else bytes(6)
        frame = build_ethernet(stack.mac, peer_mac, ETH_P_IPV4, packet, stack._vlan_tags)
        nbl = NET_BUFFER_LIST(frame, label=f"{rec.handle.label}-fwd")
        nbl.ProtocolReserved[0] = rec
        self.counters["forwarded"] += 1
        self.binding.NdisOffloadTcpForward(rec.handle, nbl)

    def TcpOffloadForwardComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        for nbl in iter_nbls(NetBufferList):
            if nbl.Status != NdisStatus.SUCCESS:
                log.debug("%s: forward of %s: %s", self.name, nbl.label, status_name(nbl.Status))

    def ReceiveNetBufferLists(  # noqa: N802
        self, NetBufferLists: NET_BUFFER_LIST, PortNumber: int, NumberOfNetBufferLists: int,  # noqa: N803
        ReceiveFlags: int,  # noqa: N803
    ) -> None:
        """a.5: the ordinary receive path from the target feeds the stack."""
        for nbl in iter_nbls(NetBufferLists):
            self.stack.receive_frame(bytes(nbl.data), self.stack.now)

    # ---- sends ---------------------------------------------------------------------------------

    def _send(self, rec: OffloadedConnection, data: bytes | memoryview) -> None:
        """Hand ``data`` to the target as NBLs of ``send_chunk`` bytes (copied: the caller's
        buffer may be reused once this returns)."""
        chunk = max(1, self.policy.send_chunk)
        nbls = []
        label = rec.handle.label
        with memoryview(data) as view:  # slices of a view: one copy per NBL, into the NBL
            for i in range(0, len(view), chunk):
                nbl = NET_BUFFER_LIST(view[i : i + chunk], label=f"{label}-s{next(self._labels)}")
                self._tag_send(rec, nbl)
                nbls.append(nbl)
        rec.outstanding += len(data)
        rec.sends_in_flight += len(nbls)
        self.counters["send_nbls"] += len(nbls)
        # c.3: one NdisOffloadTcpSend call at a time per connection (this call returns first)
        self.binding.NdisOffloadTcpSend(rec.handle, link_nbls(nbls))  # type: ignore[arg-type]

    def TcpOffloadSendComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        touched: dict[int, OffloadedConnection] = {}
        for nbl in list(iter_nbls(NetBufferList)):
            nbl.Next = None
            rec = nbl.ProtocolReserved[0]
            if not isinstance(rec, OffloadedConnection):
                continue
            seqno, start = nbl.ProtocolReserved[1]
            length = len(nbl.buffer) - start
            rec.outstanding = max(0, rec.outstanding - length)
            rec.sends_in_flight = max(0, rec.sends_in_flight - 1)
            done = nbl.TcpOffloadBytesTransferred
            self.counters["bytes_sent"] += done
            if nbl.Status != NdisStatus.SUCCESS:
                rest = bytes(nbl.buffer[start + done :])
                if rest and not (rec.aborted or rec.abort_requested or rec.reset_received):
                    # f.3: not sent (UPLOAD_IN_PROGRESS ...): it goes back into the stream at
                    # the resume, in its original order; the host must upload to send it
                    rec.unsent.append((seqno, rest))
                    rec.upload_wanted = True
                log.debug("%s: send %s completed %s", self.name, nbl.label, status_name(nbl.Status))
            touched[id(rec)] = rec
        for rec in touched.values():
            self._notify(rec)

    # ---- receives (T.2) ------------------------------------------------------------------------

    def TcpOffloadReceiveIndicate(  # noqa: N802
        self, OffloadContext: Any, NetBufferList: NET_BUFFER_LIST, Status: int  # noqa: N803
    ) -> tuple[int, int]:
        rec = self._by_handle.get(id(OffloadContext))
        if not isinstance(rec, OffloadedConnection) or rec.phase is OffloadState.IN_HOST:
            return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0
        self.counters["indications"] += 1
        total = sum(n.DataLength for n in iter_nbls(NetBufferList))
        room = max(0, self.receive_limit - len(rec.rbuf))
        take = min(total, room)
        left = take
        for n in iter_nbls(NetBufferList):
            k = min(left, n.DataLength)
            rec.rbuf += n.data[:k]
            left -= k
        if take and self.observers:
            self._observe("receive-delivered", rec, data=bytes(rec.rbuf[len(rec.rbuf) - take:]))
        rec._delivered(take)
        self.counters["bytes_received"] += take
        if take:
            self._notify(rec)
        if take == total:
            # a.4: all consumed; the NBLs are ours until NdisOffloadTcpReceiveReturn
            # (made from poll, never from inside the indication)
            self._returns.extend(iter_nbls(NetBufferList))
            return NdisStatus.SUCCESS, take
        rec.refused = True  # T.2: a post re-enables indications once there is room
        if take:
            return NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED, take
        return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0

    def _room_freed(self, rec: OffloadedConnection) -> None:
        if rec.phase is not OffloadState.OFFLOADED or rec.posts_in_flight or rec.upload_wanted:
            return
        if rec._eof or rec.aborted:
            return  # the peer's FIN was indicated (or the connection is gone): no more data
        room = self.receive_limit - len(rec.rbuf)
        size = self.policy.post_receive_size
        if size > 0 and room >= size:
            self._post(rec, size)
        elif rec.refused and room > 0:
            self._post(rec, 0)  # T.2: a zero-byte post re-enables indications

    def _post(self, rec: OffloadedConnection, size: int) -> None:
        nbl = NET_BUFFER_LIST(size, label=f"{rec.handle.label}-r{next(self._labels)}")
        nbl.ProtocolReserved[0] = rec
        nbl.ProtocolReserved[1] = (0, nbl.DataOffset)
        rec.refused = False
        rec.posts_in_flight += 1
        self.counters["posts"] += 1
        self.binding.NdisOffloadTcpReceive(rec.handle, nbl)

    def TcpOffloadReceiveComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        touched: dict[int, OffloadedConnection] = {}
        failed: set[int] = set()  # records with a refused receive among these
        for nbl in list(iter_nbls(NetBufferList)):
            nbl.Next = None
            rec = nbl.ProtocolReserved[0]
            if not isinstance(rec, OffloadedConnection):
                continue
            _, start = nbl.ProtocolReserved[1]
            n = nbl.TcpOffloadBytesTransferred
            if n:
                rec.rbuf += nbl.buffer[start : start + n]
                if self.observers:
                    self._observe("receive-delivered", rec, data=bytes(nbl.buffer[start : start + n]))
                rec._delivered(n)
                self.counters["bytes_received"] += n
            rec.posts_in_flight = max(0, rec.posts_in_flight - 1)
            touched[id(rec)] = rec
            if nbl.Status != NdisStatus.SUCCESS:
                # refused (f.3: INVALID_STATE after the FIN, UPLOAD_IN_PROGRESS, ABORTED):
                # posting again would be refused again, at once
                failed.add(id(rec))
        for k, rec in touched.items():
            self._notify(rec)
            if k not in failed:
                self._room_freed(rec)

    # ---- disconnect ----------------------------------------------------------------------------

    def _disconnect(self, rec: OffloadedConnection, flags: int) -> None:
        nbl = NET_BUFFER_LIST(b"", label=f"{rec.handle.label}-disc")
        nbl.ProtocolReserved[0] = rec
        nbl.ProtocolReserved[1] = (flags, 0)
        if flags & TCP_DISCONNECT_ABORTIVE_CLOSE:
            rec.aborted = True
        self.binding.NdisOffloadTcpDisconnect(rec.handle, nbl, flags)

    def TcpOffloadDisconnectComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        for nbl in iter_nbls(NetBufferList):
            rec = nbl.ProtocolReserved[0]
            if not isinstance(rec, OffloadedConnection):
                continue
            flags = nbl.ProtocolReserved[1][0]
            if flags & TCP_DISCONNECT_ABORTIVE_CLOSE:
                # c.5: RST sent; the connection is dead; free the target's context
                rec._closed = True
                rec.state = TcpState.CLOSED
                rec.upload_wanted = True
            elif nbl.Status == NdisStatus.SUCCESS:
                rec.close_done = True
                rec.state = {
                    TcpState.ESTABLISHED: TcpState.FIN_WAIT_1,
                    TcpState.CLOSE_WAIT: TcpState.LAST_ACK,
                }.get(rec.state, rec.state)
            else:
                log.debug("%s: disconnect of %s: %s (closed after the resume)", self.name,
                          rec.name, status_name(nbl.Status))
            self._notify(rec)

    # ---- events (a.4, b.14) --------------------------------------------------------------------

    def TcpOffloadEvent(  # noqa: N802
        self, OffloadContext: Any, EventType: int, EventSpecificInformation: int  # noqa: N803
    ) -> None:
        rec = self._by_handle.get(id(OffloadContext))
        if not isinstance(rec, OffloadedConnection):
            log.warning("%s: event %d for an unknown handle", self.name, EventType)
            return
        if EventType == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect:
            rec.eof_received = True  # peer FIN, every earlier byte already consumed (c.5)
            rec.state = {
                TcpState.ESTABLISHED: TcpState.CLOSE_WAIT,
                TcpState.FIN_WAIT_1: TcpState.CLOSING,
                TcpState.FIN_WAIT_2: TcpState.TIME_WAIT,
            }.get(rec.state, rec.state)
            log.info("%s: %s peer FIN while offloaded", self.name, rec.name)
        elif EventType == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateAbort:
            rec.reset_received = True
            rec.error = "connection reset by peer"
            rec.aborted = True
            rec._closed = True
            rec.state = TcpState.CLOSED
            rec.upload_wanted = True  # c.1: the host always uploads after an abort
            log.info("%s: %s reset by peer while offloaded", self.name, rec.name)
        elif EventType == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve:
            self.counters["retrieve_requests"] += 1
            try:
                reason: Any = TCP_UPLOAD_REASON(EventSpecificInformation)
            except ValueError:
                reason = EventSpecificInformation
            mandatory = reason in MANDATORY_UPLOAD_REASONS or not isinstance(reason, TCP_UPLOAD_REASON)
            if mandatory or self.policy.upload_on_optional_reasons:
                rec.upload_wanted = True
                if self.observers:
                    self._observe("upload-requested", rec, reason=getattr(reason, "name", reason))
                log.info("%s: %s upload requested (%s)", self.name, rec.name, getattr(reason, "name", reason))
            else:
                log.info("%s: %s optional upload request %s declined", self.name, rec.name, reason.name)
        elif EventType == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange:
            # b.14: the new preferred number of outstanding send bytes; with
            # honour_send_backlog it bounds send_space (the _notify below wakes writers)
            self.counters["send_backlog_indications"] += 1
            rec.send_backlog = int(EventSpecificInformation)
            log.debug("%s: %s send backlog %d bytes (%d outstanding)", self.name, rec.name,
                      rec.send_backlog, rec.outstanding)
        self._notify(rec)

    def StatusEx(self, StatusIndication: NDIS_STATUS_INDICATION) -> None:  # noqa: N802,N803
        code = StatusIndication.StatusCode
        if code == NdisStatus.OFFLOAD_PAUSE:
            self.paused = True  # a.4: no new offloads
            log.info("%s: offloads paused", self.name)
        elif code == NdisStatus.OFFLOAD_RESUME:
            self.paused = False
            self.upload_all_latched = False
            if isinstance(StatusIndication.StatusBuffer, NDIS_TCP_CONNECTION_OFFLOAD):
                self.capabilities = StatusIndication.StatusBuffer  # d.8: re-read capabilities
            log.info("%s: offloads resumed", self.name)
        elif code == NdisStatus.UPLOAD_ALL:
            log.info("%s: UPLOAD_ALL", self.name)
            self.upload_all_latched = True  # d.8: stop offloading until OFFLOAD_RESUME
            for rec in self.records.values():
                rec.upload_wanted = True
            self._upload_all_pending = True

    def _host_reachability_delta(self, next_hop: bytes) -> int:
        """T.7 HostReachabilityDelta: ticks since the host's entry for ``next_hop`` was last
        confirmed while it is REACHABLE (at least 1), else 0 (stale: the target then takes
        "now" as the host's time, which holds off its next query for NceStaleTicks)."""
        entry = self.stack.neighbors.get(next_hop)
        if entry is None or entry.state is not NeighborState.REACHABLE:
            return 0
        return max(1, to_ticks(self.stack.now - entry.updated, self.tps))

    def IndicateOffloadEvent(self, OffloadBlockList: Any, IndicationCode: int) -> None:  # noqa: N802,N803
        """T.7: answer a NeighborReachabilityQuery with the host's HostReachabilityDelta."""
        if IndicationCode != INDICATE_OFFLOAD_EVENT.NeighborReachabilityQuery or OffloadBlockList is None:
            return
        nb = self._by_handle.get(id(OffloadBlockList.OffloadHandle))
        state = OffloadBlockList.state
        if not isinstance(nb, _Shared) or state is None:
            return
        now = self.stack.now
        cache = self.stack.neighbors
        hrd = self._host_reachability_delta(nb.key)
        state.Cached.HostReachabilityDelta = hrd
        if (
            hrd == 0 and nb.layer is OffloadLayer.NEIGHBOR and nb.phase == "offloaded"
            and not nb.invalidated and nb.followup_at is None and not nb.nrd_query_pending
            and not nb.probing
        ):
            # T.7: after answering 0 the host starts a timer, later queries NRD, and if no
            # progress was seen probes with unicast ARP and on failure invalidates the neighbor
            nb.followup_at = now + cache.config.delay_first_probe_time
            log.info("%s: %s (%s) HRD 0 answered, NRD query in %.3f s (T.7)", self.name,
                     nb.label, ip_str(nb.key), cache.config.delay_first_probe_time)

    # ---- query / update completions ------------------------------------------------------------

    def QueryOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self._ops.pop(id(OffloadBlockList), None)
        shared = False
        for block in iter_blocks(OffloadBlockList):
            rec = self._by_handle.get(id(block.OffloadHandle))
            if isinstance(rec, _Shared):
                if rec.layer is OffloadLayer.NEIGHBOR and rec.nrd_query_pending:
                    self._nrd_answered(rec, block)  # T.7
                shared = True
                continue
            if not isinstance(rec, OffloadedConnection):
                continue
            rec.pending_ops = max(0, rec.pending_ops - 1)
            result = block.state if block.Status == NdisStatus.SUCCESS else None
            if result is None:
                rec.upload_wanted = True  # d.5: the host uploads what it could not query
            else:
                rec.last_query = result
            callbacks, rec.query_callbacks = rec.query_callbacks, []
            for cb in callbacks:
                cb(result)
        if shared:
            self._drop_unreferenced()  # a neighbor left idle while it was queried

    def UpdateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self._ops.pop(id(OffloadBlockList), None)
        for block in iter_blocks(OffloadBlockList):
            rec = self._by_handle.get(id(block.OffloadHandle))
            if isinstance(rec, _Shared):
                rec.update_pending = False
                if block.Status != NdisStatus.SUCCESS:
                    # d.5: upload what could not be updated (its dependent connections)
                    for r in self.records.values():
                        if r.path is rec or r.path.parent is rec:
                            r.upload_wanted = True
                self._drop_unreferenced()
                continue
            if not isinstance(rec, OffloadedConnection):
                continue
            rec.pending_ops = max(0, rec.pending_ops - 1)
            rec.update_pending = False
            if block.Status != NdisStatus.SUCCESS:
                rec.upload_wanted = True  # d.5

    def InvalidateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self._ops.pop(id(OffloadBlockList), None)
        for block in iter_blocks(OffloadBlockList):
            obj = self._by_handle.get(id(block.OffloadHandle))
            if not isinstance(obj, _Shared):
                continue
            obj.update_pending = False
            obj.invalidated = True  # SUCCESS or FAILURE: either way it must go (d.6)
            for r in self.records.values():
                if r.path is obj or r.path.parent is obj:
                    r.upload_wanted = True  # c.1: upload after invalidation
        self._drop_unreferenced()

    # ---- terminate -----------------------------------------------------------------------------

    def _service_uploads(self) -> int:
        """Terminate every connection that wants an upload and may be terminated now (V13:
        nothing outstanding on it; never while it is being offloaded)."""
        recs = [
            r for r in self.records.values()
            if r.upload_wanted and r.phase is OffloadState.OFFLOADED and r.pending_ops == 0
        ]
        include_idle = self._upload_all_pending and not any(
            r.phase is OffloadState.OFFLOADING for r in self.records.values()
        )
        if include_idle:
            self._upload_all_pending = False
        if not recs and not include_idle:
            return 0
        self._terminate(recs, include_idle_shared=include_idle)
        return len(recs)

    def _terminate(self, recs: list[OffloadedConnection], *, include_idle_shared: bool = False) -> None:
        going = {id(r) for r in recs}
        uploading = OffloadState.UPLOADING
        observers = self.observers
        log_info = log.isEnabledFor(logging.INFO)  # (once per tree, not per connection)
        for rec in recs:
            self._set_phase(rec, uploading, log_info)  # V13: no sends/receives from now on
            if observers:
                self._observe("terminate-start", rec)
        # V14: a neighbor/path goes only with (in the same tree as) its last dependents
        paths_going: list[_Shared] = []
        for pa in self._paths.values():
            if pa.phase != "offloaded" or pa.update_pending:
                continue
            if (pa.dependents and pa.dependents <= going) or (include_idle_shared and not pa.dependents):
                paths_going.append(pa)
        going |= {id(p) for p in paths_going}
        nbs_going = [
            nb for nb in self._neighbors.values()
            if nb.phase == "offloaded" and not nb.busy
            and ((nb.dependents and nb.dependents <= going) or (include_idle_shared and not nb.dependents))
        ]
        nb_ids = {id(n) for n in nbs_going}
        path_ids = {id(p) for p in paths_going}
        for s in (*paths_going, *nbs_going):
            s.phase = "terminating"

        # the tree's shape, grouped once (linear in the connections, whatever the fan-out)
        tcp_nodes: dict[int, list[OffloadNode]] = {}
        last_path: Any = None
        nodes: list[OffloadNode] = []
        for r in recs:
            pa = r.path
            if pa is not last_path:  # (recs of one path mostly come together)
                last_path = pa
                got = tcp_nodes.get(id(pa))
                if got is None:
                    got = tcp_nodes[id(pa)] = []
                nodes = got
            nodes.append(r.node)
        paths_of: dict[int, list[_Shared]] = {}
        for p in paths_going:
            paths_of.setdefault(id(p.parent), []).append(p)

        def path_node(pa: _Shared) -> OffloadNode:
            return OffloadNode(OffloadLayer.PATH, pa.handle, tcp_nodes.get(id(pa), []), label=pa.label)

        trees: list[OffloadBlockList] = []
        if nbs_going:
            trees.append(terminate_tree([
                OffloadNode(OffloadLayer.NEIGHBOR, nb.handle,
                            [path_node(p) for p in paths_of.get(id(nb), ())], label=nb.label)
                for nb in nbs_going
            ]))
        orphan_paths = [p for p in paths_going if id(p.parent) not in nb_ids]
        if orphan_paths:
            trees.append(terminate_tree([path_node(p) for p in orphan_paths]))
        lone = [r for r in recs if id(r.path) not in path_ids]
        if lone:
            trees.append(terminate_connections([r.handle for r in lone], labels=[r.handle.label for r in lone]))
        for root in trees:
            self._ops[id(root)] = ("terminate", root)
            self.binding.NdisTerminateOffload(root)

    def TerminateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        root = OffloadBlockList
        self._ops.pop(id(root), None)
        shared: list[_Shared] = []
        by_handle = self._by_handle
        get = by_handle.get
        paths: dict[int, _Shared] = {}  # the paths whose connections leave
        gone: set[int] = set()  # their nodes (alive in the paths' lists until pruned below)
        resume = self._resume
        # the levels are checked once per tree, not per connection
        log_info = log.isEnabledFor(logging.INFO)
        tcp_log_info = _tcp_logger.isEnabledFor(logging.INFO)
        # one pass: each connection is resumed as its block comes (its record is freed as soon
        # as it is resumed; keeping them all alive to the end tipped the collector into a full
        # collection, ~270 ms, inside the measured upload of 10,000)
        for block in list_blocks(root):
            obj = get(id(block.OffloadHandle))
            if isinstance(obj, OffloadedConnection):
                pa = obj.path
                if id(pa) not in paths:
                    paths[id(pa)] = pa
                gone.add(id(obj.node))
                resume(obj, block, log_info, tcp_log_info)
            elif isinstance(obj, _Shared):
                shared.append(obj)
        # The resumed connections leave their paths' node lists in one pass per path (a
        # list.remove each would be quadratic in the connections under a path).  Their nodes
        # stay alive in those lists until then, so no id in ``gone`` is reused meanwhile.
        for pa in paths.values():
            node = pa.node
            node.children = [n for n in node.children if id(n) not in gone]
        for s in shared:
            self._forget_shared(s)
        self._drop_unreferenced()
        self._power_ready()

    def _resume(
        self, rec: OffloadedConnection, block: OffloadBlockList, log_info: bool | None = None,
        tcp_log_info: bool | None = None,
    ) -> None:
        """d.3 / c.2: the host owns everything again; rebuild the connection.  ``log_info`` /
        ``tcp_log_info``: whether INFO is enabled for this module's / the TCP engine's logger
        (checked once per terminate tree by the caller; None: checked here)."""
        if log_info is None:
            log_info = log.isEnabledFor(logging.INFO)
        stack = self.stack
        now = stack.now
        counters = self.counters
        counters["uploads"] += 1
        deleg = block.state
        if not isinstance(deleg, TCP_OFFLOAD_STATE_DELEGATED) and hasattr(deleg, "Delegated"):
            deleg = deleg.Delegated
        is_tcp = isinstance(deleg, TCP_OFFLOAD_STATE_DELEGATED)
        buffered_head = deleg.BufferedData if is_tcp else None
        buffered = nbl_chain_bytes(buffered_head) if buffered_head is not None else b""
        # T.3 / d.3 step 6: the send data handed back, then what the target refused, in order
        chain = block.NetBufferListChain
        refused_bytes = 0
        if rec.unsent or chain is not None:
            pieces: list[tuple[int, bytes]] = list(rec.unsent)
            refused_bytes = sum(len(p) for _, p in rec.unsent)
            counters["refused_send_bytes"] += refused_bytes
            for i, nbl in enumerate(iter_nbls(chain)):
                tag = nbl.ProtocolReserved[1] if nbl.ProtocolReserved[0] is rec else None
                seqno = tag[0] if tag else -1_000_000 + i
                pieces.append((seqno, nbl.data))  # a view: joined (copied once) just below
                rec.outstanding = 0
            pieces.sort(key=lambda p: p[0])
            send_data = bytearray().join(p for _, p in pieces)  # becomes the send buffer
            rec.unsent = []
        else:
            send_data = bytearray()
        self._unlink(rec, node=False)  # (node: TerminateOffloadComplete)
        conn = None
        lost = block.Status != _SUCCESS or not is_tcp
        if not lost and not rec.aborted:
            try:
                # (in place: the offload-time snapshot is not needed after this)
                snap = snapshot_from_delegated(
                    deleg, rec.base, send_data,
                    rec.rbuf + buffered if rec.rbuf else bytearray(buffered), self.tps,
                    in_place=True,
                )
            except ConversionError as exc:
                log.warning("%s: %s returned state unusable: %s", self.name, rec.name, exc)
                lost = True
            else:
                if snap.state in EXPORTABLE_STATES:
                    try:
                        # (as self._import: the snapshot's buffers were built for this
                        # connection alone, no copies)
                        conn = TcpConnection.from_snapshot(
                            snap, stack.tcp_config, now, name=rec.name, take_buffers=True,
                            log_info=tcp_log_info)
                    except ValueError as exc:
                        log.warning("%s: %s cannot be resumed: %s", self.name, rec.name, exc)
                        lost = True
                else:
                    # TIME_WAIT / CLOSED (c.5): the connection is over; the app keeps its data
                    rec.rbuf += buffered
                    rec.state = snap.state
                    rec.eof_received = rec.eof_received or snap.fin_received
                    rec._closed = True
        if buffered_head is not None:
            # d.3 step 7: the data was delivered into the host's buffers; give the NBLs back
            self.binding.NdisOffloadTcpReceiveReturn(buffered_head)
        old = rec.phase
        rec.phase = _IN_HOST
        if self.observers:
            # before the resumed connection sends anything (the held segments come next)
            self._observe(
                "terminate-complete", rec, status=status_name(block.Status),
                outcome="resumed" if conn is not None else ("lost" if lost else "closed"),
                delegated=deleg if is_tcp else None,
                send_bytes=len(send_data) - refused_bytes, refused_bytes=refused_bytes,
                buffered=buffered,
            )
        if conn is not None:
            stack.attach(conn, rec.key)  # polled at once (it may owe a retransmission)
            rec.sock.swap(conn, _IN_HOST)
            if log_info:
                self._log_phase(rec, old, _IN_HOST)
            if rec.abort_requested or rec.close_requested or rec.held:
                self._finish_in_host(rec, conn)
            return
        # not rebuilt: lost (FAILURE), reset, aborted, or finished
        if lost:
            counters["lost"] += 1
            rec.reset_received = True
            rec.error = rec.error or "connection lost by the offload target"
            rec.state = TcpState.CLOSED
            rec._closed = True
            rec.rbuf.clear()
            log.warning("%s: %s lost at terminate (%s)", self.name, rec.name, status_name(block.Status))
        rec._closed = True
        rec.sock.offload_state = OffloadState.IN_HOST
        if log_info:
            self._log_phase(rec, old, OffloadState.IN_HOST)
        rec.held.clear()
        stack.release(rec.key)
        self.stack.scheduler.notify(rec.sock)

    def _import(self, snap: TcbSnapshot, now: float, name: str | None = None) -> Any:
        # the snapshot's buffers were built for this connection alone (_resume): no copies
        return TcpConnection.from_snapshot(snap, self.stack.tcp_config, now, name=name,
                                           take_buffers=True)

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _unlink(self, rec: OffloadedConnection, *, node: bool = True) -> None:
        self.records.pop(rec.key, None)
        self._by_handle.pop(id(rec.handle), None)
        # the handle is released: the target's context it held is dead (d.3 step 10; the
        # target's object refers back to the handle, so keeping it would make a reference
        # cycle per connection that only the garbage collector frees)
        rec.handle.MiniportOffloadContext = None
        pa = rec.path
        pa.dependents.discard(id(rec))
        if node and rec.node in pa.node.children:
            pa.node.children.remove(rec.node)

    def _forget_shared(self, s: _Shared) -> None:
        self._by_handle.pop(id(s.handle), None)
        s.handle.MiniportOffloadContext = None  # released (as in _unlink)
        if s.layer is OffloadLayer.NEIGHBOR:
            if self._neighbors.get(s.key) is s:
                del self._neighbors[s.key]
            if s.phase != "gone":
                self.stack.neighbors.unpin(s.key, self.stack.now)
        else:
            if self._paths.get(s.key) is s:
                del self._paths[s.key]
            nb = s.parent
            if nb is not None:
                nb.dependents.discard(id(s))
                if s.node in nb.node.children:
                    nb.node.children.remove(s.node)
        s.phase = "gone"
        # dependents of a failed object were failed too (d.7); the records handle themselves

    def _drop_unreferenced(self) -> None:
        """c.3: a neighbor/path with no dependents left (its dependents failed) is terminated
        on its own; a path first, its neighbor with it if that has nothing else."""
        idle_paths = [
            p for p in self._paths.values()
            if p.phase == "offloaded" and not p.dependents and not p.update_pending
        ]
        if not idle_paths and not any(
            n.phase == "offloaded" and not n.dependents for n in self._neighbors.values()
        ):
            return
        going = {id(p) for p in idle_paths}
        nbs = [
            n for n in self._neighbors.values()
            if n.phase == "offloaded" and n.dependents <= going and not n.busy
        ]
        for s in (*idle_paths, *nbs):
            s.phase = "terminating"
        trees = []
        nb_ids = {id(n) for n in nbs}
        if nbs:
            trees.append(terminate_tree([
                OffloadNode(OffloadLayer.NEIGHBOR, n.handle,
                            [OffloadNode(OffloadLayer.PATH, p.handle, [], label=p.label)
                             for p in idle_paths if p.parent is n], label=n.label)
                for n in nbs
            ]))
        rest = [p for p in idle_paths if id(p.parent) not in nb_ids]
        if rest:
            trees.append(terminate_tree([OffloadNode(OffloadLayer.PATH, p.handle, [], label=p.label) for p in rest]))
        for root in trees:
            self._ops[id(root)] = ("terminate", root)
            self.binding.NdisTerminateOffload(root)

    def _set_phase(self, rec: OffloadedConnection, new: OffloadState,
                   log_info: bool = True) -> None:
        """``log_info``: False when the caller knows INFO is off (checked once for a tree)."""
        old = rec.phase
        rec.phase = new
        if rec.sock.engine is rec:
            rec.sock.offload_state = new
        if log_info:
            self._log_phase(rec, old, new)

    def _log_phase(self, rec: OffloadedConnection, old: OffloadState, new: OffloadState) -> None:
        if old is not new and log.isEnabledFor(logging.INFO):
            log.info("%s: %s %s -> %s", self.name, rec.name, old, new)

    def _notify(self, rec: OffloadedConnection) -> None:
        self.stack.scheduler.notify(rec.sock)

    def _observe(self, event: str, rec: OffloadedConnection, **info: Any) -> None:
        """Tell every observer about a handoff event of ``rec`` (see ``observers``)."""
        info.update(key=rec.key, name=rec.name, sock=rec.sock)
        for fn in list(self.observers):
            fn(event, info)

