"""The NDIS library: miniport registration, bindings, routing of every chimney call (reference
a.1 - a.5), flavor conversion at every edge (b.2), and the completion queue.

Theory of operation
-------------------
* Requests go *down* as direct calls: ``binding.NdisInitiateOffload(root)`` converts the tree to
  the miniport flavor in place, stamps ``root.SourceHandle`` with the binding (NDIS uses it to
  route the completion, b.1) and calls the miniport's ``InitiateOffloadHandler``, which must
  save the tree and return.  TCP I/O calls stamp each NBL's ``SourceHandle`` the same way and
  pass the *stored context value* ``NdisOffloadHandle->MiniportOffloadContext`` as the
  ``MiniportOffloadContext`` argument (the [S] convention; a.3 leaves it UNCONFIRMED).
* Completions go *up* through a queue: ``NdisMInitiateOffloadComplete(root)`` /
  ``NdisTcpOffloadSendComplete(nbl)`` ... only enqueue; :meth:`Ndis.deliver_pending` (called by
  the run loop) converts the tree back to the protocol flavor and calls the protocol's
  completion handler.  A completion is therefore never delivered re-entrantly from inside the
  call that produced it.  ``NdisQueueIoWorkItem`` shares the same queue.  The queue is FIFO,
  except that whatever is queued *while* an item is being delivered runs right after that item
  (before older entries): an IM that answers a completion from below with its own completion
  upward thus delivers it to the host before anything the target queued later, so the host sees
  the same order with 0 or N IMs.
* Indications (``NdisTcpOffloadEventHandler``, ``NdisTcpOffloadReceiveHandler``,
  ``NdisMOffloadEventIndicate``, ``NdisMIndicateStatusEx``,
  ``NdisMIndicateReceiveNetBufferLists``) are synchronous, as in NDIS: the receive indication
  returns the protocol's answer and BytesConsumed, the reachability query returns after the
  host wrote its HostReachabilityDelta.  NDIS finds the binding of an offload handle through
  ``NDIS_OFFLOAD_HANDLE.NdisReserved[0]``, which it sets when the object is offloaded.
* Every crossing is reported to the :class:`~ndis.checker.ConformanceChecker` (if any), edge by
  edge; with IM drivers stacked there is one edge per binding.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .blocks import (
    NDIS_OFFLOAD_HANDLE,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    OffloadBlockList,
    iter_nbls,
    link_nbls,
    list_blocks,
    ndis_to_miniport,
    ndis_to_protocol,
)
from .driver import (
    NDIS_BIND_PARAMETERS,
    NDIS_STATUS_INDICATION,
    NDIS_TCP_OFFLOAD_EVENT_HANDLERS,
    Miniport,
    Protocol,
    complete_nbls,
    fail_tree,
)
from .state import (
    NDIS_CHIMNEY_OFFLOAD_TYPE,
    NDIS_DEVICE_POWER_STATE,
    NDIS_TCP_CONNECTION_OFFLOAD,
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    OID_PNP_SET_POWER,
    STATISTICS_OIDS,
)
from .status import NdisStatus, Operation, status_name

log = logging.getLogger(__name__)

__all__ = ["Ndis", "NDIS_MINIPORT_HANDLE", "NDIS_BINDING_HANDLE", "IoKind"]


class IoKind:
    """Names of the TCP I/O paths (a.3)."""

    SEND = "send"
    RECEIVE = "receive"
    DISCONNECT = "disconnect"
    FORWARD = "forward"


_COMPLETE_NAMES = {
    Operation.INITIATE: "NdisMInitiateOffloadComplete",
    Operation.TERMINATE: "NdisMTerminateOffloadComplete",
    Operation.UPDATE: "NdisMUpdateOffloadComplete",
    Operation.INVALIDATE: "NdisMInvalidateOffloadComplete",
    Operation.QUERY: "NdisMQueryOffloadStateComplete",
}
_REQUEST_NAMES = {
    Operation.INITIATE: "NdisInitiateOffload",
    Operation.TERMINATE: "NdisTerminateOffload",
    Operation.UPDATE: "NdisUpdateOffload",
    Operation.INVALIDATE: "NdisInvalidateOffload",
    Operation.QUERY: "NdisQueryOffloadState",
}


class _NullChecker:
    """Observer used when no checker is attached: every hook is a no-op."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


class NDIS_BINDING_HANDLE:
    """One binding (NdisOpenAdapterEx): the protocol edge of a protocol <-> miniport pair.

    Everything a protocol driver calls *down* is a method here."""

    def __init__(self, ndis: Ndis, protocol: Protocol, miniport: NDIS_MINIPORT_HANDLE) -> None:
        self.ndis = ndis
        self.protocol = protocol
        self.miniport = miniport
        self.name = f"{protocol.name}->{miniport.name}"
        self.client_generic, self.client_tcp = protocol.client_characteristics()
        self.BindParameters = NDIS_BIND_PARAMETERS(
            TcpConnectionOffloadCapabilities=miniport.capabilities if miniport.chimney else None,
            ChimneyEnabled=miniport.chimney,
            MiniportName=miniport.name,
        )
        self.closed = False

    def __repr__(self) -> str:
        return f"<binding {self.name}>"

    @property
    def TcpConnectionOffloadCapabilities(self) -> NDIS_TCP_CONNECTION_OFFLOAD | None:  # noqa: N802
        return self.BindParameters.TcpConnectionOffloadCapabilities

    # -- a.2 state operations --------------------------------------------------------------------
    def NdisInitiateOffload(self, OffloadBlockList: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) -> None:  # noqa: N802,N803
        self.ndis._request(self, Operation.INITIATE, OffloadBlockList)

    def NdisTerminateOffload(self, OffloadBlockList: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) -> None:  # noqa: N802,N803
        self.ndis._request(self, Operation.TERMINATE, OffloadBlockList)

    def NdisUpdateOffload(self, OffloadBlockList: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) -> None:  # noqa: N802,N803
        self.ndis._request(self, Operation.UPDATE, OffloadBlockList)

    def NdisInvalidateOffload(self, OffloadBlockList: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) -> None:  # noqa: N802,N803
        self.ndis._request(self, Operation.INVALIDATE, OffloadBlockList)

    def NdisQueryOffloadState(self, OffloadBlockList: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) -> None:  # noqa: N802,N803
        self.ndis._request(self, Operation.QUERY, OffloadBlockList)

    # -- a.3 TCP I/O -------------------------------------------------------------------------------
    def NdisOffloadTcpSend(self, NdisOffloadHandle: NDIS_OFFLOAD_HANDLE, NetBufferList: NET_BUFFER_LIST) -> int:  # noqa: N802,N803,E501
        return self.ndis._io(self, IoKind.SEND, NdisOffloadHandle, NetBufferList, None)

    def NdisOffloadTcpReceive(self, NdisOffloadHandle: NDIS_OFFLOAD_HANDLE, NetBufferList: NET_BUFFER_LIST) -> int:  # noqa: N802,N803,E501
        return self.ndis._io(self, IoKind.RECEIVE, NdisOffloadHandle, NetBufferList, None)

    def NdisOffloadTcpDisconnect(  # noqa: N802
        self, NdisOffloadHandle: NDIS_OFFLOAD_HANDLE, NetBufferList: NET_BUFFER_LIST, Flags: int  # noqa: N803
    ) -> int:
        return self.ndis._io(self, IoKind.DISCONNECT, NdisOffloadHandle, NetBufferList, Flags)

    def NdisOffloadTcpForward(self, NdisOffloadHandle: NDIS_OFFLOAD_HANDLE, NetBufferList: NET_BUFFER_LIST) -> int:  # noqa: N802,N803,E501
        return self.ndis._io(self, IoKind.FORWARD, NdisOffloadHandle, NetBufferList, None)

    def NdisOffloadTcpReceiveReturn(self, NetBufferList: NET_BUFFER_LIST) -> int:  # noqa: N802,N803
        """a.3: synchronous, no completion; always SUCCESS."""
        return self.ndis._receive_return(self, NetBufferList)

    # -- OIDs --------------------------------------------------------------------------------------
    def NdisSetTcpConnectionOffloadParameters(  # noqa: N802
        self, params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
    ) -> int:
        """Set OID_TCP_CONNECTION_OFFLOAD_PARAMETERS (a.1); answered synchronously here."""
        params.validate()
        return self.miniport.miniport.SetTcpConnectionOffloadParameters(params)

    def NdisSetPower(self, DeviceState: int) -> int:  # noqa: N802,N803
        """OID_PNP_SET_POWER (d.9).  SUCCESS / an error now, or PENDING: the protocol's
        OidRequestComplete(OID_PNP_SET_POWER, status) follows once the miniport completes it
        (a target pends a low-power state until every offloaded object was uploaded)."""
        try:
            state = NDIS_DEVICE_POWER_STATE(DeviceState)
        except ValueError:
            return NdisStatus.INVALID_DATA
        if state is NDIS_DEVICE_POWER_STATE.NdisDeviceStateUnspecified:
            return NdisStatus.INVALID_DATA
        mp = self.miniport
        if OID_PNP_SET_POWER in mp._oid_requests:
            return NdisStatus.INVALID_STATE  # one power request at a time
        mp._oid_requests[OID_PNP_SET_POWER] = self
        status = mp.miniport.SetPower(state)
        if status != NdisStatus.PENDING:
            mp._oid_requests.pop(OID_PNP_SET_POWER, None)
        log.info("%s: OID_PNP_SET_POWER %s -> %s", self.name, state.name, status_name(status))
        return status  # type: ignore[no-any-return]

    def NdisQueryOffloadStatistics(self, Oid: int) -> tuple[int, Any]:  # noqa: N802,N803
        """Query OID_TCP4_OFFLOAD_STATS / OID_TCP6_OFFLOAD_STATS / OID_IP4_OFFLOAD_STATS /
        OID_IP6_OFFLOAD_STATS (b.17, T.10): (status, the statistics structure or None).  Any
        other OID: INVALID_OID, as NDIS answers an OID no driver handles."""
        if Oid not in STATISTICS_OIDS:
            return NdisStatus.INVALID_OID, None
        if not self.miniport.chimney:
            return NdisStatus.NOT_SUPPORTED, None
        return self.miniport.miniport.QueryOffloadStatistics(Oid)  # type: ignore[no-any-return]

    def NdisResetOffloadStatistics(self, Oid: int) -> int:  # noqa: N802,N803
        """Set of a statistics OID (b.17: the contents are ignored, the counters restart at 0)."""
        if Oid not in STATISTICS_OIDS:
            return NdisStatus.INVALID_OID
        if not self.miniport.chimney:
            return NdisStatus.NOT_SUPPORTED
        return self.miniport.miniport.ResetOffloadStatistics(Oid)  # type: ignore[no-any-return]


class NDIS_MINIPORT_HANDLE:
    """NDIS's handle for one registered miniport: everything a miniport calls *up*."""

    def __init__(
        self,
        ndis: Ndis,
        miniport: Miniport,
        capabilities: NDIS_TCP_CONNECTION_OFFLOAD | None,
        name: str,
        intermediate: bool,
    ) -> None:
        self.ndis = ndis
        self.miniport = miniport
        self.name = name
        self.intermediate = intermediate
        tables = miniport.provider_characteristics()
        self.chimney = tables is not None and capabilities is not None
        self.provider_generic, self.provider_tcp = tables if tables else (None, None)
        if capabilities is not None:
            capabilities.validate()
        self.capabilities = capabilities
        self.bindings: list[NDIS_BINDING_HANDLE] = []
        # OID -> the binding whose request the miniport pended (NdisMOidRequestComplete)
        self._oid_requests: dict[int, NDIS_BINDING_HANDLE] = {}
        # id(root) -> (binding, op, root): outstanding state operations (fallback routing)
        self._outstanding: dict[int, tuple[NDIS_BINDING_HANDLE, Operation, OffloadBlockList]] = {}
        self._handlers = NDIS_TCP_OFFLOAD_EVENT_HANDLERS(
            NdisTcpOffloadEventHandler=self.NdisTcpOffloadEventHandler,
            NdisTcpOffloadReceiveHandler=self.NdisTcpOffloadReceiveHandler,
            NdisTcpOffloadSendComplete=self.NdisTcpOffloadSendComplete,
            NdisTcpOffloadReceiveComplete=self.NdisTcpOffloadReceiveComplete,
            NdisTcpOffloadDisconnectComplete=self.NdisTcpOffloadDisconnectComplete,
            NdisTcpOffloadForwardComplete=self.NdisTcpOffloadForwardComplete,
        )

    def __repr__(self) -> str:
        return f"<miniport {self.name}>"

    # -- a.1 -------------------------------------------------------------------------------------
    def NdisMGetOffloadHandlers(  # noqa: N802
        self, ChimneyType: int = NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload  # noqa: N803
    ) -> tuple[int, NDIS_TCP_OFFLOAD_EVENT_HANDLERS | None]:
        if ChimneyType != NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload:
            return NdisStatus.NOT_SUPPORTED, None
        return NdisStatus.SUCCESS, self._handlers

    def NdisQueueIoWorkItem(self, fn: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        """Run ``fn(*args)`` later from the run loop (same FIFO as completions)."""
        self.ndis._queue.append(("work", None, (fn, args)))

    # -- a.2 completions ---------------------------------------------------------------------------
    def NdisMInitiateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self.ndis._complete(self, Operation.INITIATE, OffloadBlockList)

    def NdisMTerminateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self.ndis._complete(self, Operation.TERMINATE, OffloadBlockList)

    def NdisMUpdateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self.ndis._complete(self, Operation.UPDATE, OffloadBlockList)

    def NdisMInvalidateOffloadComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self.ndis._complete(self, Operation.INVALIDATE, OffloadBlockList)

    def NdisMQueryOffloadStateComplete(self, OffloadBlockList: OffloadBlockList) -> None:  # noqa: N802,N803
        self.ndis._complete(self, Operation.QUERY, OffloadBlockList)

    def complete_state_operation(self, op: Operation, root: OffloadBlockList) -> None:
        """The NdisM...Complete matching ``op``."""
        self.ndis._complete(self, op, root)

    # -- a.3 I/O completions (from NDIS_TCP_OFFLOAD_EVENT_HANDLERS) --------------------------------
    def NdisTcpOffloadSendComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        self.ndis._io_complete(self, IoKind.SEND, NetBufferList)

    def NdisTcpOffloadReceiveComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        self.ndis._io_complete(self, IoKind.RECEIVE, NetBufferList)

    def NdisTcpOffloadDisconnectComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        self.ndis._io_complete(self, IoKind.DISCONNECT, NetBufferList)

    def NdisTcpOffloadForwardComplete(self, NetBufferList: NET_BUFFER_LIST) -> None:  # noqa: N802,N803
        self.ndis._io_complete(self, IoKind.FORWARD, NetBufferList)

    # -- a.4 indications ---------------------------------------------------------------------------
    def NdisTcpOffloadEventHandler(  # noqa: N802
        self, NdisOffloadHandle: Any, EventType: int, EventSpecificInformation: int  # noqa: N803
    ) -> None:
        self.ndis._event(self, NdisOffloadHandle, EventType, EventSpecificInformation)

    def NdisTcpOffloadReceiveHandler(  # noqa: N802
        self, NdisOffloadHandle: Any, NetBufferList: NET_BUFFER_LIST, Status: int = NdisStatus.SUCCESS  # noqa: N803,E501
    ) -> tuple[int, int]:
        return self.ndis._receive_indicate(self, NdisOffloadHandle, NetBufferList, Status)

    def NdisMOffloadEventIndicate(self, OffloadBlockList: Any, IndicationCode: int) -> None:  # noqa: N802,N803
        self.ndis._offload_event(self, OffloadBlockList, IndicationCode)

    def NdisMOidRequestComplete(self, Oid: int, Status: int) -> None:  # noqa: N802,N803
        """Complete an OID request the miniport returned PENDING for; the requesting
        protocol's OidRequestComplete runs from the queue (as any completion)."""
        binding = self._oid_requests.pop(Oid, None)
        if binding is None:
            log.error("%s: NdisMOidRequestComplete for 0x%08X with no pending request", self.name, Oid)
            return
        self.ndis._queue.append(("work", None, (binding.protocol.OidRequestComplete, (Oid, Status))))

    def NdisMIndicateStatusEx(self, StatusIndication: NDIS_STATUS_INDICATION) -> None:  # noqa: N802,N803
        self.ndis._status(self, StatusIndication)

    def NdisMIndicateReceiveNetBufferLists(  # noqa: N802
        self, NetBufferLists: NET_BUFFER_LIST, PortNumber: int = 0, ReceiveFlags: int = 0  # noqa: N803
    ) -> None:
        """a.5: the ordinary receive path.  The NBLs are considered returned when the call
        returns (NDIS_RECEIVE_FLAGS_RESOURCES semantics)."""
        count = sum(1 for _ in iter_nbls(NetBufferLists))
        for b in list(self.bindings):
            b.protocol.ReceiveNetBufferLists(NetBufferLists, PortNumber, count, ReceiveFlags)


class Ndis:
    """The NDIS library instance: owns miniports, bindings, and the completion queue."""

    def __init__(self, checker: Any = None) -> None:
        self.checker = checker if checker is not None else _NullChecker()
        self.miniports: list[NDIS_MINIPORT_HANDLE] = []
        self._queue: deque[tuple[str, Any, Any]] = deque()
        self._delivering = False

    # -- registration / binding ---------------------------------------------------------------------
    def register_miniport(
        self,
        miniport: Miniport,
        *,
        capabilities: NDIS_TCP_CONNECTION_OFFLOAD | None = None,
        name: str = "",
        intermediate: bool = False,
    ) -> NDIS_MINIPORT_HANDLE:
        """MiniportInitializeEx + NdisMSetMiniportAttributes + NdisSetOptionalHandlers (a.1)."""
        handle = NDIS_MINIPORT_HANDLE(
            self, miniport, capabilities, name or getattr(miniport, "name", "miniport"), intermediate
        )
        miniport.ndis = handle
        self.miniports.append(handle)
        log.info("registered miniport %s chimney=%s", handle.name, handle.chimney)
        return handle

    def open_adapter(
        self, protocol: Protocol, miniport: NDIS_MINIPORT_HANDLE
    ) -> NDIS_BINDING_HANDLE:
        """NdisOpenAdapterEx: bind ``protocol`` to ``miniport``; capabilities passed up."""
        binding = NDIS_BINDING_HANDLE(self, protocol, miniport)
        miniport.bindings.append(binding)
        protocol.binding = binding
        self.checker.bind(binding)
        protocol.BindAdapter(binding.BindParameters)
        log.info("bound %s", binding.name)
        return binding

    # -- the run loop side ---------------------------------------------------------------------------
    def pending(self) -> int:
        """Number of queued completions / work items."""
        return len(self._queue)

    def has_pending(self) -> bool:
        return bool(self._queue)

    def deliver_pending(self, limit: int | None = None) -> int:
        """Deliver queued completions and run work items, FIFO, including those queued while
        delivering, until the queue is empty or ``limit`` items were processed."""
        if self._delivering:
            raise RuntimeError("deliver_pending is not re-entrant")
        self._delivering = True
        done = 0
        try:
            while self._queue and (limit is None or done < limit):
                kind, edge, payload = self._queue.popleft()
                done += 1
                backlog, self._queue = self._queue, deque()
                try:
                    if kind == "work":
                        fn, args = payload
                        fn(*args)
                    elif kind == "state":
                        self._deliver_state(edge, *payload)
                    else:
                        self._deliver_io(edge, kind, payload)
                finally:
                    # what this delivery queued runs next (a completion climbs the whole IM
                    # stack before anything queued earlier), then the older backlog
                    new, self._queue = self._queue, backlog
                    self._queue.extendleft(reversed(new))
        finally:
            self._delivering = False
        return done

    run_until_idle = deliver_pending

    # -- requests down -------------------------------------------------------------------------------
    def _request(self, binding: NDIS_BINDING_HANDLE, op: Operation, root: OffloadBlockList) -> None:
        mp = binding.miniport
        self.checker.request(binding, op, root)
        blocks = list_blocks(root)
        initiate = op is Operation.INITIATE
        for block in blocks:
            ndis_to_miniport(block)  # b.2
            if initiate:
                handle = block.NdisOffloadHandle  # type: ignore[attr-defined]
                if isinstance(handle, NDIS_OFFLOAD_HANDLE):
                    handle.NdisReserved[0] = binding  # routes later indications (b.3)
        root.SourceHandle = binding  # b.1: NDIS uses it to route the completion
        if op is Operation.INITIATE:
            for block in blocks:
                for nbl in iter_nbls(block.NetBufferListChain):
                    nbl.SourceHandle = binding
        mp._outstanding[id(root)] = (binding, op, root)
        if not mp.chimney:
            # e.1: chimney blocked for this miniport; NDIS fails the request itself.
            log.warning("%s: %s on a non-chimney miniport", binding.name, _REQUEST_NAMES[op])
            fail_tree(root, op)
            self._queue.append(("state", binding, (op, root)))
            mp._outstanding.pop(id(root), None)
            return
        self.checker.request_dispatched(binding, op, root)
        handler = {
            Operation.INITIATE: mp.provider_generic.InitiateOffloadHandler,  # type: ignore[union-attr]
            Operation.TERMINATE: mp.provider_generic.TerminateOffloadHandler,  # type: ignore[union-attr]
            Operation.UPDATE: mp.provider_generic.UpdateOffloadHandler,  # type: ignore[union-attr]
            Operation.INVALIDATE: mp.provider_generic.InvalidateOffloadHandler,  # type: ignore[union-attr]
            Operation.QUERY: mp.provider_generic.QueryOffloadHandler,  # type: ignore[union-attr]
        }[op]
        handler(root)
        self.checker.request_returned(binding, op, root)

    def _complete(self, mp: NDIS_MINIPORT_HANDLE, op: Operation, root: OffloadBlockList) -> None:
        entry = mp._outstanding.pop(id(root), None)
        binding = root.SourceHandle
        if not isinstance(binding, NDIS_BINDING_HANDLE) or binding not in mp.bindings:
            # the miniport clobbered SourceHandle (b.1 says it must not); fall back
            binding = entry[0] if entry is not None else None
        self.checker.complete(mp, binding, op, root)
        if binding is None:
            log.error("%s: %s for an unknown tree %r dropped", mp.name, _COMPLETE_NAMES[op], root)
            return
        self._queue.append(("state", binding, (op, root)))

    def _deliver_state(self, binding: NDIS_BINDING_HANDLE, op: Operation, root: OffloadBlockList) -> None:
        for block in list_blocks(root):
            ndis_to_protocol(block)  # b.2
        self.checker.complete_delivering(binding, op, root)
        g = binding.client_generic
        handler = {
            Operation.INITIATE: g.InitiateOffloadCompleteHandler,
            Operation.TERMINATE: g.TerminateOffloadCompleteHandler,
            Operation.UPDATE: g.UpdateOffloadCompleteHandler,
            Operation.INVALIDATE: g.InvalidateOffloadCompleteHandler,
            Operation.QUERY: g.QueryOffloadCompleteHandler,
        }[op]
        handler(root)
        self.checker.complete_delivered(binding, op, root)

    # -- TCP I/O ---------------------------------------------------------------------------------------
    def _io(
        self,
        binding: NDIS_BINDING_HANDLE,
        kind: str,
        handle: NDIS_OFFLOAD_HANDLE,
        nbl: NET_BUFFER_LIST,
        flags: int | None,
    ) -> int:
        mp = binding.miniport
        self.checker.io_request(binding, kind, handle, nbl, flags)
        for n in iter_nbls(nbl):
            n.SourceHandle = binding
        if not mp.chimney:
            complete_nbls(nbl, NdisStatus.REQUEST_ABORTED)
            self._queue.append((kind, binding, nbl))
            return NdisStatus.PENDING
        ctx = handle.MiniportOffloadContext if handle is not None else None
        t = mp.provider_tcp
        assert t is not None
        if kind == IoKind.SEND:
            status = t.TcpOffloadSendHandler(ctx, nbl)
        elif kind == IoKind.RECEIVE:
            status = t.TcpOffloadReceiveHandler(ctx, nbl)
        elif kind == IoKind.DISCONNECT:
            status = t.TcpOffloadDisconnectHandler(ctx, nbl, flags)
        else:
            status = t.TcpOffloadForwardHandler(ctx, nbl)
        self.checker.io_returned(binding, kind, handle, nbl, status)
        return NdisStatus.PENDING  # a.3: always PENDING to the caller

    def _io_complete(self, mp: NDIS_MINIPORT_HANDLE, kind: str, head: NET_BUFFER_LIST) -> None:
        self.checker.io_complete(mp, kind, head)
        # split the chain per binding (SourceHandle), preserving order
        groups: dict[int, tuple[NDIS_BINDING_HANDLE, list[NET_BUFFER_LIST]]] = {}
        for nbl in list(iter_nbls(head)):
            b = nbl.SourceHandle
            if not isinstance(b, NDIS_BINDING_HANDLE) or b not in mp.bindings:
                log.error("%s: %s completion of %s with no binding dropped", mp.name, kind, nbl.label)
                continue
            groups.setdefault(id(b), (b, []))[1].append(nbl)
        for b, nbls in groups.values():
            self._queue.append((kind, b, link_nbls(nbls)))

    def _deliver_io(self, binding: NDIS_BINDING_HANDLE, kind: str, head: NET_BUFFER_LIST) -> None:
        self.checker.io_complete_delivering(binding, kind, head)
        t = binding.client_tcp
        if kind == IoKind.SEND:
            t.TcpOffloadSendCompleteHandler(head)
        elif kind == IoKind.RECEIVE:
            t.TcpOffloadReceiveCompleteHandler(head)
        elif kind == IoKind.DISCONNECT:
            t.TcpOffloadDisconnectCompleteHandler(head)
        else:
            t.TcpOffloadForwardCompleteHandler(head)
        self.checker.io_complete_delivered(binding, kind, head)

    def _receive_return(self, binding: NDIS_BINDING_HANDLE, nbl: NET_BUFFER_LIST) -> int:
        mp = binding.miniport
        self.checker.receive_return(binding, nbl)
        status = NdisStatus.SUCCESS
        if mp.provider_tcp is not None:
            status = mp.provider_tcp.TcpOffloadReceiveReturnHandler(nbl)
        self.checker.receive_return_returned(binding, nbl, status)
        return NdisStatus.SUCCESS

    # -- indications -------------------------------------------------------------------------------------
    def _binding_of(self, mp: NDIS_MINIPORT_HANDLE, handle: Any) -> NDIS_BINDING_HANDLE | None:
        if isinstance(handle, NDIS_OFFLOAD_HANDLE):
            b = handle.NdisReserved[0]
            if isinstance(b, NDIS_BINDING_HANDLE) and b in mp.bindings:
                return b
        return None

    def _event(self, mp: NDIS_MINIPORT_HANDLE, handle: Any, event_type: int, info: int) -> None:
        binding = self._binding_of(mp, handle)
        self.checker.event(mp, binding, handle, event_type, info)
        if binding is None:
            log.error("%s: event %d for unknown handle %r dropped", mp.name, event_type, handle)
            return
        binding.client_tcp.TcpOffloadEventHandler(handle, event_type, info)
        self.checker.event_returned(binding, handle, event_type, info)

    def _receive_indicate(
        self, mp: NDIS_MINIPORT_HANDLE, handle: Any, nbl: NET_BUFFER_LIST, status: int
    ) -> tuple[int, int]:
        binding = self._binding_of(mp, handle)
        self.checker.receive_indicate(mp, binding, handle, nbl, status)
        if binding is None:
            log.error("%s: receive indication for unknown handle %r refused", mp.name, handle)
            return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0
        result = binding.client_tcp.TcpOffloadReceiveIndicateHandler(handle, nbl, status)
        if isinstance(result, tuple):
            res_status, consumed = result
        else:  # a handler returning only a status
            res_status = result
            consumed = nbl.DataLength if result == NdisStatus.SUCCESS else 0
        self.checker.receive_indicate_returned(binding, handle, nbl, res_status, consumed)
        return res_status, consumed

    def _offload_event(self, mp: NDIS_MINIPORT_HANDLE, block: Any, code: int) -> None:
        handle = block.NdisOffloadHandle if block is not None else None
        binding = self._binding_of(mp, handle)
        targets = [binding] if binding is not None else ([] if block is not None else list(mp.bindings))
        self.checker.offload_event(mp, binding, block, code)
        for b in targets:
            if block is not None:
                ndis_to_protocol(block)
            b.client_generic.IndicateOffloadEventHandler(block, code)
            if block is not None:
                ndis_to_miniport(block)  # the target owns this memory again
        self.checker.offload_event_returned(mp, binding, block, code)

    def _status(self, mp: NDIS_MINIPORT_HANDLE, indication: NDIS_STATUS_INDICATION) -> None:
        self.checker.status(mp, indication)
        if indication.StatusCode == NdisStatus.OFFLOAD_RESUME and isinstance(
            indication.StatusBuffer, NDIS_TCP_CONNECTION_OFFLOAD
        ):
            mp.capabilities = indication.StatusBuffer  # d.8: possibly new capabilities
            for b in mp.bindings:
                b.BindParameters.TcpConnectionOffloadCapabilities = indication.StatusBuffer
        for b in list(mp.bindings):
            b.protocol.StatusEx(indication)
