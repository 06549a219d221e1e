"""Deterministic test payload shared by the kernel peer agent and the host side.

The stream for ``seed`` is a sequence of 64 KiB units; unit ``j`` is the 8-byte big-endian index
``j`` followed by a 65528-byte block derived from the seed (a SHA-256 chain). The index makes the
stream aperiodic (a segment delivered at the wrong 64 KiB offset changes the digest), the fixed
block keeps generation at memory speed. Both ends compute the same SHA-256 incrementally.
"""

from __future__ import annotations

import functools
import hashlib
import struct

UNIT = 65536
_INDEX = struct.Struct(">Q")
_BLOCK_LEN = UNIT - _INDEX.size


@functools.lru_cache(maxsize=64)
def _block(seed: int) -> bytes:
    h = hashlib.sha256(b"vnic-payload:%d" % seed).digest()
    parts = []
    for _ in range((_BLOCK_LEN + 31) // 32):
        h = hashlib.sha256(h).digest()
        parts.append(h)
    return b"".join(parts)[:_BLOCK_LEN]


def _unit(seed: int, index: int) -> bytes:
    return _INDEX.pack(index) + _block(seed)


def payload_bytes(seed: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the stream for ``seed``."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    out = []
    while length > 0:
        index, within = divmod(offset, UNIT)
        take = min(length, UNIT - within)
        out.append(_unit(seed, index)[within : within + take])
        offset += take
        length -= take
    return b"".join(out)


class PayloadStream:
    """Reads the stream for ``seed`` sequentially (optionally bounded by ``size``)."""

    __slots__ = ("seed", "size", "position", "_unit_index", "_unit")

    def __init__(self, seed: int, size: int | None = None) -> None:
        self.seed = seed
        self.size = size
        self.position = 0
        self._unit_index = -1
        self._unit = b""

    @property
    def remaining(self) -> int | None:
        return None if self.size is None else self.size - self.position

    def read(self, n: int) -> bytes:
        """Up to ``n`` next bytes (``b""`` at the end of a bounded stream)."""
        if self.size is not None:
            n = min(n, self.size - self.position)
        if n <= 0:
            return b""
        out = []
        pos = self.position
        end = pos + n
        while pos < end:
            index, within = divmod(pos, UNIT)
            if index != self._unit_index:
                self._unit = _unit(self.seed, index)
                self._unit_index = index
            take = min(end - pos, UNIT - within)
            out.append(self._unit[within : within + take] if take != UNIT else self._unit)
            pos += take
        self.position = end
        return out[0] if len(out) == 1 else b"".join(out)


class StreamDigest:
    """Incremental SHA-256 plus a byte count (the verdict of one direction of a connection)."""

    __slots__ = ("_h", "count")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.count += len(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def as_dict(self) -> dict[str, object]:
        return {"bytes": self.count, "sha256": self.hexdigest()}


class DeferredDigest(StreamDigest):
    """A :class:`StreamDigest` that counts at once and hashes later.

    ``update`` counts the chunk's bytes and keeps them: copied into the reserved buffer while
    it has room (:meth:`reserve`), else as a reference (a copy if the chunk is mutable).  The
    SHA-256 runs over the kept bytes, in arrival order, at :meth:`flush` or :meth:`hexdigest`:
    the digest of the same bytes in the same order, only the time of the hashing moves, so the
    benchmark can do it outside its timed phases (hashing both ends inside them cost about a
    quarter of the offloaded phase).

    Why a reserved buffer: keeping every received chunk alive makes each new chunk fresh
    memory, and first-touch page faults cost about as much as hashing; copying into a buffer
    touched before the phase (and reused after each flush) costs a memcpy.
    """

    __slots__ = ("_pending", "_arena", "_used")

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[bytes] = []  # after the reserved buffer's bytes
        self._arena = bytearray()
        self._used = 0

    def reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` not yet hashed bytes now (touching the memory)."""
        if nbytes > len(self._arena):
            # b"\x01" * n writes every page (bytearray(n) would leave them to first touch)
            self._arena.extend(b"\x01" * (nbytes - len(self._arena)))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        end = self._used + n
        if not self._pending and end <= len(self._arena):
            self._arena[self._used:end] = data
            self._used = end
        else:
            self._pending.append(data if type(data) is bytes else bytes(data))  # (buffer reuse)
        self.count += n

    @property
    def pending_bytes(self) -> int:
        """Bytes counted and not hashed yet."""
        return self._used + sum(map(len, self._pending))

    def flush(self) -> None:
        """Hash the kept bytes now (in arrival order) and drop them."""
        h = self._h
        if self._used:
            with memoryview(self._arena) as view:
                h.update(view[:self._used])
            self._used = 0
        for chunk in self._pending:
            h.update(chunk)
        self._pending.clear()

    def hexdigest(self) -> str:
        self.flush()
        return super().hexdigest()


def payload_digest(seed: int, size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of the stream for ``seed``."""
    d = StreamDigest()
    s = PayloadStream(seed, size)
    while True:
        chunk = s.read(1 << 20)
        if not chunk:
            return d.hexdigest()
        d.update(chunk)


def connection_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th connection of an agent started with ``seed``."""
    return seed + index
