"""Target-side fault hooks (offload_target/faults.py), UPLOAD_ALL / PAUSE / RESUME and the
NeighborReachabilityQuery, each with its documented outcome, under a strict checker."""

from __future__ import annotations

import pytest

from ndis.blocks import iter_nbls
from ndis.fakes import sample_states
from ndis.state import (
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_UPLOAD_REASON,
    NeighborOffloadState,
)
from ndis.status import NdisStatus, Operation

from .test_miniport import statuses
from .test_miniport_fakes import Peer, Rig

S = NdisStatus
RETRIEVE = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateRetrieve
ABORT = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateAbort


def offload_many(rig: Rig, n: int) -> None:
    """n connections under one neighbor and one path."""
    nb, pa, _ = sample_states()
    tcps = [sample_states(41000 + i)[2] for i in range(n)]
    rig.host.offload_connection(nb, pa, tcps)
    rig.run()


def test_delay_completion_of_initiate() -> None:
    rig = Rig()
    rig.target.faults.delay_completion("initiate", 0.25)
    rig.offload()
    assert rig.events("InitiateOffloadComplete") == []
    assert rig.target.next_deadline() == pytest.approx(0.25)
    rig.advance(0.2)
    assert rig.events("InitiateOffloadComplete") == []
    rig.advance(0.05)
    assert len(rig.events("InitiateOffloadComplete")) == 1
    assert rig.target.faults.log == [("delayed", "initiate", "0.25s")]
    rig.checker.assert_clean()


def test_delay_completion_of_sends() -> None:
    rig = Rig()
    rig.offload()
    rig.target.faults.delay_completion("send", 1.0)
    rig.host.send("T", b"d" * 10)
    rig.advance(0.01)
    rig.frame_in(Peer(40000).ack_bytes(10))
    assert rig.events("TcpOffloadSendComplete") == []
    rig.advance(1.0)
    assert rig.events("TcpOffloadSendComplete") == [("TcpOffloadSendComplete", (("NDIS_STATUS_SUCCESS", 10),))]


def test_never_complete_then_release() -> None:
    rig = Rig()
    rig.offload()
    rig.target.faults.never_complete("query")
    root = rig.host.query(["T"])
    rig.advance(100.0)
    assert rig.events("QueryOffloadComplete") == []
    assert [op for op, _ in rig.target.faults.withheld] == ["query"]
    assert rig.target.faults.release_withheld() == 1
    rig.run()
    assert statuses(root) == {"T": "SUCCESS"}
    rig.checker.assert_clean()


def test_never_complete_is_seen_by_the_checker_as_outstanding() -> None:
    rig = Rig()
    rig.target.faults.never_complete("initiate")
    rig.offload()
    with pytest.raises(Exception, match="V1|outstanding|quiescent"):
        rig.checker.assert_quiescent()


def test_unknown_operation_is_rejected() -> None:
    rig = Rig()
    with pytest.raises(ValueError):
        rig.target.faults.delay_completion("teleport", 1.0)


def test_fail_blocks_by_predicate_in_initiate_and_terminate() -> None:
    rig = Rig()
    rig.target.faults.fail_blocks(lambda b, op: b.label == "T2", S.OFFLOAD_TCP_XMIT_BUFFER)
    nb, pa, t1 = sample_states(40001)
    t2 = sample_states(40002)[2]
    root = rig.host.offload_connection(nb, pa, [t1, t2])
    rig.run()
    assert statuses(root) == {"N": "SUCCESS", "P": "OFFLOAD_PARTIAL_SUCCESS", "T1": "SUCCESS",
                              "T2": "OFFLOAD_TCP_XMIT_BUFFER"}
    rig.target.faults.clear()
    rig.target.faults.fail_blocks(["T1"], S.FAILURE, ops=[Operation.TERMINATE])
    root = rig.host.terminate(["T1"])
    rig.run()
    assert statuses(root) == {"T1": "FAILURE"}  # the state is lost for the host
    assert rig.target.tcps == {}


def test_corrupt_hardware_state_d4_recipe() -> None:
    rig = Rig()
    rig.offload(send=[b"p" * 10])
    rig.host.post_receive("T", 20, no_push=True)
    rig.run()
    rig.target.faults.corrupt_hardware_state("T")
    rig.run()
    ev = rig.events("TcpOffloadEvent")
    assert ev == [("TcpOffloadEvent", "T", RETRIEVE, TCP_UPLOAD_REASON.HardwareFailure),
                  ("TcpOffloadEvent", "T", ABORT, 0)]
    q = rig.host.query(["T"])
    rig.run()
    assert statuses(q) == {"T": "FAILURE"}
    root = rig.host.terminate(["T"])
    rig.run()
    assert statuses(root) == {"T": "FAILURE"}
    assert root.NetBufferListChain is None
    assert rig.events("TcpOffloadSendComplete")[-1][1] == (("NDIS_STATUS_REQUEST_ABORTED", 0),)
    assert rig.events("TcpOffloadReceiveComplete")[-1][1] == (("NDIS_STATUS_REQUEST_ABORTED", 0),)
    assert len(rig.table) == 0
    rig.checker.assert_clean()


def test_request_upload_hook_and_host_upload() -> None:
    rig = Rig()
    rig.host.auto_upload = True
    rig.offload()
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.UploadRequested)
    rig.run()
    assert rig.events("TcpOffloadEvent") == [
        ("TcpOffloadEvent", "T", RETRIEVE, TCP_UPLOAD_REASON.UploadRequested)]
    assert rig.events("TerminateOffloadComplete")  # ScriptedHost uploaded it
    assert rig.target.tcps == {}


def test_receive_after_upload_requested_gets_upload_in_progress() -> None:
    rig = Rig()
    rig.offload()
    rig.target.request_upload("T", TCP_UPLOAD_REASON.UploadRequested)
    rig.run()
    rig.host.post_receive("T", 8)
    rig.run()
    assert rig.events("TcpOffloadReceiveComplete")[-1][1] == (("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0),)


def test_upload_all_with_many_connections() -> None:
    rig = Rig(64)
    offload_many(rig, 40)
    assert rig.target.tcp_count == 40
    for i in range(0, 40, 5):  # some data in flight on a few of them
        rig.host.send(f"T{i + 1}", b"u" * 100)
    rig.run()
    rig.target.faults.upload_all()
    rig.host.send("T2", b"late")
    rig.run()
    assert ("StatusEx", "NDIS_STATUS_UPLOAD_ALL") in rig.host.events
    done = rig.events("TerminateOffloadComplete")
    assert len(done) == 1 and len(done[0][2]) == 42  # N, P and 40 TCP blocks in one tree
    assert all(st == "NDIS_STATUS_SUCCESS" for _, st in done[0][2])
    returned = rig.events("SendDataReturned")
    assert len(returned) == 8 and all(r[2] == (b"u" * 100,) for r in returned)
    assert rig.target.tcps == {} and len(rig.table) == 0
    assert ("NDIS_STATUS_UPLOAD_IN_PROGRESS", 0) in [x for e in rig.events("TcpOffloadSendComplete")
                                                     for x in e[1]]
    rig.target.resume()
    rig.run()
    assert rig.host.events[-1] == ("StatusEx", "NDIS_STATUS_OFFLOAD_RESUME")
    assert not rig.host.paused
    rig.checker.assert_clean()


def test_shrink_capacity_pause_upload_resume() -> None:
    rig = Rig(8)
    rig.host.auto_upload = True
    offload_many(rig, 5)
    rig.target.faults.shrink_capacity(2)
    rig.run()
    status_events = [e[1] for e in rig.host.events if e[0] == "StatusEx"]
    assert status_events == ["NDIS_STATUS_OFFLOAD_PAUSE", "NDIS_STATUS_OFFLOAD_RESUME"]
    assert rig.target.tcp_count == 2
    assert rig.binding.TcpConnectionOffloadCapabilities.TcpConnectionOffloadCapacity == 2
    assert rig.host.chimney_capacity == 2
    # the new capacity is enforced
    t = sample_states(42000)[2]
    root = rig.host.offload_connection("N", "P", t, labels=("N", "P", "Tx"))
    rig.run()
    assert statuses(root)["Tx"] == "OFFLOAD_TCP_ENTRIES"


def test_pause_and_resume_indications() -> None:
    rig = Rig()
    rig.target.pause()
    assert rig.host.paused
    rig.offload()  # in-flight initiates are still served (c.4)
    assert rig.target.tcp_count == 1
    rig.target.resume(capacity=4)
    assert not rig.host.paused
    assert rig.host.chimney_capacity == 4


def test_neighbor_reachability_query_when_stale() -> None:
    rig = Rig()
    params = NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(NceStaleTicks=1000)
    rig.binding.NdisSetTcpConnectionOffloadParameters(params)
    rig.offload()
    rig.host.hrd = 0  # the host's own entry is stale
    rig.now = 5.0
    rig.host.send("T", b"probe me")
    rig.run()
    ev = [e for e in rig.host.events if e[0] == "IndicateOffloadEvent"]
    assert ev == [("IndicateOffloadEvent", "N", 2)]
    nb = rig.target.find_neighbor("N")
    assert nb.hrt == rig.target.now_ticks  # HRD 0 -> HRT = now: no repeat for NceStaleTicks
    rig.host.send("T", b"again")
    rig.advance(0.5)
    assert len([e for e in rig.host.events if e[0] == "IndicateOffloadEvent"]) == 1


def test_reachability_query_carries_nrd() -> None:
    rig = Rig()
    rig.offload()
    rig.now = 2.0
    rig.run()
    seen = {}

    def capture(block, code):
        assert isinstance(block.state, NeighborOffloadState)
        seen["nrd"] = block.state.Delegated.NicReachabilityDelta
        block.state.Cached.HostReachabilityDelta = 7

    rig.host.IndicateOffloadEvent = capture  # type: ignore[method-assign]
    rig.binding.client_generic.IndicateOffloadEventHandler = capture
    assert rig.target.reachability_query("N") == 7
    assert seen["nrd"] == 2000


def test_terminate_after_retrieve_returns_unsent_data_in_order() -> None:
    rig = Rig()
    rig.offload()
    rig.host.send_chain("T", [b"1" * 5, b"2" * 5, b"3" * 5])
    rig.run()
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.TimeoutExpiration)
    rig.run()
    root = rig.host.terminate(["T"])
    rig.run()
    assert [bytes(n.data) for n in iter_nbls(root.NetBufferListChain)] == [b"1" * 5, b"2" * 5, b"3" * 5]
    assert root.state.SndUna == 5000 and root.state.SndMax == 5015  # sent, none ACKed
