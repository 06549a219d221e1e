"""The data path's send and receive rings are allocated lazily and grow on demand.

An activated connection allocates no ring; the first send_append allocates the send ring
(4 KiB) and it doubles to hold what is queued; the first received byte allocates the receive
ring (4 KiB) and it doubles, up to its logical size (which bounds the advertised window, as
before), when a segment -- in order or out of order, out-of-order bytes sit at their final
place -- needs bytes beyond the allocation; growing unwraps the live span.  A failed grow
drops that segment and counts it (``rcv_alloc_drops``); the peer retransmits.

The physical ring sizes are read from ``memory_bytes()`` (it adds the rings' allocations)
against a baseline taken once the table's event array exists; ``Rig.rx`` / ``Rig.poll`` run
``_validate()`` (ring bounds, the live span inside the allocation) after every step.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest

from tests.offload_target.test_datapath import (
    ACK,
    CONSUMED,
    DATA,
    ESTABLISHED,
    LOCAL_IP,
    LOCAL_MAC,
    LPORT,
    MASK,
    RCV0,
    REMOTE_IP,
    REMOTE_MAC,
    RPORT,
    SND0,
    ConnectionTable,
    Rig,
    add,
)

RING_MIN = 4096


def baseline(r: Rig) -> int:
    """memory_bytes() of r's table with r's rings unallocated and the event array in place:
    a second connection gets one event (and a 4 KiB receive ring), then events are drained."""
    h2 = r.t.insert(LOCAL_IP, LPORT + 1, REMOTE_IP, RPORT)
    r.t.set_fields(h2, State=ESTABLISHED, RcvNxt=1, RcvWnd=1000, SndUna=1, SndNxt=1, SndMax=1,
                   SndWnd=1000, RemoteMss=1460)
    r.t.activate(h2, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=r.now)
    r.t.receive_buffered(h2, b"e")
    r.t.events()
    r.poll()
    return r.t.memory_bytes()


def ring_bytes(r: Rig, base: int) -> int:
    """What r's rings allocated (both together)."""
    return r.t.memory_bytes() - base


def drain(r: Rig) -> None:
    r.poll()
    r.t.events()


def feed(r: Rig, off: int, payload: bytes) -> int:
    """Segment of the peer's stream at byte offset off (from RCV0); events are drained (so
    the event array, which memory_bytes() counts too, never grows)."""
    res = r.rx(r.seg(payload, seq=add(RCV0, off), advance=False))
    r.t.events()
    return res


# ------------------------------------------------------------------------- allocation ----

def test_activate_allocates_no_ring():
    r = Rig(rcv_wnd=1 << 20, ws=7, cfg=dict(receive_buffer=1 << 20, send_buffer=1 << 20))
    base = baseline(r)
    assert ring_bytes(r, base) == 0
    assert r.poll() == []
    r.rx(r.seg(b"x"))                                        # first byte: 4 KiB receive ring
    assert ring_bytes(r, base) == RING_MIN
    r.t.send_append(r.h, b"y")                               # first send byte: 4 KiB send ring
    assert ring_bytes(r, base) == 2 * RING_MIN
    assert r.t.receive_take(r.h) == b"x"


def test_idle_activated_connections_allocate_far_less_than_full_rings():
    n = 1000
    tracemalloc.start()
    try:
        t = ConnectionTable(n)
        t.configure(send_buffer=1 << 20, receive_buffer=1 << 20)
        handles = []
        for i in range(n):
            h = t.insert(LOCAL_IP, 1024 + i, REMOTE_IP, RPORT)
            t.set_fields(h, State=ESTABLISHED, RcvNxt=RCV0, RcvWnd=1 << 20, SndUna=SND0,
                         SndNxt=SND0, SndMax=SND0, SndWnd=65535, RemoteMss=1460,
                         InitialRcvWnd=1 << 20, ConstFlags=0x04, SndWindScale=7,
                         RcvWindScale=7)
            handles.append(h)
        before_mem = t.memory_bytes()
        before_traced = tracemalloc.get_traced_memory()[0]
        for h in handles:
            t.activate(h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=1)
        t._validate()
        grown_mem = t.memory_bytes() - before_mem
        grown_traced = tracemalloc.get_traced_memory()[0] - before_traced
        # up front, 1 MiB + 1 MiB rings each would be ~2 GiB; lazily only the per-connection
        # state (< 2 KiB) and the pending list
        assert grown_mem < n * 2048, grown_mem
        assert grown_traced < n * 2048 + 65536, grown_traced
        # and each with ~50 bytes each way: two 4 KiB rings apiece, not 2 MiB
        for h in handles:
            t.send_append(h, b"s" * 50)
            t.receive_buffered(h, b"r" * 50)
        t._validate()
        assert t.memory_bytes() - before_mem < n * (2 * RING_MIN + 2048)
        t.poll(2)
        t.clear()
        del t
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------- receive ring ----

def test_in_order_data_in_many_sizes_up_to_the_full_window():
    wnd = 1 << 18
    r = Rig(rcv_wnd=wnd, ws=7, cfg=dict(receive_buffer=wnd))
    base = baseline(r)
    rng = random.Random(7)
    stream = rng.randbytes(wnd + 5000)
    sizes = [1, 2, 3, 100, 1448, 1449, 4095, 4096, 4097, 9000, 20000, 60000]
    off = 0
    last = 0
    while r.field("RcvWnd"):
        n = min(sizes[rng.randrange(len(sizes))], r.field("RcvWnd"))
        assert feed(r, off, stream[off:off + n]) == CONSUMED
        off += n
        got = ring_bytes(r, base)
        assert got >= off and got >= last                    # holds what arrived, never shrinks
        assert got <= max(RING_MIN, 2 * off)                 # doubled, not the window up front
        last = got
        if rng.random() < 0.3:
            drain(r)
    # the advertised window (rounded up to whole scale units of 128) is filled up
    assert wnd <= off < wnd + 128
    assert r.t.receive_available(r.h) == off
    # capped at the logical size: the capacity plus one scale unit
    assert ring_bytes(r, base) == (wnd if off == wnd else wnd + 128)
    # beyond the window: cut, not stored, no growth
    feed(r, off, stream[off:off + 5000])
    assert r.t.receive_available(r.h) == off
    assert ring_bytes(r, base) == (wnd if off == wnd else wnd + 128)
    assert r.t.receive_take(r.h) == stream[:off]
    [o] = r.poll()                                           # the window reopens in full
    assert o.seg.window == wnd >> 7 and r.field("RcvWnd") == wnd


def test_out_of_order_at_the_window_edge_before_the_gap_fills():
    wnd = 1 << 20
    r = Rig(rcv_wnd=wnd, ws=7, cfg=dict(receive_buffer=wnd))
    base = baseline(r)
    stream = random.Random(3).randbytes(wnd)
    # the last 100 bytes of the window first: the ring grows to hold them at their place
    assert feed(r, wnd - 100, stream[wnd - 100:]) == CONSUMED
    assert ring_bytes(r, base) == wnd                        # doubled from 4 KiB to hold it
    [o] = r.poll()
    assert o.seg.ack == RCV0 and o.flags == ACK              # duplicate ACK at once
    # straddling the right edge: cut to the window
    feed(r, wnd - 50, stream[wnd - 50:] + b"beyond")
    # more out-of-order pieces in the middle, then fill everything in order
    feed(r, 500_000, stream[500_000:500_700])
    feed(r, 10, stream[10:20])
    assert r.t.receive_available(r.h) == 0
    off = 0
    while off < wnd - 100:
        n = min(60000, wnd - 100 - off)
        feed(r, off, stream[off:off + n])
        off += n
    assert r.t.receive_available(r.h) == wnd
    assert r.t.receive_take(r.h) == stream
    assert ring_bytes(r, base) == wnd                        # no second allocation
    assert r.t.datapath_counters()["rcv_alloc_drops"] == 0


def test_wrap_around_before_and_after_a_grow():
    r = Rig()                                                # window 65535, no scaling
    base = baseline(r)
    stream = random.Random(11).randbytes(200_000)
    taken = bytearray()

    def take(n: int = -1) -> None:
        taken.extend(r.t.receive_take(r.h, n))

    feed(r, 0, stream[:3000])
    assert ring_bytes(r, base) == RING_MIN
    take()                                                   # head at 3000 in a 4 KiB ring
    feed(r, 3000, stream[3000:5000])                         # wraps around the 4 KiB end
    feed(r, 5500, stream[5500:6000])                         # out of order, wraps, fits
    assert ring_bytes(r, base) == RING_MIN
    feed(r, 9000, stream[9000:9100])                         # beyond 4 KiB: grow and unwrap
    assert ring_bytes(r, base) == 2 * RING_MIN               # 3000..9100 from the head: 8 KiB
    feed(r, 5000, stream[5000:5500])                         # fills the first hole
    assert r.t.receive_available(r.h) == 3000
    take(1000)
    feed(r, 6000, stream[6000:9000])                         # fills the second hole
    take()
    assert bytes(taken) == stream[:9100]
    # after the grow: wrap around the 16 KiB ring, then grow again with out-of-order data in
    # the wrapped part and the in-order bytes wrapped too
    off = 9100
    for n in (5000, 5000, 5000):
        feed(r, off, stream[off:off + n])
        off += n
        take(n - 7)
    assert ring_bytes(r, base) == 2 * RING_MIN
    # (head at 4695 of 8192, 21 in-order bytes: these cross the end of the ring)
    feed(r, off + 3000, stream[off + 3000:off + 4000])       # out of order, wrapped
    feed(r, off + 30000, stream[off + 30000:off + 30500])    # beyond 8 KiB: grow to 32 KiB
    assert ring_bytes(r, base) == 8 * RING_MIN
    feed(r, off, stream[off:off + 3000])
    feed(r, off + 4000, stream[off + 4000:off + 30000])
    take()
    assert bytes(taken) == stream[:off + 30500]
    assert r.t.datapath_counters()["ooo_dropped"] == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_arrival_order_sizes_and_takes(seed):
    """Segments of random sizes anywhere in the window (in order, out of order, duplicate,
    straddling the right edge), random takes: what is taken is the stream, byte-exact."""
    wnd = 200_000
    rng = random.Random(seed)
    r = Rig(rcv_wnd=wnd, ws=2, cfg=dict(receive_buffer=wnd, ooo_segments=8))
    base = baseline(r)
    stream = rng.randbytes(1_500_000)
    taken = bytearray()
    sizes_seen = set()
    while len(taken) < len(stream):
        nxt = (r.field("RcvNxt") - RCV0) & MASK
        avail = r.t.receive_available(r.h)
        win = r.field("RcvWnd")
        roll = rng.random()
        if roll < 0.25 and avail:
            taken.extend(r.t.receive_take(r.h, rng.randrange(1, avail + 1)))
        elif roll < 0.3:
            taken.extend(r.t.receive_take(r.h))
            drain(r)
        elif nxt < len(stream):
            where = rng.random()
            ahead = (0 if where < 0.5 or win == 0
                     else rng.randrange(0, min(win, 8000)) if where < 0.9
                     else rng.randrange(0, win))
            start = max(0, nxt + ahead - rng.choice((0, 0, 0, 300)))   # some duplicates
            n = rng.choice((1, 17, 536, 1448, 3000, 8000, 30000))
            seg = stream[start:start + n]
            if seg:
                assert feed(r, start, seg) == CONSUMED
        sizes_seen.add(ring_bytes(r, base))
        if rng.random() < 0.05:
            drain(r)
        r.t.events()
    assert bytes(taken) == stream
    assert max(sizes_seen) <= wnd + 4                        # never beyond the logical size
    assert min(sizes_seen) <= 65536                          # it started small
    counters = r.t.datapath_counters()
    assert counters["rcv_alloc_drops"] == 0
    assert counters["ooo_segments"] > 50 and counters["dup_segments"] > 10


# ------------------------------------------------------------------------------ send ----

def send_all(r: Rig, start: int, expect: bytes) -> None:
    """Drive the connection until expect (the bytes from SND0 + start) was sent and ACKed;
    check every byte on the wire."""
    got = bytearray()
    while len(got) < len(expect):
        for o in r.poll(dt=1):
            p = o.seg.payload
            if not p:
                continue
            pos = (o.seg.seq - SND0 - start) & MASK
            assert pos <= len(got), "a gap on the wire"
            got[pos:pos + len(p)] = p
        r.pack = add(SND0, start + len(got))
        r.rx(r.seg())
        r.t.events()
    assert bytes(got) == expect
    assert r.t.send_unacked(r.h) == 0


def test_send_many_small_appends_and_one_huge():
    r = Rig(cfg=dict(send_buffer=1 << 20))
    base = baseline(r)
    rng = random.Random(5)
    data = bytearray()
    for _ in range(3000):                                    # ~150 KB in small pieces
        piece = rng.randbytes(rng.randrange(0, 100))
        assert r.t.send_append(r.h, piece) == len(piece)
        data += piece
        rb = ring_bytes(r, base)
        assert rb >= len(data) and rb <= max(RING_MIN, 2 * len(data))
    assert r.t.send_unacked(r.h) == len(data)
    assert r.t.export(r.h, r.now)["send_data"] == bytes(data)
    send_all(r, 0, bytes(data))
    small = len(data)
    # the ring has wrapped (head inside it), then one huge append grows and unwraps it
    wrap = rng.randbytes(5000)
    r.t.send_append(r.h, wrap)
    huge = rng.randbytes(3 << 20)
    assert ring_bytes(r, base) == 1 << 18                    # ~150 KB queued: 256 KiB
    assert r.t.send_append(r.h, huge) == len(huge)
    assert ring_bytes(r, base) == 4 << 20                    # doubled up to 4 MiB
    assert r.t.send_unacked(r.h) == len(wrap) + len(huge)
    send_all(r, small, wrap + huge)


def test_send_ring_wrapped_then_grown_keeps_its_bytes():
    r = Rig()
    base = baseline(r)
    a, b, c = b"a" * 3000, b"b" * 2000, bytes(range(256)) * 40
    r.t.send_append(r.h, a)
    assert ring_bytes(r, base) == RING_MIN
    send_all(r, 0, a)                                        # head at 3000
    r.t.send_append(r.h, b)                                  # wraps the 4 KiB ring
    assert ring_bytes(r, base) == RING_MIN
    r.t.send_append(r.h, c)                                  # 12 KiB queued: grows to 16 KiB
    assert ring_bytes(r, base) == 4 * RING_MIN
    assert r.t.export(r.h, r.now)["send_data"] == b + c
    send_all(r, len(a), b + c)


# ---------------------------------------------------------------------- buffered data ----

def test_buffered_data_activate_and_more_data():
    r = Rig(activate=False)
    # what an activated connection without data costs (a third connection)
    m0 = baseline(r)
    h3 = r.t.insert(LOCAL_IP, LPORT + 2, REMOTE_IP, RPORT)
    r.t.set_fields(h3, State=ESTABLISHED, RcvWnd=1000, SndWnd=1000, RemoteMss=1460)
    r.t.activate(h3, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=r.now)
    r.t.events()
    r.t.poll(r.now)
    conn = r.t.memory_bytes() - m0
    pre = random.Random(9).randbytes(10_000)                 # more than one 4 KiB step
    r.t.receive_buffered(r.h, pre[:6000])
    r.t.receive_buffered(r.h, pre[6000:])
    r.t.activate(r.h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=r.now)
    r.t._validate()
    r.t.poll(r.now)
    base = m0 + 2 * conn
    assert ring_bytes(r, base) == 10_001                     # the buffered bytes as they are
    wire = random.Random(10).randbytes(100_000)
    feed(r, 40_000, wire[40_000:41_000])                     # out of order: grows the ring
    grown = r.t.memory_bytes() - base
    assert grown >= 10_000 + 41_000
    feed(r, 0, wire[:40_000])
    r.t.receive_buffered(r.h, b"after-activate-")            # ends at RcvNxt: goes first
    assert r.events() == [(DATA, 51_015)]
    assert r.t.receive_take(r.h, 20_000) == b"after-activate-" + pre + wire[:20_000 - 15 - 10_000]
    feed(r, 41_000, wire[41_000:60_000])
    assert r.t.receive_take(r.h) == wire[20_000 - 15 - 10_000:60_000]
    r.t.receive_buffered(r.h, b"")
    assert r.t.receive_take(r.h) == b""


def test_buffered_data_after_activate_on_an_unallocated_ring():
    r = Rig()
    base = baseline(r)
    r.t.receive_buffered(r.h, b"")                           # nothing: no ring, no event
    assert ring_bytes(r, base) == 0
    assert r.events() == []
    r.t.receive_buffered(r.h, b"host")
    assert ring_bytes(r, base) == RING_MIN
    r.rx(r.seg(b"-wire"))
    assert r.t.receive_take(r.h) == b"host-wire"


# ------------------------------------------------------------------ allocation failure ----

def test_failed_grow_drops_the_segment_and_counts():
    """An allocation failure while the receive ring grows (forced with CPython's
    _testcapi.set_nomemory, which makes every allocation fail until remove_mem_hooks) drops
    the segment, in order or out of order, counts it, and the retransmission is accepted."""
    testcapi = pytest.importorskip("_testcapi")
    if not hasattr(testcapi, "set_nomemory"):
        pytest.skip("_testcapi.set_nomemory is not available")
    r = Rig()
    base = baseline(r)
    r.rx(r.seg(b"x" * 1000))                                 # a 4 KiB ring
    r.poll(dt=100)
    r.t.events()
    stream = b"x" * 1000 + bytes(range(256)) * 40            # 1000 + 10240
    in_order = r.seg(stream[1000:6000], seq=add(RCV0, 1000), advance=False)
    ahead = r.seg(stream[8000:9000], seq=add(RCV0, 8000), advance=False)
    process, now = r.t.process_frame, r.now
    results = []
    for frame in (in_order, ahead):
        testcapi.set_nomemory(0)
        try:
            res = process(frame, now)
        finally:
            testcapi.remove_mem_hooks()
        results.append(res)
    assert results == [CONSUMED, CONSUMED]
    r.t._validate()
    assert r.t.datapath_counters()["rcv_alloc_drops"] == 2
    assert r.t.datapath_counters()["ooo_dropped"] == 0
    assert r.t.receive_available(r.h) == 1000
    assert r.field("RcvNxt") == add(RCV0, 1000)
    assert ring_bytes(r, base) == RING_MIN                   # unchanged
    for o in r.poll(dt=100):
        assert o.seg.ack == add(RCV0, 1000)                  # nothing of them was ACKed
    # the peer retransmits: accepted now
    assert r.rx(ahead) == CONSUMED
    assert r.rx(in_order) == CONSUMED
    assert r.rx(r.seg(stream[6000:8000], seq=add(RCV0, 6000), advance=False)) == CONSUMED
    assert r.rx(r.seg(stream[9000:], seq=add(RCV0, 9000), advance=False)) == CONSUMED
    assert r.t.receive_take(r.h) == stream
    assert r.t.datapath_counters()["rcv_alloc_drops"] == 2


def test_failed_send_grow_raises_and_keeps_the_queue():
    testcapi = pytest.importorskip("_testcapi")
    if not hasattr(testcapi, "set_nomemory"):
        pytest.skip("_testcapi.set_nomemory is not available")
    r = Rig()
    base = baseline(r)
    r.t.send_append(r.h, b"a" * 100)
    big = b"b" * 10_000
    append = r.t.send_append
    err = None
    testcapi.set_nomemory(0)
    try:
        append(r.h, big)
    except MemoryError as exc:
        err = exc
    finally:
        testcapi.remove_mem_hooks()
    assert isinstance(err, MemoryError)
    r.t._validate()
    assert r.t.send_unacked(r.h) == 100
    assert ring_bytes(r, base) == RING_MIN
    assert r.t.send_append(r.h, big) == len(big)
    send_all(r, 0, b"a" * 100 + big)
