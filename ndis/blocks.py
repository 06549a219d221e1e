"""Offload block lists (b.1 - b.6), offload handles (b.3), NET_BUFFER_LISTs, tree builders,
traversal (b.4) and rendering.

Memory model
------------
Python objects model host memory: "the same root pointer" is the same Python object
(``is``).  Identity is preserved everywhere: NDIS and IM drivers never copy a block list or an
NBL, they convert and pass the same object.

Flavors.  ``NDIS_MINIPORT_OFFLOAD_BLOCK_LIST`` and ``NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST`` are two
classes over one slot layout; their layouts coincide except for the words at 0x30/0x38 (b.2),
so conversion is done *in place* by re-classing the same object (``block.__class__ = ...``)
and re-interpreting those two words:

============  =================================  ==================================
word          miniport flavor                    protocol flavor
============  =================================  ==================================
0x20, 0x28    NdisReserved[0..1]                 NdisReserved[0..1]
0x30          MiniportOffloadContext (PVOID*)    NdisReserved[2]
0x38          NdisOffloadHandle                  OffloadHandle (PNDIS_OFFLOAD_HANDLE)
============  =================================  ==================================

Reading a field of the other flavor raises ``AttributeError``: a driver that forgets to convert
fails loudly.  :func:`ndis_to_miniport` / :func:`ndis_to_protocol` are the conversions NDIS
performs (b.2: ``NdisOffloadHandle = OffloadHandle``, ``MiniportOffloadContext =
&OffloadHandle->MiniportOffloadContext``); :func:`recast` only re-classes (what an IM does
before it sets the fields itself, e.3 step 3).

``MiniportOffloadContext`` is a pointer to a PVOID slot.  It is modelled by
:class:`ContextSlot`; ``handle.slot`` is "``&handle->MiniportOffloadContext``" (always the same
object for a given handle, so pointer equality is identity).  ``slot.value`` is
"``*MiniportOffloadContext``": NULL (``None``) for a new offload, the lower driver's context for
an existing object.  Each write to a slot is stamped with a global write sequence number so a
checker can see the order in which a target wrote its contexts (b.4 traversal order).

``label`` (blocks, NBLs, handles) and ``state`` (blocks) are emulator-only attributes: the label
names an object for humans, scripts and reports; ``state`` is "the structure(s) following the
block in memory" (b.6).
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .state import (
    NDIS_OBJECT_HEADER,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    OFFLOAD_STATE_TYPE,
    PATH_OFFLOAD_STATE_DELEGATED,
    TCP_OFFLOAD_STATE_DELEGATED,
    OffloadLayer,
    PointerTable,
    layer_of_type,
    state_type,
)
from .status import status_name

__all__ = [
    "ContextSlot",
    "NDIS_OFFLOAD_HANDLE",
    "NET_BUFFER_LIST",
    "NetBufferList",
    "NDIS_MINIPORT_OFFLOAD_BLOCK_LIST",
    "NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST",
    "OffloadBlockList",
    "BlockRole",
    "TreeError",
    "block_role",
    "block_layer",
    "recast",
    "ndis_to_miniport",
    "ndis_to_protocol",
    "iter_tree",
    "iter_blocks",
    "list_blocks",
    "link_nbls",
    "iter_nbls",
    "new_offload_block",
    "reference_block",
    "placeholder_block",
    "add_dependents",
    "chain_blocks",
    "offload_connection_tree",
    "OffloadNode",
    "terminate_tree",
    "upload_all_tree",
    "terminate_connections",
    "query_tree",
    "invalidate_tree",
    "update_tree",
    "render_tree",
    "LAYER_FULL_TYPE",
    "encode_block",
    "decode_block",
    "dump_tree",
]

BLOCK_LIST_SIZE = 0x98  # b.1: size of the block list incl. header (x64)
BLOCK_LIST_REVISION = 1

_slot_writes = itertools.count(1)


class TreeError(ValueError):
    """A block-list tree is malformed (cycle, TCP block with dependents ...)."""


# ---------------------------------------------------------------------------------------------
# b.3 NDIS_OFFLOAD_HANDLE and the PVOID slot


class ContextSlot:
    """A PVOID slot in host memory (what ``MiniportOffloadContext`` points at).

    Either a handle's slot (:attr:`NDIS_OFFLOAD_HANDLE.slot`: it *is*
    ``&handle->MiniportOffloadContext``, the handle reads and writes its context through it)
    or free-standing.  It does not refer back to its handle: the handle owns its slot, and a
    reference back would make every handle a reference cycle, freed only by the garbage
    collector (10,000 of them per mass upload).
    """

    __slots__ = ("_value", "write_seq", "owner", "__weakref__")

    def __init__(self, value: Any = None, *, owner: str = "") -> None:
        self._value = value
        self.write_seq = 0  # order of the target's writes (the checker's d.7 test)
        self.owner = owner  # the label of the handle whose slot this is ("" = free-standing)

    @property
    def value(self) -> Any:
        """``*MiniportOffloadContext``."""
        return self._value

    @value.setter
    def value(self, new: Any) -> None:
        self.write_seq = next(_slot_writes)
        self._value = new

    def __repr__(self) -> str:
        return f"<ContextSlot &{self.owner or 'free'}->MiniportOffloadContext = {self._value!r}>"


class NDIS_OFFLOAD_HANDLE:
    """b.3: ``{ PVOID NdisReserved[1]; PVOID MiniportOffloadContext; }``.

    Allocated by the driver *above* an edge for each state object; the driver below writes its
    context into ``MiniportOffloadContext`` on a successful initiate.  NDIS uses
    ``NdisReserved[0]`` to remember the binding the object was offloaded on (the role of
    NDIS_OFFLOAD_HANDLE_PRIVATE.ProtocolBindingContext, b.3).
    """

    __slots__ = ("NdisReserved", "label", "_slot", "__weakref__")

    _names = itertools.count(1)

    def __init__(self, label: str = "") -> None:
        self.NdisReserved: list[Any] = [None]
        self.label = label or f"H{next(self._names)}"
        self._slot: ContextSlot | None = None

    @property
    def MiniportOffloadContext(self) -> Any:  # noqa: N802
        """b.3: the context the driver below wrote (NULL: none); it lives in :attr:`slot`."""
        slot = self._slot
        return slot._value if slot is not None else None

    @MiniportOffloadContext.setter
    def MiniportOffloadContext(self, value: Any) -> None:  # noqa: N802
        slot = self._slot
        if slot is None:
            if value is None:
                return  # (NULL already; no slot needed for it)
            slot = self.slot
        slot._value = value  # (the owner's own write: not counted in write_seq)

    @property
    def slot(self) -> ContextSlot:
        """``&self->MiniportOffloadContext`` (stable identity)."""
        if self._slot is None:
            self._slot = ContextSlot(owner=self.label)
        return self._slot

    def __repr__(self) -> str:
        return f"<NDIS_OFFLOAD_HANDLE {self.label} ctx={_short(self.MiniportOffloadContext)}>"


def _short(obj: Any) -> str:
    if obj is None:
        return "NULL"
    label = getattr(obj, "label", None)
    return str(label) if label else type(obj).__name__


# ---------------------------------------------------------------------------------------------
# NET_BUFFER_LIST (one NET_BUFFER per NBL, as the chimney requires, a.5 / T.2)


class NET_BUFFER_LIST:
    """A NET_BUFFER_LIST with exactly one NET_BUFFER.

    ``buffer`` is the whole data buffer (bytearray); ``DataOffset`` the current data start,
    so ``data`` is ``buffer[DataOffset:]``.  ``advance_data_start(n)`` models
    ``NdisAdvanceNetBufferDataStart(nb, n, FALSE, NULL)``.  Per-NBL info (b.18):
    ``TcpOffloadBytesTransferred``, ``TcpReceiveNoPush``, ``TcpReceiveBytesTransferred``.
    ``push_context`` / ``pop_context`` model NdisAllocate/FreeNetBufferListContext (an IM keeps
    the SourceHandle it replaced there, e.3 step 3).
    """

    __slots__ = (
        "Next", "Status", "SourceHandle", "ProtocolReserved", "MiniportReserved", "Scratch",
        "TcpOffloadBytesTransferred", "TcpReceiveNoPush", "TcpReceiveBytesTransferred",
        "buffer", "DataOffset", "label", "_contexts", "__weakref__",
    )

    _names = itertools.count(1)

    def __init__(self, data: bytes | bytearray | int = b"", *, label: str = "") -> None:
        self.Next: NET_BUFFER_LIST | None = None
        self.Status: int = 0
        self.SourceHandle: Any = None
        self.ProtocolReserved: list[Any] = [None, None]
        self.MiniportReserved: list[Any] = [None, None]
        self.Scratch: Any = None
        self.TcpOffloadBytesTransferred: int = 0
        self.TcpReceiveNoPush: bool = False
        self.TcpReceiveBytesTransferred: int = 0
        # bytes are kept as they are (an indication's data, never written: no copy); a size
        # or a bytearray gives a buffer of this NBL's own (a posted receive is written into)
        self.buffer: bytes | bytearray = data if type(data) is bytes else bytearray(data)
        self.DataOffset = 0
        self.label = label or f"NBL{next(self._names)}"
        self._contexts: list[tuple[Any, Any]] = []

    @property
    def data(self) -> memoryview:
        """The current data (from the data start)."""
        return memoryview(self.buffer)[self.DataOffset :]

    @property
    def DataLength(self) -> int:  # noqa: N802 - NET_BUFFER_DATA_LENGTH
        return len(self.buffer) - self.DataOffset

    def advance_data_start(self, n: int) -> None:
        """NdisAdvanceNetBufferDataStart: drop ``n`` bytes from the front."""
        if n < 0 or n > self.DataLength:
            raise ValueError(f"cannot advance {n} bytes, {self.DataLength} left")
        self.DataOffset += n

    def retreat_data_start(self, n: int) -> None:
        """NdisRetreatNetBufferDataStart (within the existing buffer)."""
        if n < 0 or n > self.DataOffset:
            raise ValueError(f"cannot retreat {n} bytes")
        self.DataOffset -= n

    def push_context(self, owner: Any, value: Any) -> None:
        self._contexts.append((owner, value))

    def pop_context(self, owner: Any) -> Any:
        if not self._contexts or self._contexts[-1][0] is not owner:
            raise LookupError(f"{self.label}: no NBL context of {owner!r} on top")
        return self._contexts.pop()[1]

    def has_context(self, owner: Any) -> bool:
        return bool(self._contexts) and self._contexts[-1][0] is owner

    def __repr__(self) -> str:
        return (
            f"<NBL {self.label} len={self.DataLength} Status={status_name(self.Status)}"
            f"{' ->' + self.Next.label if self.Next else ''}>"
        )


NetBufferList = NET_BUFFER_LIST


def link_nbls(nbls: Iterable[NET_BUFFER_LIST]) -> NET_BUFFER_LIST | None:
    """Link NBLs through ``Next`` in the given order; returns the head (None if empty)."""
    items = list(nbls)
    for a, b in itertools.pairwise(items):
        a.Next = b
    if items:
        items[-1].Next = None
        return items[0]
    return None


def iter_nbls(head: NET_BUFFER_LIST | None) -> Iterator[NET_BUFFER_LIST]:
    """Walk an NBL chain (stops on a cycle)."""
    seen: set[int] = set()
    while head is not None and id(head) not in seen:
        seen.add(id(head))
        nxt = head.Next
        yield head
        head = nxt


# ---------------------------------------------------------------------------------------------
# b.1 / b.2 block lists


_BLOCK_HEADERS: dict[int, NDIS_OBJECT_HEADER] = {}


def _block_header(block_type: int) -> NDIS_OBJECT_HEADER:
    """The header of a block list of ``block_type`` (one shared value per type: a terminate
    tree of 10,000 connections would otherwise make 10,000 equal headers)."""
    h = _BLOCK_HEADERS.get(block_type)
    if h is None:
        h = _BLOCK_HEADERS[int(block_type)] = NDIS_OBJECT_HEADER(
            int(block_type), BLOCK_LIST_REVISION, BLOCK_LIST_SIZE)
    return h


class OffloadBlockList:
    """Common slot layout of both block-list flavors (see module docstring)."""

    __slots__ = (
        "Header", "NextBlock", "DependentBlockList", "Status", "_w0", "_w1", "_w2", "_w3",
        "_pr", "_mr", "_ir", "_sc",
        "SourceHandle", "PortNumber", "NetBufferListChain", "state", "label", "__weakref__",
    )

    _names = itertools.count(1)

    def __init__(self, *, Type: int = 0, state: Any = None, label: str = "") -> None:  # noqa: N803
        self.Header = _block_header(Type)
        self.NextBlock: OffloadBlockList | None = None
        self.DependentBlockList: OffloadBlockList | None = None
        self.Status: int = 0
        # the words at 0x20, 0x28, 0x30, 0x38 (their names differ by flavor, b.1 / b.2; slots
        # rather than a list: one object fewer per block, 10,000 per terminate tree)
        self._w0: Any = None
        self._w1: Any = None
        self._w2: Any = None
        self._w3: Any = None
        # ProtocolReserved / MiniportReserved / ImReserved / Scratch: two NULL words each,
        # materialised on first use (a terminate tree of 10,000 connections would otherwise
        # allocate 40,000 lists nobody touches)
        self._pr: list[Any] | None = None
        self._mr: list[Any] | None = None
        self._ir: list[Any] | None = None
        self._sc: list[Any] | None = None
        self.SourceHandle: Any = None
        self.PortNumber: int = 0
        self.NetBufferListChain: NET_BUFFER_LIST | None = None
        self.state = state
        self.label = label or f"B{next(self._names)}"

    @property
    def ProtocolReserved(self) -> list[Any]:  # noqa: N802
        v = self._pr
        if v is None:
            v = self._pr = [None, None]
        return v

    @ProtocolReserved.setter
    def ProtocolReserved(self, v: list[Any]) -> None:  # noqa: N802
        self._pr = v

    @property
    def MiniportReserved(self) -> list[Any]:  # noqa: N802
        v = self._mr
        if v is None:
            v = self._mr = [None, None]
        return v

    @MiniportReserved.setter
    def MiniportReserved(self, v: list[Any]) -> None:  # noqa: N802
        self._mr = v

    @property
    def ImReserved(self) -> list[Any]:  # noqa: N802
        v = self._ir
        if v is None:
            v = self._ir = [None, None]
        return v

    @ImReserved.setter
    def ImReserved(self, v: list[Any]) -> None:  # noqa: N802
        self._ir = v

    @property
    def Scratch(self) -> list[Any]:  # noqa: N802
        v = self._sc
        if v is None:
            v = self._sc = [None, None]
        return v

    @Scratch.setter
    def Scratch(self, v: list[Any]) -> None:  # noqa: N802
        self._sc = v

    @property
    def layer(self) -> OffloadLayer | None:
        return layer_of_type(self.Header.Type)

    @property
    def flavor(self) -> str:
        return "miniport" if isinstance(self, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST) else "protocol"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} Status={status_name(self.Status)}>"


class _WordView:
    """A live view of the first ``n`` of a block's four words (``NdisReserved[...]``)."""

    __slots__ = ("_block", "_n")

    _NAMES = ("_w0", "_w1", "_w2", "_w3")

    def __init__(self, block: OffloadBlockList, n: int) -> None:
        self._block, self._n = block, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Any:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return getattr(self._block, self._NAMES[i % self._n])

    def __setitem__(self, i: int, v: Any) -> None:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        setattr(self._block, self._NAMES[i % self._n], v)

    def __iter__(self) -> Iterator[Any]:
        return iter([getattr(self._block, name) for name in self._NAMES[: self._n]])

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other)  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return repr(list(self))


class NDIS_MINIPORT_OFFLOAD_BLOCK_LIST(OffloadBlockList):
    """b.1: what an offload target (or an IM's miniport edge) receives."""

    __slots__ = ()

    @property
    def NdisReserved(self) -> _WordView:  # noqa: N802
        return _WordView(self, 2)

    @property
    def MiniportOffloadContext(self) -> ContextSlot | None:  # noqa: N802
        """b.1 0x30: NULL = placeholder; else points at a PVOID slot (b.5)."""
        return self._w2

    @MiniportOffloadContext.setter
    def MiniportOffloadContext(self, slot: ContextSlot | None) -> None:  # noqa: N802
        self._w2 = slot

    @property
    def NdisOffloadHandle(self) -> Any:  # noqa: N802
        """b.1 0x38: the handle the target stores and passes back in indications."""
        return self._w3

    @NdisOffloadHandle.setter
    def NdisOffloadHandle(self, handle: Any) -> None:  # noqa: N802
        self._w3 = handle


class NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST(OffloadBlockList):
    """b.2: what a host protocol driver (or an IM's protocol edge) builds and receives."""

    __slots__ = ()

    @property
    def NdisReserved(self) -> _WordView:  # noqa: N802
        return _WordView(self, 3)

    @property
    def OffloadHandle(self) -> NDIS_OFFLOAD_HANDLE | None:  # noqa: N802
        """b.2 0x38: the caller's NDIS_OFFLOAD_HANDLE for this object; NULL = placeholder."""
        return self._w3

    @OffloadHandle.setter
    def OffloadHandle(self, handle: NDIS_OFFLOAD_HANDLE | None) -> None:  # noqa: N802
        self._w3 = handle


def recast(block: OffloadBlockList, cls: type[OffloadBlockList]) -> OffloadBlockList:
    """Re-interpret the same memory as the other flavor (no field changes)."""
    block.__class__ = cls
    return block


def ndis_to_miniport(block: OffloadBlockList) -> NDIS_MINIPORT_OFFLOAD_BLOCK_LIST:
    """b.2: the conversion NDIS does on the way down (protocol -> miniport), in place."""
    if isinstance(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST):
        handle = block._w3  # OffloadHandle, which the miniport flavor calls NdisOffloadHandle
        block.__class__ = NDIS_MINIPORT_OFFLOAD_BLOCK_LIST  # recast
        block._w2 = handle.slot if handle is not None else None  # MiniportOffloadContext
    assert isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
    return block


def ndis_to_protocol(block: OffloadBlockList) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """b.2: the conversion NDIS does on the way up (miniport -> protocol), in place.
    ``OffloadHandle`` is the word the miniport knew as ``NdisOffloadHandle``; NDIS clears its
    third reserved word (the miniport flavor's MiniportOffloadContext)."""
    if isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST):
        block.__class__ = NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST  # recast
        block._w2 = None
    assert isinstance(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST)
    return block


class BlockRole(enum.Enum):
    """b.5: the three roles of a block (decided by MiniportOffloadContext)."""

    PLACEHOLDER = "placeholder"  # MiniportOffloadContext == NULL
    NEW_OFFLOAD = "new"  # *MiniportOffloadContext == NULL
    REFERENCE = "ref"  # *MiniportOffloadContext != NULL (a linker in an initiate tree)


def block_role(block: OffloadBlockList) -> BlockRole:
    """b.5 role, for either flavor (protocol flavor: decided through OffloadHandle)."""
    if isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST):
        slot = block.MiniportOffloadContext
        if slot is None:
            return BlockRole.PLACEHOLDER
        return BlockRole.NEW_OFFLOAD if slot.value is None else BlockRole.REFERENCE
    handle = block._w3
    if handle is None:
        return BlockRole.PLACEHOLDER
    return BlockRole.NEW_OFFLOAD if handle.MiniportOffloadContext is None else BlockRole.REFERENCE


def block_layer(block: OffloadBlockList, depth_layer: OffloadLayer | None = None) -> OffloadLayer | None:
    """Layer from Header.Type; a placeholder's Type is not significant, so ``depth_layer``
    (the layer implied by its position) is preferred for it."""
    if depth_layer is not None and block_role(block) is BlockRole.PLACEHOLDER:
        return depth_layer
    return block.layer or depth_layer


# ---------------------------------------------------------------------------------------------
# b.4 traversal


def iter_tree(
    root: OffloadBlockList | None,
) -> Iterator[tuple[OffloadBlockList, int, OffloadBlockList | None]]:
    """b.4: depth-first then NextBlock.  Yields ``(block, depth, parent)``; ``parent`` is the
    block whose DependentBlockList chain holds this block (None at the root level).
    Raises :class:`TreeError` on a cycle or on more than three levels."""
    stack: list[tuple[OffloadBlockList, int, OffloadBlockList | None]] = []
    if root is not None:
        stack.append((root, 0, None))
    seen: set[int] = set()
    while stack:
        block, depth, parent = stack.pop()
        if id(block) in seen:
            raise TreeError(f"cycle through {block.label}")
        seen.add(id(block))
        if depth > 2:
            raise TreeError(f"{block.label}: more than three levels (b.4)")
        yield block, depth, parent
        if block.NextBlock is not None:
            stack.append((block.NextBlock, depth, parent))
        if block.DependentBlockList is not None:
            stack.append((block.DependentBlockList, depth + 1, block))


def iter_blocks(root: OffloadBlockList | None) -> Iterator[OffloadBlockList]:
    for block, _, _ in iter_tree(root):
        yield block


def list_blocks(root: OffloadBlockList | None) -> list[OffloadBlockList]:
    """The blocks of ``iter_blocks(root)`` as a list, built in one loop (b.4 order; the same
    :class:`TreeError` checks as :func:`iter_tree`, raised before anything is returned)."""
    out: list[OffloadBlockList] = []
    if root is None:
        return out
    append = out.append
    stack: list[tuple[OffloadBlockList, int]] = [(root, 0)]
    pop = stack.pop
    push = stack.append
    seen: set[int] = set()
    while stack:
        block, depth = pop()
        k = id(block)
        if k in seen:
            raise TreeError(f"cycle through {block.label}")
        seen.add(k)
        if depth > 2:
            raise TreeError(f"{block.label}: more than three levels (b.4)")
        append(block)
        if block.NextBlock is not None:
            push((block.NextBlock, depth))
        if block.DependentBlockList is not None:
            push((block.DependentBlockList, depth + 1))
    return out


def dependents(block: OffloadBlockList) -> list[OffloadBlockList]:
    """The DependentBlockList chain of ``block`` (its immediate dependents)."""
    out = []
    b = block.DependentBlockList
    seen: set[int] = set()
    while b is not None and id(b) not in seen:
        seen.add(id(b))
        out.append(b)
        b = b.NextBlock
    return out


def tree_layers(root: OffloadBlockList) -> dict[int, OffloadLayer | None]:
    """id(block) -> layer for every block; placeholders get the layer implied by position
    (one below their parent's, or one above their first dependent's)."""
    order = list(iter_tree(root))
    layers: dict[int, OffloadLayer | None] = {}
    for block, _, parent in order:
        if block_role(block) is not BlockRole.PLACEHOLDER and block.layer is not None:
            layers[id(block)] = block.layer
        elif parent is not None and layers.get(id(parent)) is not None:
            layers[id(block)] = OffloadLayer(min(3, layers[id(parent)] + 1))  # type: ignore[operator]
        else:
            layers[id(block)] = block.layer
    return layers


# ---------------------------------------------------------------------------------------------
# Builders (host side: protocol flavor)

LAYER_FULL_TYPE: dict[OffloadLayer, OFFLOAD_STATE_TYPE] = {
    OffloadLayer.NEIGHBOR: OFFLOAD_STATE_TYPE.NeighborOffloadState,
    OffloadLayer.PATH: OFFLOAD_STATE_TYPE.Ip4OffloadState,
    OffloadLayer.TCP: OFFLOAD_STATE_TYPE.TcpOffloadState,
}

_EMPTY_DELEGATED = {
    OffloadLayer.NEIGHBOR: NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    OffloadLayer.PATH: PATH_OFFLOAD_STATE_DELEGATED,
    OffloadLayer.TCP: TCP_OFFLOAD_STATE_DELEGATED,
}


def new_offload_block(
    state: Any,
    handle: NDIS_OFFLOAD_HANDLE | None = None,
    *,
    label: str = "",
    send_data: NET_BUFFER_LIST | None = None,
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """b.5 new offload: a fresh handle (``MiniportOffloadContext`` NULL), followed by ``state``.
    ``send_data`` (TCP only) goes in NetBufferListChain with SendDataHead/Tail set (b.13)."""
    t = state_type(state)
    if t is None:
        raise TypeError(f"not an offload state: {type(state).__name__}")
    handle = handle if handle is not None else NDIS_OFFLOAD_HANDLE(label)
    if handle.MiniportOffloadContext is not None:
        raise ValueError(f"{handle.label} is already offloaded (c.3)")
    block = NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST(Type=t, state=state, label=label or handle.label)
    block.OffloadHandle = handle
    if send_data is not None:
        if layer_of_type(t) is not OffloadLayer.TCP:
            raise ValueError("send data only on a TCP block (b.1)")
        block.NetBufferListChain = send_data
        nbls = list(iter_nbls(send_data))
        state.Delegated.SendDataHead = nbls[0]
        state.Delegated.SendDataTail = nbls[-1]
    return block


def reference_block(
    handle: NDIS_OFFLOAD_HANDLE, layer: OffloadLayer, *, state: Any = None, label: str = ""
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """A block naming an already-offloaded object (a linker in an initiate tree, the target of
    query / update / invalidate / terminate).  ``state`` is what follows it (b.6)."""
    t = state_type(state) if state is not None else LAYER_FULL_TYPE[layer]
    if layer_of_type(t) is not layer:  # type: ignore[arg-type]
        t = LAYER_FULL_TYPE[layer]
    block = NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST(Type=t, state=state, label=label or handle.label)
    block.OffloadHandle = handle
    return block


def placeholder_block(
    layer: OffloadLayer | None = None, *, label: str = ""
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """b.5 placeholder: no handle, no state; Type not significant (set to the layer's type)."""
    t = LAYER_FULL_TYPE[layer] if layer is not None else 0
    return NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST(Type=t, label=label or "placeholder")


def chain_blocks(*blocks: OffloadBlockList) -> OffloadBlockList | None:
    """Link siblings through NextBlock; returns the first."""
    for a, b in itertools.pairwise(blocks):
        a.NextBlock = b
    if blocks:
        blocks[-1].NextBlock = None
        return blocks[0]
    return None


def add_dependents(parent: OffloadBlockList, *children: OffloadBlockList) -> OffloadBlockList:
    """Hang ``children`` (as one NextBlock chain) under ``parent`` as its DependentBlockList."""
    if parent.layer is OffloadLayer.TCP and block_role(parent) is not BlockRole.PLACEHOLDER:
        raise TreeError("a TCP block has no dependents (b.1)")
    parent.DependentBlockList = chain_blocks(*children)
    return parent


def _as_block(obj: Any, layer: OffloadLayer, label: str) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    if obj is None:
        return placeholder_block(layer, label=label or f"{layer.name.lower()}-placeholder")
    if isinstance(obj, NDIS_OFFLOAD_HANDLE):
        if obj.MiniportOffloadContext is None:
            raise ValueError(f"{obj.label} is not offloaded: cannot link to it")
        return reference_block(obj, layer, label=label)
    return new_offload_block(obj, label=label)


def offload_connection_tree(
    neighbor: Any,
    path: Any,
    tcp: Any,
    *,
    send_data: NET_BUFFER_LIST | None = None,
    labels: Sequence[str] = ("N", "P", "T"),
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """The usual initiate tree for one connection: neighbor -> path -> TCP (b.4, b.5).

    ``neighbor`` / ``path`` may each be a state (new offload), an already-offloaded
    NDIS_OFFLOAD_HANDLE (linker) or None (placeholder).  ``tcp`` is a TcpOffloadState or a list
    of them (several connections under the same path)."""
    n = _as_block(neighbor, OffloadLayer.NEIGHBOR, labels[0])
    p = _as_block(path, OffloadLayer.PATH, labels[1])
    tcps = tcp if isinstance(tcp, list | tuple) else [tcp]
    tblocks = [
        new_offload_block(
            s, label=labels[2] if len(tcps) == 1 else f"{labels[2]}{i + 1}",
            send_data=send_data if i == 0 else None,
        )
        for i, s in enumerate(tcps)
    ]
    add_dependents(p, *tblocks)
    add_dependents(n, p)
    return n


@dataclass(eq=False)
class OffloadNode:
    """Host-side bookkeeping of one offloaded object and its dependents (there is no Parent
    field in a block list, so the host must remember the shape itself)."""

    layer: OffloadLayer
    handle: NDIS_OFFLOAD_HANDLE
    children: list[OffloadNode] = field(default_factory=list)
    label: str = ""

    def walk(self) -> Iterator[OffloadNode]:
        yield self
        for c in self.children:
            yield from c.walk()


def _ref_tree(
    nodes: Sequence[OffloadNode], make_state: Any, *, include_dependents: bool = True
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST | None:
    blocks = []
    for node in nodes:
        b = reference_block(node.handle, node.layer, state=make_state(node), label=node.label)
        if include_dependents and node.children:
            child = _ref_tree(node.children, make_state)
            b.DependentBlockList = child
        blocks.append(b)
    return chain_blocks(*blocks)  # type: ignore[return-value]


def _terminate_type(layer: OffloadLayer) -> int:
    """The Header.Type ``reference_block`` gives a block followed by an empty delegated
    structure of ``layer`` (depends only on the layer: computed once, then cached)."""
    t = _TERMINATE_TYPE.get(layer)
    if t is None:
        state = _EMPTY_DELEGATED[layer]()
        t = state_type(state) if state is not None else LAYER_FULL_TYPE[layer]
        if layer_of_type(t) is not layer:  # type: ignore[arg-type]
            t = LAYER_FULL_TYPE[layer]
        t = _TERMINATE_TYPE[layer] = int(t)  # type: ignore[arg-type]
    return t


_TERMINATE_TYPE: dict[OffloadLayer, int] = {}


def _terminate_chain(nodes: Sequence[OffloadNode]) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST | None:
    """``_ref_tree(nodes, <empty delegated of the node's layer>)`` written out for the
    terminate case (one block per connection of a tree of 10,000): the same blocks, the
    block type looked up per layer rather than derived from each state, siblings linked as
    they are made."""
    block_cls = NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST
    empty = _EMPTY_DELEGATED
    types = _TERMINATE_TYPE
    first: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST | None = None
    prev: NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST | None = None
    for node in nodes:
        layer = node.layer
        t = types.get(layer)
        if t is None:
            t = _terminate_type(layer)
        handle = node.handle
        b = block_cls(Type=t, state=empty[layer](), label=node.label or handle.label)
        b._w3 = handle  # OffloadHandle
        children = node.children
        if children:
            b.DependentBlockList = _terminate_chain(children)
        if prev is None:
            first = b
        else:
            prev.NextBlock = b
        prev = b
    return first


def terminate_tree(nodes: Sequence[OffloadNode]) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """Terminate ``nodes`` and everything depending on them (c.3: a terminate tree that
    includes a neighbor/path includes its dependents); each block is followed by an empty
    XXX_OFFLOAD_STATE_DELEGATED for the target to fill (b.6)."""
    root = _terminate_chain(nodes)
    if root is None:
        raise ValueError("nothing to terminate")
    return root


def upload_all_tree(forest: Sequence[OffloadNode]) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """Upload everything (d.8, NDIS_STATUS_UPLOAD_ALL): one terminate tree over the forest."""
    return terminate_tree(forest)


def terminate_connections(
    tcp_handles: Sequence[NDIS_OFFLOAD_HANDLE], *, labels: Sequence[str] | None = None
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """A TCP-rooted terminate tree (NextBlock chain of TCP blocks), b.4."""
    blocks = [
        reference_block(
            h, OffloadLayer.TCP, state=TCP_OFFLOAD_STATE_DELEGATED(),
            label=labels[i] if labels else h.label,
        )
        for i, h in enumerate(tcp_handles)
    ]
    root = chain_blocks(*blocks)
    if root is None:
        raise ValueError("nothing to terminate")
    return root  # type: ignore[return-value]


def query_tree(nodes: Sequence[OffloadNode], make_state: Any) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """Query ``nodes`` (no dependents); ``make_state(node)`` gives the structure to fill."""
    root = _ref_tree(nodes, make_state, include_dependents=False)
    if root is None:
        raise ValueError("nothing to query")
    return root


def invalidate_tree(nodes: Sequence[OffloadNode]) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """Invalidate ``nodes``: bare block lists, no state follows (b.6)."""
    root = _ref_tree(nodes, lambda n: None, include_dependents=False)
    if root is None:
        raise ValueError("nothing to invalidate")
    return root


def update_tree(
    updates: Sequence[tuple[OffloadNode, Any]],
) -> NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST:
    """Update cached state: one reference block per (node, new CACHED structure)."""
    blocks = [
        reference_block(n.handle, n.layer, state=cached, label=n.label) for n, cached in updates
    ]
    root = chain_blocks(*blocks)
    if root is None:
        raise ValueError("nothing to update")
    return root  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Rendering


_LAYER_LETTER = {OffloadLayer.NEIGHBOR: "N", OffloadLayer.PATH: "P", OffloadLayer.TCP: "T"}


def render_tree(root: OffloadBlockList | None) -> str:
    """A tree for humans, one block a line, in traversal order::

        N1 [new] NeighborOffloadState Status=NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS handle=H1 ctx=...
          P1 [new] Ip4OffloadState ...
    """
    if root is None:
        return "(empty tree)"
    lines = []
    layers = tree_layers(root)
    for block, depth, _ in iter_tree(root):
        role = block_role(block).value
        try:
            tname = OFFLOAD_STATE_TYPE(block.Header.Type).name
        except ValueError:
            tname = f"Type={block.Header.Type}"
        layer = layers.get(id(block))
        letter = _LAYER_LETTER.get(layer, "?") if layer is not None else "?"
        if isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST):
            slot = block.MiniportOffloadContext
            where = (
                f"NdisOffloadHandle={_short(block.NdisOffloadHandle)} "
                f"*ctx={_short(slot.value) if slot is not None else '-'}"
            )
        else:
            h = block.OffloadHandle
            where = f"OffloadHandle={_short(h)} ctx={_short(h.MiniportOffloadContext) if h else '-'}"
        extra = ""
        if block.NetBufferListChain is not None:
            extra = " NBLs=[" + ",".join(n.label for n in iter_nbls(block.NetBufferListChain)) + "]"
        lines.append(
            f"{'  ' * depth}{block.label} ({letter}) [{role}] {tname} "
            f"Status={status_name(block.Status)} {where}{extra}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# b.1 / b.2 byte layout (x64, 0x98 bytes)
#
#   0x00 Header {Type u8, Revision u8, Size u16} + 4 pad   0x50 MiniportReserved[2]
#   0x08 NextBlock                                          0x60 ImReserved[2]
#   0x10 DependentBlockList                                 0x70 Scratch[2]
#   0x18 Status (NDIS_STATUS) + 4 pad                       0x80 SourceHandle
#   0x20 NdisReserved[0..1]                                 0x88 PortNumber (ULONG) + 4 pad
#   0x30 MiniportOffloadContext | NdisReserved[2]           0x90 NetBufferListChain
#   0x38 NdisOffloadHandle      | OffloadHandle
#   0x40 ProtocolReserved[2]
#
# Pointers follow the PointerTable convention of ndis.state (0 = NULL).

_BLOCK_FMT = "<BBH4xQQI4xQQQQQQQQQQQQQI4xQ"
assert struct.calcsize(_BLOCK_FMT) == BLOCK_LIST_SIZE


def encode_block(block: OffloadBlockList, ptrs: PointerTable | None = None) -> bytes:
    """The 0x98 bytes of a block list (either flavor; the words at 0x30/0x38 are what they hold
    in the current flavor)."""
    p = ptrs if ptrs is not None else PointerTable()
    w = (block._w0, block._w1, block._w2, block._w3)
    return struct.pack(
        _BLOCK_FMT, block.Header.Type & 0xFF, block.Header.Revision & 0xFF,
        block.Header.Size & 0xFFFF, p.ref(block.NextBlock), p.ref(block.DependentBlockList),
        int(block.Status) & 0xFFFFFFFF, p.ref(w[0]), p.ref(w[1]), p.ref(w[2]), p.ref(w[3]),
        p.ref(block.ProtocolReserved[0]), p.ref(block.ProtocolReserved[1]),
        p.ref(block.MiniportReserved[0]), p.ref(block.MiniportReserved[1]),
        p.ref(block.ImReserved[0]), p.ref(block.ImReserved[1]), p.ref(block.Scratch[0]),
        p.ref(block.Scratch[1]), p.ref(block.SourceHandle), block.PortNumber & 0xFFFFFFFF,
        p.ref(block.NetBufferListChain),
    )


def decode_block(
    buf: bytes, ptrs: PointerTable | None = None, *, flavor: type[OffloadBlockList] | None = None
) -> OffloadBlockList:
    """Parse 0x98 bytes into a new block of ``flavor`` (miniport by default).  Pointers resolve
    through ``ptrs`` to the original objects; unknown ones stay ints (see ndis.state)."""
    if len(buf) < BLOCK_LIST_SIZE:
        raise ValueError(f"a block list needs {BLOCK_LIST_SIZE} bytes")
    v = struct.unpack_from(_BLOCK_FMT, buf, 0)
    res = ptrs.deref if ptrs is not None else (lambda a: a or None)
    cls = flavor if flavor is not None else NDIS_MINIPORT_OFFLOAD_BLOCK_LIST
    block = cls(Type=v[0])
    block.Header = NDIS_OBJECT_HEADER(v[0], v[1], v[2])
    block.NextBlock, block.DependentBlockList = res(v[3]), res(v[4])
    block.Status = v[5]
    block._w0, block._w1, block._w2, block._w3 = res(v[6]), res(v[7]), res(v[8]), res(v[9])
    block.ProtocolReserved = [res(v[10]), res(v[11])]
    block.MiniportReserved = [res(v[12]), res(v[13])]
    block.ImReserved = [res(v[14]), res(v[15])]
    block.Scratch = [res(v[16]), res(v[17])]
    block.SourceHandle = res(v[18])
    block.PortNumber = v[19]
    block.NetBufferListChain = res(v[20])
    return block


def dump_tree(root: OffloadBlockList, ptrs: PointerTable | None = None) -> str:
    """Every block of the tree as a WinDbg-style dump of its 0x98 bytes followed by the state
    structure(s) after it, in traversal order, at the fake addresses of ``ptrs``."""
    from .state import hexdump

    p = ptrs if ptrs is not None else PointerTable()
    out = []
    for block in iter_blocks(root):
        addr = p.ref(block)
        raw = encode_block(block, p)
        state = block.state
        if state is not None and hasattr(state, "encode"):
            raw += state.encode(p)
        out.append(f"{type(block).__name__} {block.label} @ {addr:016x}")
        out.append(hexdump(raw))
    return "\n".join(out)
