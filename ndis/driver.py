"""Driver interfaces as explicit handler tables with safe defaults (reference a.1, b.15).

A miniport (offload target, or an IM's miniport edge) and a protocol driver (host stack, or an
IM's protocol edge) are written by subclassing :class:`Miniport` / :class:`Protocol` and
overriding the handlers they support.  At registration NDIS builds the documented
characteristics tables from the object (``NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS``
and ``..._TCP_CHARACTERISTICS`` for a miniport, the two ``NDIS_CLIENT_...`` tables for a
protocol) and routes every call through those tables only.  Every slot always holds a callable
(FreeBSD ``init_toedev`` style): a handler the driver did not supply is a safe default.

Miniport contract (what an offload target implements)::

    class MyTarget(Miniport):
        def InitiateOffload(self, OffloadBlockList) -> None      # save the tree, return
        def TerminateOffload(self, OffloadBlockList) -> None
        def UpdateOffload(self, OffloadBlockList) -> None
        def InvalidateOffload(self, OffloadBlockList) -> None
        def QueryOffload(self, OffloadBlockList) -> None
        def TcpOffloadSend(self, MiniportOffloadContext, NetBufferList) -> int     # PENDING
        def TcpOffloadReceive(self, MiniportOffloadContext, NetBufferList) -> int  # PENDING
        def TcpOffloadDisconnect(self, MiniportOffloadContext, NetBufferList, Flags) -> int
        def TcpOffloadForward(self, MiniportOffloadContext, NetBufferList) -> int  # PENDING
        def TcpOffloadReceiveReturn(self, NetBufferList) -> int                    # SUCCESS
        def SetTcpConnectionOffloadParameters(self, params) -> int                 # the OID

    ``self.ndis`` (an NDIS_MINIPORT_HANDLE, set at registration) is the way back up:
    NdisMInitiateOffloadComplete / NdisMTerminateOffloadComplete / NdisMUpdateOffloadComplete /
    NdisMInvalidateOffloadComplete / NdisMQueryOffloadStateComplete(root),
    NdisTcpOffloadSendComplete / ReceiveComplete / DisconnectComplete / ForwardComplete(nbl),
    NdisTcpOffloadEventHandler(NdisOffloadHandle, EventType, EventSpecificInformation),
    NdisTcpOffloadReceiveHandler(NdisOffloadHandle, nbl, Status) -> (status, BytesConsumed),
    NdisMOffloadEventIndicate(block, IndicationCode), NdisMIndicateStatusEx(indication),
    NdisMIndicateReceiveNetBufferLists(nbl), NdisMGetOffloadHandlers(type),
    NdisQueueIoWorkItem(fn, *args).

Protocol contract (what a host stack implements)::

    class MyHost(Protocol):
        def InitiateOffloadComplete(self, OffloadBlockList) -> None
        def TerminateOffloadComplete / UpdateOffloadComplete / InvalidateOffloadComplete /
            QueryOffloadComplete(self, OffloadBlockList) -> None
        def IndicateOffloadEvent(self, OffloadBlockList, IndicationCode) -> None
        def TcpOffloadSendComplete / TcpOffloadReceiveComplete / TcpOffloadDisconnectComplete /
            TcpOffloadForwardComplete(self, NetBufferList) -> None
        def TcpOffloadEvent(self, OffloadContext, EventType, EventSpecificInformation) -> None
        def TcpOffloadReceiveIndicate(self, OffloadContext, NetBufferList, Status)
            -> tuple[int, int]                                   # (status, BytesConsumed)
        def StatusEx(self, StatusIndication) -> None
        def ReceiveNetBufferLists(self, NetBufferLists, PortNumber, NumberOfNetBufferLists,
                                  ReceiveFlags) -> None
        def BindAdapter(self, BindParameters) -> None

    ``self.binding`` (an NDIS_BINDING_HANDLE, set by ``Ndis.open_adapter``) is the way down:
    NdisInitiateOffload / NdisTerminateOffload / NdisUpdateOffload / NdisInvalidateOffload /
    NdisQueryOffloadState(root), NdisOffloadTcpSend / Receive / Forward(handle, nbl) -> PENDING,
    NdisOffloadTcpDisconnect(handle, nbl, Flags), NdisOffloadTcpReceiveReturn(nbl).

The protocol object is the ``ProtocolBindingContext`` of one binding and the miniport object
is the ``MiniportAdapterContext``, so those parameters are implicit (``self``).

Example::

    ndis = Ndis(checker=ConformanceChecker())
    nic = ndis.register_miniport(MyTarget(), capabilities=NDIS_TCP_CONNECTION_OFFLOAD(
        TcpConnectionOffloadCapacity=1024))
    host = MyHost()
    ndis.open_adapter(host, nic)
    host.binding.NdisInitiateOffload(offload_connection_tree(n_state, p_state, t_state))
    ndis.deliver_pending()      # the run loop delivers completions
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .blocks import (
    NET_BUFFER_LIST,
    BlockRole,
    OffloadBlockList,
    block_role,
    dependents,
    iter_nbls,
    iter_tree,
)
from .state import (
    NDIS_CHIMNEY_OFFLOAD_TYPE,
    NDIS_OBJECT_HEADER,
    NDIS_TCP_CONNECTION_OFFLOAD,
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
)
from .status import NdisStatus, Operation

if TYPE_CHECKING:
    from .ndis import NDIS_BINDING_HANDLE, NDIS_MINIPORT_HANDLE

log = logging.getLogger(__name__)

NDIS_OBJECT_TYPE_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS = 0x8E
NDIS_OBJECT_TYPE_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS = 0x8F
NDIS_OBJECT_TYPE_CLIENT_CHIMNEY_OFFLOAD_CHARACTERISTICS = 0x93
NDIS_OBJECT_TYPE_PROVIDER_CHIMNEY_OFFLOAD_CHARACTERISTICS = 0x94
NDIS_OBJECT_TCP_OFFLOAD_REVISION_1 = 1

Handler = Callable[..., Any]


# ---------------------------------------------------------------------------------------------
# Status indication and bind parameters


@dataclass
class NDIS_STATUS_INDICATION:
    """What NdisMIndicateStatusEx carries (a.4): OFFLOAD_PAUSE / OFFLOAD_RESUME (StatusBuffer =
    NDIS_TCP_CONNECTION_OFFLOAD) / UPLOAD_ALL, or any other NDIS status."""

    StatusCode: int
    StatusBuffer: Any = None
    SourceHandle: Any = None
    PortNumber: int = 0


@dataclass
class NDIS_BIND_PARAMETERS:
    """The part of NDIS_BIND_PARAMETERS the chimney uses (a.1)."""

    TcpConnectionOffloadCapabilities: NDIS_TCP_CONNECTION_OFFLOAD | None = None
    # False when the miniport registered no chimney handlers: NDIS blocks chimney (e.1)
    ChimneyEnabled: bool = False
    MiniportName: str = ""


# ---------------------------------------------------------------------------------------------
# b.15 characteristics tables


@dataclass
class NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS:
    InitiateOffloadHandler: Handler
    TerminateOffloadHandler: Handler
    UpdateOffloadHandler: Handler
    InvalidateOffloadHandler: Handler
    QueryOffloadHandler: Handler
    Flags: int = 0
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(
            NDIS_OBJECT_TYPE_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS, 0, 0
        )
    )


@dataclass
class NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS:
    TcpOffloadSendHandler: Handler
    TcpOffloadReceiveHandler: Handler
    TcpOffloadDisconnectHandler: Handler
    TcpOffloadForwardHandler: Handler
    TcpOffloadReceiveReturnHandler: Handler
    Flags: int = 0
    OffloadType: int = NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(
            NDIS_OBJECT_TYPE_PROVIDER_CHIMNEY_OFFLOAD_CHARACTERISTICS, 0, 0
        )
    )


@dataclass
class NDIS_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS:
    InitiateOffloadCompleteHandler: Handler
    TerminateOffloadCompleteHandler: Handler
    UpdateOffloadCompleteHandler: Handler
    InvalidateOffloadCompleteHandler: Handler
    QueryOffloadCompleteHandler: Handler
    IndicateOffloadEventHandler: Handler
    Flags: int = 0
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(
            NDIS_OBJECT_TYPE_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS, 1, 0
        )
    )


@dataclass
class NDIS_CLIENT_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS:
    TcpOffloadSendCompleteHandler: Handler
    TcpOffloadReceiveCompleteHandler: Handler
    TcpOffloadDisconnectCompleteHandler: Handler
    TcpOffloadForwardCompleteHandler: Handler
    TcpOffloadEventHandler: Handler
    TcpOffloadReceiveIndicateHandler: Handler
    Flags: int = 0
    OffloadType: int = NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(
            NDIS_OBJECT_TYPE_CLIENT_CHIMNEY_OFFLOAD_CHARACTERISTICS, 1, 0
        )
    )


@dataclass
class NDIS_TCP_OFFLOAD_EVENT_HANDLERS:
    """a.1: NDIS's six TCP chimney entry points, returned by NdisMGetOffloadHandlers."""

    NdisTcpOffloadEventHandler: Handler
    NdisTcpOffloadReceiveHandler: Handler
    NdisTcpOffloadSendComplete: Handler
    NdisTcpOffloadReceiveComplete: Handler
    NdisTcpOffloadDisconnectComplete: Handler
    NdisTcpOffloadForwardComplete: Handler
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(
            NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload, NDIS_OBJECT_TCP_OFFLOAD_REVISION_1, 0
        )
    )


# ---------------------------------------------------------------------------------------------
# Helpers shared by safe defaults, IM resource failures and fakes


def fail_tree(root: OffloadBlockList, operation: Operation) -> None:
    """Write the statuses of a tree nothing of which could be done (f.2, b.5): placeholders
    SUCCESS, everything else FAILURE.  Slots are left untouched (d.7)."""
    for block in (b for b, _, _ in iter_tree(root)):
        block.Status = (
            NdisStatus.SUCCESS
            if block_role(block) is BlockRole.PLACEHOLDER
            else NdisStatus.FAILURE
        )
    if operation is Operation.INITIATE:
        _fix_placeholder_parents(root)


def _fix_placeholder_parents(root: OffloadBlockList) -> None:
    # b.5: placeholders are always SUCCESS, even when all their dependents failed.
    for block in (b for b, _, _ in iter_tree(root)):
        if block_role(block) is BlockRole.PLACEHOLDER:
            block.Status = NdisStatus.SUCCESS


def complete_nbls(head: NET_BUFFER_LIST | None, status: int) -> None:
    """Set ``status`` on every NBL of a chain, nothing transferred."""
    for nbl in iter_nbls(head):
        nbl.Status = status
        nbl.TcpOffloadBytesTransferred = 0


def linker_status(block: OffloadBlockList) -> int:
    """b.5: a linker's status from its (already decided) dependents."""
    deps = dependents(block)
    ok = [d for d in deps if d.Status in (NdisStatus.SUCCESS, NdisStatus.OFFLOAD_PARTIAL_SUCCESS)
          or block_role(d) is BlockRole.PLACEHOLDER]
    if len(ok) == len(deps):
        return NdisStatus.SUCCESS
    if ok:
        return NdisStatus.OFFLOAD_PARTIAL_SUCCESS
    return NdisStatus.FAILURE


# ---------------------------------------------------------------------------------------------
# Miniport


_GENERIC_MINIPORT = (
    "InitiateOffload", "TerminateOffload", "UpdateOffload", "InvalidateOffload", "QueryOffload",
)
_TCP_MINIPORT = (
    "TcpOffloadSend", "TcpOffloadReceive", "TcpOffloadDisconnect", "TcpOffloadForward",
    "TcpOffloadReceiveReturn",
)


class Miniport:
    """Base class of a miniport (offload target or IM miniport edge).

    Override the handlers you support.  A subclass that overrides none of the five state
    handlers registers no chimney characteristics: NDIS then blocks chimney for it (e.1) and
    its bindings report ``ChimneyEnabled = False``.  Handlers not overridden by a chimney
    miniport are safe defaults that complete the request *asynchronously* (through an NDIS
    work item) with NDIS_STATUS_FAILURE in every non-placeholder block, or the NBLs with
    NDIS_STATUS_REQUEST_ABORTED.
    """

    ndis: NDIS_MINIPORT_HANDLE  # set by Ndis.register_miniport
    name: str = "miniport"

    # -- a.2 state operations (all VOID, always asynchronous) ---------------------------------
    def InitiateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._default_state_op(Operation.INITIATE, OffloadBlockList)

    def TerminateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._default_state_op(Operation.TERMINATE, OffloadBlockList)

    def UpdateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._default_state_op(Operation.UPDATE, OffloadBlockList)

    def InvalidateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._default_state_op(Operation.INVALIDATE, OffloadBlockList)

    def QueryOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._default_state_op(Operation.QUERY, OffloadBlockList)

    # -- a.3 TCP I/O (return PENDING, complete later) ------------------------------------------
    def TcpOffloadSend(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        self.ndis.NdisQueueIoWorkItem(self._abort_nbls, "send", NetBufferList)
        return NdisStatus.PENDING

    def TcpOffloadReceive(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        self.ndis.NdisQueueIoWorkItem(self._abort_nbls, "receive", NetBufferList)
        return NdisStatus.PENDING

    def TcpOffloadDisconnect(  # noqa: N802
        self, MiniportOffloadContext: Any, NetBufferList: Any, Flags: int  # noqa: N803
    ) -> int:
        self.ndis.NdisQueueIoWorkItem(self._abort_nbls, "disconnect", NetBufferList)
        return NdisStatus.PENDING

    def TcpOffloadForward(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        self.ndis.NdisQueueIoWorkItem(self._abort_nbls, "forward", NetBufferList)
        return NdisStatus.PENDING

    def TcpOffloadReceiveReturn(self, NetBufferList: Any) -> int:  # noqa: N802,N803
        return NdisStatus.SUCCESS

    # -- OIDs ------------------------------------------------------------------------------------
    def SetTcpConnectionOffloadParameters(  # noqa: N802
        self, params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
    ) -> int:
        return NdisStatus.SUCCESS if self.supports_chimney() else NdisStatus.NOT_SUPPORTED

    def SetPower(self, DeviceState: int) -> int:  # noqa: N802,N803
        """OID_PNP_SET_POWER (d.9): SUCCESS, or PENDING and NdisMOidRequestComplete later."""
        return NdisStatus.SUCCESS

    def QueryOffloadStatistics(self, Oid: int) -> tuple[int, Any]:  # noqa: N802,N803
        """Query OID_TCP4/6_OFFLOAD_STATS or OID_IP4/6_OFFLOAD_STATS (b.17, T.10): (status,
        TCP_OFFLOAD_STATS / IP_OFFLOAD_STATS or None).  A target without statistics: NOT_SUPPORTED."""
        return NdisStatus.NOT_SUPPORTED, None

    def ResetOffloadStatistics(self, Oid: int) -> int:  # noqa: N802,N803
        """Set of one of the statistics OIDs: its counters restart at zero (b.17)."""
        return NdisStatus.NOT_SUPPORTED

    # -- registration (MiniportSetOptions -> NdisSetOptionalHandlers) ---------------------------
    @classmethod
    def supports_chimney(cls) -> bool:
        return any(getattr(cls, n) is not getattr(Miniport, n) for n in _GENERIC_MINIPORT)

    def provider_characteristics(
        self,
    ) -> tuple[
        NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS,
        NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS,
    ] | None:
        """The two tables this miniport registers, or None (no chimney)."""
        if not self.supports_chimney():
            return None
        generic = NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS(
            InitiateOffloadHandler=self.InitiateOffload,
            TerminateOffloadHandler=self.TerminateOffload,
            UpdateOffloadHandler=self.UpdateOffload,
            InvalidateOffloadHandler=self.InvalidateOffload,
            QueryOffloadHandler=self.QueryOffload,
        )
        tcp = NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS(
            TcpOffloadSendHandler=self.TcpOffloadSend,
            TcpOffloadReceiveHandler=self.TcpOffloadReceive,
            TcpOffloadDisconnectHandler=self.TcpOffloadDisconnect,
            TcpOffloadForwardHandler=self.TcpOffloadForward,
            TcpOffloadReceiveReturnHandler=self.TcpOffloadReceiveReturn,
        )
        return generic, tcp

    # -- safe-default plumbing -------------------------------------------------------------------
    def _default_state_op(self, op: Operation, root: OffloadBlockList) -> None:
        log.warning("%s: no %s handler, failing the tree", self.name, op.value)
        self.ndis.NdisQueueIoWorkItem(self._fail_and_complete, op, root)

    def _fail_and_complete(self, op: Operation, root: OffloadBlockList) -> None:
        fail_tree(root, op)
        self.ndis.complete_state_operation(op, root)

    def _abort_nbls(self, kind: str, nbl: NET_BUFFER_LIST) -> None:
        complete_nbls(nbl, NdisStatus.REQUEST_ABORTED)
        getattr(self.ndis, _IO_COMPLETE[kind])(nbl)


_IO_COMPLETE = {
    "send": "NdisTcpOffloadSendComplete",
    "receive": "NdisTcpOffloadReceiveComplete",
    "disconnect": "NdisTcpOffloadDisconnectComplete",
    "forward": "NdisTcpOffloadForwardComplete",
}


# ---------------------------------------------------------------------------------------------
# Protocol


class Protocol:
    """Base class of a protocol driver binding (host stack or IM protocol edge).

    Safe defaults: completions and events are logged and dropped; a receive indication is
    refused with NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED (the target keeps the data, a.4); a
    NeighborReachabilityQuery leaves the indicated HostReachabilityDelta untouched.
    """

    binding: NDIS_BINDING_HANDLE  # set by Ndis.open_adapter
    name: str = "protocol"

    def BindAdapter(self, BindParameters: NDIS_BIND_PARAMETERS) -> None:  # noqa: N802,N803
        log.debug("%s bound (%s)", self.name, BindParameters.MiniportName)

    def InitiateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: InitiateOffloadComplete ignored", self.name)

    def TerminateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: TerminateOffloadComplete ignored", self.name)

    def UpdateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: UpdateOffloadComplete ignored", self.name)

    def InvalidateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: InvalidateOffloadComplete ignored", self.name)

    def QueryOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: QueryOffloadComplete ignored", self.name)

    def IndicateOffloadEvent(self, OffloadBlockList: Any, IndicationCode: int) -> None:  # noqa: N802,N803
        log.debug("%s: IndicateOffloadEvent %d ignored", self.name, IndicationCode)

    def OidRequestComplete(self, Oid: int, Status: int) -> None:  # noqa: N802,N803
        """ProtocolOidRequestComplete: an OID request that returned PENDING is done."""
        log.debug("%s: OidRequestComplete 0x%08X ignored", self.name, Oid)

    def TcpOffloadSendComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: TcpOffloadSendComplete ignored", self.name)

    def TcpOffloadReceiveComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: TcpOffloadReceiveComplete ignored", self.name)

    def TcpOffloadDisconnectComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: TcpOffloadDisconnectComplete ignored", self.name)

    def TcpOffloadForwardComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        log.debug("%s: TcpOffloadForwardComplete ignored", self.name)

    def TcpOffloadEvent(  # noqa: N802
        self, OffloadContext: Any, EventType: int, EventSpecificInformation: int  # noqa: N803
    ) -> None:
        log.debug("%s: TcpOffloadEvent %d ignored", self.name, EventType)

    def TcpOffloadReceiveIndicate(  # noqa: N802
        self, OffloadContext: Any, NetBufferList: Any, Status: int  # noqa: N803
    ) -> tuple[int, int]:
        return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0

    def StatusEx(self, StatusIndication: NDIS_STATUS_INDICATION) -> None:  # noqa: N802,N803
        log.debug("%s: status 0x%08X", self.name, StatusIndication.StatusCode)

    def ReceiveNetBufferLists(  # noqa: N802
        self, NetBufferLists: Any, PortNumber: int, NumberOfNetBufferLists: int,  # noqa: N803
        ReceiveFlags: int,  # noqa: N803
    ) -> None:
        log.debug("%s: %d normal-path NBLs ignored", self.name, NumberOfNetBufferLists)

    def client_characteristics(
        self,
    ) -> tuple[
        NDIS_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS,
        NDIS_CLIENT_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS,
    ]:
        """The two client tables (ProtocolSetOptions -> NdisSetOptionalHandlers)."""
        generic = NDIS_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS(
            InitiateOffloadCompleteHandler=self.InitiateOffloadComplete,
            TerminateOffloadCompleteHandler=self.TerminateOffloadComplete,
            UpdateOffloadCompleteHandler=self.UpdateOffloadComplete,
            InvalidateOffloadCompleteHandler=self.InvalidateOffloadComplete,
            QueryOffloadCompleteHandler=self.QueryOffloadComplete,
            IndicateOffloadEventHandler=self.IndicateOffloadEvent,
        )
        tcp = NDIS_CLIENT_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS(
            TcpOffloadSendCompleteHandler=self.TcpOffloadSendComplete,
            TcpOffloadReceiveCompleteHandler=self.TcpOffloadReceiveComplete,
            TcpOffloadDisconnectCompleteHandler=self.TcpOffloadDisconnectComplete,
            TcpOffloadForwardCompleteHandler=self.TcpOffloadForwardComplete,
            TcpOffloadEventHandler=self.TcpOffloadEvent,
            TcpOffloadReceiveIndicateHandler=self.TcpOffloadReceiveIndicate,
        )
        return generic, tcp
