"""Pure-Python twin of ``offload_target._ctable`` (same public API, same handle values).

The topmost comment of ``_ctable.c`` explains the data structure.  This twin is the reference
the C table is tested against (tests/offload_target: one test class runs against both, and a
hypothesis state machine drives both side by side with a dict model) and the fallback where
the extension is not built.  It follows the C code where that is observable -- which slot a
connection gets (a LIFO free list, slot 0 first), generations (start at 1, bumped on remove,
skipping 0), field names, types, ranges and defaults, argument checks and the order in which
they are made, and which exception each error raises -- and uses a dict where the C code
uses its open-addressing index, which is the natural Python way to hold the table and a fair
baseline for ``vnic bench table``.  ``hash_key`` is the C hash function, for tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from types import MappingProxyType

__all__ = [
    "FIELDS",
    "FIELD_MAX",
    "MAX_CAPACITY",
    "SLOT_SIZE",
    "TIMER_STOPPED",
    "ConnectionTable",
    "DuplicateConnectionError",
    "StaleHandleError",
    "TableError",
    "TableFullError",
    "hash_key",
]

SLOT_SIZE = 200                  # sizeof(ct_slot) in _ctable.c
MAX_CAPACITY = 1 << 24
TIMER_STOPPED = (1 << 64) - 1    # a timer deadline that never comes
_DELTA_STOPPED = 0xFFFFFFFF      # NDIS "(ULONG)-1 = timer not running"

_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1

# (name, largest value, value of a freshly inserted connection), in get_state() order.
# The names of the chimney state follow TCP_OFFLOAD_STATE_DELEGATED / _CONST / _CACHED
# (the three Flags fields are told apart as DelegatedFlags / ConstFlags / CachedFlags).
_FIELD_SPEC: tuple[tuple[str, int, int], ...] = (
    # TCP_OFFLOAD_STATE_DELEGATED
    ("State", _U32, 0), ("DelegatedFlags", _U16, 0), ("RcvNxt", _U32, 0),
    ("RcvWnd", _U32, 0), ("SndUna", _U32, 0), ("SndNxt", _U32, 0), ("SndMax", _U32, 0),
    ("SndWnd", _U32, 0), ("MaxSndWnd", _U32, 0), ("SendWL1", _U32, 0), ("CWnd", _U32, 0),
    ("SsThresh", _U32, 0), ("SRtt", _U16, 0), ("RttVar", _U16, 0), ("TsRecent", _U32, 0),
    ("TsRecentAge", _U32, 0), ("TsTime", _U32, 0), ("TotalRT", _U32, 0),
    ("DupAckCount", _U8, 0), ("SndWndProbeCount", _U8, 0), ("KeepAliveProbeCount", _U8, 0),
    ("KeepAliveTimeoutDelta", _U32, _DELTA_STOPPED), ("RetransmitCount", _U8, 0),
    ("RetransmitTimeoutDelta", _U32, _DELTA_STOPPED), ("DWnd", _U32, 0),
    # TCP_OFFLOAD_STATE_CONST (the ports are part of the key)
    ("ConstFlags", _U16, 0), ("RemoteMss", _U16, 0), ("SndWindScale", 15, 0),
    ("RcvWindScale", 15, 0), ("HashValue", _U32, 0),
    # TCP_OFFLOAD_STATE_CACHED (FlowLabel is IPv6-only and not kept)
    ("CachedFlags", _U16, 0), ("InitialRcvWnd", _U32, 0), ("RcvIndicationSize", _U32, 0),
    ("KaProbeCount", _U8, 0), ("KaTimeout", _U32, 0), ("KaInterval", _U32, 0),
    ("MaxRT", _U32, 0), ("TtlOrHopLimit", _U8, 0), ("TosOrTrafficClass", _U8, 0),
    ("UserPriority", 7, 0),
    # links to the target's neighbor and path objects, and the target's own context
    ("path_id", _U32, 0), ("neighbor_id", _U32, 0), ("context", _U64, 0),
    # timer deadlines, absolute ticks
    ("retransmit_deadline", _U64, TIMER_STOPPED), ("persist_deadline", _U64, TIMER_STOPPED),
    ("keepalive_deadline", _U64, TIMER_STOPPED), ("delayed_ack_deadline", _U64, TIMER_STOPPED),
    ("fin_wait_2_deadline", _U64, TIMER_STOPPED),
    # data buffers: offsets into a future buffer arena, 0 = none (place kept, unused so far)
    ("send_buffer_offset", _U32, 0), ("receive_buffer_offset", _U32, 0),
)

FIELDS: tuple[str, ...] = tuple(name for name, _, _ in _FIELD_SPEC)
FIELD_MAX: MappingProxyType[str, int] = MappingProxyType({n: m for n, m, _ in _FIELD_SPEC})
_FIELD_POS: dict[str, int] = {name: i for i, name in enumerate(FIELDS)}
_MAXES: tuple[int, ...] = tuple(m for _, m, _ in _FIELD_SPEC)
_DEFAULTS: tuple[int, ...] = tuple(d for _, _, d in _FIELD_SPEC)

_int_value = int.__index__      # the value of an int (or int subclass), like PyLong_AsLong


class TableError(Exception):
    """Base class of the connection table's errors."""


class TableFullError(TableError):
    """Every slot is in use (the offload request fails with NDIS_STATUS_RESOURCES)."""


class DuplicateConnectionError(TableError, KeyError):
    """The 4-tuple is already in the table."""


class StaleHandleError(TableError, LookupError):
    """The handle names no connection: removed since (stale) or never issued."""


Key = tuple[bytes, int, bytes, int]


# --------------------------------------------------------------------------- hashing


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _U64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _U64
    k ^= k >> 33
    return k


def hash_key(local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int,
             seed: int = 0) -> int:
    """The 32-bit key hash of ``_ctable.c``: fmix64(fmix64(a ^ seed) ^ b) truncated, with
    a = local_ip << 32 | remote_ip (big-endian integers), b = local_port << 16 | remote_port.
    The home bucket of a key is ``hash_key(...) & (index_size - 1)``."""
    a = int.from_bytes(local_ip, "big") << 32 | int.from_bytes(remote_ip, "big")
    b = local_port << 16 | remote_port
    return _fmix64(_fmix64(a ^ seed) ^ b) & 0xFFFFFFFF


# ------------------------------------------------------------------ argument parsing


def _parse_ip(o: object, what: str) -> bytes:
    if type(o) is bytes:
        if len(o) != 4:
            raise ValueError(f"{what} must be 4 bytes (an IPv4 address), got {len(o)}")
        return o
    try:
        view = memoryview(o)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object of length 4, "
                        f"not {type(o).__name__}") from None
    with view:
        if not view.c_contiguous:
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        if view.nbytes != 4:
            raise ValueError(f"{what} must be 4 bytes (an IPv4 address), got {view.nbytes}")
        return view.tobytes()


def _parse_port(o: object, what: str) -> int:
    if not isinstance(o, int):
        raise TypeError(f"{what} must be an int, not {type(o).__name__}")
    v = _int_value(o)
    if not 0 <= v <= 0xFFFF:
        raise ValueError(f"{what} must be in 0..65535, got {o!r}")
    return v


def _parse_key(local_ip: object, local_port: object, remote_ip: object,
               remote_port: object) -> Key:
    return (_parse_ip(local_ip, "local_ip"), _parse_port(local_port, "local_port"),
            _parse_ip(remote_ip, "remote_ip"), _parse_port(remote_port, "remote_port"))


def _frame_key(buf: bytes | memoryview, off: int) -> Key | None:
    """parse_frame() of _ctable.c: the (local = destination, remote = source) key of a
    well-formed, unfragmented IPv4/TCP frame whose IPv4 header starts at ``off``, else None."""
    n = len(buf)
    if off > n or n - off < 20:
        return None
    if off >= 2 and (buf[off - 2] != 0x08 or buf[off - 1] != 0x00):
        return None
    vihl = buf[off]
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) * 4
    if ihl < 20 or ihl > n - off:
        return None
    total = buf[off + 2] << 8 | buf[off + 3]
    if total < ihl + 20 or total > n - off:
        return None
    if (buf[off + 6] & 0x3F) << 8 | buf[off + 7]:
        return None                     # a fragment: the slow path reassembles
    if buf[off + 9] != 6:
        return None
    s = 0
    for i in range(off, off + ihl, 2):
        s += buf[i] << 8 | buf[i + 1]
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    if s != 0xFFFF:
        return None
    t = off + ihl
    doff = (buf[t + 12] >> 4) * 4
    if doff < 20 or doff > total - ihl:
        return None
    return (bytes(buf[off + 16:off + 20]), buf[t + 2] << 8 | buf[t + 3],
            bytes(buf[off + 12:off + 16]), buf[t] << 8 | buf[t + 1])


def _parse_offset(o: object) -> int | None:
    """offset_of_ipv4_header: an int >= 0; None when it is past any buffer."""
    if not isinstance(o, int):
        raise TypeError(f"offset_of_ipv4_header must be an int, not {type(o).__name__}")
    v = _int_value(o)
    if v < 0:
        raise ValueError(f"offset_of_ipv4_header must be >= 0, got {o!r}")
    return v if v <= sys.maxsize else None


def _byte_view(view: memoryview) -> memoryview:
    """A flat byte view, as PyObject_GetBuffer(PyBUF_SIMPLE) gives the C code."""
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ---------------------------------------------------------------------------- table


class ConnectionTable:
    """Fixed-capacity table of offloaded TCP connections (pure-Python twin of the C type).

    4-tuple -> slot holding the TCP delegated state, copies of the const and cached state,
    neighbor/path links, the target's context, timer deadlines and buffer offsets (FIELDS).
    Handles are ``generation << 32 | slot``.
    """

    __slots__ = ("_capacity", "_hash_seed", "_index", "_keys", "_gens", "_state", "_free")

    slot_size = SLOT_SIZE

    def __init__(self, capacity: int, *, hash_seed: int = 0) -> None:
        if not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if not 0 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 0..{MAX_CAPACITY}, got {capacity!r}")
        if not isinstance(hash_seed, int):
            raise TypeError(f"hash_seed must be an int, not {type(hash_seed).__name__}")
        if not 0 <= hash_seed <= _U64:
            raise ValueError(f"hash_seed must be in 0..2**64-1, got {hash_seed!r}")
        cap = self._capacity = _int_value(capacity)
        self._hash_seed = _int_value(hash_seed)
        self._index: dict[Key, int] = {}                # key -> handle
        self._keys: list[Key | None] = [None] * cap
        self._gens: list[int] = [0] * cap              # 0 = never used
        self._state: list[list[int] | None] = [None] * cap
        self._free: list[int] = list(range(cap - 1, -1, -1))   # pop() -> slot 0 first

    # -- properties and dunder methods

    @property
    def capacity(self) -> int:
        """Fixed number of slots (the advertised TcpConnectionOffloadCapacity)."""
        return self._capacity

    @property
    def hash_seed(self) -> int:
        return self._hash_seed

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"<ConnectionTable capacity={self._capacity} len={len(self._index)}>"

    # -- handles

    def _resolve(self, handle: object) -> int | None:
        if not isinstance(handle, int):
            raise TypeError(f"a connection handle is an int, not {type(handle).__name__}")
        h = _int_value(handle)
        if not 0 <= h <= _U64:
            return None
        idx = h & 0xFFFFFFFF
        if idx >= self._capacity or self._keys[idx] is None or self._gens[idx] != h >> 32:
            return None
        return idx

    def _require(self, handle: object) -> int:
        idx = self._resolve(handle)
        if idx is None:
            raise StaleHandleError(f"stale or invalid connection handle {handle!r}")
        return idx

    # -- the public API

    def insert(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int,
               /) -> int:
        """Add a connection; return its handle (see the C docstring for the errors)."""
        key = _parse_key(local_ip, local_port, remote_ip, remote_port)
        if key in self._index:
            raise DuplicateConnectionError((local_ip, local_port, remote_ip, remote_port))
        if not self._free:
            raise TableFullError(f"connection table full (capacity {self._capacity})")
        idx = self._free.pop()
        gen = self._gens[idx] or 1
        self._gens[idx] = gen
        self._keys[idx] = key
        self._state[idx] = list(_DEFAULTS)
        handle = gen << 32 | idx
        self._index[key] = handle
        return handle

    def lookup(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int,
               /) -> int | None:
        """Handle of the connection with this 4-tuple, or None."""
        if not (type(local_ip) is bytes and len(local_ip) == 4
                and type(remote_ip) is bytes and len(remote_ip) == 4
                and type(local_port) is int and 0 <= local_port <= 0xFFFF
                and type(remote_port) is int and 0 <= remote_port <= 0xFFFF):
            return self._index.get(_parse_key(local_ip, local_port, remote_ip, remote_port))
        return self._index.get((local_ip, local_port, remote_ip, remote_port))

    def lookup_frame(self, frame: bytes | bytearray | memoryview, /,
                     offset_of_ipv4_header: int = 14) -> int | None:
        """Classify a received frame: the handle of its connection, or None."""
        if type(frame) is bytes:
            off = _parse_offset(offset_of_ipv4_header)
            key = _frame_key(frame, off) if off is not None else None
        else:
            view = memoryview(frame)        # TypeError unless bytes-like, like the C code
            off = _parse_offset(offset_of_ipv4_header)
            key = _frame_key(_byte_view(view), off) if off is not None else None
        if key is None:
            return None
        return self._index.get(key)

    def lookup_frames(self, frames: Iterable[bytes | bytearray | memoryview], /,
                      offset_of_ipv4_header: int = 14) -> list[int | None]:
        """lookup_frame() over a burst of received frames: a handle or None per frame."""
        off = _parse_offset(offset_of_ipv4_header)
        result: list[int | None] = []
        get = self._index.get
        for frame in frames:
            buf = frame if type(frame) is bytes else _byte_view(memoryview(frame))
            key = _frame_key(buf, off) if off is not None else None
            result.append(None if key is None else get(key))
        return result

    def remove(self, handle: int, /) -> None:
        """Remove a connection; its handle and every copy of it become stale."""
        idx = self._require(handle)
        del self._index[self._keys[idx]]  # type: ignore[arg-type]
        self._keys[idx] = None
        self._state[idx] = None
        self._gens[idx] = (self._gens[idx] + 1) & 0xFFFFFFFF or 1
        self._free.append(idx)

    def is_valid(self, handle: int, /) -> bool:
        """True if the handle names a connection in the table."""
        return self._resolve(handle) is not None

    def get_key(self, handle: int, /) -> Key:
        """(local_ip, local_port, remote_ip, remote_port) of a connection."""
        return self._keys[self._require(handle)]  # type: ignore[return-value]

    def get_state(self, handle: int, /) -> dict[str, int]:
        """Dict of every per-connection field, in FIELDS order."""
        return dict(zip(FIELDS, self._state[self._require(handle)], strict=True))  # type: ignore[arg-type]

    def get_field(self, handle: int, name: str, /) -> int:
        """One field of a connection."""
        self._require(handle)
        pos = _field_pos(name)
        # The name lookup may run a str subclass's __eq__ (which could remove the connection):
        # resolve the handle again, as the C code does.
        return self._state[self._require(handle)][pos]  # type: ignore[index]

    def set_fields(self, handle: int, /, **fields: int) -> None:
        """Store fields of a connection, all or nothing (KeyError / TypeError / OverflowError)."""
        self._require(handle)
        updates = []
        for name, value in fields.items():
            pos = _field_pos(name)
            if not isinstance(value, int):
                raise TypeError(f"field {name} must be an int, not {type(value).__name__}")
            v = _int_value(value)
            if not 0 <= v <= _MAXES[pos]:
                raise OverflowError(f"field {name} must be in 0..{_MAXES[pos]}, got {value!r}")
            updates.append((pos, v))
        state = self._state[self._require(handle)]      # again: see get_field()
        for pos, v in updates:
            state[pos] = v  # type: ignore[index]

    def handles(self, /) -> Iterator[int]:
        """Iterator over the handles in the table, in slot order (a snapshot)."""
        gens = self._gens
        return iter([gens[i] << 32 | i for i, k in enumerate(self._keys) if k is not None])

    def clear(self, /) -> None:
        """Remove every connection (every handle becomes stale)."""
        for i, k in enumerate(self._keys):
            if k is not None:
                self._gens[i] = (self._gens[i] + 1) & 0xFFFFFFFF or 1
                self._keys[i] = None
                self._state[i] = None
        self._index.clear()
        self._free = list(range(self._capacity - 1, -1, -1))

    def memory_bytes(self, /) -> int:
        """Approximate bytes held by this table's Python objects (containers, keys, states)."""
        size = sys.getsizeof(self)
        for container in (self._index, self._keys, self._gens, self._state, self._free):
            size += sys.getsizeof(container)
        for key in self._keys:
            if key is not None:
                size += sys.getsizeof(key) + sys.getsizeof(key[0]) + sys.getsizeof(key[2])
        for state in self._state:
            if state is not None:
                size += sys.getsizeof(state) + sum(sys.getsizeof(v) for v in state if v > 256)
        for handle in self._index.values():
            size += sys.getsizeof(handle)
        return size


def _field_pos(name: object) -> int:
    if not isinstance(name, str):
        raise TypeError(f"a field name is a str, not {type(name).__name__}")
    pos = _FIELD_POS.get(name)
    if pos is None:
        raise KeyError(f"unknown connection field {name!r} (the fields are listed in FIELDS)")
    return pos
