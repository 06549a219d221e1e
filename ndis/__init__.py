"""vnic's NDIS library: TCP chimney offload between a host protocol driver, any number of
intermediate drivers and an offload target, as the NDIS 6 chimney DDI describes it.

Modules: ``status`` (status codes, legal sets), ``state`` (offload state structures and their
x64 layouts), ``blocks`` (block lists, handles, NBLs, trees), ``driver`` (handler tables and the
Miniport / Protocol base classes), ``ndis`` (bindings, routing, completion queue), ``im``
(pass-through IM and stacking), ``checker`` (the conformance checker), ``fakes`` (scripted host
and target).  See ``ndis.driver`` for the API a miniport and a protocol implement.
"""

from .blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_OFFLOAD_HANDLE,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    BlockRole,
    ContextSlot,
    NetBufferList,
    OffloadNode,
    block_role,
    iter_blocks,
    iter_tree,
    offload_connection_tree,
    render_tree,
    terminate_connections,
    terminate_tree,
    upload_all_tree,
)
from .checker import ConformanceChecker, ConformanceError, Violation
from .driver import NDIS_BIND_PARAMETERS, NDIS_STATUS_INDICATION, Miniport, Protocol
from .im import PassThroughIM, stack_intermediates
from .ndis import NDIS_BINDING_HANDLE, NDIS_MINIPORT_HANDLE, Ndis
from .status import NdisStatus, Operation, status_name

__all__ = [
    "NDIS_MINIPORT_OFFLOAD_BLOCK_LIST",
    "NDIS_OFFLOAD_HANDLE",
    "NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST",
    "NET_BUFFER_LIST",
    "NetBufferList",
    "BlockRole",
    "ContextSlot",
    "OffloadNode",
    "block_role",
    "iter_blocks",
    "iter_tree",
    "offload_connection_tree",
    "render_tree",
    "terminate_connections",
    "terminate_tree",
    "upload_all_tree",
    "ConformanceChecker",
    "ConformanceError",
    "Violation",
    "NDIS_BIND_PARAMETERS",
    "NDIS_STATUS_INDICATION",
    "Miniport",
    "Protocol",
    "PassThroughIM",
    "stack_intermediates",
    "NDIS_BINDING_HANDLE",
    "NDIS_MINIPORT_HANDLE",
    "Ndis",
    "NdisStatus",
    "Operation",
    "status_name",
]
