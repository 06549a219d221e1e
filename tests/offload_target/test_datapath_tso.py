"""TSO in the C data path (``configure(tso_max=)``) and super-segments on the receive side.

With ``tso_max`` the transmit path sends new data in super-segments of whole MSS multiples (the
device below -- a TAP with virtio-net offload, vnic/vnet.py -- cuts them at the MSS); resends
stay MSS-sized; the send window and CWnd bound them; CWnd counts bytes.  On receive, a GRO'd
super-segment is taken whole and ACKed at once (ACK every ack_frequency * MSS bytes).
"""

from __future__ import annotations

import random
import struct

import pytest

from tests.offload_target.test_datapath import (
    ACK,
    CONSUMED,
    DATA,
    NAGLE,
    RCV0,
    SND0,
    F,
    Rig,
    add,
)
from vnic import vnet

MSS = 1448                              # RemoteMss 1460 - 12 (timestamps) at path MTU 1500
BIG = 65000                             # tso_max: 44 MSS per super-segment


def sizes(outs) -> list[int]:
    return [len(o.seg.payload) for o in outs]


def contiguous(outs, start: int) -> bool:
    seq = start
    for o in outs:
        if o.seg.seq != seq:
            return False
        seq = add(seq, len(o.seg.payload))
    return True


def test_off_by_default_and_below_two_mss():
    for cfg in ({}, {"tso_max": 0}, {"tso_max": 2 * MSS - 1}):
        r = Rig(cfg=cfg, fields=dict(CWnd=100 * MSS))
        r.t.send_append(r.h, b"z" * 30_000)
        outs = r.poll()
        assert outs and max(sizes(outs)) == MSS, cfg
        assert r.t.datapath_counters()["tso_frames_out"] == 0


def test_tso_max_range_checked():
    r = Rig(activate=False)
    with pytest.raises(ValueError):
        r.t.configure(tso_max=65535 - 20 - 60 + 1)
    with pytest.raises(ValueError):
        r.t.configure(tso_max=-1)
    r.t.configure(tso_max=65535 - 20 - 60)


def test_super_segments_are_whole_mss_multiples_up_to_tso_max_within_the_window():
    r = Rig(cfg=dict(tso_max=10 * MSS + 100), fields=dict(CWnd=200 * MSS))
    data = random.Random(1).randbytes(100_000)
    assert r.t.send_append(r.h, data) == len(data)
    outs = r.poll()
    # 4 x 10 MSS, then what the 65535-byte window leaves, rounded down to whole MSS; the
    # 375 bytes left in the window wait (sender SWS avoidance)
    assert sizes(outs) == [10 * MSS] * 4 + [5 * MSS]
    assert contiguous(outs, SND0)
    for o in outs:                       # Out verified both checksums; lengths match
        assert o.ip.total_length == 20 + 32 + len(o.seg.payload)
        assert o.flags == ACK and o.seg.options.timestamp is not None
        assert 0x8000 <= o.ip.identification and o.ip.dont_fragment
    assert b"".join(o.seg.payload for o in outs) == data[:45 * MSS]
    assert r.field("SndNxt") == r.field("SndMax") == SND0 + 45 * MSS
    c = r.t.datapath_counters()
    assert c["tso_frames_out"] == 5
    # b.17 counts TCP segments as the wire carries them (the device cuts at the MSS), and IP
    # octets per frame as built
    assert c["segments_out"] == 45 and c["frames_out"] == 5
    assert c["out_octets"] == sum(o.ip.total_length for o in outs)
    # all ACKed: the rest leaves, the tail of the queued data rides in the last super-segment
    r.pack = add(SND0, 45 * MSS)
    r.rx(r.seg())
    outs = r.poll()
    assert sizes(outs) == [10 * MSS, 10 * MSS, len(data) - 65 * MSS]
    assert contiguous(outs, SND0 + 45 * MSS)
    assert [bool(o.flags & F.PSH) for o in outs] == [False, False, True]
    assert b"".join(o.seg.payload for o in outs) == data[45 * MSS:]
    r.pack = add(SND0, len(data))
    r.rx(r.seg())
    assert r.t.send_unacked(r.h) == 0 and r.t.acked_total(r.h) == len(data)


def test_cwnd_bounds_super_segments_and_counts_bytes():
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=3 * MSS + 500))
    r.t.send_append(r.h, b"c" * 50_000)
    assert sizes(r.poll()) == [3 * MSS]          # CWnd 3 MSS + 500: whole MSS only, rest waits
    r.pack = add(SND0, 3 * MSS)
    r.rx(r.seg())
    assert r.field("CWnd") == 3 * MSS + 500 + 3 * MSS   # slow start: + the bytes ACKed
    assert sizes(r.poll()) == [6 * MSS]
    # congestion avoidance: + MSS * bytes ACKed / CWnd (byte counting, not per ACK)
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=10 * MSS, SsThresh=2 * MSS))
    r.t.send_append(r.h, b"d" * 10 * MSS)
    assert sizes(r.poll()) == [10 * MSS]
    r.pack = add(SND0, 10 * MSS)
    r.rx(r.seg())
    assert r.field("CWnd") == 11 * MSS


def test_nagle_splits_off_a_short_tail_while_data_is_in_flight():
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=100 * MSS, CachedFlags=NAGLE))
    r.t.send_append(r.h, b"n" * (3 * MSS + 100))
    assert sizes(r.poll()) == [3 * MSS + 100]     # nothing in flight: all of it
    r.t.send_append(r.h, b"m" * 3000)
    assert sizes(r.poll()) == [2 * MSS]           # in flight: the 104-byte tail waits
    r.pack = add(SND0, 5 * MSS + 100)
    r.rx(r.seg())
    assert sizes(r.poll()) == [3000 - 2 * MSS]


def test_retransmissions_stay_mss_sized():
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=40 * MSS))
    data = random.Random(2).randbytes(40 * MSS)
    r.t.send_append(r.h, data)
    assert sizes(r.poll()) == [40 * MSS]
    outs = r.poll(r.t.next_deadline() - r.now)   # RTO: go back N with CWnd = 1 MSS
    assert [(o.seg.seq, len(o.seg.payload)) for o in outs] == [(SND0, MSS)]
    assert outs[0].seg.payload == data[:MSS]
    assert r.field("SndMax") == SND0 + 40 * MSS
    resent = MSS
    while resent < 40 * MSS:                     # the rest goes again, MSS by MSS
        r.pack = add(SND0, resent)
        r.rx(r.seg())
        outs = r.poll()
        assert outs and set(sizes(outs)) == {MSS}
        assert contiguous(outs, SND0 + resent)
        resent += sum(sizes(outs))
    assert resent == 40 * MSS
    # fast retransmit: one MSS from SND.UNA
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=40 * MSS))
    r.t.send_append(r.h, data)
    assert sizes(r.poll()) == [40 * MSS]
    for _ in range(3):
        r.rx(r.seg())
    outs = r.poll()
    assert [(o.seg.seq, len(o.seg.payload)) for o in outs] == [(SND0, MSS)]
    assert r.t.datapath_counters()["fast_retransmits"] == 1


def test_no_super_segments_when_the_peer_mss_or_a_vlan_tag_rules_them_out():
    # the device segments at MTU - headers (1448); a peer MSS of 1000 must not be exceeded
    r = Rig(mss=1000, cfg=dict(tso_max=BIG), fields=dict(CWnd=100 * 1000))
    r.t.send_append(r.h, b"p" * 20_000)
    assert max(sizes(r.poll())) == 988
    r = Rig(vlan=5, cfg=dict(tso_max=BIG), fields=dict(CWnd=100 * MSS))
    r.t.send_append(r.h, b"v" * 20_000)
    assert max(sizes(r.poll())) == MSS


def test_fin_rides_on_the_last_super_segment():
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=100 * MSS))
    r.t.send_append(r.h, b"f" * (5 * MSS))
    r.t.disconnect(r.h, True, r.now)
    [o] = r.poll()
    assert len(o.seg.payload) == 5 * MSS and o.flags == ACK | F.PSH | F.FIN
    assert r.field("SndMax") == SND0 + 5 * MSS + 1


def test_super_segment_checksums_are_valid_after_the_vnet_layer():
    r = Rig(cfg=dict(tso_max=BIG), fields=dict(CWnd=100 * MSS))
    r.t.send_append(r.h, random.Random(3).randbytes(30 * MSS))
    [o] = r.poll()
    raw = o.raw
    parts = vnet.outbound_parts(raw, 1500)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH",
                                                                                parts[0])
    assert gso_type == vnet.VIRTIO_NET_HDR_GSO_TCPV4 and flags == vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert gso_size == MSS and hdr_len == 14 + 20 + 32 and (csum_start, csum_offset) == (34, 16)
    body = b"".join(bytes(p) for p in parts[1:])
    assert len(body) == len(raw) and body != raw  # the field holds the pseudo-header sum
    # what the kernel does with NEEDS_CSUM gives back exactly the frame the data path built
    assert vnet.complete_inbound(parts[0], body) == raw
    # an MTU-sized frame goes as is
    r2 = Rig()
    r2.t.send_append(r2.h, b"s" * 100)
    [small] = r2.poll()
    assert vnet.outbound_parts(small.raw, 1500) == (vnet.PLAIN_HEADER, small.raw)


def test_large_inbound_segment_is_accepted_and_acked_at_once():
    r = Rig()
    payload = random.Random(4).randbytes(20 * MSS)
    assert r.rx(r.seg(payload, ACK | F.PSH)) == CONSUMED
    assert r.events() == [(DATA, len(payload))]
    [o] = r.poll()                               # no delayed ACK: >= 2 MSS of data
    assert o.flags == ACK and o.seg.ack == add(RCV0, len(payload))
    assert o.seg.window == 65535 - len(payload)
    assert r.t.receive_take(r.h) == payload
    [upd] = r.poll()                             # the window opened again: window update
    assert upd.seg.window == 65535 and upd.seg.ack == o.seg.ack
    # one MSS alone still waits for the delayed-ACK timer; a second segment is ACKed
    r.rx(r.seg(b"a" * MSS))
    assert r.poll() == []
    r.rx(r.seg(b"b" * 10))
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, len(payload) + MSS + 10)
    # a super-segment over the right edge of the window: the part inside is taken
    r = Rig(rcv_wnd=30_000)
    big = random.Random(5).randbytes(40_000)
    assert r.rx(r.seg(big)) == CONSUMED
    assert r.t.receive_take(r.h) == big[:30_000]
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 30_000)


def test_module_internet_checksum_matches_the_python_one():
    """``_ctable.internet_checksum`` (used by vnic/vnet.py on 64 KiB super-segments) gives
    exactly tcpip.checksum.internet_checksum, zero encodings and odd lengths included."""
    from offload_target import _ctable
    from tcpip.checksum import internet_checksum

    rng = random.Random(6)
    cases = [b"", b"\x00", b"\xff", bytes(7), b"\xff" * 9, b"\xff\xff", bytes(65536)]
    cases += [rng.randbytes(n) for n in (*range(1, 40), 1499, 1500, 65535, 65536, 70001)]
    # beyond 128 KiB a 32-bit sum of 16-bit words would lose carries; all-0xFF data makes the
    # running sum as large as it gets; unaligned views start at odd addresses
    cases += [b"\xff" * 300_001, rng.randbytes(1 << 20), memoryview(rng.randbytes(4099))[1:]]
    for data in cases:
        for initial in (0, 1, 0xFFFF, 0x1FFFE, rng.randrange(1 << 20), 0xFFFFFFFF):
            assert _ctable.internet_checksum(data, initial) == internet_checksum(data, initial)
            assert _ctable.internet_checksum(memoryview(data)) == internet_checksum(data)
    with pytest.raises(TypeError):
        _ctable.internet_checksum("text")
    with pytest.raises(ValueError):
        _ctable.internet_checksum(b"ab", 1 << 40)
