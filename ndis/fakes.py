"""Scripted fake drivers: :class:`ScriptedTarget` (an offload target) and :class:`ScriptedHost`
(a host protocol driver), plus :class:`ChimneyBench` wiring host -> N IMs -> target with a
conformance checker.  They are a product feature: point your own target at a ``ScriptedHost``
(or your host at a ``ScriptedTarget``) and the checker tells you which rule you broke.

ScriptedTarget
    Implements every miniport handler by the book and does the work in NDIS work items, so
    completions are always asynchronous.  Scripts: ``initiate_script[label] = status`` fails a
    new-offload block (d.7); ``op_script[(Operation, label)] = NDIS_STATUS_FAILURE`` fails a
    query/update/invalidate/terminate block; ``hold = True`` keeps requests in ``held`` until
    :meth:`release`; ``auto_ack`` completes sends as fully ACKed; ``return_sends_on_terminate``
    chooses between handing send data back in NetBufferListChain and completing it first (d.3
    step 6).  Objects are found by the label of the block that offloaded them
    (``target.objects["T1"]``).  The fake has no clock: a neighbor's NicReachabilityDelta (T.7;
    what a query or terminate of it and :meth:`ScriptedTarget.reachability_query` report) is
    the one offloaded until :meth:`ScriptedTarget.set_reachability_delta` scripts another.

ScriptedHost
    Keeps the shape of what it offloaded (:class:`~ndis.blocks.OffloadNode`), records every
    completion and indication in ``events`` as plain tuples (labels, status names, bytes), so
    runs through different IM stacks can be compared, and checks that every completion comes
    back with its own handles (``errors``).
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from .blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_OFFLOAD_HANDLE,
    NET_BUFFER_LIST,
    BlockRole,
    OffloadBlockList,
    OffloadNode,
    block_role,
    invalidate_tree,
    iter_blocks,
    iter_nbls,
    iter_tree,
    link_nbls,
    offload_connection_tree,
    query_tree,
    terminate_connections,
    terminate_tree,
    tree_layers,
    update_tree,
)
from .checker import ConformanceChecker
from .driver import NDIS_STATUS_INDICATION, Miniport, Protocol, linker_status
from .im import PassThroughIM, stack_intermediates
from .ndis import NDIS_BINDING_HANDLE, NDIS_MINIPORT_HANDLE, Ndis
from .state import (
    INDICATE_OFFLOAD_EVENT,
    NDIS_TCP_CONNECTION_OFFLOAD,
    NEIGHBOR_OFFLOAD_STATE_CACHED,
    NEIGHBOR_OFFLOAD_STATE_CONST,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    OFFLOAD_STATE_TYPE,
    PATH_OFFLOAD_STATE_CACHED,
    PATH_OFFLOAD_STATE_CONST,
    PATH_OFFLOAD_STATE_DELEGATED,
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_OFFLOAD_STATE_CONST,
    TCP_OFFLOAD_STATE_DELEGATED,
    TCP_UPLOAD_REASON,
    NeighborOffloadState,
    OffloadLayer,
    PathOffloadState,
    TcpOffloadState,
)
from .status import OFFLOADED_STATUSES, NdisStatus, Operation, status_name

log = logging.getLogger(__name__)

__all__ = ["ScriptedTarget", "TargetObject", "ScriptedHost", "ChimneyBench", "sample_states"]

_SEQ = 1 << 32


# ---------------------------------------------------------------------------------------------
# Target


@dataclass(eq=False)
class TargetObject:
    """The target's offload context area for one object (b.3)."""

    layer: OffloadLayer
    label: str
    NdisOffloadHandle: Any
    state: Any = None  # a copy of the full state (Neighbor/Path/TcpOffloadState)
    parent: TargetObject | None = None
    invalidated: bool = False
    terminated: bool = False
    upload_requested: bool = False
    aborted: bool = False
    sends: deque[NET_BUFFER_LIST] = field(default_factory=deque)
    posts: deque[NET_BUFFER_LIST] = field(default_factory=deque)
    pending_disconnect: list[tuple[NET_BUFFER_LIST, int]] = field(default_factory=list)
    rx_pending: bytearray = field(default_factory=bytearray)
    indicated: dict[int, NET_BUFFER_LIST] = field(default_factory=dict)
    sent_data: bytearray = field(default_factory=bytearray)
    forwarded: list[bytes] = field(default_factory=list)


class ScriptedTarget(Miniport):
    """A scripted chimney offload target (see module docstring)."""

    def __init__(
        self,
        name: str = "target",
        *,
        capacity: int = 64,
        auto_ack: bool = True,
        return_sends_on_terminate: bool = True,
    ) -> None:
        self.name = name
        self.capabilities = NDIS_TCP_CONNECTION_OFFLOAD(TcpConnectionOffloadCapacity=capacity)
        self.capacity = capacity
        self.auto_ack = auto_ack
        self.return_sends_on_terminate = return_sends_on_terminate
        self.initiate_script: dict[str, int] = {}
        self.op_script: dict[tuple[Operation, str], int] = {}
        self.hold = False
        self.held: list[tuple[Operation, OffloadBlockList]] = []
        self.objects: dict[str, TargetObject] = {}
        self.requests: list[tuple[Operation, OffloadBlockList]] = []
        self.parameters: Any = None
        self.returned_nbls: list[NET_BUFFER_LIST] = []
        self._ack_later: list[TargetObject] = []

    # -- helpers ---------------------------------------------------------------------------------------
    @property
    def tcp_count(self) -> int:
        return sum(1 for o in self.objects.values() if o.layer is OffloadLayer.TCP)

    def obj(self, label: str) -> TargetObject:
        return self.objects[label]

    def release(self) -> None:
        """Process held requests (from a work item, so still asynchronous)."""
        held, self.held = self.held, []
        for op, root in held:
            self.ndis.NdisQueueIoWorkItem(self._process, op, root)

    def SetTcpConnectionOffloadParameters(self, params: Any) -> int:  # noqa: N802
        self.parameters = params
        return NdisStatus.SUCCESS

    # -- a.2 handlers: save the tree and return ------------------------------------------------------
    def _accept(self, op: Operation, root: OffloadBlockList) -> None:
        self.requests.append((op, root))
        if self.hold:
            self.held.append((op, root))
        else:
            self.ndis.NdisQueueIoWorkItem(self._process, op, root)

    def InitiateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._accept(Operation.INITIATE, OffloadBlockList)

    def TerminateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._accept(Operation.TERMINATE, OffloadBlockList)

    def UpdateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._accept(Operation.UPDATE, OffloadBlockList)

    def InvalidateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._accept(Operation.INVALIDATE, OffloadBlockList)

    def QueryOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._accept(Operation.QUERY, OffloadBlockList)

    def _process(self, op: Operation, root: OffloadBlockList) -> None:
        if op is Operation.INITIATE:
            self._initiate(root)
        else:
            self._reference_op(op, root)
        self.ndis.complete_state_operation(op, root)
        if op is Operation.INITIATE:
            for obj in self._ack_later:
                self.ndis.NdisQueueIoWorkItem(self._ack_all, obj)  # d.7: completed later

    # -- initiate: b.4 traversal, b.5 roles, d.7 failures ---------------------------------------------
    def _initiate(self, root: OffloadBlockList) -> None:
        order = list(iter_tree(root))
        layers = tree_layers(root)
        not_offloaded: set[int] = set()
        objs: dict[int, TargetObject | None] = {}
        stop = False
        roles = {id(b): block_role(b) for b, _, _ in order}  # before any slot is written
        for block, _depth, parent in order:
            assert isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
            role = roles[id(block)]
            if role is BlockRole.PLACEHOLDER:
                block.Status = NdisStatus.SUCCESS  # b.5
                objs[id(block)] = objs.get(id(parent)) if parent is not None else None
                if parent is not None and id(parent) in not_offloaded:
                    not_offloaded.add(id(block))
                continue
            if role is BlockRole.REFERENCE:
                objs[id(block)] = block.MiniportOffloadContext.value  # type: ignore[union-attr]
                if stop or (parent is not None and id(parent) in not_offloaded):
                    not_offloaded.add(id(block))
                continue  # status decided from dependents below
            # new offload
            if stop or (parent is not None and id(parent) in not_offloaded):
                block.Status = NdisStatus.FAILURE  # d.7: never attempted
                not_offloaded.add(id(block))
                continue
            layer = layers.get(id(block)) or OffloadLayer.TCP
            status = self.initiate_script.get(block.label, NdisStatus.SUCCESS)
            if status == NdisStatus.SUCCESS and layer is OffloadLayer.TCP and self.tcp_count >= self.capacity:
                status = NdisStatus.OFFLOAD_TCP_ENTRIES
            if status == NdisStatus.SUCCESS:
                parent_obj = objs.get(id(parent)) if parent is not None else None
                obj = TargetObject(layer, block.label, block.NdisOffloadHandle, _copy_state(block.state), parent_obj)
                self.objects[block.label] = obj
                block.MiniportOffloadContext.value = obj  # type: ignore[union-attr]  # b.1
                objs[id(block)] = obj
                block.Status = NdisStatus.SUCCESS
                for nbl in iter_nbls(block.NetBufferListChain):
                    obj.sends.append(nbl)  # d.7: completed later with NdisTcpOffloadSendComplete
                if isinstance(block.state, TcpOffloadState) and block.state.Delegated.BufferedData is not None:
                    for nbl in iter_nbls(block.state.Delegated.BufferedData):
                        obj.rx_pending += bytes(nbl.data)  # c.2: copy before completing
            else:
                block.Status = status
                not_offloaded.add(id(block))
                if block is root:
                    stop = True  # b.4: a failed root stops traversal
        # second pass, dependents first: linkers and partial successes (b.5)
        for block, _depth, _parent in reversed(order):
            role = roles[id(block)]
            if role is BlockRole.REFERENCE:
                block.Status = linker_status(block) if block.DependentBlockList else NdisStatus.SUCCESS
            elif role is BlockRole.NEW_OFFLOAD and block.Status == NdisStatus.SUCCESS:
                if linker_status(block) != NdisStatus.SUCCESS:
                    block.Status = NdisStatus.OFFLOAD_PARTIAL_SUCCESS
        self._ack_later = [
            objs[id(b)] for b in iter_blocks(root)
            if self.auto_ack and objs.get(id(b)) is not None and b.Status in OFFLOADED_STATUSES
            and objs[id(b)].sends  # type: ignore[union-attr]
        ]

    # -- terminate / query / update / invalidate ---------------------------------------------------------
    def _reference_op(self, op: Operation, root: OffloadBlockList) -> None:
        for block, _depth, parent in list(iter_tree(root)):
            assert isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
            role = block_role(block)
            if role is BlockRole.PLACEHOLDER:
                block.Status = NdisStatus.SUCCESS
                continue
            obj = block.MiniportOffloadContext.value if role is BlockRole.REFERENCE else None  # type: ignore[union-attr]
            scripted = self.op_script.get((op, block.label))
            if not isinstance(obj, TargetObject) or scripted is not None:
                block.Status = scripted if scripted is not None else NdisStatus.FAILURE
                continue
            block.Status = NdisStatus.SUCCESS
            if op is Operation.TERMINATE:
                self._terminate_object(obj, block)
            elif op is Operation.QUERY:
                _fill_query(obj, block.state)
            elif op is Operation.UPDATE:
                _apply_update(obj, block.state)
                if parent is not None and block_role(parent) is BlockRole.REFERENCE:
                    obj.parent = parent.MiniportOffloadContext.value  # type: ignore[union-attr]  # relink
            elif op is Operation.INVALIDATE:
                obj.invalidated = True  # d.6

    def _terminate_object(self, obj: TargetObject, block: NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) -> None:
        # d.3 step 4: complete outstanding receives, disconnects and forwards first
        if obj.posts:
            posts = list(obj.posts)
            obj.posts.clear()
            for nbl in posts:
                nbl.Status = NdisStatus.UPLOAD_IN_PROGRESS
                nbl.TcpOffloadBytesTransferred = 0
            self.ndis.NdisTcpOffloadReceiveComplete(link_nbls(posts))  # type: ignore[arg-type]
        for nbl, _flags in obj.pending_disconnect:
            nbl.Status = NdisStatus.UPLOAD_IN_PROGRESS
            self.ndis.NdisTcpOffloadDisconnectComplete(nbl)
        obj.pending_disconnect.clear()
        deleg = block.state
        if isinstance(deleg, TcpOffloadState):
            deleg = deleg.Delegated
        if obj.layer is OffloadLayer.TCP:
            src: TCP_OFFLOAD_STATE_DELEGATED = obj.state.Delegated
            sends = list(obj.sends)
            obj.sends.clear()
            chain = None
            if sends and not self.return_sends_on_terminate:
                for nbl in sends:
                    nbl.Status = NdisStatus.UPLOAD_IN_PROGRESS
                    nbl.TcpOffloadBytesTransferred = 0
                self.ndis.NdisTcpOffloadSendComplete(link_nbls(sends))  # type: ignore[arg-type]
                sends = []
            elif sends:
                chain = link_nbls(sends)  # d.3 step 6: original order
            block.NetBufferListChain = chain
            if isinstance(deleg, TCP_OFFLOAD_STATE_DELEGATED):
                _copy_fields(src, deleg)
                total = sum(n.DataLength for n in sends)
                deleg.SndUna = src.SndUna
                deleg.SndNxt = (src.SndUna + min((src.SndNxt - src.SndUna) % _SEQ, total)) % _SEQ
                deleg.SndMax = (src.SndUna + min((src.SndMax - src.SndUna) % _SEQ, total)) % _SEQ
                deleg.SendDataHead = sends[0] if sends else None
                deleg.SendDataTail = sends[-1] if sends else None
                deleg.SendBacklogSize = None
                deleg.ReceiveBacklogSize = None
                deleg.BufferedData = None
                if obj.rx_pending:
                    nbl = NET_BUFFER_LIST(bytes(obj.rx_pending), label=f"{obj.label}-buffered")
                    obj.rx_pending.clear()
                    deleg.BufferedData = nbl  # d.3 step 7
        elif isinstance(deleg, NEIGHBOR_OFFLOAD_STATE_DELEGATED):
            deleg.NicReachabilityDelta = obj.state.Delegated.NicReachabilityDelta if obj.state else 0
        obj.terminated = True
        self.objects.pop(obj.label, None)  # d.3 step 10

    # -- a.3 TCP I/O ----------------------------------------------------------------------------------
    def _reject_io(self, kind: str, nbl: NET_BUFFER_LIST) -> int:
        """I/O naming no live object of ours: completed with INVALID_STATE from a work item."""
        for n in iter_nbls(nbl):
            n.Status, n.TcpOffloadBytesTransferred = NdisStatus.INVALID_STATE, 0
        complete = {
            "send": self.ndis.NdisTcpOffloadSendComplete,
            "receive": self.ndis.NdisTcpOffloadReceiveComplete,
            "disconnect": self.ndis.NdisTcpOffloadDisconnectComplete,
            "forward": self.ndis.NdisTcpOffloadForwardComplete,
        }[kind]
        self.ndis.NdisQueueIoWorkItem(complete, nbl)
        return NdisStatus.PENDING

    def TcpOffloadSend(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        obj: TargetObject = MiniportOffloadContext
        if not isinstance(obj, TargetObject) or obj.terminated:
            return self._reject_io("send", NetBufferList)
        nbls = list(iter_nbls(NetBufferList))
        if obj.upload_requested or obj.aborted:
            status = NdisStatus.REQUEST_ABORTED if obj.aborted else NdisStatus.UPLOAD_IN_PROGRESS
            for n in nbls:
                n.Status, n.TcpOffloadBytesTransferred = status, 0
            self.ndis.NdisQueueIoWorkItem(self.ndis.NdisTcpOffloadSendComplete, NetBufferList)
            return NdisStatus.PENDING
        obj.sends.extend(nbls)
        if self.auto_ack:
            self.ndis.NdisQueueIoWorkItem(self._ack_all, obj)
        return NdisStatus.PENDING

    def _ack_all(self, obj: TargetObject) -> None:
        self.ack(obj, sum(n.DataLength for n in obj.sends))

    def ack(self, obj: TargetObject | str, nbytes: int) -> None:
        """Peer ACKed ``nbytes``: complete fully-ACKed NBLs FIFO (T.1, f.3).  A partially ACKed
        head stays outstanding."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        done: list[NET_BUFFER_LIST] = []
        while obj.sends and nbytes >= obj.sends[0].DataLength:
            nbl = obj.sends.popleft()
            n = nbl.DataLength
            obj.sent_data += bytes(nbl.data)
            nbytes -= n
            nbl.TcpOffloadBytesTransferred = n
            nbl.advance_data_start(n)
            nbl.Status = NdisStatus.SUCCESS
            done.append(nbl)
        if obj.state is not None and done:
            d = obj.state.Delegated
            acked = sum(x.TcpOffloadBytesTransferred for x in done)
            d.SndUna = (d.SndUna + acked) % _SEQ
            d.SndNxt = d.SndMax = d.SndUna
        if done:
            self.ndis.NdisTcpOffloadSendComplete(link_nbls(done))  # type: ignore[arg-type]
        self._maybe_finish_disconnect(obj)

    def TcpOffloadReceive(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        obj: TargetObject = MiniportOffloadContext
        if not isinstance(obj, TargetObject) or obj.terminated:
            return self._reject_io("receive", NetBufferList)
        obj.posts.extend(iter_nbls(NetBufferList))
        self.ndis.NdisQueueIoWorkItem(self._fill_posts, obj)
        return NdisStatus.PENDING

    def TcpOffloadDisconnect(self, MiniportOffloadContext: Any, NetBufferList: Any, Flags: int) -> int:  # noqa: N802,N803,E501
        obj: TargetObject = MiniportOffloadContext
        if not isinstance(obj, TargetObject) or obj.terminated:
            return self._reject_io("disconnect", NetBufferList)
        if Flags & TCP_DISCONNECT_ABORTIVE_CLOSE:
            # f.3: first complete all sends with REQUEST_ABORTED, then the disconnect
            sends = list(obj.sends)
            obj.sends.clear()
            for n in sends:
                n.Status, n.TcpOffloadBytesTransferred = NdisStatus.REQUEST_ABORTED, 0
            if sends:
                self.ndis.NdisQueueIoWorkItem(self.ndis.NdisTcpOffloadSendComplete, link_nbls(sends))
            obj.aborted = True
            NetBufferList.Status = NdisStatus.SUCCESS
            self.ndis.NdisQueueIoWorkItem(self.ndis.NdisTcpOffloadDisconnectComplete, NetBufferList)
        else:
            obj.pending_disconnect.append((NetBufferList, Flags))
            self.ndis.NdisQueueIoWorkItem(self._maybe_finish_disconnect, obj)
        return NdisStatus.PENDING

    def _maybe_finish_disconnect(self, obj: TargetObject) -> None:
        # f.3: a graceful disconnect completes only after all earlier sends completed
        if obj.sends or not obj.pending_disconnect:
            return
        for nbl, _flags in obj.pending_disconnect:
            nbl.TcpOffloadBytesTransferred = nbl.DataLength
            if nbl.DataLength:
                obj.sent_data += bytes(nbl.data)
                nbl.advance_data_start(nbl.DataLength)
            nbl.Status = NdisStatus.SUCCESS
            self.ndis.NdisTcpOffloadDisconnectComplete(nbl)
        obj.pending_disconnect.clear()

    def TcpOffloadForward(self, MiniportOffloadContext: Any, NetBufferList: Any) -> int:  # noqa: N802,N803
        obj: TargetObject = MiniportOffloadContext
        if not isinstance(obj, TargetObject) or obj.terminated:
            return self._reject_io("forward", NetBufferList)
        for n in iter_nbls(NetBufferList):
            obj.forwarded.append(bytes(n.data))
            n.Status = NdisStatus.SUCCESS
        self.ndis.NdisQueueIoWorkItem(self.ndis.NdisTcpOffloadForwardComplete, NetBufferList)
        return NdisStatus.PENDING

    def TcpOffloadReceiveReturn(self, NetBufferList: Any) -> int:  # noqa: N802,N803
        for n in iter_nbls(NetBufferList):
            self.returned_nbls.append(n)
            for obj in self.objects.values():
                obj.indicated.pop(id(n), None)
        return NdisStatus.SUCCESS

    # -- receive path (simplified T.2 delivery algorithm) ------------------------------------------
    def deliver(self, obj: TargetObject | str, data: bytes) -> None:
        """In-order data arrived from the peer for ``obj``: fill posted buffers, else indicate."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        obj.rx_pending += data
        if isinstance(obj.state, TcpOffloadState):
            d = obj.state.Delegated
            d.RcvNxt = (d.RcvNxt + len(data)) % _SEQ  # ACKed as soon as buffered (T.2)
        self._fill_posts(obj)
        if obj.rx_pending and not obj.posts:
            # T.2: indicate only after the queued receive completion was delivered
            self.ndis.NdisQueueIoWorkItem(self._indicate_pending, obj)

    def _indicate_pending(self, obj: TargetObject) -> None:
        if obj.rx_pending and not obj.posts and not obj.terminated:
            self._indicate(obj)

    def _fill_posts(self, obj: TargetObject) -> None:
        if obj.terminated:
            return
        done = []
        while obj.posts and (obj.rx_pending or obj.posts[0].DataLength == 0):
            nbl = obj.posts.popleft()
            n = min(nbl.DataLength, len(obj.rx_pending))
            nbl.data[:n] = obj.rx_pending[:n]
            del obj.rx_pending[:n]
            nbl.advance_data_start(n)
            nbl.TcpOffloadBytesTransferred = n
            nbl.Status = NdisStatus.SUCCESS
            done.append(nbl)
        if done:
            self.ndis.NdisTcpOffloadReceiveComplete(link_nbls(done))  # type: ignore[arg-type]

    def _indicate(self, obj: TargetObject) -> None:
        nbl = NET_BUFFER_LIST(bytes(obj.rx_pending), label=f"{obj.label}-ind")
        status, consumed = self.ndis.NdisTcpOffloadReceiveHandler(obj.NdisOffloadHandle, nbl, NdisStatus.SUCCESS)
        if status == NdisStatus.SUCCESS:
            obj.indicated[id(nbl)] = nbl
            obj.rx_pending.clear()
        elif status == NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED:
            del obj.rx_pending[:consumed]

    # -- indications ------------------------------------------------------------------------------------
    def indicate_event(self, obj: TargetObject | str, event_type: int, info: int = 0) -> None:
        if isinstance(obj, str):
            obj = self.objects[obj]
        self.ndis.NdisTcpOffloadEventHandler(obj.NdisOffloadHandle, event_type, info)

    def request_upload(self, obj: TargetObject | str, reason: int = TCP_UPLOAD_REASON.UploadRequested) -> None:
        """d.1: TcpIndicateRetrieve with a reason (one connection per call)."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        obj.upload_requested = True
        self.indicate_event(obj, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve, reason)

    def indicate_status(self, code: int, buffer: Any = None) -> None:
        self.ndis.NdisMIndicateStatusEx(NDIS_STATUS_INDICATION(code, buffer))

    def set_reachability_delta(self, obj: TargetObject | str, nrd: int) -> None:
        """T.7: the NIC last saw forward progress through neighbor ``obj`` ``nrd`` ticks ago
        (the NicReachabilityDelta its queries, terminate and reachability_query report)."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        if not isinstance(obj.state, NeighborOffloadState):
            raise ValueError(f"{obj.label} is not a neighbor")
        obj.state.Delegated.NicReachabilityDelta = nrd % _SEQ

    def reachability_query(self, obj: TargetObject | str, nrd: int | None = None) -> int:
        """T.7: NdisMOffloadEventIndicate(NeighborReachabilityQuery); returns the host's HRD.
        ``nrd``: the NicReachabilityDelta to indicate (None: the neighbor's current one)."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        src = obj.state if isinstance(obj.state, NeighborOffloadState) else NeighborOffloadState()
        if nrd is None:
            nrd = src.Delegated.NicReachabilityDelta
        state = NeighborOffloadState(
            NEIGHBOR_OFFLOAD_STATE_CONST(src.Const.DlSourceAddress, src.Const.VlanId),
            NEIGHBOR_OFFLOAD_STATE_CACHED(src.Cached.DlDestinationAddress, src.Cached.HostReachabilityDelta),
            NEIGHBOR_OFFLOAD_STATE_DELEGATED(nrd),
        )
        block = NDIS_MINIPORT_OFFLOAD_BLOCK_LIST(
            Type=OFFLOAD_STATE_TYPE.NeighborOffloadState, state=state, label=obj.label
        )
        block.NdisOffloadHandle = obj.NdisOffloadHandle
        block.Status = NdisStatus.SUCCESS
        self.ndis.NdisMOffloadEventIndicate(block, INDICATE_OFFLOAD_EVENT.NeighborReachabilityQuery)
        return state.Cached.HostReachabilityDelta


def _copy_state(state: Any) -> Any:
    if state is None:
        return None
    dup = copy.copy(state)
    for name in ("Const", "Cached", "Delegated"):
        if hasattr(dup, name):
            setattr(dup, name, copy.copy(getattr(state, name)))
    if isinstance(dup, TcpOffloadState):
        dup.Delegated.SendDataHead = dup.Delegated.SendDataTail = dup.Delegated.BufferedData = None
    return dup


def _copy_fields(src: Any, dst: Any) -> None:
    for name in (
        "State", "Flags", "RcvNxt", "RcvWnd", "SndUna", "SndNxt", "SndMax", "SndWnd", "MaxSndWnd",
        "SendWL1", "CWnd", "SsThresh", "SRtt", "RttVar", "TsRecent", "TsRecentAge", "TsTime",
        "TotalRT", "DupAckCount", "SndWndProbeCount", "DWnd",
    ):
        setattr(dst, name, getattr(src, name))
    dst.KeepAlive = copy.copy(src.KeepAlive)
    dst.Retransmit = copy.copy(src.Retransmit)


def _fill_query(obj: TargetObject, target_state: Any) -> None:
    if obj.state is None or target_state is None:
        return
    for name in ("Const", "Cached", "Delegated"):
        part = getattr(obj.state, name)
        if isinstance(target_state, type(obj.state)):
            dst = getattr(target_state, name)
        elif isinstance(target_state, type(part)):
            dst = target_state
        else:
            continue
        if isinstance(part, TCP_OFFLOAD_STATE_DELEGATED):
            _copy_fields(part, dst)
            dst.SendBacklogSize = 0xFFFFFFFF  # b.13: unsupported
            dst.ReceiveBacklogSize = len(obj.rx_pending)
        else:
            for f in (fl.name for fl in fields(part)):
                if f != "Header":
                    setattr(dst, f, getattr(part, f))


def _apply_update(obj: TargetObject, cached: Any) -> None:
    if obj.state is None or cached is None:
        return
    if isinstance(cached, TCP_OFFLOAD_STATE_CACHED | PATH_OFFLOAD_STATE_CACHED | NEIGHBOR_OFFLOAD_STATE_CACHED):
        if isinstance(obj.state.Cached, type(cached)):
            obj.state.Cached = cached  # b.6: only cached variables are applied


# ---------------------------------------------------------------------------------------------
# Host


def sample_states(
    port: int = 40000, *, rcv_nxt: int = 1000, snd_una: int = 5000
) -> tuple[NeighborOffloadState, PathOffloadState, TcpOffloadState]:
    """A plausible neighbor / path / TCP state triple for tests and examples."""
    n = NeighborOffloadState(
        NEIGHBOR_OFFLOAD_STATE_CONST(bytes(32), 0),
        NEIGHBOR_OFFLOAD_STATE_CACHED(bytes.fromhex("020000000001") + bytes(26), 0),
        NEIGHBOR_OFFLOAD_STATE_DELEGATED(0),
    )
    p = PathOffloadState(
        PATH_OFFLOAD_STATE_CONST(bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])),
        PATH_OFFLOAD_STATE_CACHED(1500),
        PATH_OFFLOAD_STATE_DELEGATED(),
    )
    t = TcpOffloadState(
        TCP_OFFLOAD_STATE_CONST(RemotePort=7, LocalPort=port, RemoteMss=1460),
        TCP_OFFLOAD_STATE_CACHED(InitialRcvWnd=65535),
        TCP_OFFLOAD_STATE_DELEGATED(
            RcvNxt=rcv_nxt, RcvWnd=65535, SndUna=snd_una, SndNxt=snd_una, SndMax=snd_una,
            SndWnd=65535, MaxSndWnd=65535, CWnd=14600, SsThresh=65535, SRtt=8 * 10, RttVar=4 * 5,
        ),
    )
    return n, p, t


class ScriptedHost(Protocol):
    """A scripted host protocol driver (see module docstring)."""

    def __init__(self, name: str = "host", *, accept: str | int = "all", hrd: int = 5) -> None:
        self.name = name
        self.accept = accept  # "all", "none" or a byte count (partial)
        self.hrd = hrd
        self.auto_upload = True
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[str] = []
        self.handles: dict[str, NDIS_OFFLOAD_HANDLE] = {}
        self.nodes: dict[str, OffloadNode] = {}
        self.roots: list[OffloadNode] = []
        self.received: dict[str, bytearray] = {}
        self.to_return: list[NET_BUFFER_LIST] = []
        self.completed: list[tuple[Operation, OffloadBlockList]] = []
        self.upload_queue: list[str] = []
        self.upload_all_pending = False
        self.paused = False
        self.resend: dict[str, bytearray] = {}
        self._outstanding: dict[int, list[tuple[Any, ...]]] = {}
        self._nbl_conn: dict[int, str] = {}
        self.status_log: list[int] = []
        self.bind_parameters: Any = None

    # -- binding -------------------------------------------------------------------------------------
    def BindAdapter(self, BindParameters: Any) -> None:  # noqa: N802,N803
        self.bind_parameters = BindParameters

    @property
    def chimney_capacity(self) -> int:
        caps = self.binding.TcpConnectionOffloadCapabilities
        return caps.TcpConnectionOffloadCapacity if caps else 0

    # -- issuing operations ------------------------------------------------------------------------------
    def _remember(self, root: OffloadBlockList) -> None:
        rec = []
        for block, _d, parent in iter_tree(root):
            handle = block.OffloadHandle  # type: ignore[attr-defined]
            was_new = handle is not None and handle.MiniportOffloadContext is None
            rec.append((block, handle, block.layer, parent, was_new))
            if block.OffloadHandle is not None:  # type: ignore[attr-defined]
                self.handles.setdefault(block.label, block.OffloadHandle)  # type: ignore[attr-defined]
        self._outstanding[id(root)] = rec

    def offload(self, root: OffloadBlockList) -> OffloadBlockList:
        self._remember(root)
        self.binding.NdisInitiateOffload(root)
        return root

    def offload_connection(
        self, neighbor: Any, path: Any, tcp: Any, *, send_data: Any = None, labels: tuple[str, str, str] = ("N", "P", "T")
    ) -> OffloadBlockList:
        """Offload one connection; ``neighbor`` / ``path`` may be states, labels of offloaded
        objects (linkers) or None (placeholders)."""
        if isinstance(neighbor, str):
            neighbor = self.handles[neighbor]
        if isinstance(path, str):
            path = self.handles[path]
        return self.offload(offload_connection_tree(neighbor, path, tcp, send_data=send_data, labels=labels))

    def terminate(self, labels: list[str]) -> OffloadBlockList:
        nodes = [self.nodes[label] for label in labels]
        if all(n.layer is OffloadLayer.TCP for n in nodes):
            root = terminate_connections([n.handle for n in nodes], labels=labels)
        else:
            root = terminate_tree(nodes)
        self._remember(root)
        self.binding.NdisTerminateOffload(root)
        return root

    def upload_all(self) -> OffloadBlockList | None:
        if not self.roots:
            return None
        root = terminate_tree(list(self.roots))
        self._remember(root)
        self.binding.NdisTerminateOffload(root)
        return root

    def query(self, labels: list[str]) -> OffloadBlockList:
        nodes = [self.nodes[label] for label in labels]

        def make(n: OffloadNode) -> Any:
            return {OffloadLayer.NEIGHBOR: NeighborOffloadState, OffloadLayer.PATH: PathOffloadState,
                    OffloadLayer.TCP: TcpOffloadState}[n.layer]()

        root = query_tree(nodes, make)
        self._remember(root)
        self.binding.NdisQueryOffloadState(root)
        return root

    def update(self, label: str, cached: Any) -> OffloadBlockList:
        root = update_tree([(self.nodes[label], cached)])
        self._remember(root)
        self.binding.NdisUpdateOffload(root)
        return root

    def invalidate(self, labels: list[str]) -> OffloadBlockList:
        root = invalidate_tree([self.nodes[label] for label in labels])
        self._remember(root)
        self.binding.NdisInvalidateOffload(root)
        return root

    def send(self, label: str, data: bytes, *, nbl_label: str = "") -> NET_BUFFER_LIST:
        nbl = NET_BUFFER_LIST(data, label=nbl_label)
        self._nbl_conn[id(nbl)] = label
        self.binding.NdisOffloadTcpSend(self.handles[label], nbl)
        return nbl

    def send_chain(self, label: str, chunks: list[bytes]) -> NET_BUFFER_LIST:
        head = link_nbls(NET_BUFFER_LIST(c) for c in chunks)
        assert head is not None
        for n in iter_nbls(head):
            self._nbl_conn[id(n)] = label
        self.binding.NdisOffloadTcpSend(self.handles[label], head)
        return head

    def post_receive(self, label: str, size: int, *, no_push: bool = False) -> NET_BUFFER_LIST:
        nbl = NET_BUFFER_LIST(size)
        nbl.TcpReceiveNoPush = no_push
        self.binding.NdisOffloadTcpReceive(self.handles[label], nbl)
        return nbl

    def disconnect(self, label: str, flags: int, data: bytes = b"") -> NET_BUFFER_LIST:
        nbl = NET_BUFFER_LIST(data)
        self.binding.NdisOffloadTcpDisconnect(self.handles[label], nbl, flags)
        return nbl

    def forward(self, label: str, segment: bytes) -> NET_BUFFER_LIST:
        nbl = NET_BUFFER_LIST(segment)
        self.binding.NdisOffloadTcpForward(self.handles[label], nbl)
        return nbl

    def poll(self) -> bool:
        """Run deferred host work (receive returns, uploads); True if it did anything."""
        did = False
        if self.to_return:
            nbls, self.to_return = self.to_return, []
            for nbl in nbls:
                nbl.Next = None
                self.binding.NdisOffloadTcpReceiveReturn(nbl)
            did = True
        if self.upload_queue:
            labels = [lb for lb in dict.fromkeys(self.upload_queue) if lb in self.nodes]
            self.upload_queue = []
            if labels:
                self.terminate(labels)
                did = True
        if self.upload_all_pending:
            self.upload_all_pending = False
            if self.upload_all() is not None:
                did = True
        return did

    # -- completions ------------------------------------------------------------------------------------------
    def _check_restored(self, op: Operation, root: OffloadBlockList) -> None:
        rec = self._outstanding.pop(id(root), None)
        if rec is None:
            self.errors.append(f"{op.value} completion of a tree we did not issue: {root.label}")
            return
        for block, handle, _layer, _parent, _new in rec:
            if type(block).__name__ != "NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST":
                self.errors.append(f"{block.label}: completion in the {block.flavor} flavor")
            elif block.OffloadHandle is not handle:  # type: ignore[attr-defined]
                self.errors.append(f"{block.label}: OffloadHandle not restored")

    def _record_tree(self, op: Operation, root: OffloadBlockList) -> None:
        self.completed.append((op, root))
        self.events.append(
            (op.value + "OffloadComplete", root.label,
             tuple((b.label, status_name(b.Status)) for b in iter_blocks(root)))
        )

    def InitiateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        root = OffloadBlockList
        rec = self._outstanding.get(id(root), [])
        self._check_restored(Operation.INITIATE, root)
        self._record_tree(Operation.INITIATE, root)
        node_of: dict[int, OffloadNode | None] = {}
        for block, handle, layer, parent, was_new in rec:
            parent_node = node_of.get(id(parent)) if parent is not None else None
            node: OffloadNode | None = None
            if handle is not None and not was_new:
                node = next((nd for nd in self.nodes.values() if nd.handle is handle), None)
            elif handle is not None and block.Status in OFFLOADED_STATUSES:
                node = self.nodes.get(block.label)
                if node is None:
                    node = OffloadNode(layer or OffloadLayer.TCP, handle, label=block.label)
                    self.nodes[block.label] = node
                    if parent_node is not None:
                        parent_node.children.append(node)
                    else:
                        self.roots.append(node)
                    if handle.MiniportOffloadContext is None:
                        self.errors.append(f"{block.label}: offloaded but no context written")
            elif was_new and handle.MiniportOffloadContext is not None:
                self.errors.append(f"{block.label}: failed but context written (d.7)")
            node_of[id(block)] = node if node is not None else parent_node

    def TerminateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        root = OffloadBlockList
        self._check_restored(Operation.TERMINATE, root)
        self._record_tree(Operation.TERMINATE, root)
        for block in iter_blocks(root):
            node = self.nodes.pop(block.label, None)
            if node is None:
                continue
            if node in self.roots:
                self.roots.remove(node)
            for other in self.nodes.values():
                if node in other.children:
                    other.children.remove(node)
            returned = [bytes(n.data) for n in iter_nbls(block.NetBufferListChain)]
            if returned:
                self.resend.setdefault(block.label, bytearray()).extend(b"".join(returned))
                self.events.append(("SendDataReturned", block.label, tuple(returned)))
            state = block.state
            if isinstance(state, TCP_OFFLOAD_STATE_DELEGATED):
                self.events.append(("Delegated", block.label, state.SndUna, state.SndNxt, state.SndMax, state.RcvNxt))
                if state.BufferedData is not None:
                    data = b"".join(bytes(n.data) for n in iter_nbls(state.BufferedData))
                    self.received.setdefault(block.label, bytearray()).extend(data)
                    self.events.append(("BufferedData", block.label, data))
                    self.to_return.extend(iter_nbls(state.BufferedData))

    def UpdateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._check_restored(Operation.UPDATE, OffloadBlockList)
        self._record_tree(Operation.UPDATE, OffloadBlockList)

    def InvalidateOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._check_restored(Operation.INVALIDATE, OffloadBlockList)
        self._record_tree(Operation.INVALIDATE, OffloadBlockList)

    def QueryOffloadComplete(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
        self._check_restored(Operation.QUERY, OffloadBlockList)
        self._record_tree(Operation.QUERY, OffloadBlockList)

    def _io_event(self, name: str, head: Any) -> None:
        self.events.append(
            (name, tuple((status_name(n.Status), n.TcpOffloadBytesTransferred) for n in iter_nbls(head)))
        )

    def TcpOffloadSendComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self._io_event("TcpOffloadSendComplete", NetBufferList)
        for n in iter_nbls(NetBufferList):
            if n.Status == NdisStatus.REQUEST_UPLOAD:
                label = self._label_of_nbl(n)
                if label:
                    self.upload_queue.append(label)  # e.5: upload, then send it ourselves

    def _label_of_nbl(self, nbl: NET_BUFFER_LIST) -> str | None:
        return self._nbl_conn.get(id(nbl))

    def TcpOffloadReceiveComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self._io_event("TcpOffloadReceiveComplete", NetBufferList)
        for n in iter_nbls(NetBufferList):
            got = bytes(n.buffer[n.DataOffset - n.TcpOffloadBytesTransferred : n.DataOffset])
            self.events.append(("ReceivedData", got))

    def TcpOffloadDisconnectComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self._io_event("TcpOffloadDisconnectComplete", NetBufferList)

    def TcpOffloadForwardComplete(self, NetBufferList: Any) -> None:  # noqa: N802,N803
        self._io_event("TcpOffloadForwardComplete", NetBufferList)

    def _label_of_handle(self, handle: Any) -> str:
        for label, h in self.handles.items():
            if h is handle:
                return label
        self.errors.append(f"indication with a foreign handle {handle!r}")
        return "?"

    def TcpOffloadEvent(self, OffloadContext: Any, EventType: int, EventSpecificInformation: int) -> None:  # noqa: N802,N803,E501
        label = self._label_of_handle(OffloadContext)
        self.events.append(("TcpOffloadEvent", label, int(EventType), int(EventSpecificInformation)))
        if EventType in (TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateAbort):
            if self.auto_upload:
                self.upload_queue.append(label)  # c.1: the host uploads

    def TcpOffloadReceiveIndicate(self, OffloadContext: Any, NetBufferList: Any, Status: int) -> tuple[int, int]:  # noqa: N802,N803,E501
        label = self._label_of_handle(OffloadContext)
        data = bytes(NetBufferList.data)
        if self.accept == "none":
            self.events.append(("ReceiveIndicate", label, data, "NOT_ACCEPTED"))
            return NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED, 0
        if isinstance(self.accept, int) and self.accept < len(data):
            take = data[: self.accept]
            self.received.setdefault(label, bytearray()).extend(take)
            self.events.append(("ReceiveIndicate", label, take, "PARTIAL"))
            return NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED, len(take)
        self.received.setdefault(label, bytearray()).extend(data)
        self.events.append(("ReceiveIndicate", label, data, "SUCCESS"))
        self.to_return.append(NetBufferList)  # a.4: ours until receive-return
        return NdisStatus.SUCCESS, len(data)

    def IndicateOffloadEvent(self, OffloadBlockList: Any, IndicationCode: int) -> None:  # noqa: N802,N803
        block = OffloadBlockList
        if block is not None:
            label = self._label_of_handle(block.OffloadHandle)
            if isinstance(block.state, NeighborOffloadState):
                block.state.Cached.HostReachabilityDelta = self.hrd  # T.7 (X.16: mechanism [I])
        else:
            label = "-"
        self.events.append(("IndicateOffloadEvent", label, int(IndicationCode)))

    def StatusEx(self, StatusIndication: NDIS_STATUS_INDICATION) -> None:  # noqa: N802,N803
        code = StatusIndication.StatusCode
        self.status_log.append(code)
        self.events.append(("StatusEx", status_name(code)))
        if code == NdisStatus.OFFLOAD_PAUSE:
            self.paused = True
        elif code == NdisStatus.OFFLOAD_RESUME:
            self.paused = False
        elif code == NdisStatus.UPLOAD_ALL:
            self.paused = True
            self.upload_all_pending = True  # d.8

    def ReceiveNetBufferLists(self, NetBufferLists: Any, PortNumber: int, NumberOfNetBufferLists: int, ReceiveFlags: int) -> None:  # noqa: N802,N803,E501
        self.events.append(("ReceiveNetBufferLists", tuple(bytes(n.data) for n in iter_nbls(NetBufferLists))))


# ---------------------------------------------------------------------------------------------
# Bench


class ChimneyBench:
    """host -> ``ims`` pass-through IMs -> target, on one Ndis with a conformance checker."""

    def __init__(
        self,
        ims: int = 0,
        *,
        target: Miniport | None = None,
        host: Protocol | None = None,
        strict: bool = True,
        checker: ConformanceChecker | None = None,
    ) -> None:
        self.checker = checker if checker is not None else ConformanceChecker(strict=strict)
        self.ndis = Ndis(checker=self.checker)
        self.target = target if target is not None else ScriptedTarget()
        caps = getattr(self.target, "capabilities", None)
        self.target_handle: NDIS_MINIPORT_HANDLE = self.ndis.register_miniport(
            self.target, capabilities=caps, name=getattr(self.target, "name", "target")
        )
        self.top, self.ims = stack_intermediates(self.ndis, self.target_handle, ims)
        self.host = host if host is not None else ScriptedHost()
        self.binding: NDIS_BINDING_HANDLE = self.ndis.open_adapter(self.host, self.top)

    @property
    def intermediates(self) -> list[PassThroughIM]:
        return self.ims

    def run(self, max_rounds: int = 1000) -> None:
        """The run loop: deliver completions, let the host do deferred work, until idle."""
        for _ in range(max_rounds):
            did = self.ndis.deliver_pending() > 0
            poll = getattr(self.host, "poll", None)
            if poll is not None and poll():
                did = True
            if not did and not self.ndis.has_pending():
                return
        raise RuntimeError("bench did not settle")

