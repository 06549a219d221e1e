"""NDIS status codes used by TCP chimney offload, with their numeric values (reference f.1),
and the legal per-operation sets (reference f.2 for block lists, f.3 for per-NBL statuses).

Values are the unsigned 32-bit NTSTATUS-style numbers as a Windows driver engineer sees them in
a debugger (``0xC0231001`` is ``NDIS_STATUS_UPLOAD_IN_PROGRESS``).  Every status is a member of
:class:`NdisStatus` (an ``IntEnum``) and is also exported under its documented name
(``NDIS_STATUS_SUCCESS`` ...).
"""

from __future__ import annotations

import enum


class NdisStatus(enum.IntEnum):
    """NDIS_STATUS values relevant to the chimney (f.1)."""

    SUCCESS = 0x00000000
    PENDING = 0x00000103  # STATUS_PENDING
    NOT_ACCEPTED = 0x00010003
    FAILURE = 0xC0000001  # STATUS_UNSUCCESSFUL
    RESOURCES = 0xC000009A  # STATUS_INSUFFICIENT_RESOURCES
    NOT_SUPPORTED = 0xC00000BB
    INVALID_DATA = 0xC0010015  # ndis.h; an OID request's data is not valid
    INVALID_OID = 0xC0010017  # ndis.h; what NDIS answers for an OID no driver handles
    INVALID_STATE = 0xC0000184  # STATUS_INVALID_DEVICE_STATE
    REQUEST_ABORTED = 0xC001000C  # value in every ndis.h copy inspected (f.1)
    SEND_ABORTED = 0xC023000C
    PAUSED = 0xC023002A
    OFFLOAD_PAUSE = 0x40020001
    UPLOAD_ALL = 0x40020002
    OFFLOAD_RESUME = 0x40020003
    OFFLOAD_PARTIAL_SUCCESS = 0x40020004
    OFFLOAD_STATE_INVALID = 0x40020005
    TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = 0x4002000B
    OFFLOAD_IM_RESERVED1 = 0x40020100
    OFFLOAD_IM_RESERVED2 = 0x40020101
    OFFLOAD_IM_RESERVED3 = 0x40020102
    UPLOAD_IN_PROGRESS = 0xC0231001
    REQUEST_UPLOAD = 0xC0231002
    UPLOAD_REQUESTED = 0xC0231003
    OFFLOAD_TCP_ENTRIES = 0xC0231004
    OFFLOAD_PATH_ENTRIES = 0xC0231005
    OFFLOAD_NEIGHBOR_ENTRIES = 0xC0231006
    OFFLOAD_IP_ADDRESS_ENTRIES = 0xC0231007
    OFFLOAD_HW_ADDRESS_ENTRIES = 0xC0231008
    OFFLOAD_VLAN_ENTRIES = 0xC0231009
    OFFLOAD_TCP_XMIT_BUFFER = 0xC023100A
    OFFLOAD_TCP_RCV_BUFFER = 0xC023100B
    OFFLOAD_TCP_RCV_WINDOW = 0xC023100C
    OFFLOAD_VLAN_MISMATCH = 0xC023100D
    OFFLOAD_DATA_NOT_ACCEPTED = 0xC023100E
    OFFLOAD_POLICY = 0xC023100F
    OFFLOAD_DATA_PARTIALLY_ACCEPTED = 0xC0231010
    OFFLOAD_REQUEST_RESET = 0xC0231011
    OFFLOAD_CONNECTION_REJECTED = 0xC0231012
    # f.1 / X.4: NDIS_STATUS_OFFLOAD_PATH_MTU has no value in any header found (UNCONFIRMED).
    # We use STATUS_NDIS_OFFLOAD_PATH_REJECTED (0xC0231013), its presumed basis.
    OFFLOAD_PATH_MTU = 0xC0231013


# Documented names (reference f.1), for code that wants to read like a driver.
NDIS_STATUS_SUCCESS = NdisStatus.SUCCESS
NDIS_STATUS_PENDING = NdisStatus.PENDING
NDIS_STATUS_NOT_ACCEPTED = NdisStatus.NOT_ACCEPTED
NDIS_STATUS_FAILURE = NdisStatus.FAILURE
NDIS_STATUS_RESOURCES = NdisStatus.RESOURCES
NDIS_STATUS_NOT_SUPPORTED = NdisStatus.NOT_SUPPORTED
NDIS_STATUS_INVALID_DATA = NdisStatus.INVALID_DATA
NDIS_STATUS_INVALID_OID = NdisStatus.INVALID_OID
NDIS_STATUS_INVALID_STATE = NdisStatus.INVALID_STATE
NDIS_STATUS_REQUEST_ABORTED = NdisStatus.REQUEST_ABORTED
NDIS_STATUS_SEND_ABORTED = NdisStatus.SEND_ABORTED
NDIS_STATUS_PAUSED = NdisStatus.PAUSED
NDIS_STATUS_OFFLOAD_PAUSE = NdisStatus.OFFLOAD_PAUSE
NDIS_STATUS_UPLOAD_ALL = NdisStatus.UPLOAD_ALL
NDIS_STATUS_OFFLOAD_RESUME = NdisStatus.OFFLOAD_RESUME
NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS = NdisStatus.OFFLOAD_PARTIAL_SUCCESS
NDIS_STATUS_OFFLOAD_STATE_INVALID = NdisStatus.OFFLOAD_STATE_INVALID
NDIS_STATUS_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = (
    NdisStatus.TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES
)
NDIS_STATUS_OFFLOAD_IM_RESERVED1 = NdisStatus.OFFLOAD_IM_RESERVED1
NDIS_STATUS_OFFLOAD_IM_RESERVED2 = NdisStatus.OFFLOAD_IM_RESERVED2
NDIS_STATUS_OFFLOAD_IM_RESERVED3 = NdisStatus.OFFLOAD_IM_RESERVED3
NDIS_STATUS_UPLOAD_IN_PROGRESS = NdisStatus.UPLOAD_IN_PROGRESS
NDIS_STATUS_REQUEST_UPLOAD = NdisStatus.REQUEST_UPLOAD
NDIS_STATUS_UPLOAD_REQUESTED = NdisStatus.UPLOAD_REQUESTED
NDIS_STATUS_OFFLOAD_TCP_ENTRIES = NdisStatus.OFFLOAD_TCP_ENTRIES
NDIS_STATUS_OFFLOAD_PATH_ENTRIES = NdisStatus.OFFLOAD_PATH_ENTRIES
NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES = NdisStatus.OFFLOAD_NEIGHBOR_ENTRIES
NDIS_STATUS_OFFLOAD_IP_ADDRESS_ENTRIES = NdisStatus.OFFLOAD_IP_ADDRESS_ENTRIES
NDIS_STATUS_OFFLOAD_HW_ADDRESS_ENTRIES = NdisStatus.OFFLOAD_HW_ADDRESS_ENTRIES
NDIS_STATUS_OFFLOAD_VLAN_ENTRIES = NdisStatus.OFFLOAD_VLAN_ENTRIES
NDIS_STATUS_OFFLOAD_TCP_XMIT_BUFFER = NdisStatus.OFFLOAD_TCP_XMIT_BUFFER
NDIS_STATUS_OFFLOAD_TCP_RCV_BUFFER = NdisStatus.OFFLOAD_TCP_RCV_BUFFER
NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW = NdisStatus.OFFLOAD_TCP_RCV_WINDOW
NDIS_STATUS_OFFLOAD_VLAN_MISMATCH = NdisStatus.OFFLOAD_VLAN_MISMATCH
NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED = NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED
NDIS_STATUS_OFFLOAD_POLICY = NdisStatus.OFFLOAD_POLICY
NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED = NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED
NDIS_STATUS_OFFLOAD_REQUEST_RESET = NdisStatus.OFFLOAD_REQUEST_RESET
NDIS_STATUS_OFFLOAD_CONNECTION_REJECTED = NdisStatus.OFFLOAD_CONNECTION_REJECTED
NDIS_STATUS_OFFLOAD_PATH_MTU = NdisStatus.OFFLOAD_PATH_MTU

# STATUS_* results of NdisMGetOffloadHandlers (a.1) share the NDIS values.
STATUS_SUCCESS = NdisStatus.SUCCESS
STATUS_NOT_SUPPORTED = NdisStatus.NOT_SUPPORTED


class Operation(enum.Enum):
    """The five state-manipulation operations (a.2)."""

    INITIATE = "Initiate"
    TERMINATE = "Terminate"
    UPDATE = "Update"
    INVALIDATE = "Invalidate"
    QUERY = "Query"


# f.2: which block Status values are legal per operation.
INITIATE_BLOCK_STATUSES: frozenset[NdisStatus] = frozenset(
    {
        NdisStatus.SUCCESS,
        NdisStatus.OFFLOAD_PARTIAL_SUCCESS,
        NdisStatus.FAILURE,
        NdisStatus.RESOURCES,
        NdisStatus.OFFLOAD_TCP_ENTRIES,
        NdisStatus.OFFLOAD_PATH_ENTRIES,
        NdisStatus.OFFLOAD_NEIGHBOR_ENTRIES,
        NdisStatus.OFFLOAD_HW_ADDRESS_ENTRIES,
        NdisStatus.OFFLOAD_IP_ADDRESS_ENTRIES,
        NdisStatus.OFFLOAD_TCP_XMIT_BUFFER,
        NdisStatus.OFFLOAD_TCP_RCV_BUFFER,
        NdisStatus.OFFLOAD_TCP_RCV_WINDOW,
        NdisStatus.OFFLOAD_VLAN_ENTRIES,
        NdisStatus.OFFLOAD_VLAN_MISMATCH,
        NdisStatus.OFFLOAD_PATH_MTU,
        NdisStatus.OFFLOAD_CONNECTION_REJECTED,
    }
)
_SUCCESS_OR_FAILURE: frozenset[NdisStatus] = frozenset({NdisStatus.SUCCESS, NdisStatus.FAILURE})

LEGAL_BLOCK_STATUSES: dict[Operation, frozenset[NdisStatus]] = {
    Operation.INITIATE: INITIATE_BLOCK_STATUSES,
    Operation.QUERY: _SUCCESS_OR_FAILURE,
    Operation.UPDATE: _SUCCESS_OR_FAILURE,
    Operation.INVALIDATE: _SUCCESS_OR_FAILURE,
    Operation.TERMINATE: _SUCCESS_OR_FAILURE,
}
# f.2 / b.5: a placeholder always gets SUCCESS, in any tree.
PLACEHOLDER_STATUSES: frozenset[NdisStatus] = frozenset({NdisStatus.SUCCESS})
# b.5: statuses meaning "this object itself is offloaded" after an initiate.
OFFLOADED_STATUSES: frozenset[NdisStatus] = frozenset(
    {NdisStatus.SUCCESS, NdisStatus.OFFLOAD_PARTIAL_SUCCESS}
)
# b.5: a linker gets SUCCESS / PARTIAL / FAILURE from its dependents.
LINKER_STATUSES: frozenset[NdisStatus] = frozenset(
    {NdisStatus.SUCCESS, NdisStatus.OFFLOAD_PARTIAL_SUCCESS, NdisStatus.FAILURE}
)

# e.5: statuses an IM may put on I/O it cannot pass down for lack of resources.
_IM_RESOURCE_STATUSES = frozenset({NdisStatus.REQUEST_UPLOAD, NdisStatus.UPLOAD_REQUESTED})

# f.3: per-NBL statuses in the I/O completions.
SEND_COMPLETE_STATUSES: frozenset[NdisStatus] = frozenset(
    {NdisStatus.SUCCESS, NdisStatus.REQUEST_ABORTED, NdisStatus.UPLOAD_IN_PROGRESS}
    | _IM_RESOURCE_STATUSES
)
RECEIVE_COMPLETE_STATUSES: frozenset[NdisStatus] = frozenset(
    {
        NdisStatus.SUCCESS,
        NdisStatus.REQUEST_ABORTED,
        NdisStatus.UPLOAD_IN_PROGRESS,
        NdisStatus.INVALID_STATE,
    }
    | _IM_RESOURCE_STATUSES
)
DISCONNECT_COMPLETE_STATUSES: frozenset[NdisStatus] = frozenset(
    {NdisStatus.SUCCESS, NdisStatus.UPLOAD_IN_PROGRESS, NdisStatus.REQUEST_ABORTED}
    | _IM_RESOURCE_STATUSES
)
# f.3: forward statuses are [I] (names lost from the DDI page).
FORWARD_COMPLETE_STATUSES: frozenset[NdisStatus] = frozenset(
    {NdisStatus.SUCCESS, NdisStatus.UPLOAD_IN_PROGRESS, NdisStatus.REQUEST_ABORTED}
    | _IM_RESOURCE_STATUSES
)
# a.4: what ProtocolTcpOffloadReceiveIndicate may return.
RECEIVE_INDICATE_RESULTS: frozenset[NdisStatus] = frozenset(
    {
        NdisStatus.SUCCESS,
        NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED,
        NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED,
    }
)
# f.3: the Status argument of NdisTcpOffloadReceiveHandler must be SUCCESS.
RECEIVE_INDICATE_STATUS_ARGUMENT: frozenset[NdisStatus] = frozenset({NdisStatus.SUCCESS})
# a.4: the status indications of the chimney.
CHIMNEY_STATUS_INDICATIONS: frozenset[NdisStatus] = frozenset(
    {
        NdisStatus.OFFLOAD_PAUSE,
        NdisStatus.OFFLOAD_RESUME,
        NdisStatus.UPLOAD_ALL,
        NdisStatus.TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES,
    }
)


def nt_success(status: int) -> bool:
    """NT_SUCCESS(): severity success or informational (top bit clear)."""
    return (int(status) & 0xFFFFFFFF) < 0x80000000


_STATUS_NAMES: dict[int, str] = {}


def status_name(status: int | None) -> str:
    """``NDIS_STATUS_XXX`` for a known value, hex otherwise (for humans and reports)."""
    if status is None:
        return "None"
    value = int(status) & 0xFFFFFFFF
    name = _STATUS_NAMES.get(value)
    if name is None:
        try:
            name = "NDIS_STATUS_" + NdisStatus(value).name
        except ValueError:
            return f"0x{value:08X}"
        _STATUS_NAMES[value] = name
    return name


def legal_block_statuses(operation: Operation, *, placeholder: bool = False) -> frozenset[NdisStatus]:
    """f.2: the set a block's Status must belong to at completion of ``operation``."""
    return PLACEHOLDER_STATUSES if placeholder else LEGAL_BLOCK_STATUSES[operation]
