"""``vnic.payload.DeferredDigest``: hashing after the timed phase gives the digest of
exactly the bytes counted, in their order, whatever the reserve and however the caller reuses
its buffers."""

from __future__ import annotations

import hashlib
import random

import pytest

from vnic.payload import DeferredDigest, StreamDigest


def _chunks(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 100, 1460, 65536, 200_000])) for _ in range(40)]


@pytest.mark.parametrize("reserve", [0, 1000, 300_000, 10 << 20])
@pytest.mark.parametrize("seed", [1, 2])
def test_same_digest_as_hashing_at_once(reserve: int, seed: int) -> None:
    chunks = _chunks(seed)
    now, later = StreamDigest(), DeferredDigest()
    later.reserve(reserve)
    for i, c in enumerate(chunks):
        now.update(c)
        later.update(c)
        assert later.count == now.count  # counted at once (phase predicates read it)
        if i == 17:
            later.flush()  # a flush between phases changes nothing
    assert later.pending_bytes == sum(map(len, chunks[18:]))
    assert later.hexdigest() == now.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert later.pending_bytes == 0


def test_a_reused_buffer_is_copied_not_referenced() -> None:
    d = DeferredDigest()  # no reserve: chunks are kept until the flush
    buf = bytearray(b"a" * 1000)
    d.update(buf)
    d.update(memoryview(buf)[:10])
    buf[:] = b"b" * 1000  # the caller reuses its buffer before the digest runs
    assert d.hexdigest() == hashlib.sha256(b"a" * 1010).hexdigest()


def test_a_wrong_byte_changes_the_digest() -> None:
    chunks = _chunks(3)
    good, bad = DeferredDigest(), DeferredDigest()
    good.reserve(1 << 20)
    bad.reserve(1 << 20)
    for i, c in enumerate(chunks):
        good.update(c)
        bad.update(c if i != 5 or not c else bytes([c[0] ^ 1]) + c[1:])
    assert good.count == bad.count and good.hexdigest() != bad.hexdigest()
