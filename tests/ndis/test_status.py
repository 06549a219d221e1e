"""Reference f.1 values and f.2 / f.3 legal sets."""

from ndis import status as st
from ndis.status import NdisStatus, Operation


def test_numeric_values_match_reference_f1():
    expected = {
        "SUCCESS": 0x00000000, "PENDING": 0x00000103, "NOT_ACCEPTED": 0x00010003,
        "FAILURE": 0xC0000001, "RESOURCES": 0xC000009A, "NOT_SUPPORTED": 0xC00000BB,
        "INVALID_STATE": 0xC0000184, "REQUEST_ABORTED": 0xC001000C, "SEND_ABORTED": 0xC023000C,
        "PAUSED": 0xC023002A, "OFFLOAD_PAUSE": 0x40020001, "UPLOAD_ALL": 0x40020002,
        "OFFLOAD_RESUME": 0x40020003, "OFFLOAD_PARTIAL_SUCCESS": 0x40020004,
        "OFFLOAD_STATE_INVALID": 0x40020005,
        "TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES": 0x4002000B,
        "OFFLOAD_IM_RESERVED1": 0x40020100, "OFFLOAD_IM_RESERVED2": 0x40020101,
        "OFFLOAD_IM_RESERVED3": 0x40020102, "UPLOAD_IN_PROGRESS": 0xC0231001,
        "REQUEST_UPLOAD": 0xC0231002, "UPLOAD_REQUESTED": 0xC0231003,
        "OFFLOAD_TCP_ENTRIES": 0xC0231004, "OFFLOAD_PATH_ENTRIES": 0xC0231005,
        "OFFLOAD_NEIGHBOR_ENTRIES": 0xC0231006, "OFFLOAD_IP_ADDRESS_ENTRIES": 0xC0231007,
        "OFFLOAD_HW_ADDRESS_ENTRIES": 0xC0231008, "OFFLOAD_VLAN_ENTRIES": 0xC0231009,
        "OFFLOAD_TCP_XMIT_BUFFER": 0xC023100A, "OFFLOAD_TCP_RCV_BUFFER": 0xC023100B,
        "OFFLOAD_TCP_RCV_WINDOW": 0xC023100C, "OFFLOAD_VLAN_MISMATCH": 0xC023100D,
        "OFFLOAD_DATA_NOT_ACCEPTED": 0xC023100E, "OFFLOAD_POLICY": 0xC023100F,
        "OFFLOAD_DATA_PARTIALLY_ACCEPTED": 0xC0231010, "OFFLOAD_REQUEST_RESET": 0xC0231011,
        "OFFLOAD_CONNECTION_REJECTED": 0xC0231012,
    }
    for name, value in expected.items():
        assert NdisStatus[name] == value, name
        assert getattr(st, "NDIS_STATUS_" + name) == value, name
    # no aliasing between distinct codes
    assert len({m.value for m in NdisStatus}) == len(list(NdisStatus))


def test_legal_block_sets_f2():
    assert st.legal_block_statuses(Operation.INITIATE) == st.INITIATE_BLOCK_STATUSES
    assert NdisStatus.OFFLOAD_PARTIAL_SUCCESS in st.INITIATE_BLOCK_STATUSES
    assert NdisStatus.OFFLOAD_CONNECTION_REJECTED in st.INITIATE_BLOCK_STATUSES
    assert len(st.INITIATE_BLOCK_STATUSES) == 16
    for op in (Operation.QUERY, Operation.UPDATE, Operation.INVALIDATE, Operation.TERMINATE):
        assert st.legal_block_statuses(op) == {NdisStatus.SUCCESS, NdisStatus.FAILURE}
    for op in Operation:
        assert st.legal_block_statuses(op, placeholder=True) == {NdisStatus.SUCCESS}


def test_io_sets_f3():
    assert NdisStatus.UPLOAD_IN_PROGRESS in st.SEND_COMPLETE_STATUSES
    assert NdisStatus.PAUSED not in st.SEND_COMPLETE_STATUSES  # d.2
    assert NdisStatus.INVALID_STATE in st.RECEIVE_COMPLETE_STATUSES
    assert st.RECEIVE_INDICATE_RESULTS == {
        NdisStatus.SUCCESS, NdisStatus.OFFLOAD_DATA_NOT_ACCEPTED,
        NdisStatus.OFFLOAD_DATA_PARTIALLY_ACCEPTED,
    }
    assert st.RECEIVE_INDICATE_STATUS_ARGUMENT == {NdisStatus.SUCCESS}


def test_names_and_nt_success():
    assert st.status_name(0xC0231001) == "NDIS_STATUS_UPLOAD_IN_PROGRESS"
    assert st.status_name(0x12345678) == "0x12345678"
    assert st.nt_success(NdisStatus.OFFLOAD_PARTIAL_SUCCESS)
    assert st.nt_success(NdisStatus.PENDING)
    assert not st.nt_success(NdisStatus.FAILURE)
