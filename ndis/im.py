"""A pass-through intermediate (IM) driver that follows reference section (e), and a helper
that stacks any number of them between a host and an offload target.

Per object the IM keeps an *IM offload entry* (e.2): the upper ``NdisOffloadHandle`` (a pointer
to the upper driver's NDIS_OFFLOAD_HANDLE) and its own NDIS_OFFLOAD_HANDLE used below.  Per
state operation it keeps an *IM call entry* (e.3): the ``ImReserved`` and ``SourceHandle`` it
found in each block (saved per block; [S] saves the root only, X.24), with a pointer to the
call entry written in the root's ``ImReserved[0]``.

Downward (e.3): miniport-flavored tree in -> save ImReserved/SourceHandle -> recast each block
in place to the protocol flavor with ``OffloadHandle`` = own handle (new entry for a new
offload, the entry named by ``*MiniportOffloadContext`` for a reference, NULL for a
placeholder) -> save each initiate send NBL's SourceHandle in the NBL context ->
``NdisXxxOffload`` on the lower binding.

Upward (e.4): protocol-flavored tree from below -> find the call entry through ImReserved ->
recast each block to the miniport flavor, restore NdisOffloadHandle / MiniportOffloadContext
to the upper handle and slot, restore ImReserved / SourceHandle, keep Status -> on initiate
success write the entry into the upper slot, on failure free it; on terminate clear the upper
slot and free the entry; restore the SourceHandle of NBLs handed back -> ``NdisMXxxComplete``.

I/O (e.5): same NBL pointers both ways; the IM swaps its handle for the upper one; NBL
``SourceHandle`` saved/restored through the NBL context.  Indications (e.6) are passed up with
the stored upper handle.  NdisMOffloadEventIndicate through an IM is "to be determined" in the
DDI page; this IM passes it up with the handle translated and the flavor converted [I].

Resource failure (e.3 step 5, e.5): while ``resources_available`` is False, an initiate is
failed (FAILURE in every non-placeholder block) and completed upward from a work item; the other
four state operations are queued and retried when resources return (they must not fail); I/O
is completed upward at once: the first NBL of a connection's failed chain gets
NDIS_STATUS_REQUEST_UPLOAD, every following one NDIS_STATUS_UPLOAD_REQUESTED, and the IM keeps
answering UPLOAD_REQUESTED on that connection until it is terminated ([S]).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_OFFLOAD_HANDLE,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    BlockRole,
    OffloadBlockList,
    block_role,
    iter_blocks,
    iter_nbls,
    recast,
    tree_layers,
)
from .driver import NDIS_STATUS_INDICATION, Miniport, Protocol, fail_tree
from .ndis import NDIS_BINDING_HANDLE, NDIS_MINIPORT_HANDLE, Ndis
from .state import OffloadLayer
from .status import CHIMNEY_STATUS_INDICATIONS, OFFLOADED_STATUSES, NdisStatus, Operation

log = logging.getLogger(__name__)

__all__ = ["PassThroughIM", "IMOffloadEntry", "IMCallEntry", "stack_intermediates"]


@dataclass(eq=False)
class IMOffloadEntry:
    """e.2: one per object offloaded through the IM."""

    upper_handle: Any  # the NdisOffloadHandle received from above
    own_handle: NDIS_OFFLOAD_HANDLE
    layer: OffloadLayer | None = None
    resource_failed: bool = False  # e.5 / [S]: answered REQUEST_UPLOAD already

    @property
    def label(self) -> str:
        return f"im-entry({self.own_handle.label})"


@dataclass(eq=False)
class _SavedBlock:
    block: OffloadBlockList
    ImReserved: list[Any]
    SourceHandle: Any
    upper_handle: Any
    upper_slot: Any
    role: BlockRole
    entry: IMOffloadEntry | None
    nbls: list[NET_BUFFER_LIST] = field(default_factory=list)


@dataclass(eq=False)
class IMCallEntry:
    """e.3: one per state operation passing through the IM."""

    op: Operation
    root: OffloadBlockList
    saved: list[_SavedBlock]
    label: str = "im-call"


class _IMMiniportEdge(Miniport):
    def __init__(self, im: PassThroughIM) -> None:
        self.im = im
        self.name = f"{im.name}.miniport"

    def InitiateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._down(Operation.INITIATE, OffloadBlockList)

    def TerminateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._down(Operation.TERMINATE, OffloadBlockList)

    def UpdateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._down(Operation.UPDATE, OffloadBlockList)

    def InvalidateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._down(Operation.INVALIDATE, OffloadBlockList)

    def QueryOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._down(Operation.QUERY, OffloadBlockList)

    def TcpOffloadSend(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        return self.im._io_down("send", MiniportOffloadContext, NetBufferList, None)

    def TcpOffloadReceive(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        return self.im._io_down("receive", MiniportOffloadContext, NetBufferList, None)

    def TcpOffloadDisconnect(self, MiniportOffloadContext: Any, NetBufferList: Any, Flags: int) -> int:  # noqa: N802,N803,E501
        return self.im._io_down("disconnect", MiniportOffloadContext, NetBufferList, Flags)

    def TcpOffloadForward(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        return self.im._io_down("forward", MiniportOffloadContext, NetBufferList, None)

    def TcpOffloadReceiveReturn(self, NetBufferList: Any) -> int:  # noqa: N802,N803
        # e.5: synchronous, straight down
        self.im.lower.NdisOffloadTcpReceiveReturn(NetBufferList)
        return NdisStatus.SUCCESS

    def SetTcpConnectionOffloadParameters(self, params: Any) -> int:  # noqa: N802
        # e.1: the host's capability *set* is always passed down
        return self.im.lower.NdisSetTcpConnectionOffloadParameters(params)


class _IMProtocolEdge(Protocol):
    def __init__(self, im: PassThroughIM) -> None:
        self.im = im
        self.name = f"{im.name}.protocol"

    def InitiateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._up(Operation.INITIATE, OffloadBlockList)

    def TerminateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._up(Operation.TERMINATE, OffloadBlockList)

    def UpdateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._up(Operation.UPDATE, OffloadBlockList)

    def InvalidateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._up(Operation.INVALIDATE, OffloadBlockList)

    def QueryOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self.im._up(Operation.QUERY, OffloadBlockList)

    def TcpOffloadSendComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self.im._io_up("send", NetBufferList)

    def TcpOffloadReceiveComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self.im._io_up("receive", NetBufferList)

    def TcpOffloadDisconnectComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self.im._io_up("disconnect", NetBufferList)

    def TcpOffloadForwardComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self.im._io_up("forward", NetBufferList)

    def TcpOffloadEvent(self, OffloadContext: Any, EventType: int, EventSpecificInformation: int) -> None:  # noqa: N802,N803,E501
        entry = self.im._entry_of_own(OffloadContext)
        if entry is None:
            log.error("%s: event for unknown handle %r", self.im.name, OffloadContext)
            return
        # e.6: same EventType / EventSpecificInformation, stored upper handle
        self.im.handlers.NdisTcpOffloadEventHandler(entry.upper_handle, EventType, EventSpecificInformation)

    def TcpOffloadReceiveIndicate(self, OffloadContext: Any, NetBufferList: Any, Status: int) -> tuple[int, int]:  # noqa: N802,N803,E501
        entry = self.im._entry_of_own(OffloadContext)
        if entry is None:
            return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0
        return self.im.handlers.NdisTcpOffloadReceiveHandler(entry.upper_handle, NetBufferList, Status)

    def IndicateOffloadEvent(self, OffloadBlockList: Any, IndicationCode: int) -> None:  # noqa: N802,N803
        self.im._offload_event_up(OffloadBlockList, IndicationCode)

    def StatusEx(self, StatusIndication: NDIS_STATUS_INDICATION) -> None:  # noqa: N802,N803
        if StatusIndication.StatusCode in CHIMNEY_STATUS_INDICATIONS:
            self.im.miniport_handle.NdisMIndicateStatusEx(StatusIndication)

    def ReceiveNetBufferLists(self, NetBufferLists: Any, PortNumber: int, NumberOfNetBufferLists: int, ReceiveFlags: int) -> None:  # noqa: N802,N803,E501
        self.im.miniport_handle.NdisMIndicateReceiveNetBufferLists(NetBufferLists, PortNumber, ReceiveFlags)


class PassThroughIM:
    """A pass-through IM driver: one miniport edge (above), one protocol edge (below)."""

    def __init__(self, name: str = "im") -> None:
        self.name = name
        self.miniport_edge = _IMMiniportEdge(self)
        self.protocol_edge = _IMProtocolEdge(self)
        self.lower: NDIS_BINDING_HANDLE
        self.miniport_handle: NDIS_MINIPORT_HANDLE
        self.resources_available = True
        self._entries: dict[int, IMOffloadEntry] = {}  # id(own_handle) -> entry
        self._deferred: list[tuple[Operation, OffloadBlockList]] = []
        self.calls_in_flight: dict[int, IMCallEntry] = {}

    def attach(self, ndis: Ndis, lower: NDIS_MINIPORT_HANDLE) -> NDIS_MINIPORT_HANDLE:
        """Bind the protocol edge to ``lower`` and register the miniport edge with the
        capabilities passed up from below (e.1)."""
        self.lower = ndis.open_adapter(self.protocol_edge, lower)
        caps = self.lower.TcpConnectionOffloadCapabilities
        self.miniport_handle = ndis.register_miniport(
            self.miniport_edge, capabilities=caps, name=f"{self.name}.miniport", intermediate=True
        )
        status, handlers = self.miniport_handle.NdisMGetOffloadHandlers()
        assert status == NdisStatus.SUCCESS and handlers is not None
        self.handlers = handlers  # e.1: NDIS's entry points toward the driver above
        return self.miniport_handle

    @property
    def entries(self) -> list[IMOffloadEntry]:
        return list(self._entries.values())

    def _entry_of_own(self, handle: Any) -> IMOffloadEntry | None:
        return self._entries.get(id(handle))

    def set_resources(self, available: bool) -> None:
        """Toggle the resource-failure mode; retries deferred operations when resources return."""
        self.resources_available = available
        if available and self._deferred:
            self.miniport_handle.NdisQueueIoWorkItem(self._retry_deferred)

    def _retry_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for op, root in deferred:
            self._down(op, root)

    # -- e.3 downward ------------------------------------------------------------------------------------
    def _down(self, op: Operation, root: OffloadBlockList) -> None:
        if not self.resources_available:
            if op is Operation.INITIATE:
                # e.3 step 5 / [S]: fail the blocks and complete upward (from a work item)
                fail_tree(root, op)
                self.miniport_handle.NdisQueueIoWorkItem(
                    self.miniport_handle.NdisMInitiateOffloadComplete, root
                )
            else:
                self._deferred.append((op, root))  # must not fail: retry later
            return
        layers = tree_layers(root)
        saved: list[_SavedBlock] = []
        for block in list(iter_blocks(root)):
            assert isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST), block
            role = block_role(block)
            slot = block.MiniportOffloadContext
            entry: IMOffloadEntry | None = None
            if role is BlockRole.NEW_OFFLOAD:
                entry = IMOffloadEntry(
                    block.NdisOffloadHandle,
                    NDIS_OFFLOAD_HANDLE(f"{self.name}:{block.label}"),
                    layers.get(id(block)),
                )
            elif role is BlockRole.REFERENCE:
                entry = slot.value  # type: ignore[union-attr]
                if not isinstance(entry, IMOffloadEntry):
                    log.error("%s: %s references a foreign context", self.name, block.label)
                    entry = None
            rec = _SavedBlock(
                block, list(block.ImReserved), block.SourceHandle, block.NdisOffloadHandle, slot,
                role, entry,
            )
            if op is Operation.INITIATE:
                for nbl in iter_nbls(block.NetBufferListChain):
                    nbl.push_context(self, nbl.SourceHandle)  # e.3 step 3
                    rec.nbls.append(nbl)
            saved.append(rec)
            # e.3 step 3: reuse the memory as the protocol flavor
            recast(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST)
            assert isinstance(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST)
            block.OffloadHandle = entry.own_handle if entry is not None else None
        call = IMCallEntry(op, root, saved, label=f"{self.name}:{op.value}:{root.label}")
        root.ImReserved[0] = call  # e.3 step 2
        self.calls_in_flight[id(call)] = call
        {
            Operation.INITIATE: self.lower.NdisInitiateOffload,
            Operation.TERMINATE: self.lower.NdisTerminateOffload,
            Operation.UPDATE: self.lower.NdisUpdateOffload,
            Operation.INVALIDATE: self.lower.NdisInvalidateOffload,
            Operation.QUERY: self.lower.NdisQueryOffloadState,
        }[op](root)

    # -- e.4 upward ------------------------------------------------------------------------------------
    def _up(self, op: Operation, root: OffloadBlockList) -> None:
        call = root.ImReserved[0]
        if not isinstance(call, IMCallEntry) or id(call) not in self.calls_in_flight:
            log.error("%s: completion of a tree with no call entry", self.name)
            return
        del self.calls_in_flight[id(call)]
        for rec in call.saved:
            block = rec.block
            recast(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
            assert isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
            block.NdisOffloadHandle = rec.upper_handle
            block.MiniportOffloadContext = rec.upper_slot
            block.ImReserved[:] = rec.ImReserved
            block.SourceHandle = rec.SourceHandle
            entry = rec.entry
            if op is Operation.INITIATE:
                if rec.role is BlockRole.NEW_OFFLOAD and entry is not None:
                    if block.Status in OFFLOADED_STATUSES:
                        self._entries[id(entry.own_handle)] = entry
                        rec.upper_slot.value = entry  # e.2: our context into the upper slot
                    # on failure the entry is simply dropped (and the slot left alone, d.7)
                if rec.role is not BlockRole.NEW_OFFLOAD or block.Status not in OFFLOADED_STATUSES:
                    self._restore_nbls(rec.nbls)
            elif op is Operation.TERMINATE:
                if entry is not None:
                    self._entries.pop(id(entry.own_handle), None)
                    if rec.upper_slot is not None:
                        rec.upper_slot.value = None  # e.4 step 4 ([S])
                for nbl in iter_nbls(block.NetBufferListChain):
                    if nbl.has_context(self):
                        nbl.SourceHandle = nbl.pop_context(self)
        {
            Operation.INITIATE: self.miniport_handle.NdisMInitiateOffloadComplete,
            Operation.TERMINATE: self.miniport_handle.NdisMTerminateOffloadComplete,
            Operation.UPDATE: self.miniport_handle.NdisMUpdateOffloadComplete,
            Operation.INVALIDATE: self.miniport_handle.NdisMInvalidateOffloadComplete,
            Operation.QUERY: self.miniport_handle.NdisMQueryOffloadStateComplete,
        }[op](root)

    def _restore_nbls(self, nbls: list[NET_BUFFER_LIST]) -> None:
        for nbl in nbls:
            if nbl.has_context(self):
                nbl.SourceHandle = nbl.pop_context(self)

    # -- e.5 I/O -------------------------------------------------------------------------------------------
    def _io_down(self, kind: str, ctx: Any, nbl: NET_BUFFER_LIST, flags: int | None) -> int:
        entry = ctx if isinstance(ctx, IMOffloadEntry) else None
        if entry is None or not self.resources_available or entry.resource_failed:
            # e.5: complete it ourselves: REQUEST_UPLOAD first, UPLOAD_REQUESTED for the rest
            for n in iter_nbls(nbl):
                n.TcpOffloadBytesTransferred = 0
                if entry is not None and not entry.resource_failed:
                    n.Status = NdisStatus.REQUEST_UPLOAD
                    entry.resource_failed = True
                else:
                    n.Status = NdisStatus.UPLOAD_REQUESTED
            complete = {
                "send": self.handlers.NdisTcpOffloadSendComplete,
                "receive": self.handlers.NdisTcpOffloadReceiveComplete,
                "disconnect": self.handlers.NdisTcpOffloadDisconnectComplete,
                "forward": self.handlers.NdisTcpOffloadForwardComplete,
            }[kind]
            complete(nbl)
            return NdisStatus.PENDING
        for n in iter_nbls(nbl):
            n.push_context(self, n.SourceHandle)
        h = entry.own_handle
        if kind == "send":
            self.lower.NdisOffloadTcpSend(h, nbl)
        elif kind == "receive":
            self.lower.NdisOffloadTcpReceive(h, nbl)
        elif kind == "disconnect":
            self.lower.NdisOffloadTcpDisconnect(h, nbl, flags)  # type: ignore[arg-type]
        else:
            self.lower.NdisOffloadTcpForward(h, nbl)
        return NdisStatus.PENDING

    def _io_up(self, kind: str, head: NET_BUFFER_LIST) -> None:
        for n in iter_nbls(head):
            if n.has_context(self):
                n.SourceHandle = n.pop_context(self)
        complete = {
            "send": self.handlers.NdisTcpOffloadSendComplete,
            "receive": self.handlers.NdisTcpOffloadReceiveComplete,
            "disconnect": self.handlers.NdisTcpOffloadDisconnectComplete,
            "forward": self.handlers.NdisTcpOffloadForwardComplete,
        }[kind]
        complete(head)  # NDIS splits it per upper binding by SourceHandle

    # -- e.6 NdisMOffloadEventIndicate (IM behaviour is [I]) ----------------------------------------------
    def _offload_event_up(self, block: Any, code: int) -> None:
        if block is None:
            self.miniport_handle.NdisMOffloadEventIndicate(None, code)
            return
        entry = self._entry_of_own(block.OffloadHandle)
        if entry is None:
            return
        recast(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
        block.NdisOffloadHandle = entry.upper_handle
        self.miniport_handle.NdisMOffloadEventIndicate(block, code)
        recast(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST)
        block.OffloadHandle = entry.own_handle


def stack_intermediates(
    ndis: Ndis, lower: NDIS_MINIPORT_HANDLE, count: int, *, prefix: str = "im"
) -> tuple[NDIS_MINIPORT_HANDLE, list[PassThroughIM]]:
    """Stack ``count`` pass-through IMs on ``lower``; returns the top miniport handle (what the
    host binds to) and the IMs, bottom first.  ``count`` may be 0."""
    ims: list[PassThroughIM] = []
    top = lower
    for i in range(count):
        im = PassThroughIM(f"{prefix}{i}")
        top = im.attach(ndis, top)
        ims.append(im)
    return top, ims
