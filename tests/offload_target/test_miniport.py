"""OffloadTarget: initiate / terminate / update / invalidate / query, TCP I/O, the delivery
algorithm and event indications, against a strict ConformanceChecker.

Every test runs against ``FakeDataPathTable`` (the contract in Python, see
test_miniport_fakes.py) and, once the C data path exists (``offload_target.table.HAS_DATAPATH``),
against the real table too ("real" parameter; tests that look inside the fake are fake-only).
"""

from __future__ import annotations

import pytest

from ndis.blocks import (
    NET_BUFFER_LIST,
    add_dependents,
    iter_nbls,
    link_nbls,
    new_offload_block,
)
from ndis.fakes import sample_states
from ndis.state import (
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    NEIGHBOR_OFFLOAD_STATE_CACHED,
    PATH_OFFLOAD_STATE_CACHED,
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_DISCONNECT_GRACEFUL_CLOSE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_UPLOAD_REASON,
    TIMER_NOT_RUNNING,
)
from ndis.status import NdisStatus
from offload_target import table as table_mod
from offload_target.miniport import (
    EVENT_RETRIEVE,
    FRAME_CONSUMED,
    FRAME_NOT_OURS,
    OffloadTarget,
    has_datapath,
)

from .test_miniport_fakes import NIC_MAC, FakeDataPathTable, Peer, Rig, real_table_available

S = NdisStatus
ABORT = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateAbort
DISC = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect
RETRIEVE = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve


@pytest.fixture(params=["fake", "real"])
def make_rig(request):
    if request.param == "real" and not real_table_available():
        pytest.skip("the C data path is not built yet (offload_target.table.HAS_DATAPATH)")

    def make(capacity: int = 8, **kw):
        return Rig(capacity, real=request.param == "real", **kw)

    make.kind = request.param
    return make


@pytest.fixture
def fake_rig():
    def make(capacity: int = 8, **kw):
        return Rig(capacity, **kw)

    return make


def statuses(root) -> dict[str, str]:
    from ndis.blocks import iter_blocks
    from ndis.status import status_name

    return {b.label: status_name(b.Status).removeprefix("NDIS_STATUS_") for b in iter_blocks(root)}


def sends_completed(rig: Rig) -> list[tuple[str, int]]:
    return [x for e in rig.events("TcpOffloadSendComplete") for x in e[1]]


# ---------------------------------------------------------------------------------------------
# capabilities and initiate


def test_capacity_is_zero_without_the_data_path() -> None:
    t = OffloadTarget(16, mac=NIC_MAC)
    if getattr(table_mod, "HAS_DATAPATH", False):
        assert t.capabilities.TcpConnectionOffloadCapacity == 16
    else:
        assert not has_datapath(t.table)
        assert t.capabilities.TcpConnectionOffloadCapacity == 0
        rig = Rig(16, real=True)
        root = rig.offload()
        # f.2: N is SUCCESS (its dependent P is offloaded, partially)
        assert statuses(root) == {"N": "SUCCESS", "P": "OFFLOAD_PARTIAL_SUCCESS",
                                  "T": "OFFLOAD_TCP_ENTRIES"}
        assert rig.host.errors == []


def test_capacity_advertised_with_the_data_path() -> None:
    t = OffloadTarget(16, mac=NIC_MAC, table=FakeDataPathTable(16))
    assert t.capabilities.TcpConnectionOffloadCapacity == 16
    assert t.table.config["ticks_per_second"] == 1000


def test_initiate_one_connection(make_rig) -> None:
    rig = make_rig()
    root = rig.offload()
    assert statuses(root) == {"N": "SUCCESS", "P": "SUCCESS", "T": "SUCCESS"}
    t = rig.tcp()
    assert rig.host.handles["T"].MiniportOffloadContext is t
    assert t.live and t.path.neighbor is not None
    assert rig.host.errors == []
    rig.checker.assert_clean()


def test_initiate_partial_offload_d7_example(fake_rig) -> None:
    """d.7: N1 PARTIAL (P2 failed), P1 PARTIAL (T2 failed), T1 SUCCESS, T2 RESOURCES,
    P2 FAILURE, T3 FAILURE (never attempted); T2's send NBL untouched."""
    rig = fake_rig()
    rig.target.faults.fail_blocks(["T2"], S.RESOURCES)
    rig.target.faults.fail_blocks(["P2"], S.FAILURE)
    n, p1, t1 = sample_states(40001)
    _, p2, t3 = sample_states(40003)
    _, _, t2 = sample_states(40002)
    t2_nbl = NET_BUFFER_LIST(b"x" * 10, label="t2-send")
    t2_nbl.Status = 0x1234
    b_n1 = new_offload_block(n, label="N1")
    b_p1 = new_offload_block(p1, label="P1")
    b_p2 = new_offload_block(p2, label="P2")
    add_dependents(b_p1, new_offload_block(t1, label="T1"),
                   new_offload_block(t2, label="T2", send_data=t2_nbl))
    add_dependents(b_p2, new_offload_block(t3, label="T3"))
    add_dependents(b_n1, b_p1, b_p2)
    rig.host.offload(b_n1)
    rig.run()
    assert statuses(b_n1) == {"N1": "OFFLOAD_PARTIAL_SUCCESS", "P1": "OFFLOAD_PARTIAL_SUCCESS",
                              "T1": "SUCCESS", "T2": "RESOURCES", "P2": "FAILURE", "T3": "FAILURE"}
    assert t2_nbl.Status == 0x1234 and rig.events("TcpOffloadSendComplete") == []
    assert rig.target.tcp_count == 1 and len(rig.table) == 1
    assert rig.host.errors == []  # contexts written only for the offloaded blocks


def test_capacity_exhausted_gives_tcp_entries(make_rig) -> None:
    rig = make_rig(2)
    n, p, _ = sample_states()
    tcps = [sample_states(40000 + i)[2] for i in range(3)]
    root = rig.host.offload_connection(n, p, tcps)
    rig.run()
    assert statuses(root) == {"N": "SUCCESS", "P": "OFFLOAD_PARTIAL_SUCCESS",
                              "T1": "SUCCESS", "T2": "SUCCESS", "T3": "OFFLOAD_TCP_ENTRIES"}


def test_failed_root_stops_traversal(fake_rig) -> None:
    rig = fake_rig()
    rig.target.faults.fail_blocks(["N"], S.OFFLOAD_NEIGHBOR_ENTRIES)
    root = rig.offload()
    assert statuses(root) == {"N": "OFFLOAD_NEIGHBOR_ENTRIES", "P": "FAILURE", "T": "FAILURE"}
    assert rig.target.neighbors == {} and rig.target.paths == {} and len(rig.table) == 0


def test_linkers_and_placeholder(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    _, _, t2 = sample_states(40002)
    root = rig.host.offload_connection("N", "P", t2, labels=("N", "P", "T2"))
    rig.run()
    assert statuses(root) == {"N": "SUCCESS", "P": "SUCCESS", "T2": "SUCCESS"}
    assert rig.tcp("T2").path is rig.tcp("T").path
    # a placeholder neighbor above a linker path
    _, _, t3 = sample_states(40003)
    root = rig.host.offload_connection(None, "P", t3, labels=("ph", "P", "T3"))
    rig.run()
    assert statuses(root) == {"ph": "SUCCESS", "P": "SUCCESS", "T3": "SUCCESS"}


def test_buffered_data_that_cannot_be_copied_fails_the_block(fake_rig) -> None:
    table = FakeDataPathTable(4, receive_buffer=10)
    rig = fake_rig(4, table=table)
    root = rig.offload(buffered=b"y" * 11, send=[b"s" * 5])
    assert statuses(root)["T"] == "FAILURE"
    assert len(table) == 0 and rig.events("TcpOffloadSendComplete") == []


def test_path_mtu_and_vlan_mismatch(fake_rig) -> None:
    rig = fake_rig(interface_vlans=(5,), max_path_mtu=1500)
    n, p, t = sample_states()
    p.Cached.PathMtu = 9000
    root = rig.host.offload_connection(n, p, t)
    rig.run()
    assert statuses(root) == {"N": "OFFLOAD_PARTIAL_SUCCESS", "P": "OFFLOAD_PATH_MTU", "T": "FAILURE"}
    n2, p2, t2 = sample_states(40001)
    n2.Const.VlanId = 7
    root = rig.host.offload_connection(n2, p2, t2, labels=("N2", "P2", "T2"))
    rig.run()
    assert statuses(root)["N2"] == "OFFLOAD_VLAN_MISMATCH"


def test_initiate_sets_table_fields_and_activates(fake_rig) -> None:
    rig = fake_rig()
    rig.offload(snd_una=7000, rcv_nxt=3000)
    t = rig.tcp()
    assert rig.table.get_field(t.handle, "SndUna") == 7000
    assert rig.table.get_field(t.handle, "RcvNxt") == 3000
    assert rig.table.get_field(t.handle, "SRtt") == 80
    assert rig.table.get_field(t.handle, "context") == t.id
    act = next(c for c in rig.table.calls if c[0] == "activate")
    assert act[2] == NIC_MAC and act[3] == bytes.fromhex("020000000001") and act[5] == 1500


# ---------------------------------------------------------------------------------------------
# sends (T.1, V6)


def test_send_nbls_complete_only_when_acked(make_rig) -> None:
    rig = make_rig()
    rig.offload(send=[b"i" * 100])
    peer = Peer(40000)
    rig.host.send_chain("T", [b"a" * 100, b"b" * 200, b"c" * 300])
    rig.advance(0.01)  # the data path transmits
    assert rig.wire, "send data went out"
    assert sends_completed(rig) == []
    rig.frame_in(peer.ack_bytes(150))  # initial NBL + half of "a"
    assert sends_completed(rig) == [("NDIS_STATUS_SUCCESS", 100)]
    rig.frame_in(peer.ack_bytes(49))  # one byte of "a" still unACKed
    assert len(sends_completed(rig)) == 1
    rig.frame_in(peer.ack_bytes(1 + 200 + 299))
    assert sends_completed(rig) == [("NDIS_STATUS_SUCCESS", 100), ("NDIS_STATUS_SUCCESS", 100),
                                    ("NDIS_STATUS_SUCCESS", 200)]
    rig.frame_in(peer.ack_bytes(1))
    assert sends_completed(rig)[-1] == ("NDIS_STATUS_SUCCESS", 300)
    rig.checker.assert_clean()


def test_send_after_retrieve_gets_upload_in_progress(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.TimeoutExpiration)
    rig.run()
    assert ("TcpOffloadEvent", "T", RETRIEVE, TCP_UPLOAD_REASON.TimeoutExpiration) in rig.host.events
    rig.host.send("T", b"late")
    rig.run()
    assert sends_completed(rig) == [("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0)]


def test_send_refused_behind_outstanding_sends_keeps_fifo(make_rig) -> None:
    """d.2 refuses a send posted after the upload request, but f.3 / V6 keep completions FIFO:
    it waits behind the earlier unacknowledged send, is never transmitted, and completes with
    UPLOAD_IN_PROGRESS only after that one completed."""
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.send("T", b"a" * 100)
    rig.advance(0.01)
    sent = len(rig.wire)
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.TimeoutExpiration)
    rig.run()
    rig.host.send("T", b"late")
    rig.advance(0.01)
    assert sends_completed(rig) == []  # not ahead of "a", still outstanding
    assert not any(b"late" in f for f in rig.wire[sent:])  # never handed to the data path
    rig.frame_in(peer.ack_bytes(100))
    assert sends_completed(rig) == [("NDIS_STATUS_SUCCESS", 100),
                                    ("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0)]
    rig.checker.assert_clean()


def test_send_refused_behind_outstanding_sends_goes_back_in_the_chain(make_rig) -> None:
    """The same, terminated while the earlier send is unacknowledged: both are handed back in
    the NetBufferListChain, in the order they were posted (d.3 step 6)."""
    rig = make_rig()
    rig.offload()
    rig.host.send("T", b"a" * 100)
    rig.advance(0.01)
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.TimeoutExpiration)
    rig.run()
    rig.host.send("T", b"late")
    rig.run()
    root = rig.host.terminate(["T"])
    rig.run()
    assert sends_completed(rig) == []
    assert [bytes(n.data) for n in iter_nbls(root.NetBufferListChain)] == [b"a" * 100, b"late"]
    d = root.state
    assert d.SndUna == 5000 and d.SndMax == 5100  # "late" was never sent
    rig.checker.assert_clean()


def test_optional_retrieve_keeps_servicing(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    rig.target.request_upload("T", TCP_UPLOAD_REASON.LowActivity)
    rig.run()
    rig.host.send("T", b"still fine")
    rig.run()
    assert sends_completed(rig) == []  # queued, not refused
    assert len(rig.tcp().sends) == 1


def test_data_path_retrieve_event_is_indicated(fake_rig) -> None:
    rig = fake_rig()
    rig.offload()
    rig.table.retrieve(rig.tcp().handle, TCP_UPLOAD_REASON.HighDropRate)
    rig.advance(0.001)
    assert rig.events("TcpOffloadEvent") == [("TcpOffloadEvent", "T", RETRIEVE,
                                              TCP_UPLOAD_REASON.HighDropRate)]


def test_send_backlog_beyond_the_send_buffer_is_pumped_later(fake_rig) -> None:
    table = FakeDataPathTable(4, send_buffer=100)
    rig = fake_rig(4, table=table)
    rig.offload()
    peer = Peer(40000)
    rig.host.send_chain("T", [b"a" * 80, b"b" * 80])
    rig.run()
    t = rig.tcp()
    assert t.appended_total == 100 and t.stream_total == 160
    rig.advance(0.01)
    rig.frame_in(peer.ack_bytes(100))
    assert t.appended_total == 160
    rig.advance(0.01)
    rig.frame_in(peer.ack_bytes(60))
    assert [n for _, n in sends_completed(rig)] == [80, 80]


# ---------------------------------------------------------------------------------------------
# receives: the T.2 delivery algorithm


def test_posted_receives_are_filled_first_in_order(make_rig) -> None:
    rig = make_rig(accept="none")
    rig.offload()
    peer = Peer(40000)
    a = rig.host.post_receive("T", 4, no_push=True)
    b = rig.host.post_receive("T", 10, no_push=True)
    rig.run()
    rig.frame_in(peer.data(b"0123456789"))
    got = [e for e in rig.host.events if e[0] == "ReceivedData"]
    assert got == [("ReceivedData", b"0123")]  # b (non-push) is not full yet
    rig.frame_in(peer.data(b"abcdefgh"))
    got = [e for e in rig.host.events if e[0] == "ReceivedData"]
    assert got == [("ReceivedData", b"0123"), ("ReceivedData", b"456789abcd")]
    assert a.TcpOffloadBytesTransferred == 4 and b.TcpOffloadBytesTransferred == 10
    # the rest ("efgh") is indicated (refused by this host: kept by the target)
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"efgh", "NOT_ACCEPTED")]
    assert bytes(rig.tcp().rx_held) == b"efgh"


def test_push_mode_buffer_completes_partially(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.post_receive("T", 100)  # push mode
    rig.run()
    rig.frame_in(peer.data(b"hello"))
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [("ReceivedData", b"hello")]


def test_psh_completes_the_buffer_holding_its_last_byte(make_rig) -> None:
    """T.2: a partially filled push-mode buffer completes when a segment with PSH arrives --
    the buffer that holds that segment's last byte, not one filled before it."""
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.post_receive("T", 100)
    rig.run()
    rig.frame_in(peer.data(b"no push yet, ", push=False))
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == []  # waits (timer)
    rig.frame_in(peer.data(b"pushed"))
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [
        ("ReceivedData", b"no push yet, pushed")]
    # a PSH whose last byte went into a buffer that was then filled completely: the next
    # partially filled buffer does not complete on that (old) push
    rig.host.post_receive("T", 4)
    rig.host.post_receive("T", 100)
    rig.run()
    rig.frame_in(peer.data(b"full"))  # PSH, exactly fills the 4-byte buffer
    rig.frame_in(peer.data(b"tail", push=False))
    got = [e[1] for e in rig.host.events if e[0] == "ReceivedData"]
    assert got == [b"no push yet, pushed", b"full"]  # "tail" waits for the push timer
    rig.advance(0.6)
    got = [e[1] for e in rig.host.events if e[0] == "ReceivedData"]
    assert got == [b"no push yet, pushed", b"full", b"tail"]


def test_push_timer_completes_partial_buffer(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.post_receive("T", 100)
    rig.run()
    rig.frame_in(peer.data(b"abc", push=False))  # no PSH: only the push timer completes it
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == []
    assert rig.target.next_deadline() == pytest.approx(0.5)
    rig.advance(0.6)
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [("ReceivedData", b"abc")]


def test_indication_accepted(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    t = rig.tcp()
    assert rig.target.receive_frame(peer.data(b"payload"), rig.now) == FRAME_CONSUMED
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"payload", "SUCCESS")]
    assert len(t.indicated) == 1  # the host's until it returns it
    rig.run()  # the host returns the NBL (TcpOffloadReceiveReturn)
    assert t.indicated == {}


def test_indication_partially_accepted_then_post(make_rig) -> None:
    rig = make_rig(accept=3)
    rig.offload()
    peer = Peer(40000)
    rig.frame_in(peer.data(b"abcdefgh"))
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"abc", "PARTIAL")]
    rig.frame_in(peer.data(b"ij"))  # blocked until a post: no new indication
    assert len(rig.events("ReceiveIndicate")) == 1
    rig.host.post_receive("T", 100)
    rig.run()
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [("ReceivedData", b"defghij")]


def test_refused_indication_then_zero_byte_post_reenables(make_rig) -> None:
    rig = make_rig(accept="none")
    rig.offload()
    peer = Peer(40000)
    rig.frame_in(peer.data(b"xyz"))
    assert len(rig.events("ReceiveIndicate")) == 1
    rig.host.accept = "all"
    rig.host.post_receive("T", 0)
    rig.run()
    assert rig.events("ReceiveIndicate")[-1] == ("ReceiveIndicate", "T", b"xyz", "SUCCESS")
    assert ("TcpOffloadReceiveComplete", (("NDIS_STATUS_SUCCESS", 0),)) in rig.host.events


def test_rcv_indication_size_is_honoured(fake_rig) -> None:
    rig = fake_rig()
    n, p, t = sample_states()
    t.Cached.RcvIndicationSize = 4
    rig.host.offload_connection(n, p, t)
    rig.run()
    rig.frame_in(Peer(40000).data(b"0123456789"))
    assert [e[2] for e in rig.events("ReceiveIndicate")] == [b"0123", b"4567", b"89"]


def test_buffered_data_is_delivered_before_new_data(make_rig) -> None:
    rig = make_rig()
    rig.offload(buffered=b"OLD", rcv_nxt=1000)  # BufferedData ends at RcvNxt
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"OLD", "SUCCESS")]
    rig.frame_in(Peer(40000, seq=1000).data(b"new"))
    assert [e[2] for e in rig.events("ReceiveIndicate")] == [b"OLD", b"new"]


def test_no_indication_before_initiate_complete(make_rig) -> None:
    """V4: data that arrives while the initiate completion is held waits for it."""
    rig = make_rig()
    rig.target.faults.delay_completion("initiate", 1.0)
    rig.offload()
    assert rig.events("InitiateOffloadComplete") == []
    rig.frame_in(Peer(40000).data(b"early"))
    assert rig.events("ReceiveIndicate") == []
    rig.advance(1.0)
    assert rig.events("InitiateOffloadComplete")
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"early", "SUCCESS")]
    rig.checker.assert_clean()


def test_fin_indicated_after_prior_data_consumed(make_rig) -> None:
    rig = make_rig(accept="none")
    rig.offload()
    peer = Peer(40000)
    rig.frame_in(peer.data(b"last words"))
    rig.frame_in(peer.fin())
    assert rig.events("TcpOffloadEvent") == []  # data not consumed yet
    rig.host.post_receive("T", 64)
    rig.run()
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [("ReceivedData", b"last words")]
    assert rig.events("TcpOffloadEvent") == [("TcpOffloadEvent", "T", DISC, 0)]
    rig.host.post_receive("T", 64)  # posted after the disconnect indication
    rig.run()
    assert rig.events("TcpOffloadReceiveComplete")[-1][1] == (("NDIS_STATUS_INVALID_STATE", 0),)


def test_rst_aborts_outstanding_io(make_rig) -> None:
    rig = make_rig()
    rig.offload(send=[b"q" * 10])
    rig.host.post_receive("T", 10)
    rig.host.send("T", b"w" * 10)
    rig.run()
    rig.frame_in(Peer(40000).rst())
    assert rig.events("TcpOffloadEvent") == [("TcpOffloadEvent", "T", ABORT, 0)]
    assert sends_completed(rig) == [("NDIS_STATUS_REQUEST_ABORTED", 0)] * 2
    assert rig.events("TcpOffloadReceiveComplete")[-1][1] == (("NDIS_STATUS_REQUEST_ABORTED", 0),)
    rig.host.send("T", b"after")
    rig.run()
    assert sends_completed(rig)[-1] == ("NDIS_STATUS_REQUEST_ABORTED", 0)


# ---------------------------------------------------------------------------------------------
# disconnect (f.3, V8)


def test_graceful_disconnect_completes_when_fin_acked(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.send("T", b"bye" * 10)
    d = rig.host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE)
    rig.advance(0.01)
    rig.advance(0.01)  # data, then FIN
    assert rig.events("TcpOffloadDisconnectComplete") == []
    rig.frame_in(peer.ack_bytes(30))
    assert sends_completed(rig) == [("NDIS_STATUS_SUCCESS", 30)]
    assert rig.events("TcpOffloadDisconnectComplete") == []
    rig.frame_in(peer.ack_bytes(1))  # the FIN
    assert rig.events("TcpOffloadDisconnectComplete") == [
        ("TcpOffloadDisconnectComplete", (("NDIS_STATUS_SUCCESS", 0),))]
    assert d.Status == S.SUCCESS


def test_abortive_disconnect_aborts_sends_first(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    rig.host.send("T", b"x" * 10)
    rig.run()
    rig.host.disconnect("T", TCP_DISCONNECT_ABORTIVE_CLOSE)
    rig.run()
    names = [e[0] for e in rig.host.events if e[0].startswith("TcpOffload")]
    assert names == ["TcpOffloadSendComplete", "TcpOffloadDisconnectComplete"]
    assert sends_completed(rig) == [("NDIS_STATUS_REQUEST_ABORTED", 0)]
    if isinstance(rig.table, FakeDataPathTable):
        assert ("disconnect", rig.tcp().handle, False) in rig.table.calls


# ---------------------------------------------------------------------------------------------
# terminate (d.3)


def test_terminate_returns_state_sends_in_order_and_buffered_data(fake_rig) -> None:
    rig = fake_rig(accept="none")
    rig.offload(send=[b"A" * 10])
    t = rig.tcp()
    handle = t.handle
    peer = Peer(40000)
    rig.host.send_chain("T", [b"B" * 20, b"C" * 30])
    rig.advance(0.01)
    rig.frame_in(peer.ack_bytes(15))  # A done, 5 bytes of B
    rig.frame_in(peer.data(b"undelivered"))  # refused: held by the target
    rig.frame_in(peer.data(b"+more"))  # still in the table (blocked)
    post = rig.host.post_receive("T", 0)
    rig.table.conns[handle].owe_ack = True
    rig.host.events.clear()
    # the post re-enables and is completed, "undelivered+more" are refused again; then terminate
    rig.run()
    root = rig.host.terminate(["T"])
    rig.run()
    assert [c[0] for c in rig.table.calls if c[1:2] == (handle,)][-4:] == [
        "flush_acks", "set_terminating", "export", "remove"]
    assert statuses(root) == {"T": "SUCCESS"}
    chain = list(iter_nbls(root.NetBufferListChain))
    assert [bytes(n.data) for n in chain] == [b"B" * 15, b"C" * 30]  # original NBLs, B advanced
    d = root.state
    assert d.SendDataHead is chain[0] and d.SendDataTail is chain[-1]
    assert d.SndUna == 5015 and d.SndNxt == 5060 and d.SndMax == 5060
    assert bytes(d.BufferedData.data) == b"undelivered+more"
    assert d.RcvNxt == 1016
    assert d.Retransmit.TimeoutDelta == TIMER_NOT_RUNNING
    assert post.Status == S.SUCCESS
    assert len(rig.table) == 0 and rig.target.tcps == {}
    # BufferedData NBLs come back through TcpOffloadReceiveReturn (ScriptedHost.poll)
    assert rig.target.returned_buffers == {}
    # after the terminate, frames of the connection take the ordinary path
    assert rig.target.receive_frame(peer.data(b"late"), rig.now) == FRAME_NOT_OURS
    rig.checker.assert_clean()


def test_terminate_completes_outstanding_calls(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    rig.host.post_receive("T", 50)
    rig.host.send("T", b"s" * 10)
    rig.host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE)
    rig.run()
    root = rig.host.terminate(["T"])
    rig.run()
    assert statuses(root) == {"T": "SUCCESS"}
    assert rig.events("TcpOffloadReceiveComplete")[-1][1] == (("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0),)
    assert rig.events("TcpOffloadDisconnectComplete")[-1][1] == (("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0),)
    assert [bytes(n.data) for n in iter_nbls(root.NetBufferListChain)] == [b"s" * 10]


def test_terminate_whole_tree_frees_everything(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    root = rig.host.upload_all()
    rig.run()
    assert set(statuses(root).values()) == {"SUCCESS"}
    assert rig.target.neighbors == {} and rig.target.paths == {} and rig.target.tcps == {}
    assert root.state.NicReachabilityDelta >= 0


# ---------------------------------------------------------------------------------------------
# query / update / invalidate


def test_query_fills_the_structures(make_rig) -> None:
    rig = make_rig(accept="none")
    rig.offload()
    rig.frame_in(Peer(40000).data(b"12345"))
    root = rig.host.query(["T", "N", "P"])
    rig.run()
    assert set(statuses(root).values()) == {"SUCCESS"}
    q = {b.label: b.state for b in (root, root.NextBlock, root.NextBlock.NextBlock)}
    assert q["T"].Const.LocalPort == 40000 and q["T"].Delegated.RcvNxt == 1005
    # b.13: SendBacklogSize is the preferred backlog of the same CWnd / SndWnd (14600 / 65535,
    # MSS 1460): 2 x 14600 (test_send_backlog.py has the rule)
    assert q["T"].Delegated.ReceiveBacklogSize == 5 and q["T"].Delegated.SendBacklogSize == 29200
    assert q["N"].Cached.DlDestinationAddress[:6] == bytes.fromhex("020000000001")
    assert q["P"].Cached.PathMtu == 1500


def test_update_cached_state_and_relink(fake_rig) -> None:
    rig = fake_rig()
    rig.offload()
    t = rig.tcp()
    cached = TCP_OFFLOAD_STATE_CACHED(InitialRcvWnd=32768, TtlOrHopLimit=33)
    root = rig.host.update("T", cached)
    rig.run()
    assert statuses(root) == {"T": "SUCCESS"}
    assert rig.table.get_field(t.handle, "TtlOrHopLimit") == 33 and t.cached.InitialRcvWnd == 32768
    root = rig.host.update("P", PATH_OFFLOAD_STATE_CACHED(1400))
    rig.run()
    assert rig.table.conns[t.handle].route["path_mtu"] == 1400
    # relink P under a new neighbor N2: offload N2 (placeholder path), then an update tree
    n2, _, _ = sample_states()
    n2.Cached.DlDestinationAddress = bytes.fromhex("0200000000ee") + bytes(26)
    from ndis.blocks import placeholder_block, reference_block
    from ndis.state import OffloadLayer

    b_n2 = new_offload_block(n2, label="N2")
    add_dependents(b_n2, placeholder_block(OffloadLayer.PATH))
    rig.host.offload(b_n2)
    rig.run()
    n2_handle = b_n2.OffloadHandle
    upd = reference_block(n2_handle, OffloadLayer.NEIGHBOR, label="N2")
    add_dependents(upd, reference_block(rig.host.handles["P"], OffloadLayer.PATH, label="P"))
    rig.host._remember(upd)
    rig.binding.NdisUpdateOffload(upd)
    rig.run()
    assert statuses(upd) == {"N2": "SUCCESS", "P": "SUCCESS"}
    assert t.path.neighbor.label == "N2"
    assert rig.table.conns[t.handle].route["remote_mac"] == bytes.fromhex("0200000000ee")
    root = rig.host.update("N2", NEIGHBOR_OFFLOAD_STATE_CACHED(bytes.fromhex("0200000000ef") + bytes(26), 0))
    rig.run()
    assert rig.table.conns[t.handle].route["remote_mac"] == bytes.fromhex("0200000000ef")


def test_invalidate_neighbor_requests_upload_of_dependents(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    _, _, t2 = sample_states(40002)
    rig.host.offload_connection("N", "P", t2, labels=("N", "P", "T2"))
    rig.run()
    root = rig.host.invalidate(["N"])
    rig.run()
    assert statuses(root) == {"N": "SUCCESS"}
    retrieves = sorted(e[1] for e in rig.events("TcpOffloadEvent") if e[2] == RETRIEVE)
    assert retrieves == ["T", "T2"]
    assert all(e[3] == TCP_UPLOAD_REASON.InvalidState for e in rig.events("TcpOffloadEvent"))
    # the completion reached the host before the retrieve requests
    names = [e[0] for e in rig.host.events]
    assert names.index("InvalidateOffloadComplete") < names.index("TcpOffloadEvent")
    rig.host.send("T", b"no")
    rig.run()
    assert sends_completed(rig) == [("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0)]


# ---------------------------------------------------------------------------------------------
# forward, parameters


def test_forwarded_segment_is_processed(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    nbl = rig.host.forward("T", Peer(40000).data(b"via host"))
    rig.run()
    assert nbl.Status == S.SUCCESS
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"via host", "SUCCESS")]


def test_parameters_oid_configures_the_data_path(fake_rig) -> None:
    rig = fake_rig()
    params = NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(TicksPerSecond=100, TcpPushTicks=50)
    assert rig.binding.NdisSetTcpConnectionOffloadParameters(params) == S.SUCCESS
    assert rig.table.config["ticks_per_second"] == 100 and rig.table.config["push_ticks"] == 50
    assert rig.target.ticks_per_second == 100


def test_io_on_a_terminated_connection_is_refused(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    obj = rig.tcp()
    rig.host.terminate(["T"])
    rig.run()
    nbl = NET_BUFFER_LIST(b"zz")
    rig.checker.disabled = rig.checker.disabled | {"V6"}  # called directly, bypassing NDIS (a host may not: V13)
    assert rig.target.TcpOffloadSend(obj, nbl) == S.PENDING
    rig.ndis.deliver_pending()
    assert nbl.Status == S.UPLOAD_IN_PROGRESS


def test_event_constants_are_distinct() -> None:
    from offload_target import miniport as m

    codes = [m.EVENT_SEND_ACKED, m.EVENT_DATA, m.EVENT_FIN, m.EVENT_RST, m.EVENT_RETRIEVE,
             m.EVENT_FIN_ACKED]
    assert len(set(codes)) == 6 and EVENT_RETRIEVE in codes
    assert (m.FRAME_CONSUMED, m.FRAME_NOT_OURS, m.FRAME_PASS_UP) == (0, 1, 2)
    assert FRAME_CONSUMED == 0


def test_send_chain_helper_order() -> None:
    head = link_nbls(NET_BUFFER_LIST(b"x") for _ in range(3))
    assert len(list(iter_nbls(head))) == 3


def test_terminate_returns_partial_non_push_buffer_with_its_bytes(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    post = rig.host.post_receive("T", 100, no_push=True)
    rig.run()
    rig.frame_in(Peer(40000).data(b"part"))
    assert rig.events("TcpOffloadReceiveComplete") == []  # non-push: not full
    root = rig.host.terminate(["T"])
    rig.run()
    assert post.Status == S.UPLOAD_IN_PROGRESS and post.TcpOffloadBytesTransferred == 4
    assert [e for e in rig.host.events if e[0] == "ReceivedData"] == [("ReceivedData", b"part")]
    assert root.state.BufferedData is None and root.state.RcvNxt == 1004


def test_receive_return_from_inside_the_indication(make_rig) -> None:
    rig = make_rig()
    rig.offload()
    orig = rig.binding.client_tcp.TcpOffloadReceiveIndicateHandler

    def indicate_and_return(handle, nbl, status):
        result = orig(handle, nbl, status)
        rig.host.to_return.remove(nbl)
        rig.binding.NdisOffloadTcpReceiveReturn(nbl)  # synchronous, re-entrant
        return result

    rig.binding.client_tcp.TcpOffloadReceiveIndicateHandler = indicate_and_return
    t = rig.tcp()
    rig.target.receive_frame(Peer(40000).data(b"quick"), rig.now)
    assert t.indicated == {}


def test_terminate_with_a_fin_in_flight(make_rig) -> None:
    """Graceful disconnect, all data ACKed, the FIN not yet: the disconnect completes with
    UPLOAD_IN_PROGRESS; without returned send data the exported SndMax stands."""
    rig = make_rig()
    rig.offload()
    peer = Peer(40000)
    rig.host.send("T", b"z" * 10)
    rig.host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE)
    rig.advance(0.01)
    rig.advance(0.01)
    rig.frame_in(peer.ack_bytes(10))
    assert sends_completed(rig) == [("NDIS_STATUS_SUCCESS", 10)]
    root = rig.host.terminate(["T"])
    rig.run()
    assert rig.events("TcpOffloadDisconnectComplete")[-1][1] == (("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0),)
    assert root.NetBufferListChain is None and root.state.SndUna == 5010
    if make_rig.kind == "real":
        from ndis.state import TCP_OFFLOAD_CONNECTION_STATE as CS

        assert root.state.State == CS.TcpConnectionFinWait1
        assert root.state.SndMax == 5011  # the FIN
