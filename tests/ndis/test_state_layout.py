"""b.7 - b.16 structures: sizes, hand-computed x64 offsets, validation, round trips."""

import struct

import pytest

from ndis.blocks import NET_BUFFER_LIST
from ndis.state import (
    NDIS_TCP_CONNECTION_OFFLOAD,
    NEIGHBOR_OFFLOAD_STATE_CACHED,
    NEIGHBOR_OFFLOAD_STATE_CONST,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    OFFLOAD_STATE_TYPE,
    PATH_OFFLOAD_STATE_CACHED,
    PATH_OFFLOAD_STATE_CONST,
    PATH_OFFLOAD_STATE_DELEGATED,
    TCP_OFFLOAD_CONNECTION_STATE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_OFFLOAD_STATE_CONST,
    TCP_OFFLOAD_STATE_DELEGATED,
    KeepAliveState,
    NeighborOffloadState,
    PathOffloadState,
    PointerTable,
    RetransmitState,
    StateValidationError,
    TcpOffloadState,
    hexdump,
    layer_of_type,
    state_type,
)


def u32(buf, off):
    return struct.unpack_from("<I", buf, off)[0]


def u16(buf, off):
    return struct.unpack_from("<H", buf, off)[0]


def u8(buf, off):
    return buf[off]


def u64(buf, off):
    return struct.unpack_from("<Q", buf, off)[0]


def test_sizes():
    assert NEIGHBOR_OFFLOAD_STATE_CONST.SIZE == 0x2C
    assert NEIGHBOR_OFFLOAD_STATE_CACHED.SIZE == 0x2C
    assert NEIGHBOR_OFFLOAD_STATE_DELEGATED.SIZE == 0x0C
    assert PATH_OFFLOAD_STATE_CONST.SIZE == 0x18
    assert PATH_OFFLOAD_STATE_CACHED.SIZE == 0x0C
    assert PATH_OFFLOAD_STATE_DELEGATED.SIZE == 0x08
    assert TCP_OFFLOAD_STATE_CONST.SIZE == 0x18
    assert TCP_OFFLOAD_STATE_CACHED.SIZE == 0x2C
    assert TCP_OFFLOAD_STATE_DELEGATED.SIZE == 0x80
    assert len(TCP_OFFLOAD_STATE_DELEGATED().encode()) == 0x80
    assert NDIS_TCP_CONNECTION_OFFLOAD.SIZE == 0x14


def test_tcp_delegated_offsets_hand_computed():
    head, tail, buffered = NET_BUFFER_LIST(b"a"), NET_BUFFER_LIST(b"b"), NET_BUFFER_LIST(b"c")
    d = TCP_OFFLOAD_STATE_DELEGATED(
        State=TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionFinWait2, Flags=0xA1B2,
        RcvNxt=0x11111111, RcvWnd=0x22222222, SndUna=0x33333333, SndNxt=0x44444444,
        SndMax=0x55555555, SndWnd=0x66666666, MaxSndWnd=0x77777777, SendWL1=0x88888888,
        CWnd=0x99999999, SsThresh=0xAAAAAAAA, SRtt=0xBBBB, RttVar=0xCCCC, TsRecent=0x0D0D0D0D,
        TsRecentAge=0x0E0E0E0E, TsTime=0x0F0F0F0F, TotalRT=0x10101010, DupAckCount=0x21,
        SndWndProbeCount=0x22, KeepAlive=KeepAliveState(0x23, 0x24242424),
        Retransmit=RetransmitState(0x25, 0x26262626), SendDataHead=head, SendDataTail=tail,
        BufferedData=buffered, DWnd=0x27272727,
    )
    ptrs = PointerTable()
    b = d.encode(ptrs)
    assert u32(b, 0x00) == 0x80  # Header.Length
    assert u32(b, 0x04) == 0
    assert u32(b, 0x08) == 6  # TcpConnectionFinWait2
    assert u16(b, 0x0C) == 0xA1B2
    assert [u32(b, o) for o in range(0x10, 0x38, 4)] == [
        0x11111111, 0x22222222, 0x33333333, 0x44444444, 0x55555555, 0x66666666, 0x77777777,
        0x88888888, 0x99999999, 0xAAAAAAAA,
    ]
    assert u16(b, 0x38) == 0xBBBB and u16(b, 0x3A) == 0xCCCC
    assert u32(b, 0x3C) == 0x0D0D0D0D and u32(b, 0x40) == 0x0E0E0E0E
    assert u32(b, 0x44) == 0x0F0F0F0F and u32(b, 0x48) == 0x10101010
    assert u8(b, 0x4C) == 0x21 and u8(b, 0x4D) == 0x22
    assert u8(b, 0x50) == 0x23 and u32(b, 0x54) == 0x24242424
    assert u8(b, 0x58) == 0x25 and u32(b, 0x5C) == 0x26262626
    assert u64(b, 0x60) == ptrs.ref(head) and u64(b, 0x68) == ptrs.ref(tail)
    assert u64(b, 0x70) == ptrs.ref(buffered)
    assert u32(b, 0x78) == 0x27272727
    assert ptrs.ref(head) != 0 and ptrs.ref(head) != ptrs.ref(tail)
    back = TCP_OFFLOAD_STATE_DELEGATED.decode(b, ptrs)
    assert back == d
    assert back.SendDataHead is head and back.BufferedData is buffered


def test_tcp_delegated_query_union():
    d = TCP_OFFLOAD_STATE_DELEGATED(SendBacklogSize=0x1234, ReceiveBacklogSize=0xFFFFFFFF)
    b = d.encode(query=True)
    assert u32(b, 0x60) == 0x1234 and u32(b, 0x70) == 0xFFFFFFFF
    back = TCP_OFFLOAD_STATE_DELEGATED.decode(b, query=True)
    assert back.SendBacklogSize == 0x1234 and back.ReceiveBacklogSize == 0xFFFFFFFF


def test_tcp_const_and_cached_offsets():
    c = TCP_OFFLOAD_STATE_CONST(Flags=7, RemotePort=0x1234, LocalPort=0x5678, SndWindScale=3,
                                RcvWindScale=14, RemoteMss=1460, HashValue=0xDEADBEEF)
    b = c.encode()
    assert u32(b, 0) == 0x18 and u16(b, 0x08) == 7 and u16(b, 0x0A) == 0x1234
    assert u16(b, 0x0C) == 0x5678 and u8(b, 0x0E) == (3 | 14 << 4)
    assert u16(b, 0x10) == 1460 and u32(b, 0x14) == 0xDEADBEEF
    assert TCP_OFFLOAD_STATE_CONST.decode(b) == c
    k = TCP_OFFLOAD_STATE_CACHED(Flags=0x1F, InitialRcvWnd=0x10000, RcvIndicationSize=512,
                                 KaProbeCount=9, KaTimeout=7200000, KaInterval=1000, MaxRT=0xFFFFFFFF,
                                 FlowLabel=0xFFFFF, TtlOrHopLimit=128, TosOrTrafficClass=0x10,
                                 UserPriority=5)
    b = k.encode()
    assert u32(b, 0) == 0x2C and u16(b, 0x08) == 0x1F and u32(b, 0x0C) == 0x10000
    assert u32(b, 0x10) == 512 and u8(b, 0x14) == 9 and u32(b, 0x18) == 7200000
    assert u32(b, 0x1C) == 1000 and u32(b, 0x20) == 0xFFFFFFFF and u32(b, 0x24) == 0xFFFFF
    assert u8(b, 0x28) == 128 and u8(b, 0x29) == 0x10 and u8(b, 0x2A) == 5
    assert TCP_OFFLOAD_STATE_CACHED.decode(b) == k


def test_neighbor_and_path_offsets():
    n = NEIGHBOR_OFFLOAD_STATE_CONST(bytes(range(32)), VlanId=0xABC)
    b = n.encode()
    assert b[0x08:0x28] == bytes(range(32)) and u32(b, 0x28) == 0xABC
    k = NEIGHBOR_OFFLOAD_STATE_CACHED(b"\x02" * 6 + bytes(26), HostReachabilityDelta=77)
    assert u32(k.encode(), 0x28) == 77
    assert u32(NEIGHBOR_OFFLOAD_STATE_DELEGATED(99).encode(), 0x08) == 99
    src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    ptrs = PointerTable()
    p = PATH_OFFLOAD_STATE_CONST(src, dst)
    b = p.encode(ptrs)
    assert u64(b, 0x08) == ptrs.ref(src) and u64(b, 0x10) == ptrs.ref(dst)
    assert PATH_OFFLOAD_STATE_CONST.decode(b, ptrs).SourceAddress is src
    assert u32(PATH_OFFLOAD_STATE_CACHED(9000).encode(), 0x08) == 9000
    assert PATH_OFFLOAD_STATE_DELEGATED().encode() == struct.pack("<II", 8, 0)


def test_full_states_types_and_roundtrip():
    ptrs = PointerTable()
    for s, t in (
        (NeighborOffloadState(), OFFLOAD_STATE_TYPE.NeighborOffloadState),
        (PathOffloadState(), OFFLOAD_STATE_TYPE.Ip4OffloadState),
        (PathOffloadState(PATH_OFFLOAD_STATE_CONST(bytes(16), bytes(16))), OFFLOAD_STATE_TYPE.Ip6OffloadState),
        (TcpOffloadState(), OFFLOAD_STATE_TYPE.TcpOffloadState),
    ):
        assert state_type(s) == t
        assert type(s).decode(s.encode(ptrs), ptrs) == s
    assert layer_of_type(4).name == "NEIGHBOR" and layer_of_type(8).name == "PATH"
    assert layer_of_type(17).name == "TCP" and layer_of_type(0xFE) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: TCP_OFFLOAD_STATE_DELEGATED(RcvNxt=1 << 32),
        lambda: TCP_OFFLOAD_STATE_DELEGATED(SRtt=0x10000),
        lambda: TCP_OFFLOAD_STATE_DELEGATED(State=11),
        lambda: TCP_OFFLOAD_STATE_DELEGATED(DupAckCount=-1),
        lambda: TCP_OFFLOAD_STATE_CONST(SndWindScale=15),
        lambda: TCP_OFFLOAD_STATE_CONST(RemotePort=70000),
        lambda: TCP_OFFLOAD_STATE_CACHED(FlowLabel=1 << 20),
        lambda: TCP_OFFLOAD_STATE_CACHED(UserPriority=8),
        lambda: NEIGHBOR_OFFLOAD_STATE_CONST(VlanId=4096),
        lambda: NEIGHBOR_OFFLOAD_STATE_CONST(DlSourceAddress=bytes(33)),
        lambda: PATH_OFFLOAD_STATE_CONST(bytes(4), bytes(16)),
        lambda: PATH_OFFLOAD_STATE_CONST(bytes(5), bytes(5)),
        lambda: NDIS_TCP_CONNECTION_OFFLOAD(SupportIPv4=0, SupportIPv6=0),
        lambda: NDIS_TCP_CONNECTION_OFFLOAD(Encapsulation=0x1),
    ],
)
def test_validation_rejects_out_of_range(make):
    with pytest.raises(StateValidationError):
        make().encode()


def test_capabilities_layout():
    c = NDIS_TCP_CONNECTION_OFFLOAD(SupportIPv4=1, SupportIPv6=1, SupportSack=1,
                                    TcpConnectionOffloadCapacity=1024)
    b = c.encode()
    assert len(b) == 0x14 and b[0] == 0x80 and b[1] == 1 and u16(b, 2) == 0x14
    assert u32(b, 4) == 0x02 and u32(b, 8) == (1 | 1 << 2 | 1 << 6) and u32(b, 0xC) == 1024
    assert NDIS_TCP_CONNECTION_OFFLOAD.decode(b) == c


def test_hexdump_is_windbg_like():
    out = hexdump(TCP_OFFLOAD_STATE_DELEGATED().encode())
    assert out.splitlines()[0].startswith("00000000  80 00 00 00 00 00 00 00-04")
    assert len(out.splitlines()) == 8
