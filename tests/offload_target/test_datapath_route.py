"""table.set_route(): an NdisUpdateOffload of the neighbor or path (new MAC, relink, PathMtu)
reaching an active offloaded connection (reference c.3; docs/internals.md)."""

from __future__ import annotations

import pytest

from offload_target import table as table_mod
from tests.offload_target.test_datapath import LOCAL_MAC, REMOTE_MAC, SND0, Rig

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH, reason="the C data path is not built")

NEW_MAC = bytes.fromhex("02000000abcd")


def test_new_neighbor_mac_is_used_by_later_frames_only():
    r = Rig(ts=False)
    r.t.send_append(r.h, b"a" * 100)
    first = r.poll()
    assert [o.eth.dst for o in first] == [REMOTE_MAC]
    r.t.set_route(r.h, remote_mac=NEW_MAC)
    r.t.send_append(r.h, b"b" * 100)
    second = r.poll()
    assert [o.eth.dst for o in second] == [NEW_MAC]
    assert second[0].eth.src == LOCAL_MAC  # unchanged: not given
    assert second[0].seg.seq == SND0 + 100


def test_smaller_path_mtu_shrinks_segments_also_for_data_already_sent():
    r = Rig(ts=False, mss=1460)
    r.t.send_append(r.h, b"x" * 2920)
    assert [len(o.seg.payload) for o in r.poll()] == [1460, 1460]
    r.t.set_route(r.h, path_mtu=576)
    r.t.send_append(r.h, b"y" * 1000)
    assert [len(o.seg.payload) for o in r.poll()] == [536, 464]
    # the retransmission timer fires: the lost data goes again in the new size (RFC 1191)
    deadline = r.t.next_deadline()
    assert deadline is not None
    resent = r.poll(deadline - r.now)
    assert resent and resent[0].seg.seq == SND0 and len(resent[0].seg.payload) == 536


def test_larger_path_mtu_is_capped_by_the_peer_mss():
    r = Rig(ts=False, mss=1000, path_mtu=576)
    r.t.set_route(r.h, path_mtu=9000)
    r.t.send_append(r.h, b"z" * 2500)
    assert [len(o.seg.payload) for o in r.poll()] == [1000, 1000, 500]


def test_vlan_and_local_mac():
    r = Rig(ts=False)
    r.t.set_route(r.h, local_mac=NEW_MAC, vlan_id=0)
    r.t.send_append(r.h, b"c")
    (o,) = r.poll()
    assert o.eth.src == NEW_MAC and o.eth.dst == REMOTE_MAC


def test_bad_arguments_change_nothing():
    r = Rig(ts=False)
    with pytest.raises(ValueError):
        r.t.set_route(r.h, remote_mac=b"\x01\x02")
    with pytest.raises(ValueError):
        r.t.set_route(r.h, remote_mac=NEW_MAC, path_mtu=20)   # one bad value: nothing applied
    with pytest.raises(TypeError):
        r.t.set_route(r.h, remote_mac="02:00:00:00:ab:cd")
    with pytest.raises(TypeError):
        r.t.set_route(r.h, colour=1)
    with pytest.raises(TypeError):
        r.t.set_route()
    r.t.send_append(r.h, b"d")
    (o,) = r.poll()
    assert o.eth.dst == REMOTE_MAC


def test_stale_and_inactive_handles():
    r = Rig(ts=False, activate=False)
    with pytest.raises(ValueError, match="not active"):
        r.t.set_route(r.h, remote_mac=NEW_MAC)
    r.t.remove(r.h)
    with pytest.raises(table_mod.StaleHandleError):
        r.t.set_route(r.h, remote_mac=NEW_MAC)


# ---- stop_sending(): d.6, an invalidated connection transmits nothing more ---------------------

def test_stop_sending_silences_queued_data_timers_and_acks_but_keeps_receiving():
    from tests.offload_target.test_datapath import RCV0

    r = Rig(ts=False)
    r.t.send_append(r.h, b"q" * 3000)
    assert r.poll()                                   # some data in flight, a timer running
    r.t.send_append(r.h, b"r" * 3000)                 # more queued, not yet sent
    r.t.stop_sending(r.h)
    assert r.poll() == []                             # the queued data stays queued
    assert r.t.next_deadline() is None                # no timer fires (no retransmission)
    assert r.poll(10_000) == []                       # nothing at all, even much later
    r.rx(r.seg(b"hello"))                             # the peer's data is still taken
    assert r.t.receive_available(r.h) == 5
    assert r.field("RcvNxt") == (RCV0 + 5) & 0xFFFFFFFF
    assert r.poll() == [] and r.t.flush_acks(r.h) == []   # not even the owed ACK
    state = r.t.export(r.h, r.now)                    # terminate still gets everything
    assert state["send_data"] == b"q" * 3000 + b"r" * 3000
    assert state["buffered"] == b"hello"
    assert state["RetransmitTimeoutDelta"] != 0xFFFFFFFF  # the stopped timer is still reported


def test_stop_sending_bad_handles():
    r = Rig(ts=False, activate=False)
    with pytest.raises(ValueError, match="not active"):
        r.t.stop_sending(r.h)
    with pytest.raises(TypeError):
        r.t.stop_sending("x")
