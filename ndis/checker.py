"""The conformance checker: a driver verifier for TCP chimney drivers.

It watches every crossing at every edge (one edge per binding, so with IM drivers stacked each
IM is checked on both of its edges) and reports each violation of the reference's Appendix V
invariants and the c.3 concurrency guarantees.  A :class:`Violation` carries the rule id, the
object (label), the edge and the recent call sequence.  ``strict=True`` raises
:class:`ConformanceError` at the first violation (tests); ``strict=False`` collects them in
``violations`` (users pointing it at their own drivers).

Rule ids are ``V1`` ... ``V17`` (Appendix V, see :data:`RULES`), ``C3.2`` (c.3: no I/O or
state operation on an object while it is being offloaded) and ``C4`` (a send-backlog change
is an event of an offloaded TCP connection: c.4 asks the target to avoid event indications
while an initiate is in progress, and before it completed the host can post no send the
value could apply to (C3.2)).  After the terminate completed, any event is V10.  The other c.3 bullets are the same
rules as Appendix V items and are reported under those ids: "never offload an object being
offloaded" and "one update at a time, not on an invalidated object" -> V12; "terminate only
after invalidate/query/update completed and receive/disconnect calls returned", "no sends or
receives after NdisTerminateOffload" -> V13; "dependents in the same terminate tree", "only
path->neighbor links are updated" -> V14; "sends / receives serialized per connection",
"forward only after the offload completed" -> V16.  "Queries may overlap" is allowed.  "Never
ask the target to send urgent data" is not observable at this layer.

What the checker can and cannot see: it sees block lists, handles, slots and NBLs as they cross
NDIS; it cannot see the wire, so the V8 "RST only on abortive disconnect", the V9 "SRtt x8 /
RttVar x4 / TsTime" arithmetic and the V7 push-timer semantics are not checked (V7 checks only
FIFO, zero-byte completion accounting and non-push buffers being full).

Theory of operation: per edge the checker keeps an object table keyed by the handle the upper
driver passed at that edge (``OffloadHandle`` = ``NdisOffloadHandle``), the outstanding state
operations keyed by root identity (with a snapshot of every block taken when the request was
dispatched), and the outstanding NBLs keyed by identity.  Target-side facts (V1-V11) are checked
when the lower driver calls NDIS; host-side facts (V12-V16) when the upper driver calls NDIS;
V17 compares what the lower driver of an edge hands back with the snapshot.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    BlockRole,
    OffloadBlockList,
    TreeError,
    iter_nbls,
    iter_tree,
    tree_layers,
)
from .state import (
    OFFLOADABLE_TCP_STATES,
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_DELEGATED,
    OffloadLayer,
    TcpOffloadState,
)
from .status import (
    DISCONNECT_COMPLETE_STATUSES,
    FORWARD_COMPLETE_STATUSES,
    LEGAL_BLOCK_STATUSES,
    OFFLOADED_STATUSES,
    RECEIVE_COMPLETE_STATUSES,
    RECEIVE_INDICATE_RESULTS,
    SEND_COMPLETE_STATUSES,
    NdisStatus,
    Operation,
    status_name,
)

log = logging.getLogger(__name__)

__all__ = ["ConformanceChecker", "ConformanceError", "Violation", "RULES"]

RULES: dict[str, str] = {
    "V1": "Miniport...Offload returns before doing work and is matched by exactly one NdisM...Complete "
    "with the identical root; every block has a legal Status (f.2) at completion.",
    "V2": "Initiate: depth-first/breadth-next; a failed root stops traversal; *MiniportOffloadContext "
    "written only for successfully offloaded new blocks; placeholders SUCCESS; linkers "
    "SUCCESS/PARTIAL/FAILURE from their dependents.",
    "V3": "On a failed TCP block the initial send NBLs are neither completed nor have their Status modified.",
    "V4": "No receive indication before NdisMInitiateOffloadComplete returned; none during an "
    "in-progress indication on the same connection.",
    "V5": "MiniportTcpOffload{Send,Receive,Disconnect,Forward} return PENDING; "
    "MiniportTcpOffloadReceiveReturn returns SUCCESS.",
    "V6": "Send completions: FIFO; SUCCESS only when every byte is ACKed; non-success after the first "
    "non-success; at most one partial NBL per chain; TcpOffloadBytesTransferred == data-start advance.",
    "V7": "Receive buffers completed in posting order; byte accounting; non-push buffers complete full; "
    "receive indications: single NBL, Status SUCCESS, legal result.",
    "V8": "Disconnect: graceful completes after all earlier sends; abortive completes all sends with "
    "REQUEST_ABORTED first.",
    "V9": "Terminate completes after every outstanding call and own indication on the objects; "
    "NetBufferListChain NULL unless send data handed back in original order with SendDataHead/Tail "
    "and SndUna/SndNxt/SndMax consistent.",
    "V10": "An object's context is used only until its terminate completes.",
    "V11": "TcpIndicateRetrieve only for a TCP connection, with a valid TCP_UPLOAD_REASON.",
    "V12": "Never initiate an object already offloaded/being offloaded; never update an object being "
    "offloaded, updated or invalidated; operate only on offloaded objects.",
    "V13": "Never terminate a TCP connection with outstanding invalidate/query/update or while a "
    "receive/disconnect call has not returned; no I/O after NdisTerminateOffload.",
    "V14": "Terminate a neighbor/path only with all its dependents in the same tree; TCP->path links "
    "never updated.",
    "V15": "Offload only TCP connections in Established/FinWait1/FinWait2/CloseWait/Closing/LastAck.",
    "V16": "Sends serialized per connection; receives serialized per connection; forwards only after "
    "the offload completed.",
    "V17": "IM: requests and completions cross with the right flavor; ImReserved/SourceHandle and "
    "handles restored before NdisM...Complete; same NBL pointers; handles translated.",
    "C3.2": "While an object is being offloaded the target receives no send, post-receive, forward, "
    "update, query, invalidate or terminate for it.",
    "C4": "TcpIndicateSendBacklogChange only for an offloaded TCP connection (after "
    "NdisMInitiateOffloadComplete, c.4; never for a neighbor/path, b.14), with a ULONG byte count.",
}


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    obj: str
    edge: str
    calls: tuple[str, ...]

    def __str__(self) -> str:
        recent = "\n    ".join(self.calls[-12:])
        return (
            f"[{self.rule}] {self.message} (object {self.obj}, edge {self.edge})\n"
            f"  rule: {RULES.get(self.rule, '?')}\n  recent calls:\n    {recent}"
        )


class ConformanceError(AssertionError):
    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


# ---------------------------------------------------------------------------------------------
# per-edge bookkeeping


@dataclass(eq=False)
class _Nbl:
    nbl: NET_BUFFER_LIST
    kind: str
    obj: _Obj | None
    length: int
    offset: int
    status: int
    done: bool = False
    dead: bool = False  # initiate send data of a failed TCP block (V3)
    abort_expected: bool = False  # outstanding when an abortive disconnect was posted (V8)
    before: list[_Nbl] = field(default_factory=list)  # disconnect: sends posted before it


@dataclass(eq=False)
class _Obj:
    handle: Any
    label: str
    layer: OffloadLayer | None
    phase: str = "offloading"  # offloading / offloaded / terminating / gone
    parent: _Obj | None = None
    children: list[_Obj] = field(default_factory=list)
    invalidated: bool = False
    initiate_completed: bool = False
    freed: bool = False
    pending: dict[Operation, int] = field(default_factory=dict)
    sends: list[_Nbl] = field(default_factory=list)
    recvs: list[_Nbl] = field(default_factory=list)
    discs: list[_Nbl] = field(default_factory=list)
    fwds: list[_Nbl] = field(default_factory=list)
    in_call: dict[str, int] = field(default_factory=dict)
    indicating: int = 0
    delivering: int = 0  # an I/O completion on this connection is being delivered


@dataclass(eq=False)
class _Snap:
    block: OffloadBlockList
    role: BlockRole
    layer: OffloadLayer | None
    handle: Any
    parent: OffloadBlockList | None
    obj: _Obj | None
    slot: Any = None
    slot_value: Any = None
    ImReserved: list[Any] = field(default_factory=list)
    SourceHandle: Any = None
    nbls: list[tuple[NET_BUFFER_LIST, int]] = field(default_factory=list)


@dataclass(eq=False)
class _Op:
    op: Operation
    root: OffloadBlockList
    snaps: list[_Snap]
    dispatched: bool = False
    returned: bool = False


class _Edge:
    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self.name: str = getattr(binding, "name", "?")
        self.objects: dict[int, _Obj] = {}
        self.tombstones: dict[int, _Obj] = {}
        self.ops: dict[int, _Op] = {}
        self.completed: deque[OffloadBlockList] = deque(maxlen=256)
        self.nbls: dict[int, _Nbl] = {}
        self.indicated: dict[int, NET_BUFFER_LIST] = {}
        self.dead: dict[int, NET_BUFFER_LIST] = {}  # send data of failed TCP blocks (V3)
        self.completing: dict[int, tuple[NET_BUFFER_LIST, _Obj]] = {}  # completed, not delivered

    @property
    def intermediate(self) -> bool:
        return bool(getattr(getattr(self.binding, "miniport", None), "intermediate", False))

    def obj(self, handle: Any) -> _Obj | None:
        return self.objects.get(id(handle))


def _role_protocol(block: OffloadBlockList) -> BlockRole:
    handle = block._w3
    if handle is None:
        return BlockRole.PLACEHOLDER
    ctx = getattr(handle, "MiniportOffloadContext", None)
    return BlockRole.NEW_OFFLOAD if ctx is None else BlockRole.REFERENCE


def _seq_le(a: int, b: int) -> bool:
    return ((b - a) % (1 << 32)) < (1 << 31)


class ConformanceChecker:
    """Appendix V / c.3 verifier (see module docstring)."""

    #: rules waived by default (a test hook: a waived rule is never reported)
    DEFAULT_DISABLED: frozenset[str] = frozenset()

    def __init__(
        self, strict: bool = True, history: int = 64, disabled: Iterable[str] | None = None
    ) -> None:
        self.strict = strict
        self.disabled = frozenset(disabled) if disabled is not None else self.DEFAULT_DISABLED
        self.violations: list[Violation] = []
        self._history: deque[str] = deque(maxlen=history)
        self._seq = itertools.count(1)
        self._edges: dict[int, _Edge] = {}

    # -- reporting ---------------------------------------------------------------------------------
    @property
    def rules_broken(self) -> set[str]:
        return {v.rule for v in self.violations}

    def recent_calls(self) -> list[str]:
        return list(self._history)

    def _note(self, edge: str, text: str) -> None:
        self._history.append(f"#{next(self._seq)} [{edge}] {text}")

    def _flag(self, rule: str, message: str, obj: str, edge: str) -> None:
        if rule in self.disabled:
            return
        v = Violation(rule, message, obj, edge, tuple(self._history))
        self.violations.append(v)
        log.warning("conformance: [%s] %s (%s @ %s)", rule, message, obj, edge)
        if self.strict:
            raise ConformanceError(v)

    def assert_clean(self) -> None:
        if self.violations:
            raise ConformanceError(self.violations[0])

    def assert_quiescent(self) -> None:
        """V1: every dispatched state operation has been completed."""
        for edge in self._edges.values():
            for op in list(edge.ops.values()):
                self._flag("V1", f"{op.op.value} never completed", op.root.label, edge.name)

    def _edge(self, binding: Any) -> _Edge:
        e = self._edges.get(id(binding))
        if e is None:
            e = self._edges[id(binding)] = _Edge(binding)
        return e

    # -- binding ------------------------------------------------------------------------------------
    def bind(self, binding: Any) -> None:
        self._edge(binding)
        self._note(binding.name, "NdisOpenAdapterEx")

    # -- state operations down ------------------------------------------------------------------
    def request(self, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        e = self._edge(binding)
        self._note(e.name, f"Ndis{op.value}Offload root={root.label}")
        try:
            order = list(iter_tree(root))
        except TreeError as exc:
            self._flag("V1", f"malformed tree: {exc}", root.label, e.name)
            return
        layers = tree_layers(root)
        snaps: list[_Snap] = []
        snap_of: dict[int, _Snap] = {}
        in_tree: set[int] = set()
        for block, _d, parent in order:
            if not isinstance(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST):
                self._flag("V17", f"Ndis{op.value}Offload with a {block.flavor}-flavored block",
                           block.label, e.name)
            role = _role_protocol(block)
            handle = block._w3
            obj = e.obj(handle) if handle is not None else None
            s = _Snap(block, role, layers.get(id(block)), handle, parent, obj)
            snaps.append(s)
            snap_of[id(block)] = s
            if obj is not None:
                in_tree.add(id(obj))
        for s in snaps:
            self._check_request_block(e, op, s, snap_of, in_tree)
        if op is Operation.INITIATE:
            for s in snaps:
                for nbl in iter_nbls(s.block.NetBufferListChain):
                    s.nbls.append((nbl, nbl.Status))
                    if s.obj is not None:
                        rec = _Nbl(nbl, "send", s.obj, nbl.DataLength, nbl.DataOffset, nbl.Status)
                        s.obj.sends.append(rec)
                        e.nbls[id(nbl)] = rec
        e.ops[id(root)] = _Op(op, root, snaps)

    def _check_request_block(
        self, e: _Edge, op: Operation, s: _Snap, snap_of: dict[int, _Snap], in_tree: set[int]
    ) -> None:
        label = s.block.label
        if s.role is BlockRole.PLACEHOLDER:
            return
        obj = s.obj
        if op is Operation.INITIATE and s.role is BlockRole.NEW_OFFLOAD:
            if obj is not None and obj.phase != "gone":
                self._flag("V12", "initiate of an object already offloaded / being offloaded", label, e.name)
            if s.layer is OffloadLayer.TCP and isinstance(s.block.state, TcpOffloadState):
                state = s.block.state.Delegated.State
                if state not in OFFLOADABLE_TCP_STATES:
                    self._flag("V15", f"offload of a connection in state {state!r}", label, e.name)
            parent_obj = None
            p = s.parent
            while p is not None and parent_obj is None:
                ps = snap_of.get(id(p))
                parent_obj = ps.obj if ps is not None else None
                p = ps.parent if ps is not None else None
            new = _Obj(s.handle, label, s.layer, parent=parent_obj)
            if parent_obj is not None:
                parent_obj.children.append(new)
            e.objects[id(s.handle)] = new
            e.tombstones.pop(id(s.handle), None)
            s.obj = new
            return
        # a reference block (linker, or the object of query/update/invalidate/terminate)
        if obj is None:
            if id(s.handle) in e.tombstones:
                self._flag("V13", f"{op.value} of an object already terminated", label, e.name)
            else:
                self._flag("V12", f"{op.value} of an object not offloaded at this edge", label, e.name)
            return
        if obj.phase == "terminating":
            self._flag("V13", f"{op.value} after NdisTerminateOffload", label, e.name)
            return
        if op is Operation.UPDATE:
            if obj.phase == "offloading" or obj.invalidated or obj.pending.get(Operation.UPDATE):
                why = ("being offloaded" if obj.phase == "offloading" else
                       "invalidated" if obj.invalidated else "being updated")
                self._flag("V12", f"update of an object {why}", label, e.name)
            if s.layer is OffloadLayer.TCP and s.parent is not None:
                self._flag("V14", "update relinks a TCP connection to a path", label, e.name)
        elif obj.phase == "offloading":
            self._flag("C3.2", f"{op.value} of an object being offloaded", label, e.name)
        if op is Operation.TERMINATE:
            if obj.layer is OffloadLayer.TCP:
                busy = {k.value: n for k, n in obj.pending.items() if n}
                if busy:
                    self._flag("V13", f"terminate with outstanding {busy}", label, e.name)
                for kind in ("receive", "disconnect"):
                    if obj.in_call.get(kind):
                        self._flag("V13", f"terminate while a {kind} call has not returned", label, e.name)
            live = [c for c in obj.children if c.phase != "gone" and id(c) not in in_tree]
            if live:
                self._flag("V14", f"terminate with dependents outside the tree: "
                           f"{[c.label for c in live]}", label, e.name)
            obj.phase = "terminating"
        obj.pending[op] = obj.pending.get(op, 0) + 1

    def request_dispatched(self, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        e = self._edge(binding)
        o = e.ops.get(id(root))
        if o is None:
            return
        for s in o.snaps:
            b = s.block
            if isinstance(b, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST):
                s.slot = b.MiniportOffloadContext
                s.slot_value = s.slot.value if s.slot is not None else None
            s.ImReserved = list(b.ImReserved)
            s.SourceHandle = b.SourceHandle
        o.dispatched = True
        self._note(e.name, f"Miniport{op.value}Offload root={root.label}")

    def request_returned(self, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        e = self._edge(binding)
        o = e.ops.get(id(root))
        if o is not None:
            o.returned = True

    # -- state operations up ------------------------------------------------------------------------------
    def complete(self, mp: Any, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        name = f"NdisM{op.value}OffloadComplete" if op is not Operation.QUERY else "NdisMQueryOffloadStateComplete"
        if binding is None:
            self._note(getattr(mp, "name", "?"), f"{name} root={root.label}")
            self._flag("V1", f"{name} for a tree that was never passed down", root.label, mp.name)
            return
        e = self._edge(binding)
        self._note(e.name, f"{name} root={root.label}")
        o = e.ops.pop(id(root), None)
        if o is None:
            if any(r is root for r in e.completed):
                self._flag("V1", f"{name}: tree completed twice", root.label, e.name)
            else:
                self._flag("V1", f"{name} for an unknown tree", root.label, e.name)
            return
        e.completed.append(root)
        if o.op is not op:
            self._flag("V1", f"{o.op.value} completed with {name}", root.label, e.name)
        if not o.returned:
            self._flag("V1", f"{name} before Miniport{op.value}Offload returned", root.label, e.name)
        try:
            now = {id(b) for b, _, _ in iter_tree(root)}
        except TreeError as exc:
            self._flag("V1", f"tree damaged: {exc}", root.label, e.name)
            now = set()
        if now and now != {id(s.block) for s in o.snaps}:
            self._flag("V1", "tree shape changed between request and completion", root.label, e.name)
        for s in o.snaps:
            b = s.block
            if not isinstance(b, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST):
                self._flag("V17", f"{name} with a {b.flavor}-flavored block", b.label, e.name)
                continue
            if list(b.ImReserved) != s.ImReserved or b.SourceHandle is not s.SourceHandle:
                self._flag("V17", "ImReserved/SourceHandle not restored", b.label, e.name)
            if b.NdisOffloadHandle is not s.handle or b.MiniportOffloadContext is not s.slot:
                self._flag("V17", "NdisOffloadHandle/MiniportOffloadContext not restored", b.label, e.name)
            legal = ({NdisStatus.SUCCESS} if s.role is BlockRole.PLACEHOLDER else LEGAL_BLOCK_STATUSES[op])
            if b.Status not in legal:
                self._flag("V1", f"illegal {op.value} Status {status_name(b.Status)} for a "
                           f"{s.role.value} block", b.label, e.name)
        if op is Operation.INITIATE:
            self._check_initiate(e, o)
        elif op is Operation.TERMINATE:
            self._check_terminate(e, o)
        for s in o.snaps:
            if s.obj is not None and op is not Operation.INITIATE:
                s.obj.pending[op] = max(0, s.obj.pending.get(op, 0) - 1)
                if op is Operation.INVALIDATE and s.block.Status == NdisStatus.SUCCESS:
                    s.obj.invalidated = True

    def _check_initiate(self, e: _Edge, o: _Op) -> None:
        snaps = o.snaps
        snap_of = {id(s.block): s for s in snaps}
        offloaded: dict[int, bool] = {}
        root = snaps[0] if snaps else None
        for s in snaps:
            b = s.block
            if s.role is BlockRole.NEW_OFFLOAD:
                ok = b.Status in OFFLOADED_STATUSES
                offloaded[id(b)] = ok
                written = s.slot is not None and s.slot.value is not None
                if ok and not written:
                    self._flag("V2", "offloaded block without *MiniportOffloadContext written", b.label, e.name)
                if not ok and written:
                    self._flag("V2", "*MiniportOffloadContext written for a failed block (d.7)", b.label, e.name)
                if s.obj is not None:
                    s.obj.initiate_completed = ok
            elif s.role is BlockRole.REFERENCE:
                offloaded[id(b)] = True
                if s.slot is not None and s.slot.value is not s.slot_value:
                    self._flag("V2", "*MiniportOffloadContext of a linker changed", b.label, e.name)
            else:
                offloaded[id(b)] = True
        # b.4: a failed root stops traversal; dependents of a failed block are not offloaded
        if root is not None and root.role is BlockRole.NEW_OFFLOAD and not offloaded[id(root.block)]:
            for s in snaps[1:]:
                if s.role is BlockRole.NEW_OFFLOAD and offloaded[id(s.block)]:
                    self._flag("V2", "offloaded after a failed root", s.block.label, e.name)
        for s in snaps:
            p = s.parent
            while p is not None:
                ps = snap_of[id(p)]
                if ps.role is BlockRole.NEW_OFFLOAD and not offloaded[id(p)]:
                    if s.role is BlockRole.NEW_OFFLOAD and offloaded[id(s.block)]:
                        self._flag("V2", f"offloaded although {p.label} failed", s.block.label, e.name)
                    break
                p = ps.parent
        # b.5: linker / partial statuses from the immediate dependents
        for s in snaps:
            b = s.block
            deps = [d for d in snaps if d.parent is b]
            ok = [d for d in deps if d.role is BlockRole.PLACEHOLDER or d.block.Status in OFFLOADED_STATUSES]
            if s.role is BlockRole.REFERENCE:
                want = (NdisStatus.SUCCESS if len(ok) == len(deps) else
                        NdisStatus.OFFLOAD_PARTIAL_SUCCESS if ok else NdisStatus.FAILURE)
                if b.Status != want:
                    self._flag("V2", f"linker Status {status_name(b.Status)}, dependents say "
                               f"{status_name(want)}", b.label, e.name)
            elif s.role is BlockRole.NEW_OFFLOAD and offloaded[id(b)] and deps:
                want = NdisStatus.SUCCESS if len(ok) == len(deps) else NdisStatus.OFFLOAD_PARTIAL_SUCCESS
                if b.Status != want:
                    self._flag("V2", f"Status {status_name(b.Status)}, dependents say "
                               f"{status_name(want)}", b.label, e.name)
        # b.4: contexts written in depth-first/breadth-next order
        seqs = [(s.block.label, s.slot.write_seq) for s in snaps
                if s.role is BlockRole.NEW_OFFLOAD and offloaded[id(s.block)] and s.slot is not None]
        for (la, a), (lb, b) in itertools.pairwise(seqs):
            if a > b:
                self._flag("V2", f"{lb} offloaded before {la}: not depth-first/breadth-next", lb, e.name)
                break
        # d.7 / V3: failed TCP blocks keep their send NBLs untouched
        for s in snaps:
            if s.role is BlockRole.NEW_OFFLOAD and not offloaded[id(s.block)]:
                for nbl, status in s.nbls:
                    rec = e.nbls.pop(id(nbl), None)
                    e.dead[id(nbl)] = nbl
                    if rec is not None:
                        rec.dead = True
                        if s.obj is not None and rec in s.obj.sends:
                            s.obj.sends.remove(rec)
                    if nbl.Status != status:
                        self._flag("V3", f"Status of {nbl.label} modified on a failed TCP block",
                                   s.block.label, e.name)
                    if rec is not None and rec.done:
                        self._flag("V3", f"{nbl.label} completed although its block failed",
                                   s.block.label, e.name)

    def _check_terminate(self, e: _Edge, o: _Op) -> None:
        for s in o.snaps:
            b = s.block
            obj = s.obj
            chain = list(iter_nbls(b.NetBufferListChain))
            if obj is None:
                continue
            if obj.layer is not OffloadLayer.TCP:
                if chain:
                    self._flag("V9", "NetBufferListChain on a non-TCP block", b.label, e.name)
            else:
                for what, lst in (("receive", obj.recvs), ("disconnect", obj.discs), ("forward", obj.fwds)):
                    if any(not r.done for r in lst):
                        self._flag("V9", f"terminate completed with an outstanding {what}", b.label, e.name)
                busy = {k.value: n for k, n in obj.pending.items() if n and k is not Operation.TERMINATE}
                if busy:
                    self._flag("V9", f"terminate completed with outstanding {busy}", b.label, e.name)
                if obj.indicating:
                    self._flag("V9", "terminate completed during an indication", b.label, e.name)
                outstanding = [r.nbl for r in obj.sends if not r.done]
                if [id(n) for n in chain] != [id(n) for n in outstanding]:
                    self._flag("V9", "send data neither completed nor handed back in original order "
                               f"(returned {[n.label for n in chain]}, outstanding "
                               f"{[n.label for n in outstanding]})", b.label, e.name)
                d = b.state
                if isinstance(d, TcpOffloadState):
                    d = d.Delegated
                if chain and isinstance(d, TCP_OFFLOAD_STATE_DELEGATED):
                    if d.SendDataHead is not chain[0] or d.SendDataTail is not chain[-1]:
                        self._flag("V9", "SendDataHead/SendDataTail do not bound NetBufferListChain",
                                   b.label, e.name)
                    total = sum(n.DataLength for n in chain)
                    if not (_seq_le(d.SndUna, d.SndNxt) and _seq_le(d.SndNxt, d.SndMax)
                            and (d.SndMax - d.SndUna) % (1 << 32) <= total):
                        self._flag("V9", "SndUna/SndNxt/SndMax inconsistent with the returned data",
                                   b.label, e.name)
                for r in obj.sends:
                    if not r.done:
                        r.done = True
                        e.nbls.pop(id(r.nbl), None)
            obj.freed = True

    def complete_delivering(self, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        e = self._edge(binding)
        self._note(e.name, f"Protocol{op.value}OffloadComplete root={root.label}")
        for b, _, _ in iter_tree(root):
            handle = b._w3
            obj = e.obj(handle) if handle is not None else None
            if obj is None:
                continue
            if op is Operation.INITIATE and obj.phase == "offloading":
                if obj.initiate_completed:
                    obj.phase = "offloaded"
                else:
                    self._bury(e, obj)
            elif op is Operation.TERMINATE and obj.phase == "terminating":
                self._bury(e, obj)

    def _bury(self, e: _Edge, obj: _Obj) -> None:
        obj.phase = "gone"
        e.objects.pop(id(obj.handle), None)
        e.tombstones[id(obj.handle)] = obj
        while len(e.tombstones) > 4096:  # bounded memory for long runs
            e.tombstones.pop(next(iter(e.tombstones)))
        if obj.parent is not None and obj in obj.parent.children:
            obj.parent.children.remove(obj)

    def complete_delivered(self, binding: Any, op: Operation, root: OffloadBlockList) -> None:
        pass

    # -- I/O ------------------------------------------------------------------------------------------------
    def io_request(self, binding: Any, kind: str, handle: Any, nbl: NET_BUFFER_LIST, flags: int | None) -> None:
        e = self._edge(binding)
        label = getattr(handle, "label", "?")
        self._note(e.name, f"NdisOffloadTcp{kind.capitalize()} {label} nbl={nbl.label}")
        obj = e.obj(handle)
        if obj is None:
            rule = "V13" if id(handle) in e.tombstones else "C3.2"
            self._flag(rule, f"{kind} on an object not offloaded at this edge", label, e.name)
            return
        if obj.phase == "terminating":
            self._flag("V13", f"{kind} after NdisTerminateOffload", label, e.name)
        elif obj.phase == "offloading":
            rule = "V16" if kind == "forward" else "C3.2"
            self._flag(rule, f"{kind} while the object is being offloaded", label, e.name)
        if kind in ("send", "receive") and obj.in_call.get(kind):
            self._flag("V16", f"{kind} calls not serialized on the connection", label, e.name)
        obj.in_call[kind] = obj.in_call.get(kind, 0) + 1
        lst = {"send": obj.sends, "receive": obj.recvs, "disconnect": obj.discs, "forward": obj.fwds}[kind]
        for n in iter_nbls(nbl):
            e.dead.pop(id(n), None)  # the host may send it again itself
            rec = _Nbl(n, kind, obj, n.DataLength, n.DataOffset, n.Status)
            if kind == "disconnect":
                rec.before = [r for r in obj.sends if not r.done]
                if flags is not None and flags & TCP_DISCONNECT_ABORTIVE_CLOSE:
                    for r in rec.before:
                        r.abort_expected = True
            lst.append(rec)
            e.nbls[id(n)] = rec

    def io_returned(self, binding: Any, kind: str, handle: Any, nbl: NET_BUFFER_LIST, status: int) -> None:
        e = self._edge(binding)
        obj = e.obj(handle)
        if obj is not None and obj.in_call.get(kind):
            obj.in_call[kind] -= 1
        if status != NdisStatus.PENDING:
            self._flag("V5", f"MiniportTcpOffload{kind.capitalize()} returned {status_name(status)}",
                       getattr(handle, "label", "?"), e.name)

    def io_complete(self, mp: Any, kind: str, head: NET_BUFFER_LIST) -> None:
        nbls = list(iter_nbls(head))
        self._note(mp.name, f"NdisTcpOffload{kind.capitalize()}Complete [{','.join(n.label for n in nbls)}]")
        edges = [self._edge(b) for b in getattr(mp, "bindings", [])]
        failed_seen: dict[int, bool] = {}
        partial_seen: dict[int, int] = {}
        rule_of = {"send": "V6", "receive": "V7", "disconnect": "V8", "forward": "V16"}
        legal = {"send": SEND_COMPLETE_STATUSES, "receive": RECEIVE_COMPLETE_STATUSES,
                 "disconnect": DISCONNECT_COMPLETE_STATUSES, "forward": FORWARD_COMPLETE_STATUSES}
        for n in nbls:
            rec, edge = None, None
            for cand in edges:
                rec = cand.nbls.get(id(n))
                if rec is not None:
                    edge = cand
                    break
            ename = edge.name if edge is not None else mp.name
            if rec is None or edge is None:
                dead = any(cand.dead.get(id(n)) is n for cand in edges)
                rule = "V3" if dead else ("V17" if getattr(mp, "intermediate", False) else rule_of[kind])
                self._flag(rule, f"completion of {n.label}, which is not outstanding at this edge",
                           n.label, ename)
                continue
            if rec.dead:
                self._flag("V3", f"{n.label} completed although its initiate failed", n.label, ename)
            if rec.kind != kind:
                self._flag(rule_of[kind], f"{rec.kind} NBL completed as {kind}", n.label, ename)
            if n.Status not in legal[kind]:
                self._flag(rule_of[kind], f"illegal {kind} completion Status {status_name(n.Status)}",
                           n.label, ename)
            obj = rec.obj
            lst = {"send": obj.sends, "receive": obj.recvs, "disconnect": obj.discs,
                   "forward": obj.fwds}[rec.kind] if obj is not None else []
            head_rec = next((r for r in lst if not r.done), None)
            if kind in ("send", "receive") and head_rec is not rec:
                self._flag(rule_of[kind], f"{n.label} completed out of FIFO order", n.label, ename)
            advance = n.DataOffset - rec.offset
            if kind in ("send", "receive", "disconnect") and n.TcpOffloadBytesTransferred != advance:
                self._flag(rule_of[kind], f"TcpOffloadBytesTransferred={n.TcpOffloadBytesTransferred} "
                           f"but data start advanced {advance}", n.label, ename)
            if kind == "send":
                key = id(obj)
                if n.Status == NdisStatus.SUCCESS:
                    if n.TcpOffloadBytesTransferred != rec.length:
                        self._flag("V6", "SUCCESS without every byte ACKed", n.label, ename)
                    if failed_seen.get(key):
                        self._flag("V6", "SUCCESS after a non-success NBL in the chain", n.label, ename)
                else:
                    failed_seen[key] = True
                    if 0 < n.TcpOffloadBytesTransferred < rec.length:
                        partial_seen[key] = partial_seen.get(key, 0) + 1
                        if partial_seen[key] > 1:
                            self._flag("V6", "more than one partial NBL in a completion", n.label, ename)
                if rec.abort_expected and n.Status != NdisStatus.REQUEST_ABORTED:
                    self._flag("V8", "send outstanding at an abortive disconnect not completed with "
                               "REQUEST_ABORTED", n.label, ename)
            elif kind == "receive":
                if (n.Status == NdisStatus.SUCCESS and n.TcpReceiveNoPush and rec.length
                        and n.DataLength != 0):
                    self._flag("V7", "non-push receive buffer completed before it was full", n.label, ename)
            elif kind == "disconnect":
                # f.3: a disconnect that *succeeds* comes after all earlier sends completed; one
                # failed with UPLOAD_IN_PROGRESS at terminate may precede sends handed back (d.3)
                pending = [r.nbl.label for r in rec.before if not r.done]
                if pending and n.Status == NdisStatus.SUCCESS:
                    self._flag("V8", f"disconnect completed before earlier sends {pending}", n.label, ename)
            rec.done = True
            edge.nbls.pop(id(n), None)
            if obj is not None:
                edge.completing[id(n)] = (n, obj)

    def io_complete_delivering(self, binding: Any, kind: str, head: NET_BUFFER_LIST) -> None:
        e = self._edge(binding)
        self._note(e.name, f"ProtocolTcpOffload{kind.capitalize()}Complete "
                   f"[{','.join(n.label for n in iter_nbls(head))}]")
        for obj in self._completing_objs(e, head, pop=False):
            obj.delivering += 1

    def io_complete_delivered(self, binding: Any, kind: str, head: NET_BUFFER_LIST) -> None:
        e = self._edge(binding)
        for obj in self._completing_objs(e, head, pop=True):
            obj.delivering = max(0, obj.delivering - 1)

    @staticmethod
    def _completing_objs(e: _Edge, head: NET_BUFFER_LIST, *, pop: bool) -> list[_Obj]:
        objs: dict[int, _Obj] = {}
        for n in iter_nbls(head):
            got = e.completing.pop(id(n), None) if pop else e.completing.get(id(n))
            if got is not None and got[0] is n:
                objs[id(got[1])] = got[1]
        return list(objs.values())

    def receive_return(self, binding: Any, nbl: NET_BUFFER_LIST) -> None:
        e = self._edge(binding)
        self._note(e.name, f"NdisOffloadTcpReceiveReturn {nbl.label}")
        e.indicated.pop(id(nbl), None)

    def receive_return_returned(self, binding: Any, nbl: NET_BUFFER_LIST, status: int) -> None:
        if status != NdisStatus.SUCCESS:
            self._flag("V5", f"MiniportTcpOffloadReceiveReturn returned {status_name(status)}",
                       nbl.label, self._edge(binding).name)

    # -- indications ------------------------------------------------------------------------------------
    def _resolve(self, mp: Any, binding: Any, handle: Any, what: str) -> tuple[_Edge | None, _Obj | None]:
        label = getattr(handle, "label", repr(handle))
        if binding is None:
            for b in getattr(mp, "bindings", []):
                e = self._edge(b)
                if id(handle) in e.tombstones:
                    self._flag("V10", f"{what} on an object whose terminate completed", label, e.name)
                    return None, None
            rule = "V17" if getattr(mp, "intermediate", False) else "V10"
            self._flag(rule, f"{what} with a handle unknown at this edge (not the upper handle)",
                       label, mp.name)
            return None, None
        e = self._edge(binding)
        obj = e.obj(handle)
        if obj is None or obj.freed:
            self._flag("V10", f"{what} on an object whose terminate completed", label, e.name)
            return e, None
        return e, obj

    def event(self, mp: Any, binding: Any, handle: Any, event_type: int, info: int) -> None:
        name = binding.name if binding is not None else mp.name
        try:
            et = TCP_OFFLOAD_EVENT_TYPE(event_type).name
        except ValueError:
            et = str(event_type)
        self._note(name, f"NdisTcpOffloadEventHandler {getattr(handle, 'label', '?')} {et} {info}")
        e, obj = self._resolve(mp, binding, handle, "TcpOffloadEvent")
        if e is None or obj is None:
            return
        if event_type == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve:
            if obj.layer is not OffloadLayer.TCP:
                self._flag("V11", "TcpIndicateRetrieve for a neighbor/path object", obj.label, e.name)
            if not 1 <= int(info) <= 11:
                self._flag("V11", f"TcpIndicateRetrieve with invalid reason {info}", obj.label, e.name)
        elif event_type == TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange:
            if obj.layer in (OffloadLayer.NEIGHBOR, OffloadLayer.PATH):
                self._flag("C4", "TcpIndicateSendBacklogChange for a neighbor/path object",
                           obj.label, e.name)
            elif not obj.initiate_completed:
                self._flag("C4", "TcpIndicateSendBacklogChange before NdisMInitiateOffloadComplete",
                           obj.label, e.name)
            if not 0 <= int(info) <= 0xFFFFFFFF:
                self._flag("C4", f"TcpIndicateSendBacklogChange with {info} (not a ULONG)",
                           obj.label, e.name)
        obj.indicating += 1

    def event_returned(self, binding: Any, handle: Any, event_type: int, info: int) -> None:
        obj = self._edge(binding).obj(handle)
        if obj is not None and obj.indicating:
            obj.indicating -= 1

    def receive_indicate(self, mp: Any, binding: Any, handle: Any, nbl: NET_BUFFER_LIST, status: int) -> None:
        name = binding.name if binding is not None else mp.name
        self._note(name, f"NdisTcpOffloadReceiveHandler {getattr(handle, 'label', '?')} "
                   f"nbl={nbl.label} len={nbl.DataLength}")
        e, obj = self._resolve(mp, binding, handle, "receive indication")
        if e is None or obj is None:
            return
        if not obj.initiate_completed:
            self._flag("V4", "receive indication before NdisMInitiateOffloadComplete", obj.label, e.name)
        if obj.indicating:
            self._flag("V4", "receive indication during another indication on the connection",
                       obj.label, e.name)
        if obj.delivering:
            self._flag("V4", "receive indication during an in-progress completion on the connection",
                       obj.label, e.name)
        if status != NdisStatus.SUCCESS:
            self._flag("V7", f"receive indication Status {status_name(status)} (must be SUCCESS)",
                       obj.label, e.name)
        if nbl.Next is not None:
            self._flag("V7", "receive indication with an NBL chain (must be a single NBL)", obj.label, e.name)
        obj.indicating += 1

    def receive_indicate_returned(
        self, binding: Any, handle: Any, nbl: NET_BUFFER_LIST, result: int, consumed: int
    ) -> None:
        e = self._edge(binding)
        obj = e.obj(handle)
        if obj is not None and obj.indicating:
            obj.indicating -= 1
        label = getattr(handle, "label", "?")
        if result not in RECEIVE_INDICATE_RESULTS:
            self._flag("V7", f"receive indication answered {status_name(result)}", label, e.name)
        elif result == NdisStatus.SUCCESS:
            e.indicated[id(nbl)] = nbl
        elif result == NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED and consumed != 0:
            self._flag("V7", "NOT_ACCEPTED with BytesConsumed != 0", label, e.name)
        elif result == NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED and not 0 < consumed < nbl.DataLength:
            self._flag("V7", f"PARTIALLY_ACCEPTED with BytesConsumed={consumed}", label, e.name)

    def offload_event(self, mp: Any, binding: Any, block: Any, code: int) -> None:
        name = binding.name if binding is not None else mp.name
        self._note(name, f"NdisMOffloadEventIndicate code={code} block={getattr(block, 'label', None)}")
        if block is not None:
            self._resolve(mp, binding, block.NdisOffloadHandle, "NeighborReachabilityQuery")

    def offload_event_returned(self, mp: Any, binding: Any, block: Any, code: int) -> None:
        pass

    def status(self, mp: Any, indication: Any) -> None:
        self._note(mp.name, f"NdisMIndicateStatusEx {status_name(indication.StatusCode)}")
