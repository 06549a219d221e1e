"""SACK blocks on the data path's ACKs (RFC 2018) when the connection negotiated SACK
(TCP_FLAG_SACK_ENABLED in ConstFlags).

The receiver side only: while out-of-order data is held, every ACK-carrying frame but a RST
carries a SACK option after the timestamp option -- up to 3 blocks beside timestamps, 4
without -- the block holding the most recently received segment first, then the other held
ranges in the order segments last arrived in them (RFC 2018 section 4).  Data frames carry the
blocks that fit with their data in the MSS.  Without the flag the frames are unchanged.
"""

from __future__ import annotations

import pytest

from offload_target import table as table_mod
from tests.offload_target.test_datapath import (
    ACK,
    C_TS,
    CONSUMED,
    PASS_UP,
    RCV0,
    SND0,
    F,
    Out,
    Rig,
    add,
)

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

C_SACK = 0x02                      # TCP_FLAG_SACK_ENABLED (ndis/state.py)


def test_sack_flag_value_matches_ndis():
    from ndis.state import TCP_FLAG_SACK_ENABLED
    assert C_SACK == TCP_FLAG_SACK_ENABLED


def sack_rig(*, ts: bool = True, sack: bool = True, **kw) -> Rig:
    return Rig(ts=ts, fields=dict(ConstFlags=(C_TS if ts else 0) | (C_SACK if sack else 0)),
               **kw)


def rel(blocks) -> list[tuple[int, int]]:
    """SACK blocks as offsets from RCV0 (the peer's sequence numbers wrap in the tests)."""
    return [((a - RCV0) & 0xFFFFFFFF, (b - RCV0) & 0xFFFFFFFF) for a, b in blocks]


def chunk(r: Rig, i: int, n: int = 100, win: int = 65535) -> bytes:
    """n bytes of the peer's data at offset i * 100, sent out of order."""
    return r.seg(bytes([65 + i]) * n, seq=add(RCV0, i * 100), advance=False, win=win)


def check_layout(o: Out) -> None:
    """The options are NOP NOP TS (with timestamps), then NOP NOP SACK, at most 40 bytes, the
    data offset covering exactly them (RFC 2018 section 3, laid out as tcpip does)."""
    tcp = o.ip.payload
    hlen = (tcp[12] >> 4) * 4
    opts = tcp[20:hlen]
    assert len(opts) <= 40 and len(opts) % 4 == 0
    blocks = o.seg.options.sack_blocks
    i = 0
    if o.seg.options.timestamp is not None:
        assert opts[:4] == b"\x01\x01\x08\x0a"
        i = 12
    if blocks:
        assert opts[i:i + 4] == bytes((1, 1, 5, 2 + 8 * len(blocks)))
        i += 4 + 8 * len(blocks)
    assert i == len(opts)
    assert 20 + len(opts) + len(o.seg.payload) <= 1500 - 20


def ack_blocks(r: Rig) -> list[tuple[int, int]]:
    [o] = r.poll()
    assert o.seg.ack == RCV0 and o.flags == ACK            # duplicate ACK at once (RFC 5681)
    check_layout(o)
    return rel(o.seg.options.sack_blocks)


def test_blocks_are_the_held_ranges_newest_first_at_most_three_with_timestamps():
    r = sack_rig()
    assert r.rx(chunk(r, 2)) == CONSUMED
    assert ack_blocks(r) == [(200, 300)]
    r.rx(chunk(r, 4))
    assert ack_blocks(r) == [(400, 500), (200, 300)]
    r.rx(chunk(r, 6))
    assert ack_blocks(r) == [(600, 700), (400, 500), (200, 300)]
    r.rx(chunk(r, 8))                                        # four ranges: three blocks
    assert ack_blocks(r) == [(800, 900), (600, 700), (400, 500)]
    r.rx(chunk(r, 3))                                        # joins 200-300 and 400-500
    assert ack_blocks(r) == [(200, 500), (800, 900), (600, 700)]
    r.rx(chunk(r, 10))                                       # then the most recently reported
    assert ack_blocks(r) == [(1000, 1100), (200, 500), (800, 900)]
    r.rx(chunk(r, 6))                                        # a duplicate is "received" too
    assert ack_blocks(r) == [(600, 700), (1000, 1100), (200, 500)]
    r.rx(chunk(r, 7, 50))                                    # extends 600-700 to 750
    assert ack_blocks(r) == [(600, 750), (1000, 1100), (200, 500)]
    assert r.t.datapath_counters()["sack_frames_out"] == 8


def test_four_blocks_without_timestamps():
    r = sack_rig(ts=False)
    for i in (2, 4, 6, 8, 10):
        r.rx(chunk(r, i))
        blocks = ack_blocks(r)
    assert blocks == [(1000, 1100), (800, 900), (600, 700), (400, 500)]


def test_several_arrivals_before_one_ack():
    r = sack_rig()
    for i in (6, 2, 4):
        r.rx(chunk(r, i))
    assert ack_blocks(r) == [(400, 500), (200, 300), (600, 700)]


def ack_frames(r: Rig, order) -> list[bytes]:
    out = []
    for i in order:
        r.rx(chunk(r, i))
        out += [o.raw for o in r.poll()]
    return out


def test_without_the_flag_no_sack_option_and_frames_unchanged():
    order = (2, 4, 3, 0, 1)                 # holes, then filled: in order after 1
    plain = sack_rig(sack=False)
    frames = ack_frames(plain, order)
    for f in frames:
        o = Out(f)
        assert o.seg.options.sack_blocks == ()
        assert (o.ip.payload[12] >> 4) * 4 == 32           # NOP NOP TS only
    assert plain.t.datapath_counters()["sack_frames_out"] == 0
    assert plain.t.receive_take(plain.h) == b"".join(bytes([65 + i]) * 100 for i in range(5))
    # with SACK the same arrivals give the same frames once nothing is held
    sacked = sack_rig()
    frames2 = ack_frames(sacked, order)
    assert [Out(f).seg.options.sack_blocks != () for f in frames2] == [True] * 4 + [False]
    assert frames2[-1] == frames[-1]


def test_blocks_disappear_when_the_holes_fill():
    r = sack_rig()
    for i in (1, 3):
        r.rx(chunk(r, i))
        r.poll()
    r.rx(chunk(r, 0))                        # fills the first hole: 0..200 in order
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 200)
    check_layout(o)
    assert rel(o.seg.options.sack_blocks) == [(300, 400)]
    r.rx(chunk(r, 2))                        # fills the last one
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 400) and o.seg.options.sack_blocks == ()
    assert (o.ip.payload[12] >> 4) * 4 == 32
    # more in-order data: plain ACKs
    r.rx(r.seg(b"x" * 10, seq=add(RCV0, 400)))
    r.rx(r.seg(b"y" * 10, seq=add(RCV0, 410)))
    [o] = r.poll()
    assert o.seg.options.sack_blocks == ()


def test_fin_beyond_the_ranges_clears_them():
    r = sack_rig()
    r.rx(chunk(r, 2))
    r.poll()
    r.rx(r.seg(b"", ACK | F.FIN, seq=add(RCV0, 300), advance=False))
    [o] = r.poll()
    assert rel(o.seg.options.sack_blocks) == [(200, 300)]   # the FIN holds no data
    r.rx(chunk(r, 0))
    r.rx(chunk(r, 1))
    outs = r.poll()
    assert outs[-1].seg.ack == add(RCV0, 301) and outs[-1].seg.options.sack_blocks == ()


def test_data_frames_carry_the_blocks_that_fit_in_the_mss():
    r = sack_rig()                            # MSS 1460 - 12 = 1448 with timestamps
    for i in (2, 4, 6, 8):
        r.rx(chunk(r, i))
        r.poll()
    r.t.send_append(r.h, b"d" * 100)
    [o] = r.poll()
    assert o.seg.payload == b"d" * 100 and o.seg.ack == RCV0
    check_layout(o)
    assert rel(o.seg.options.sack_blocks) == [(800, 900), (600, 700), (400, 500)]
    r.rx(r.seg(ack=add(SND0, 100), seq=add(RCV0, 0), advance=False))
    r.poll()
    # 1448 - 1428 - 4 = 16: two blocks fit; a full-sized segment has room for none
    r.t.send_append(r.h, b"e" * 1428 + b"f" * 1448)
    outs = r.poll()
    assert [len(o.seg.payload) for o in outs] == [1428, 1448] or \
        [len(o.seg.payload) for o in outs] == [1448, 1428]
    for o in outs:
        check_layout(o)
        n = len(o.seg.options.sack_blocks)
        assert n == (2 if len(o.seg.payload) == 1428 else 0)


def test_window_probe_and_keepalive_carry_sack_rst_does_not():
    r = sack_rig(cfg=dict(max_retransmissions=3))
    r.rx(chunk(r, 2, win=0))
    r.poll()
    assert r.field("SndWnd") == 0
    r.t.send_append(r.h, b"PROBE-ME")
    assert r.poll() == []                                    # persist timer armed
    [o] = r.poll(r.t.next_deadline() - r.now)
    assert o.seg.payload == b"P"                             # zero-window probe
    check_layout(o)
    assert rel(o.seg.options.sack_blocks) == [(200, 300)]
    r.t.disconnect(r.h, False, r.now)
    [o] = r.poll()
    assert o.flags == F.RST | F.ACK and o.seg.options.sack_blocks == ()


def test_keepalive_probe_carries_sack():
    from tests.offload_target.test_datapath import KA
    r = Rig(fields=dict(ConstFlags=C_TS | C_SACK, CachedFlags=KA, KaTimeout=5000,
                        KaInterval=1000, KaProbeCount=2))
    r.rx(chunk(r, 2))
    r.poll()
    [o] = r.poll(r.t.next_deadline() - r.now)
    assert o.seg.seq == SND0 - 1 and o.seg.payload == b""
    check_layout(o)
    assert rel(o.seg.options.sack_blocks) == [(200, 300)]


def test_small_mss_leaves_no_room_on_data_frames():
    r = sack_rig(mss=100)                     # 100 - 12 = 88 bytes per segment
    r.rx(chunk(r, 2))
    r.poll()
    r.t.send_append(r.h, b"z" * 80)           # 88 - 80 - 4 = 4: no block fits
    [o] = r.poll()
    assert len(o.seg.payload) == 80 and o.seg.options.sack_blocks == ()
    check_layout(o)
    r.rx(chunk(r, 2))                          # a duplicate: the ACK has the block
    [o] = r.poll()
    assert o.seg.payload == b"" and rel(o.seg.options.sack_blocks) == [(200, 300)]


def test_terminate_with_sack_drops_data_no_cumulative_ack_covers():
    # d.3 step 3: "If SACK is in use, drop (do not indicate, do not ACK) any received data not
    # yet covered by a cumulative ACK"; old data and segments without data still go up
    r = sack_rig()
    r.rx(r.seg(b"first"))
    r.t.flush_acks(r.h)
    r.t.set_terminating(r.h)
    before = r.t.datapath_counters()["terminate_sack_drops"]
    assert r.rx(r.seg(b"new data")) == CONSUMED            # beyond RCV.NXT: dropped
    assert r.rx(chunk(r, 30)) == CONSUMED                   # out of order: dropped as well
    assert r.t.datapath_counters()["terminate_sack_drops"] == before + 2
    assert r.rx(r.seg(b"first", seq=RCV0, advance=False)) == PASS_UP   # covered: up
    assert r.rx(r.seg()) == PASS_UP                         # no data: up
    assert r.poll(100_000) == []                            # and nothing ACKed
    assert r.field("RcvNxt") == add(RCV0, 5)


def test_terminate_without_sack_passes_everything_up():
    r = sack_rig(sack=False)
    r.t.set_terminating(r.h)
    assert r.rx(r.seg(b"new data")) == PASS_UP
    assert r.t.datapath_counters()["terminate_sack_drops"] == 0
