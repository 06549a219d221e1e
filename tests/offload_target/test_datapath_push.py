"""EVENT_PUSH (T.2): the data path reports each in-order segment that carried PSH with the
sequence number after its last byte, so that the miniport can complete the push-mode receive
buffer holding that byte.  Not for segments without PSH, not for a PSH segment the window cut
short (its pushed byte was not taken), and not for the PSH of data that arrived out of order."""

from __future__ import annotations

import pytest

from offload_target import table as table_mod
from tests.offload_target.test_datapath import ACK, CONSUMED, RCV0, F, Rig, add

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

if table_mod.HAS_DATAPATH:
    from tests.offload_target.test_datapath import DATA, PUSH


def test_in_order_psh_segments_are_reported_with_their_end():
    r = Rig()
    assert r.rx(r.seg(b"a" * 100)) == CONSUMED
    assert r.rx(r.seg(b"b" * 50, ACK | F.PSH)) == CONSUMED
    assert r.events(pushes=True) == [(DATA, 100), (DATA, 150), (PUSH, add(RCV0, 150))]
    # a retransmission of old data is not data: no event
    assert r.rx(r.seg(b"b" * 50, ACK | F.PSH, seq=add(RCV0, 100), advance=False)) == CONSUMED
    assert r.events(pushes=True) == []


def test_a_psh_segment_cut_by_the_window_is_not_a_push():
    r = Rig(rcv_wnd=120)
    assert r.rx(r.seg(b"x" * 100)) == CONSUMED
    assert r.rx(r.seg(b"y" * 50, ACK | F.PSH)) == CONSUMED  # only 20 bytes fit
    assert r.events(pushes=True) == [(DATA, 100), (DATA, 120)]


def test_the_psh_of_out_of_order_data_is_not_kept():
    r = Rig()
    late = r.seg(b"1" * 100)
    assert r.rx(r.seg(b"2" * 100, ACK | F.PSH)) == CONSUMED  # ahead of RcvNxt: queued
    assert r.events(pushes=True) == []
    assert r.rx(late) == CONSUMED  # fills the hole: both in order now, no PSH in it
    assert r.events(pushes=True) == [(DATA, 200)]
