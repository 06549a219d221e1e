"""Offload state structures (reference b.7 - b.16): NEIGHBOR / PATH / TCP x CONST / CACHED /
DELEGATED, field validation, and encode/decode to the documented x64 layouts.

Names are the ``ndischimney.h`` names.  Every structure is a dataclass whose fields carry the
documented member names (``RcvNxt``, ``SndUna``, ``SRtt`` ...); the ``Header`` is an
:class:`OFFLOAD_STATE_HEADER` whose ``Length`` is filled with the structure size (b.7).

Byte layouts (little endian, x64).  Offsets are those of the reference tables; the padding is
the natural MSVC alignment.  MSVC allocates bit-fields from the least significant bit of their
storage unit, so ``SndWindScale:4`` is the low nibble at 0x0E and ``RcvWindScale:4`` the high one.

Pointer convention.  Pointer members (``PATH_OFFLOAD_STATE_CONST.SourceAddress``,
``SendDataHead`` / ``SendDataTail`` / ``BufferedData``) are 8-byte values.  ``NULL`` encodes as
0.  A non-NULL pointer is encoded through a :class:`PointerTable`, which hands out stable fake
kernel addresses (``0xFFFFA00000001000``, ``...1010``, ...) per Python object and resolves them
back on decode.  Without a table, encode uses a private fresh table (the dump is readable, the
addresses are meaningless) and decode returns the raw address as an ``int``.

Unions of TCP_OFFLOAD_STATE_DELEGATED (b.13): at 0x60 ``SendDataHead``/``SendDataTail``
(initiate / terminate) or ``SendBacklogSize`` (query); at 0x70 ``BufferedData`` or
``ReceiveBacklogSize``.  ``encode(query=True)`` / ``decode(query=True)`` select the query arm.

Example::

    >>> d = TCP_OFFLOAD_STATE_DELEGATED(State=TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionEstablished,
    ...                                 RcvNxt=1000, SndUna=5000, SndNxt=5000, SndMax=5000)
    >>> len(d.encode())
    128
"""

from __future__ import annotations

import enum
import itertools
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "StateValidationError",
    "PointerTable",
    "OFFLOAD_STATE_TYPE",
    "TCP_OFFLOAD_CONNECTION_STATE",
    "TCP_OFFLOAD_EVENT_TYPE",
    "TCP_UPLOAD_REASON",
    "INDICATE_OFFLOAD_EVENT",
    "NDIS_CHIMNEY_OFFLOAD_TYPE",
    "OffloadLayer",
    "OFFLOAD_STATE_HEADER",
    "NEIGHBOR_OFFLOAD_STATE_CONST",
    "NEIGHBOR_OFFLOAD_STATE_CACHED",
    "NEIGHBOR_OFFLOAD_STATE_DELEGATED",
    "PATH_OFFLOAD_STATE_CONST",
    "PATH_OFFLOAD_STATE_CACHED",
    "PATH_OFFLOAD_STATE_DELEGATED",
    "TCP_OFFLOAD_STATE_CONST",
    "TCP_OFFLOAD_STATE_CACHED",
    "TCP_OFFLOAD_STATE_DELEGATED",
    "KeepAliveState",
    "RetransmitState",
    "NeighborOffloadState",
    "PathOffloadState",
    "TcpOffloadState",
    "NDIS_OBJECT_HEADER",
    "NDIS_TCP_CONNECTION_OFFLOAD",
    "NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS",
    "hexdump",
    "layer_of_type",
    "OFFLOADABLE_TCP_STATES",
]


class StateValidationError(ValueError):
    """A state field is out of its documented range."""


# ---------------------------------------------------------------------------------------------
# Enumerations (b.10, b.14)


class OFFLOAD_STATE_TYPE(enum.IntEnum):
    """b.10: Header.Type of a block list, telling which structure(s) follow it."""

    NeighborOffloadConstState = 1
    NeighborOffloadCachedState = 2
    NeighborOffloadDelegatedState = 3
    NeighborOffloadState = 4
    Ip4OffloadConstState = 5
    Ip4OffloadCachedState = 6
    Ip4OffloadDelegatedState = 7
    Ip4OffloadState = 8
    Ip6OffloadConstState = 9
    Ip6OffloadCachedState = 10
    Ip6OffloadDelegatedState = 11
    Ip6OffloadState = 12
    TcpOffloadConstState = 13
    TcpOffloadCachedState = 14
    TcpOffloadDelegatedState = 15
    TcpOffloadResourceState = 16
    TcpOffloadState = 17
    FilterReservedOffloadState = 0xFE
    MaximumOffloadState = 0xFF


class TCP_OFFLOAD_CONNECTION_STATE(enum.IntEnum):
    """b.14 (every name has the prefix TcpConnection)."""

    TcpConnectionClosed = 0
    TcpConnectionListen = 1
    TcpConnectionSynSent = 2
    TcpConnectionSynRcvd = 3
    TcpConnectionEstablished = 4
    TcpConnectionFinWait1 = 5
    TcpConnectionFinWait2 = 6
    TcpConnectionCloseWait = 7
    TcpConnectionClosing = 8
    TcpConnectionLastAck = 9
    TcpConnectionTimeWait = 10
    TcpConnectionMaxState = 11


# b.14 / c.5: the host only offloads connections in these states.
OFFLOADABLE_TCP_STATES: frozenset[TCP_OFFLOAD_CONNECTION_STATE] = frozenset(
    {
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionEstablished,
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionFinWait1,
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionFinWait2,
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionCloseWait,
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionClosing,
        TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionLastAck,
    }
)


class TCP_OFFLOAD_EVENT_TYPE(enum.IntEnum):
    """b.14: EventType of NdisTcpOffloadEventHandler."""

    TcpIndicateSendBacklogChange = 1
    TcpIndicateDisconnect = 2
    TcpIndicateRetrieve = 3
    TcpIndicateAbort = 4


class TCP_UPLOAD_REASON(enum.IntEnum):
    """b.14: EventSpecificInformation of TcpIndicateRetrieve."""

    LowActivity = 1
    HighDropRate = 2
    SmallIO = 3
    NoBufferPreposting = 4
    ReceivedUrgentData = 5
    HighFragmentation = 6
    HighOutOfOrderPackets = 7
    TimeoutExpiration = 8
    InvalidState = 9
    UploadRequested = 10
    HardwareFailure = 11
    MaxUploadReason = 12

    # legacy misspelling kept by the header
    NoBufferProposting = 4


# b.14: reasons for which the host must upload.
MANDATORY_UPLOAD_REASONS: frozenset[TCP_UPLOAD_REASON] = frozenset(
    {
        TCP_UPLOAD_REASON.ReceivedUrgentData,
        TCP_UPLOAD_REASON.TimeoutExpiration,
        TCP_UPLOAD_REASON.InvalidState,
        TCP_UPLOAD_REASON.UploadRequested,
        TCP_UPLOAD_REASON.HardwareFailure,
    }
)


class INDICATE_OFFLOAD_EVENT(enum.IntEnum):
    """b.14: IndicationCode of NdisMOffloadEventIndicate."""

    NeighborReachabilityInDoubt = 1  # reserved
    NeighborReachabilityQuery = 2
    MaxOffloadEvent = 3


class NDIS_CHIMNEY_OFFLOAD_TYPE(enum.IntEnum):
    """b.14: only NdisTcpChimneyOffload is usable."""

    NdisTcpChimneyOffload = 1
    NdisIpsecChimneyOffload = 2
    NdisRdmaChimneyOffload = 3
    NdisMaxChimneyOffload = 4


# b.11 / b.12 flags and disconnect flags (b.14)
TCP_FLAG_TIMESTAMP_ENABLED = 0x01
TCP_FLAG_SACK_ENABLED = 0x02
TCP_FLAG_WINDOW_SCALING_ENABLED = 0x04
TCP_FLAG_KEEP_ALIVE_ENABLED = 0x01
TCP_FLAG_NAGLING_ENABLED = 0x02
TCP_FLAG_KEEP_ALIVE_RESTART = 0x04
TCP_FLAG_MAX_RT_RESTART = 0x08
TCP_FLAG_UPDATE_RCV_WND = 0x10
TCP_DISCONNECT_GRACEFUL_CLOSE = 0x01
TCP_DISCONNECT_ABORTIVE_CLOSE = 0x02

TIMER_NOT_RUNNING = 0xFFFFFFFF  # T.4: (ULONG)-1 = timer not running


class OffloadLayer(enum.IntEnum):
    """The three layers of offload state (section 1); implied by Header.Type (b.10)."""

    NEIGHBOR = 1
    PATH = 2
    TCP = 3


_LAYER_OF_TYPE: tuple[OffloadLayer | None, ...] = (
    (None,) + (OffloadLayer.NEIGHBOR,) * 4 + (OffloadLayer.PATH,) * 8 + (OffloadLayer.TCP,) * 5
)


def layer_of_type(block_type: int) -> OffloadLayer | None:
    """b.10: 1-4 neighbor, 5-12 path, 13-17 TCP; anything else has no layer."""
    if 0 <= block_type <= 17:
        return _LAYER_OF_TYPE[block_type]
    return None


# ---------------------------------------------------------------------------------------------
# Pointers and validation helpers


class PointerTable:
    """Fake kernel addresses for pointer members (see module docstring)."""

    BASE = 0xFFFFA00000001000
    STRIDE = 0x10

    def __init__(self) -> None:
        self._by_id: dict[int, int] = {}
        self._objects: dict[int, Any] = {}
        self._next = itertools.count()

    def ref(self, obj: Any) -> int:
        """Address of ``obj`` (0 for None)."""
        if obj is None:
            return 0
        if isinstance(obj, int) and not isinstance(obj, bool):
            return obj  # already an address (decoded without a table)
        addr = self._by_id.get(id(obj))
        if addr is None:
            addr = self.BASE + self.STRIDE * next(self._next)
            self._by_id[id(obj)] = addr
            self._objects[addr] = obj  # keeps obj alive, so id() stays unique
        return addr

    def deref(self, addr: int) -> Any:
        """Object at ``addr`` (None for 0); unknown addresses come back as the int."""
        if addr == 0:
            return None
        return self._objects.get(addr, addr)


def _uint(name: str, value: Any, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateValidationError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise StateValidationError(f"{name}={value!r} out of range for {bits} bits")


def _enum(name: str, value: Any, enum_cls: type[enum.IntEnum], limit: int) -> None:
    _uint(name, value, 32)
    if value >= limit:
        raise StateValidationError(f"{name}={value!r} is not a valid {enum_cls.__name__}")


def _bytes(name: str, value: Any, sizes: tuple[int, ...]) -> None:
    if not isinstance(value, bytes | bytearray):
        raise StateValidationError(f"{name} must be bytes")
    if len(value) not in sizes:
        raise StateValidationError(f"{name} has length {len(value)}, expected one of {sizes}")


def _align8(n: int) -> int:
    return (n + 7) & ~7


def hexdump(data: bytes, base: int = 0) -> str:
    """WinDbg ``db``-style dump, 16 bytes a line, for humans."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        if len(chunk) > 8:
            hexes = hexes[:23] + "-" + hexes[24:]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{base + off:08x}  {hexes:<48}  {text}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# b.7 OFFLOAD_STATE_HEADER


@dataclass(slots=True, frozen=True)
class OFFLOAD_STATE_HEADER:
    """b.7: Length (total size incl. header), RecognizedOptions (reserved).

    A value, like the two ULONGs it is in C: immutable, so that one instance serves every
    structure of a size (a terminate tree of 10,000 connections carries 10,000 delegated
    structures); to change one, assign a new header."""

    Length: int = 0
    RecognizedOptions: int = 0

    FORMAT: ClassVar[str] = "<II"

    def __copy__(self) -> OFFLOAD_STATE_HEADER:
        return self  # a value: copies may share it

    def __deepcopy__(self, memo: dict[int, Any]) -> OFFLOAD_STATE_HEADER:
        return self


_STATE_HEADERS: dict[int, OFFLOAD_STATE_HEADER] = {}


def state_header(length: int) -> OFFLOAD_STATE_HEADER:
    """The (shared) ``OFFLOAD_STATE_HEADER(length, 0)``."""
    h = _STATE_HEADERS.get(length)
    if h is None:
        h = _STATE_HEADERS[length] = OFFLOAD_STATE_HEADER(length, 0)
    return h


_NO_HEADER = OFFLOAD_STATE_HEADER()  # the default: Length 0 = filled in by __post_init__


class _StateStruct:
    """Shared encode/decode plumbing; subclasses define SIZE, TYPE, _pack and _unpack."""

    __slots__ = ()  # (a subclass may have slots: TCP_OFFLOAD_STATE_DELEGATED)
    SIZE: ClassVar[int]
    Header: OFFLOAD_STATE_HEADER

    def __post_init__(self) -> None:
        h = self.Header
        if h.Length == 0:
            self.Header = (state_header(self.SIZE) if h.RecognizedOptions == 0
                           else OFFLOAD_STATE_HEADER(self.SIZE, h.RecognizedOptions))

    def _validate_header(self) -> None:
        _uint("Header.Length", self.Header.Length, 32)
        _uint("Header.RecognizedOptions", self.Header.RecognizedOptions, 32)

    def validate(self) -> None:  # pragma: no cover - overridden
        self._validate_header()

    def encode(self, ptrs: PointerTable | None = None, **kw: Any) -> bytes:
        """The x64 bytes of this structure (validates first)."""
        self.validate()
        data = self._pack(ptrs if ptrs is not None else PointerTable(), **kw)
        assert len(data) == self.SIZE, (type(self).__name__, len(data))
        return data

    @classmethod
    def decode(cls, buf: bytes, ptrs: PointerTable | None = None, **kw: Any) -> Any:
        """Parse ``SIZE`` bytes from the start of ``buf``."""
        if len(buf) < cls.SIZE:
            raise StateValidationError(f"{cls.__name__} needs {cls.SIZE} bytes, got {len(buf)}")
        return cls._unpack(bytes(buf[: cls.SIZE]), ptrs, **kw)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def dump(self, **kw: Any) -> str:
        """Hex dump of the encoded structure."""
        return hexdump(self.encode(**kw))


def _hdr(h: OFFLOAD_STATE_HEADER) -> bytes:
    return struct.pack("<II", h.Length, h.RecognizedOptions)


def _unhdr(buf: bytes) -> OFFLOAD_STATE_HEADER:
    length, opts = struct.unpack_from("<II", buf, 0)
    return OFFLOAD_STATE_HEADER(length, opts)


# ---------------------------------------------------------------------------------------------
# b.8 Neighbor


@dataclass
class NEIGHBOR_OFFLOAD_STATE_CONST(_StateStruct):
    """b.8 (size 0x2C): 0x08 DlSourceAddress[32], 0x28 VlanId:12."""

    DlSourceAddress: bytes = bytes(32)
    VlanId: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x2C

    def validate(self) -> None:
        self._validate_header()
        if not isinstance(self.DlSourceAddress, bytes | bytearray) or len(self.DlSourceAddress) > 32:
            raise StateValidationError("DlSourceAddress must be at most 32 bytes")
        _uint("VlanId", self.VlanId, 12)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack("<32sI", bytes(self.DlSourceAddress), self.VlanId)

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> NEIGHBOR_OFFLOAD_STATE_CONST:
        addr, vlan = struct.unpack_from("<32sI", buf, 8)
        return cls(DlSourceAddress=addr, VlanId=vlan & 0xFFF, Header=_unhdr(buf))


@dataclass
class NEIGHBOR_OFFLOAD_STATE_CACHED(_StateStruct):
    """b.8 (size 0x2C): 0x08 DlDestinationAddress[32], 0x28 HostReachabilityDelta."""

    DlDestinationAddress: bytes = bytes(32)
    HostReachabilityDelta: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x2C

    def validate(self) -> None:
        self._validate_header()
        if (
            not isinstance(self.DlDestinationAddress, bytes | bytearray)
            or len(self.DlDestinationAddress) > 32
        ):
            raise StateValidationError("DlDestinationAddress must be at most 32 bytes")
        _uint("HostReachabilityDelta", self.HostReachabilityDelta, 32)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack(
            "<32sI", bytes(self.DlDestinationAddress), self.HostReachabilityDelta
        )

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> NEIGHBOR_OFFLOAD_STATE_CACHED:
        addr, hrd = struct.unpack_from("<32sI", buf, 8)
        return cls(DlDestinationAddress=addr, HostReachabilityDelta=hrd, Header=_unhdr(buf))


@dataclass
class NEIGHBOR_OFFLOAD_STATE_DELEGATED(_StateStruct):
    """b.8 (size 0x0C): 0x08 NicReachabilityDelta."""

    NicReachabilityDelta: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x0C

    def validate(self) -> None:
        self._validate_header()
        _uint("NicReachabilityDelta", self.NicReachabilityDelta, 32)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack("<I", self.NicReachabilityDelta)

    @classmethod
    def _unpack(
        cls, buf: bytes, ptrs: PointerTable | None, **kw: Any
    ) -> NEIGHBOR_OFFLOAD_STATE_DELEGATED:
        (nrd,) = struct.unpack_from("<I", buf, 8)
        return cls(NicReachabilityDelta=nrd, Header=_unhdr(buf))


# ---------------------------------------------------------------------------------------------
# b.9 Path


@dataclass
class PATH_OFFLOAD_STATE_CONST(_StateStruct):
    """b.9 (size 0x18): 0x08 SourceAddress*, 0x10 DestinationAddress* (4 or 16 bytes, network
    order; pointers per the module's pointer convention)."""

    SourceAddress: Any = None
    DestinationAddress: Any = None
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x18

    def validate(self) -> None:
        self._validate_header()
        for name in ("SourceAddress", "DestinationAddress"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                _uint(name, value, 64)  # an unresolved decoded pointer
            else:
                _bytes(name, value, (4, 16))
        if isinstance(self.SourceAddress, bytes | bytearray) and isinstance(
            self.DestinationAddress, bytes | bytearray
        ):
            if len(self.SourceAddress) != len(self.DestinationAddress):
                raise StateValidationError("SourceAddress and DestinationAddress differ in family")

    @property
    def is_ipv6(self) -> bool:
        return isinstance(self.SourceAddress, bytes | bytearray) and len(self.SourceAddress) == 16

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack(
            "<QQ", ptrs.ref(self.SourceAddress), ptrs.ref(self.DestinationAddress)
        )

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> PATH_OFFLOAD_STATE_CONST:
        src, dst = struct.unpack_from("<QQ", buf, 8)
        if ptrs is not None:
            return cls(ptrs.deref(src), ptrs.deref(dst), Header=_unhdr(buf))
        return cls(src or None, dst or None, Header=_unhdr(buf))


@dataclass
class PATH_OFFLOAD_STATE_CACHED(_StateStruct):
    """b.9 (size 0x0C): 0x08 PathMtu."""

    PathMtu: int = 1500
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x0C

    def validate(self) -> None:
        self._validate_header()
        _uint("PathMtu", self.PathMtu, 32)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack("<I", self.PathMtu)

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> PATH_OFFLOAD_STATE_CACHED:
        (mtu,) = struct.unpack_from("<I", buf, 8)
        return cls(PathMtu=mtu, Header=_unhdr(buf))


@dataclass
class PATH_OFFLOAD_STATE_DELEGATED(_StateStruct):
    """b.9 (size 0x08): header only, there is no delegated path state."""

    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x08

    def validate(self) -> None:
        self._validate_header()

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header)

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> PATH_OFFLOAD_STATE_DELEGATED:
        return cls(Header=_unhdr(buf))


# ---------------------------------------------------------------------------------------------
# b.11 - b.13 TCP


@dataclass
class TCP_OFFLOAD_STATE_CONST(_StateStruct):
    """b.11 (size 0x18)::

        0x00 Header            0x0A RemotePort     0x0E SndWindScale:4 | RcvWindScale:4
        0x08 Flags (USHORT)    0x0C LocalPort      0x10 RemoteMss      0x14 HashValue
    """

    Flags: int = 0
    RemotePort: int = 0
    LocalPort: int = 0
    SndWindScale: int = 0
    RcvWindScale: int = 0
    RemoteMss: int = 1460
    HashValue: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x18
    _FMT: ClassVar[str] = "<HHHBxHxxI"

    def validate(self) -> None:
        self._validate_header()
        _uint("Flags", self.Flags, 16)
        _uint("RemotePort", self.RemotePort, 16)
        _uint("LocalPort", self.LocalPort, 16)
        _uint("SndWindScale", self.SndWindScale, 4)
        _uint("RcvWindScale", self.RcvWindScale, 4)
        # RFC 7323 2.3: shift counts above 14 are illegal
        for name in ("SndWindScale", "RcvWindScale"):
            if getattr(self, name) > 14:
                raise StateValidationError(f"{name} > 14 (RFC 7323)")
        _uint("RemoteMss", self.RemoteMss, 16)
        _uint("HashValue", self.HashValue, 32)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        scales = (self.SndWindScale & 0xF) | ((self.RcvWindScale & 0xF) << 4)
        return _hdr(self.Header) + struct.pack(
            self._FMT, self.Flags, self.RemotePort, self.LocalPort, scales, self.RemoteMss,
            self.HashValue,
        )

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> TCP_OFFLOAD_STATE_CONST:
        flags, rport, lport, scales, mss, hv = struct.unpack_from(cls._FMT, buf, 8)
        return cls(flags, rport, lport, scales & 0xF, scales >> 4, mss, hv, Header=_unhdr(buf))


@dataclass
class TCP_OFFLOAD_STATE_CACHED(_StateStruct):
    """b.12 (size 0x2C)::

        0x08 Flags (USHORT)   0x14 KaProbeCount (UCHAR)  0x20 MaxRT         0x29 TosOrTrafficClass
        0x0C InitialRcvWnd    0x18 KaTimeout             0x24 FlowLabel:20  0x2A UserPriority:3
        0x10 RcvIndicationSize 0x1C KaInterval           0x28 TtlOrHopLimit
    """

    Flags: int = 0
    InitialRcvWnd: int = 65535
    RcvIndicationSize: int = 0
    KaProbeCount: int = 0
    KaTimeout: int = 0
    KaInterval: int = 0
    MaxRT: int = 0
    FlowLabel: int = 0
    TtlOrHopLimit: int = 64
    TosOrTrafficClass: int = 0
    UserPriority: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x2C
    _FMT: ClassVar[str] = "<HxxIIBxxxIIIIBBBx"

    def validate(self) -> None:
        self._validate_header()
        _uint("Flags", self.Flags, 16)
        for name in ("InitialRcvWnd", "RcvIndicationSize", "KaTimeout", "KaInterval", "MaxRT"):
            _uint(name, getattr(self, name), 32)
        _uint("KaProbeCount", self.KaProbeCount, 8)
        _uint("FlowLabel", self.FlowLabel, 20)
        _uint("TtlOrHopLimit", self.TtlOrHopLimit, 8)
        _uint("TosOrTrafficClass", self.TosOrTrafficClass, 8)
        _uint("UserPriority", self.UserPriority, 3)

    def _pack(self, ptrs: PointerTable, **kw: Any) -> bytes:
        return _hdr(self.Header) + struct.pack(
            self._FMT, self.Flags, self.InitialRcvWnd, self.RcvIndicationSize, self.KaProbeCount,
            self.KaTimeout, self.KaInterval, self.MaxRT, self.FlowLabel, self.TtlOrHopLimit,
            self.TosOrTrafficClass, self.UserPriority,
        )

    @classmethod
    def _unpack(cls, buf: bytes, ptrs: PointerTable | None, **kw: Any) -> TCP_OFFLOAD_STATE_CACHED:
        v = struct.unpack_from(cls._FMT, buf, 8)
        return cls(
            Flags=v[0], InitialRcvWnd=v[1], RcvIndicationSize=v[2], KaProbeCount=v[3],
            KaTimeout=v[4], KaInterval=v[5], MaxRT=v[6], FlowLabel=v[7] & 0xFFFFF,
            TtlOrHopLimit=v[8], TosOrTrafficClass=v[9], UserPriority=v[10] & 0x7,
            Header=_unhdr(buf),
        )


@dataclass(slots=True)
class KeepAliveState:
    """b.13 ``KeepAlive`` sub-structure (0x50 ProbeCount, 0x54 TimeoutDelta)."""

    ProbeCount: int = 0
    TimeoutDelta: int = TIMER_NOT_RUNNING


@dataclass(slots=True)
class RetransmitState:
    """b.13 ``Retransmit`` sub-structure (0x58 Count, 0x5C TimeoutDelta)."""

    Count: int = 0
    TimeoutDelta: int = TIMER_NOT_RUNNING


@dataclass(slots=True)
class TCP_OFFLOAD_STATE_DELEGATED(_StateStruct):
    """b.13 (x64 size 0x80)::

        0x00 Header           0x24 SndWnd      0x44 TsTime            0x58 Retransmit.Count
        0x08 State            0x28 MaxSndWnd   0x48 TotalRT           0x5C Retransmit.TimeoutDelta
        0x0C Flags (USHORT)   0x2C SendWL1     0x4C DupAckCount       0x60 SendDataHead | SendBacklogSize
        0x10 RcvNxt           0x30 CWnd        0x4D SndWndProbeCount  0x68 SendDataTail
        0x14 RcvWnd           0x34 SsThresh    0x50 KeepAlive.ProbeCount 0x70 BufferedData | ReceiveBacklogSize
        0x18 SndUna           0x38 SRtt (x8)   0x54 KeepAlive.TimeoutDelta 0x78 DWnd (NDIS >= 6.1)
        0x1C SndNxt           0x3A RttVar (x4)
        0x20 SndMax           0x3C TsRecent    0x40 TsRecentAge

    ``SendDataHead`` / ``SendDataTail`` / ``BufferedData`` hold NET_BUFFER_LIST objects (or
    None); ``SendBacklogSize`` / ``ReceiveBacklogSize`` are the query-only union arms.
    """

    State: int = TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionEstablished
    Flags: int = 0
    RcvNxt: int = 0
    RcvWnd: int = 0
    SndUna: int = 0
    SndNxt: int = 0
    SndMax: int = 0
    SndWnd: int = 0
    MaxSndWnd: int = 0
    SendWL1: int = 0
    CWnd: int = 0
    SsThresh: int = 0
    SRtt: int = 0
    RttVar: int = 0
    TsRecent: int = 0
    TsRecentAge: int = 0
    TsTime: int = 0
    TotalRT: int = 0
    DupAckCount: int = 0
    SndWndProbeCount: int = 0
    KeepAlive: KeepAliveState = field(default_factory=KeepAliveState)
    Retransmit: RetransmitState = field(default_factory=RetransmitState)
    SendDataHead: Any = None
    SendDataTail: Any = None
    BufferedData: Any = None
    SendBacklogSize: int | None = None
    ReceiveBacklogSize: int | None = None
    DWnd: int = 0
    Header: OFFLOAD_STATE_HEADER = _NO_HEADER

    SIZE: ClassVar[int] = 0x80
    _FMT: ClassVar[str] = "<IH2x8IIIHHIIIIBB2xB3xIB3xI16s8sI4x"

    def validate(self) -> None:
        self._validate_header()
        _enum("State", self.State, TCP_OFFLOAD_CONNECTION_STATE, 11)
        _uint("Flags", self.Flags, 16)
        for name in (
            "RcvNxt", "RcvWnd", "SndUna", "SndNxt", "SndMax", "SndWnd", "MaxSndWnd", "SendWL1",
            "CWnd", "SsThresh", "TsRecent", "TsRecentAge", "TsTime", "TotalRT", "DWnd",
        ):
            _uint(name, getattr(self, name), 32)
        _uint("SRtt", self.SRtt, 16)
        _uint("RttVar", self.RttVar, 16)
        _uint("DupAckCount", self.DupAckCount, 8)
        _uint("SndWndProbeCount", self.SndWndProbeCount, 8)
        _uint("KeepAlive.ProbeCount", self.KeepAlive.ProbeCount, 8)
        _uint("KeepAlive.TimeoutDelta", self.KeepAlive.TimeoutDelta, 32)
        _uint("Retransmit.Count", self.Retransmit.Count, 8)
        _uint("Retransmit.TimeoutDelta", self.Retransmit.TimeoutDelta, 32)
        if self.SendBacklogSize is not None:
            _uint("SendBacklogSize", self.SendBacklogSize, 32)
        if self.ReceiveBacklogSize is not None:
            _uint("ReceiveBacklogSize", self.ReceiveBacklogSize, 32)

    def _pack(self, ptrs: PointerTable, *, query: bool = False, **kw: Any) -> bytes:
        if query:
            send_union = struct.pack("<I12x", self.SendBacklogSize or 0)
            recv_union = struct.pack("<I4x", self.ReceiveBacklogSize or 0)
        else:
            send_union = struct.pack("<QQ", ptrs.ref(self.SendDataHead), ptrs.ref(self.SendDataTail))
            recv_union = struct.pack("<Q", ptrs.ref(self.BufferedData))
        return _hdr(self.Header) + struct.pack(
            self._FMT, int(self.State), self.Flags, self.RcvNxt, self.RcvWnd, self.SndUna,
            self.SndNxt, self.SndMax, self.SndWnd, self.MaxSndWnd, self.SendWL1, self.CWnd,
            self.SsThresh, self.SRtt, self.RttVar, self.TsRecent, self.TsRecentAge, self.TsTime,
            self.TotalRT, self.DupAckCount, self.SndWndProbeCount, self.KeepAlive.ProbeCount,
            self.KeepAlive.TimeoutDelta, self.Retransmit.Count, self.Retransmit.TimeoutDelta,
            send_union, recv_union, self.DWnd,
        )

    @classmethod
    def _unpack(
        cls, buf: bytes, ptrs: PointerTable | None, *, query: bool = False, **kw: Any
    ) -> TCP_OFFLOAD_STATE_DELEGATED:
        v = struct.unpack_from(cls._FMT, buf, 8)
        try:
            state: int = TCP_OFFLOAD_CONNECTION_STATE(v[0])
        except ValueError:
            state = v[0]
        obj = cls(
            State=state, Flags=v[1], RcvNxt=v[2], RcvWnd=v[3], SndUna=v[4], SndNxt=v[5],
            SndMax=v[6], SndWnd=v[7], MaxSndWnd=v[8], SendWL1=v[9], CWnd=v[10], SsThresh=v[11],
            SRtt=v[12], RttVar=v[13], TsRecent=v[14], TsRecentAge=v[15], TsTime=v[16],
            TotalRT=v[17], DupAckCount=v[18], SndWndProbeCount=v[19],
            KeepAlive=KeepAliveState(v[20], v[21]), Retransmit=RetransmitState(v[22], v[23]),
            DWnd=v[26], Header=_unhdr(buf),
        )
        send_union, recv_union = v[24], v[25]
        if query:
            obj.SendBacklogSize = struct.unpack_from("<I", send_union)[0]
            obj.ReceiveBacklogSize = struct.unpack_from("<I", recv_union)[0]
        else:
            head, tail = struct.unpack("<QQ", send_union)
            (buffered,) = struct.unpack("<Q", recv_union)
            res = ptrs.deref if ptrs is not None else (lambda a: a or None)
            obj.SendDataHead, obj.SendDataTail, obj.BufferedData = res(head), res(tail), res(buffered)
        return obj


assert struct.calcsize(TCP_OFFLOAD_STATE_DELEGATED._FMT) + 8 == 0x80
assert struct.calcsize(TCP_OFFLOAD_STATE_CACHED._FMT) + 8 == 0x2C
assert struct.calcsize(TCP_OFFLOAD_STATE_CONST._FMT) + 8 == 0x18


# ---------------------------------------------------------------------------------------------
# Full states (Type NeighborOffloadState / Ip4OffloadState / Ip6OffloadState / TcpOffloadState):
# CONST, CACHED, DELEGATED in that order (b.10).  Each structure starts 8-byte aligned [I].


class _FullState:
    LAYER: ClassVar[OffloadLayer]
    PARTS: ClassVar[tuple[type[_StateStruct], type[_StateStruct], type[_StateStruct]]]
    Const: Any
    Cached: Any
    Delegated: Any

    @property
    def Type(self) -> OFFLOAD_STATE_TYPE:  # noqa: N802 - documented name
        raise NotImplementedError

    def validate(self) -> None:
        self.Const.validate()
        self.Cached.validate()
        self.Delegated.validate()

    def encode(self, ptrs: PointerTable | None = None, **kw: Any) -> bytes:
        ptrs = ptrs if ptrs is not None else PointerTable()
        out = b""
        for part in (self.Const, self.Cached, self.Delegated):
            out += bytes(_align8(len(out)) - len(out))
            out += part.encode(ptrs, **kw)
        return out

    @classmethod
    def decode(cls, buf: bytes, ptrs: PointerTable | None = None, **kw: Any) -> Any:
        off = 0
        parts = []
        for part_cls in cls.PARTS:
            off = _align8(off)
            parts.append(part_cls.decode(buf[off:], ptrs, **kw))
            off += part_cls.SIZE
        return cls(*parts)


@dataclass
class NeighborOffloadState(_FullState):
    """Neighbor CONST + CACHED + DELEGATED (Type NeighborOffloadState, 4)."""

    Const: NEIGHBOR_OFFLOAD_STATE_CONST = field(default_factory=NEIGHBOR_OFFLOAD_STATE_CONST)
    Cached: NEIGHBOR_OFFLOAD_STATE_CACHED = field(default_factory=NEIGHBOR_OFFLOAD_STATE_CACHED)
    Delegated: NEIGHBOR_OFFLOAD_STATE_DELEGATED = field(
        default_factory=NEIGHBOR_OFFLOAD_STATE_DELEGATED
    )

    LAYER: ClassVar[OffloadLayer] = OffloadLayer.NEIGHBOR
    PARTS: ClassVar[tuple] = (
        NEIGHBOR_OFFLOAD_STATE_CONST, NEIGHBOR_OFFLOAD_STATE_CACHED,
        NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    )

    @property
    def Type(self) -> OFFLOAD_STATE_TYPE:  # noqa: N802
        return OFFLOAD_STATE_TYPE.NeighborOffloadState


@dataclass
class PathOffloadState(_FullState):
    """Path CONST + CACHED + DELEGATED (Type Ip4OffloadState 8 or Ip6OffloadState 12)."""

    Const: PATH_OFFLOAD_STATE_CONST = field(
        default_factory=lambda: PATH_OFFLOAD_STATE_CONST(bytes(4), bytes(4))
    )
    Cached: PATH_OFFLOAD_STATE_CACHED = field(default_factory=PATH_OFFLOAD_STATE_CACHED)
    Delegated: PATH_OFFLOAD_STATE_DELEGATED = field(default_factory=PATH_OFFLOAD_STATE_DELEGATED)

    LAYER: ClassVar[OffloadLayer] = OffloadLayer.PATH
    PARTS: ClassVar[tuple] = (
        PATH_OFFLOAD_STATE_CONST, PATH_OFFLOAD_STATE_CACHED, PATH_OFFLOAD_STATE_DELEGATED,
    )

    @property
    def Type(self) -> OFFLOAD_STATE_TYPE:  # noqa: N802
        if self.Const.is_ipv6:
            return OFFLOAD_STATE_TYPE.Ip6OffloadState
        return OFFLOAD_STATE_TYPE.Ip4OffloadState


@dataclass
class TcpOffloadState(_FullState):
    """TCP CONST + CACHED + DELEGATED (Type TcpOffloadState, 17)."""

    Const: TCP_OFFLOAD_STATE_CONST = field(default_factory=TCP_OFFLOAD_STATE_CONST)
    Cached: TCP_OFFLOAD_STATE_CACHED = field(default_factory=TCP_OFFLOAD_STATE_CACHED)
    Delegated: TCP_OFFLOAD_STATE_DELEGATED = field(default_factory=TCP_OFFLOAD_STATE_DELEGATED)

    LAYER: ClassVar[OffloadLayer] = OffloadLayer.TCP
    PARTS: ClassVar[tuple] = (
        TCP_OFFLOAD_STATE_CONST, TCP_OFFLOAD_STATE_CACHED, TCP_OFFLOAD_STATE_DELEGATED,
    )

    @property
    def Type(self) -> OFFLOAD_STATE_TYPE:  # noqa: N802
        return OFFLOAD_STATE_TYPE.TcpOffloadState


# Header.Type for a single structure (b.10).
_SINGLE_TYPE: dict[type, OFFLOAD_STATE_TYPE] = {
    NEIGHBOR_OFFLOAD_STATE_CONST: OFFLOAD_STATE_TYPE.NeighborOffloadConstState,
    NEIGHBOR_OFFLOAD_STATE_CACHED: OFFLOAD_STATE_TYPE.NeighborOffloadCachedState,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED: OFFLOAD_STATE_TYPE.NeighborOffloadDelegatedState,
    PATH_OFFLOAD_STATE_CONST: OFFLOAD_STATE_TYPE.Ip4OffloadConstState,
    PATH_OFFLOAD_STATE_CACHED: OFFLOAD_STATE_TYPE.Ip4OffloadCachedState,
    PATH_OFFLOAD_STATE_DELEGATED: OFFLOAD_STATE_TYPE.Ip4OffloadDelegatedState,
    TCP_OFFLOAD_STATE_CONST: OFFLOAD_STATE_TYPE.TcpOffloadConstState,
    TCP_OFFLOAD_STATE_CACHED: OFFLOAD_STATE_TYPE.TcpOffloadCachedState,
    TCP_OFFLOAD_STATE_DELEGATED: OFFLOAD_STATE_TYPE.TcpOffloadDelegatedState,
}


def state_type(state: Any, *, ipv6: bool = False) -> OFFLOAD_STATE_TYPE | None:
    """b.10: the Header.Type value for the structure(s) ``state``."""
    if isinstance(state, _FullState):
        return state.Type
    t = _SINGLE_TYPE.get(type(state))
    if t is not None and ipv6 and 5 <= t <= 8:
        t = OFFLOAD_STATE_TYPE(t + 4)
    return t


def state_layer(state: Any) -> OffloadLayer | None:
    t = state_type(state)
    return layer_of_type(t) if t is not None else None


def state_fields(obj: Any) -> dict[str, Any]:
    """Field name -> value of a state dataclass (Header excluded), for rendering."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name != "Header"}


# ---------------------------------------------------------------------------------------------
# b.16 Capabilities and parameters


@dataclass(slots=True, frozen=True)
class NDIS_OBJECT_HEADER:
    """Type (UCHAR), Revision (UCHAR), Size (USHORT).  A value (immutable: equal headers may be
    one shared instance, as every block list of a type shares one; assign a new header to
    change it)."""

    Type: int = 0
    Revision: int = 1
    Size: int = 0

    def __copy__(self) -> NDIS_OBJECT_HEADER:
        return self  # a value: copies may share it

    def __deepcopy__(self, memo: dict[int, Any]) -> NDIS_OBJECT_HEADER:
        return self


NDIS_OBJECT_TYPE_DEFAULT = 0x80
NDIS_ENCAPSULATION_IEEE_802_3 = 0x02
NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED = 0x10
NDIS_OFFLOAD_NOT_SUPPORTED = 0
NDIS_OFFLOAD_SUPPORTED = 1


@dataclass
class NDIS_TCP_CONNECTION_OFFLOAD:
    """b.16 (size 0x14): capabilities a chimney target reports (adapter attributes) and NDIS
    passes to protocols at bind (``NDIS_BIND_PARAMETERS.TcpConnectionOffloadCapabilities``)."""

    Encapsulation: int = NDIS_ENCAPSULATION_IEEE_802_3
    SupportIPv4: int = NDIS_OFFLOAD_SUPPORTED
    SupportIPv6: int = NDIS_OFFLOAD_NOT_SUPPORTED
    SupportIPv6ExtensionHeaders: int = NDIS_OFFLOAD_NOT_SUPPORTED
    SupportSack: int = NDIS_OFFLOAD_NOT_SUPPORTED
    CongestionAlgorithm: int = 0
    TcpConnectionOffloadCapacity: int = 0
    Flags: int = 0
    Header: NDIS_OBJECT_HEADER = field(
        default_factory=lambda: NDIS_OBJECT_HEADER(NDIS_OBJECT_TYPE_DEFAULT, 1, 0x14)
    )

    SIZE: ClassVar[int] = 0x14

    def validate(self) -> None:
        _uint("Encapsulation", self.Encapsulation, 32)
        for name in ("SupportIPv4", "SupportIPv6", "SupportIPv6ExtensionHeaders", "SupportSack"):
            _uint(name, getattr(self, name), 2)
        _uint("CongestionAlgorithm", self.CongestionAlgorithm, 4)
        _uint("TcpConnectionOffloadCapacity", self.TcpConnectionOffloadCapacity, 32)
        _uint("Flags", self.Flags, 32)
        if not self.Encapsulation & (
            NDIS_ENCAPSULATION_IEEE_802_3 | NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED
        ):
            raise StateValidationError("Encapsulation must include 802.3 or LLC/SNAP (b.16)")
        if not (self.SupportIPv4 or self.SupportIPv6):
            raise StateValidationError("must support IPv4 or IPv6 (b.16)")

    def encode(self) -> bytes:
        self.validate()
        bits = (
            self.SupportIPv4
            | self.SupportIPv6 << 2
            | self.SupportIPv6ExtensionHeaders << 4
            | self.SupportSack << 6
            | self.CongestionAlgorithm << 8
        )
        return struct.pack(
            "<BBHIIII", self.Header.Type, self.Header.Revision, self.Header.Size,
            self.Encapsulation, bits, self.TcpConnectionOffloadCapacity, self.Flags,
        )

    @classmethod
    def decode(cls, buf: bytes) -> NDIS_TCP_CONNECTION_OFFLOAD:
        t, r, s, enc, bits, cap, flags = struct.unpack_from("<BBHIIII", buf, 0)
        return cls(
            Encapsulation=enc, SupportIPv4=bits & 3, SupportIPv6=(bits >> 2) & 3,
            SupportIPv6ExtensionHeaders=(bits >> 4) & 3, SupportSack=(bits >> 6) & 3,
            CongestionAlgorithm=(bits >> 8) & 0xF, TcpConnectionOffloadCapacity=cap, Flags=flags,
            Header=NDIS_OBJECT_HEADER(t, r, s),
        )


@dataclass
class NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS:
    """b.16: what the host sets with OID_TCP_CONNECTION_OFFLOAD_PARAMETERS (no byte layout)."""

    TicksPerSecond: int = 1000
    TcpAckFrequency: int = 2
    TcpDelayedAckTicks: int = 200
    TcpMaximumRetransmissions: int = 5
    TcpDoubtReachabilityRetransmissions: int = 3
    TcpSwsPreventionTicks: int = 1000
    TcpDuplicateAckThreshold: int = 3
    TcpPushTicks: int = 500
    NceStaleTicks: int = 30000
    CongestionAlgorithm: int = 0

    def validate(self) -> None:
        if self.TicksPerSecond not in (10, 100, 1000):
            raise StateValidationError("TicksPerSecond must be 10, 100 or 1000 (b.16)")
        for name in (
            "TcpAckFrequency", "TcpDelayedAckTicks", "TcpMaximumRetransmissions",
            "TcpDoubtReachabilityRetransmissions",
        ):
            _uint(name, getattr(self, name), 8)
        for name in ("TcpSwsPreventionTicks", "TcpDuplicateAckThreshold", "TcpPushTicks",
                     "NceStaleTicks", "CongestionAlgorithm"):
            _uint(name, getattr(self, name), 32)


OID_TCP_CONNECTION_OFFLOAD_PARAMETERS = 0xFC030201
OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG = 0xFC01020E
OID_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020F
OID_PNP_SET_POWER = 0xFD010101  # d.9


class NDIS_DEVICE_POWER_STATE(enum.IntEnum):
    """The device power states of OID_PNP_SET_POWER (d.9)."""

    NdisDeviceStateUnspecified = 0
    NdisDeviceStateD0 = 1
    NdisDeviceStateD1 = 2
    NdisDeviceStateD2 = 3
    NdisDeviceStateD3 = 4


OID_TCP4_OFFLOAD_STATS = 0xFC010207
OID_TCP6_OFFLOAD_STATS = 0xFC010208
OID_IP4_OFFLOAD_STATS = 0xFC010209
OID_IP6_OFFLOAD_STATS = 0xFC01020A
STATISTICS_OIDS = frozenset({OID_TCP4_OFFLOAD_STATS, OID_TCP6_OFFLOAD_STATS,
                             OID_IP4_OFFLOAD_STATS, OID_IP6_OFFLOAD_STATS})


# ---------------------------------------------------------------------------------------------
# b.17 Statistics structures (T.10): offloaded traffic only, per interface and IP version; the
# counters wrap at their field width; a set of the OID resets them to zero.

class _Statistics:
    """b.17 counters: little-endian, each wrapping at its field width (``_WIDTHS`` bits)."""

    _FMT: ClassVar[str]
    _WIDTHS: ClassVar[tuple[int, ...]]

    def wrapped(self) -> None:
        """Each counter reduced to its field width (b.17: the counters wrap)."""
        for f, w in zip(fields(self), self._WIDTHS, strict=True):  # type: ignore[arg-type]
            setattr(self, f.name, getattr(self, f.name) & ((1 << w) - 1))

    def encode(self) -> bytes:
        self.wrapped()
        return struct.pack(self._FMT, *(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def decode(cls, buf: bytes) -> Any:
        return cls(*struct.unpack_from(cls._FMT, buf, 0))


@dataclass
class TCP_OFFLOAD_STATS(_Statistics):
    """b.17 (OID_TCP4_OFFLOAD_STATS / OID_TCP6_OFFLOAD_STATS), 40 bytes with its padding."""

    InSegments: int = 0  # ULONG64
    OutSegments: int = 0  # ULONG64, excluding pure retransmissions
    CurrentlyEstablished: int = 0  # ULONG: ESTABLISHED + CLOSE-WAIT now
    ResetEstablished: int = 0  # ULONG: ESTABLISHED / CLOSE-WAIT -> CLOSED directly
    RetransmittedSegments: int = 0  # ULONG
    InErrors: int = 0  # ULONG
    OutResets: int = 0  # ULONG: segments sent with RST

    SIZE: ClassVar[int] = 40
    _FMT: ClassVar[str] = "<QQIIIII4x"
    _WIDTHS: ClassVar[tuple[int, ...]] = (64, 64, 32, 32, 32, 32, 32)


@dataclass
class IP_OFFLOAD_STATS(_Statistics):
    """b.17 (OID_IP4_OFFLOAD_STATS / OID_IP6_OFFLOAD_STATS), 64 bytes with its padding.  Octets
    include the IP header."""

    InReceives: int = 0  # ULONG64
    InOctets: int = 0  # ULONG64
    InDelivers: int = 0  # ULONG64
    OutRequests: int = 0  # ULONG64
    OutOctets: int = 0  # ULONG64
    InHeaderErrors: int = 0  # ULONG
    InTruncatedPackets: int = 0  # ULONG
    InDiscards: int = 0  # ULONG
    OutDiscards: int = 0  # ULONG
    OutNoRoutes: int = 0  # ULONG

    SIZE: ClassVar[int] = 64
    _FMT: ClassVar[str] = "<QQQQQIIIII4x"
    _WIDTHS: ClassVar[tuple[int, ...]] = (64, 64, 64, 64, 64, 32, 32, 32, 32, 32)
