"""The conformance checker: one test per Appendix V invariant (and c.3).  Each test runs the
legal sequence under a strict checker (no violation) and a deliberately broken one under a
report-mode checker, which must flag exactly that rule."""

import pytest

from ndis.blocks import (
    NDIS_OFFLOAD_HANDLE,
    NET_BUFFER_LIST,
    add_dependents,
    iter_blocks,
    link_nbls,
    ndis_to_miniport,
    reference_block,
)
from ndis.checker import RULES, ConformanceError
from ndis.fakes import ChimneyBench, ScriptedHost, ScriptedTarget, sample_states
from ndis.im import PassThroughIM
from ndis.state import (
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_DISCONNECT_GRACEFUL_CLOSE,
    TCP_OFFLOAD_CONNECTION_STATE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_OFFLOAD_STATE_DELEGATED,
    TCP_UPLOAD_REASON,
    OffloadLayer,
)
from ndis.status import NdisStatus, Operation


def connected(ims=0, strict=True, **kw):
    b = ChimneyBench(ims, strict=strict, **kw)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    return b


def held_root(b):
    op, root = b.target.held.pop(0)
    return root


def held_offload(b):
    """Offload the sample neighbor / path / connection while the target holds requests: the
    initiate tree as the target received it, not processed yet."""
    b.target.hold = True
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    return held_root(b)


def assert_flagged(b, rule):
    assert rule in b.checker.rules_broken, [str(v) for v in b.checker.violations]
    v = next(v for v in b.checker.violations if v.rule == rule)
    assert v.calls and v.obj and v.edge and rule in RULES
    return v


def assert_clean(b):
    b.checker.assert_quiescent()
    assert b.checker.violations == [], [str(v) for v in b.checker.violations]


def test_every_rule_has_a_description():
    assert set(RULES) == {f"V{i}" for i in range(1, 18)} | {"C3.2", "C4"}


def test_strict_mode_raises_with_rule_object_and_calls():
    b = connected()
    with pytest.raises(ConformanceError) as exc:
        b.target.request_upload("P", TCP_UPLOAD_REASON.LowActivity)
    v = exc.value.violation
    assert v.rule == "V11" and v.obj == "P" and v.edge == "host->target"
    assert any("NdisInitiateOffload" in c for c in v.calls)
    assert "[V11]" in str(exc.value) and "recent calls" in str(exc.value)


# V1 ------------------------------------------------------------------------------------------

def test_v1_legal():
    b = connected()
    b.host.query(["T"])
    b.run()
    b.host.terminate(["T"])
    b.run()
    assert_clean(b)


def test_v1_synchronous_completion():
    class SyncTarget(ScriptedTarget):
        def InitiateOffload(self, OffloadBlockList):  # noqa: N802,N803
            self._process(Operation.INITIATE, OffloadBlockList)  # completes before returning

    b = ChimneyBench(0, target=SyncTarget(), strict=False)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    assert_flagged(b, "V1")


def test_v1_illegal_status_double_and_missing_completion():
    b = connected(strict=False)
    b.target.op_script[(Operation.TERMINATE, "T")] = NdisStatus.OFFLOAD_PARTIAL_SUCCESS
    root = b.host.terminate(["T"])
    b.run()
    assert "illegal Terminate Status" in assert_flagged(b, "V1").message
    b.checker.violations.clear()
    ndis_to_miniport(root)
    b.target.ndis.NdisMTerminateOffloadComplete(root)
    assert "twice" in assert_flagged(b, "V1").message
    b.checker.violations.clear()
    b.target.hold = True
    b.host.query(["P"])
    b.checker.assert_quiescent()
    assert "never completed" in assert_flagged(b, "V1").message


# V2 ------------------------------------------------------------------------------------------

def test_v2_legal_partial_tree():
    b = ChimneyBench(0)
    b.target.initiate_script = {"P": NdisStatus.OFFLOAD_PATH_ENTRIES}
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    assert_clean(b)


def test_v2_context_written_for_failed_block():
    b = ChimneyBench(0, strict=False)
    root = held_offload(b)
    b.target._initiate(root)
    tblock = root.DependentBlockList.DependentBlockList
    tblock.Status = NdisStatus.OFFLOAD_TCP_ENTRIES  # but its slot was written
    root.DependentBlockList.Status = NdisStatus.OFFLOAD_PARTIAL_SUCCESS
    b.target.ndis.NdisMInitiateOffloadComplete(root)
    assert "failed block" in assert_flagged(b, "V2").message


def test_v2_not_depth_first():
    b = ChimneyBench(0, strict=False)
    root = held_offload(b)
    for block in reversed(list(iter_blocks(root))):  # T, P, N: wrong order
        block.MiniportOffloadContext.value = object()
        block.Status = NdisStatus.SUCCESS
    b.target.ndis.NdisMInitiateOffloadComplete(root)
    assert "depth-first" in assert_flagged(b, "V2").message


def test_v2_failed_root_and_linker_status():
    b = ChimneyBench(0, strict=False)
    root = held_offload(b)
    blocks = list(iter_blocks(root))
    blocks[0].Status = NdisStatus.FAILURE  # root failed ...
    for blk in blocks[1:]:  # ... but the target kept going
        blk.MiniportOffloadContext.value = object()
        blk.Status = NdisStatus.SUCCESS
    b.target.ndis.NdisMInitiateOffloadComplete(root)
    assert any("failed root" in v.message for v in b.checker.violations if v.rule == "V2")
    # a linker whose only dependent failed must be FAILURE, not SUCCESS
    b2 = connected(strict=False)
    b2.target.hold = True
    _, _, t2 = sample_states(40500)
    b2.host.offload_connection("N", "P", t2, labels=("N", "P", "T2"))
    root = held_root(b2)
    for blk in iter_blocks(root):
        blk.Status = NdisStatus.SUCCESS
    root.DependentBlockList.DependentBlockList.Status = NdisStatus.FAILURE
    b2.target.ndis.NdisMInitiateOffloadComplete(root)
    assert "linker" in assert_flagged(b2, "V2").message


# V3 ------------------------------------------------------------------------------------------

def _failed_tcp_with_data(strict):
    b = ChimneyBench(0, strict=strict)
    b.target.initiate_script = {"T": NdisStatus.OFFLOAD_TCP_XMIT_BUFFER}
    n, p, t = sample_states()
    data = link_nbls([NET_BUFFER_LIST(b"abc"), NET_BUFFER_LIST(b"de")])
    return b, n, p, t, data


def test_v3_legal():
    b, n, p, t, data = _failed_tcp_with_data(True)
    b.host.offload_connection(n, p, t, send_data=data)
    b.run()
    assert data.Status == 0 and data.DataLength == 3
    assert_clean(b)


def test_v3_status_modified_or_completed():
    b, n, p, t, data = _failed_tcp_with_data(False)
    b.target.hold = True
    b.host.offload_connection(n, p, t, send_data=data)
    root = held_root(b)
    b.target._initiate(root)
    data.Status = NdisStatus.UPLOAD_IN_PROGRESS  # touched although the block failed
    b.target.ndis.NdisMInitiateOffloadComplete(root)
    assert_flagged(b, "V3")
    b.checker.violations.clear()
    b.ndis.deliver_pending()
    b.target.ndis.NdisTcpOffloadSendComplete(data)  # and completed as well
    assert_flagged(b, "V3")


# V4 ------------------------------------------------------------------------------------------

def test_v4_legal():
    b = connected()
    b.target.deliver("T", b"x")
    b.run()
    assert_clean(b)


def test_v4_indication_before_initiate_complete():
    b = ChimneyBench(0, strict=False)
    root = held_offload(b)
    b.target._initiate(root)
    tblock = root.DependentBlockList.DependentBlockList
    b.target.ndis.NdisTcpOffloadReceiveHandler(tblock.NdisOffloadHandle, NET_BUFFER_LIST(b"early"))
    assert "before NdisMInitiateOffloadComplete" in assert_flagged(b, "V4").message


def test_v4_nested_indication():
    class NestingHost(ScriptedHost):
        def TcpOffloadReceiveIndicate(self, OffloadContext, NetBufferList, Status):  # noqa: N802,N803
            if not getattr(self, "nested", False):
                self.nested = True
                self.target.ndis.NdisTcpOffloadReceiveHandler(OffloadContext, NET_BUFFER_LIST(b"again"))
            return super().TcpOffloadReceiveIndicate(OffloadContext, NetBufferList, Status)

    host = NestingHost()
    b = ChimneyBench(0, host=host, strict=False)
    host.target = b.target
    n, p, t = sample_states()
    host.offload_connection(n, p, t)
    b.run()
    b.target.deliver("T", b"x")
    b.run()
    assert "during another indication" in assert_flagged(b, "V4").message


def test_v4_indication_during_completion():
    class PostingHost(ScriptedHost):
        def TcpOffloadReceiveComplete(self, NetBufferList):  # noqa: N802,N803
            super().TcpOffloadReceiveComplete(NetBufferList)
            if not getattr(self, "reposted", False):
                self.reposted = True
                self.post_receive("T", 4)  # legal: post from inside the completion (T.2)

    class EagerTarget(ScriptedTarget):
        def TcpOffloadReceive(self, MiniportOffloadContext, NetBufferList):  # noqa: N802,N803
            status = super().TcpOffloadReceive(MiniportOffloadContext, NetBufferList)
            if getattr(self, "eager", False):  # indicates while the completion is in progress
                self.ndis.NdisTcpOffloadReceiveHandler(
                    MiniportOffloadContext.NdisOffloadHandle, NET_BUFFER_LIST(b"now"))
            return status

    host, tgt = PostingHost(), EagerTarget()
    b = ChimneyBench(0, host=host, target=tgt, strict=False)
    n, p, t = sample_states()
    host.offload_connection(n, p, t)
    b.run()
    host.post_receive("T", 2)
    b.run()
    tgt.deliver("T", b"xy")  # legal: the repost from inside the completion is only queued
    b.run()
    assert b.checker.violations == []
    host.reposted = False
    tgt.eager = True
    tgt.deliver("T", b"ab")
    b.run()
    assert "in-progress completion" in assert_flagged(b, "V4").message


# V5 ------------------------------------------------------------------------------------------

def test_v5_legal():
    b = connected()
    b.host.send("T", b"x")
    b.run()
    b.target.deliver("T", b"y")
    b.run()
    assert_clean(b)


def test_v5_io_handler_not_pending_and_receive_return_not_success():
    class Rude(ScriptedTarget):
        def TcpOffloadSend(self, MiniportOffloadContext, NetBufferList):  # noqa: N802,N803
            super().TcpOffloadSend(MiniportOffloadContext, NetBufferList)
            return NdisStatus.SUCCESS

        def TcpOffloadReceiveReturn(self, NetBufferList):  # noqa: N802,N803
            return NdisStatus.FAILURE

    b = connected(strict=False, target=Rude())
    b.host.send("T", b"x")
    b.run()
    assert "returned NDIS_STATUS_SUCCESS" in assert_flagged(b, "V5").message
    b.checker.violations.clear()
    b.target.deliver("T", b"y")
    b.run()
    assert "ReceiveReturn" in assert_flagged(b, "V5").message


# V6 ------------------------------------------------------------------------------------------

def _two_sends(strict):
    b = connected(strict=strict)
    b.target.auto_ack = False
    s1, s2 = b.host.send("T", b"1111"), b.host.send("T", b"2222")
    return b, s1, s2


def _ok(nbl, n=None):
    n = nbl.DataLength if n is None else n
    nbl.TcpOffloadBytesTransferred = n
    nbl.advance_data_start(n)
    nbl.Status = NdisStatus.SUCCESS
    return nbl


def test_v6_legal_partial_ack():
    b, s1, s2 = _two_sends(True)
    b.target.ack("T", 6)  # s1 complete, s2 half-acked stays outstanding
    b.run()
    b.target.ack("T", 4)
    b.run()
    assert_clean(b)


def test_v6_out_of_order_and_success_without_full_ack():
    b, s1, s2 = _two_sends(False)
    b.target.objects["T"].sends.clear()
    b.target.ndis.NdisTcpOffloadSendComplete(_ok(s2))
    assert "FIFO" in assert_flagged(b, "V6").message
    b.checker.violations.clear()
    b.target.ndis.NdisTcpOffloadSendComplete(_ok(s1, 2))  # SUCCESS, half ACKed
    assert "every byte" in assert_flagged(b, "V6").message
    b.checker.violations.clear()
    s3 = b.host.send("T", b"333")
    s3.TcpOffloadBytesTransferred = 3  # but the data start was not advanced
    s3.Status = NdisStatus.REQUEST_ABORTED
    b.target.ndis.NdisTcpOffloadSendComplete(s3)
    assert "advanced 0" in assert_flagged(b, "V6").message


# V7 ------------------------------------------------------------------------------------------

def test_v7_legal():
    b = connected()
    b.host.post_receive("T", 3, no_push=True)
    b.host.post_receive("T", 0)
    b.run()
    b.target.deliver("T", b"abc")
    b.run()
    assert_clean(b)


def test_v7_receive_out_of_order_and_non_push_not_full():
    b = connected(strict=False)
    b.target.objects["T"].posts  # noqa: B018
    r1 = b.host.post_receive("T", 4, no_push=True)
    r2 = b.host.post_receive("T", 4)
    b.target.objects["T"].posts.clear()
    b.target.ndis.NdisTcpOffloadReceiveComplete(_ok(r2, 1))
    assert "FIFO" in assert_flagged(b, "V7").message
    b.checker.violations.clear()
    b.target.ndis.NdisTcpOffloadReceiveComplete(_ok(r1, 1))
    assert "non-push" in assert_flagged(b, "V7").message
    b.checker.violations.clear()
    b.target.ndis.NdisTcpOffloadReceiveHandler(
        b.target.objects["T"].NdisOffloadHandle, NET_BUFFER_LIST(b"z"), NdisStatus.RESOURCES)
    assert "must be SUCCESS" in assert_flagged(b, "V7").message


# V8 ------------------------------------------------------------------------------------------

def test_v8_legal():
    b, s1, s2 = _two_sends(True)
    b.host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE)
    b.run()
    b.target.ack("T", 8)
    b.run()
    assert b.host.events[-1][0] == "TcpOffloadDisconnectComplete"
    b2, _, _ = _two_sends(True)
    b2.host.disconnect("T", TCP_DISCONNECT_ABORTIVE_CLOSE)
    b2.run()
    assert_clean(b)
    assert_clean(b2)


def test_v8_graceful_before_sends_and_abortive_without_abort():
    b, s1, s2 = _two_sends(False)
    d = b.host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE)
    b.target.objects["T"].pending_disconnect.clear()
    d.Status = NdisStatus.SUCCESS
    b.target.ndis.NdisTcpOffloadDisconnectComplete(d)
    assert "before earlier sends" in assert_flagged(b, "V8").message
    b2, s1, s2 = _two_sends(False)
    b2.host.disconnect("T", TCP_DISCONNECT_ABORTIVE_CLOSE)
    b2.target.ndis.NdisTcpOffloadSendComplete(_ok(s1))  # ACKed instead of REQUEST_ABORTED
    assert "REQUEST_ABORTED" in assert_flagged(b2, "V8").message


# V9 ------------------------------------------------------------------------------------------

def test_v9_legal_send_data_handed_back():
    b, s1, s2 = _two_sends(True)
    b.host.post_receive("T", 10)
    b.run()
    root = b.host.terminate(["T"])
    b.run()
    assert root.NetBufferListChain is s1 and s1.Next is s2
    assert root.state.SendDataHead is s1 and root.state.SendDataTail is s2
    assert_clean(b)


def test_v9_terminate_with_outstanding_receive_or_lost_send_data():
    class Sloppy(ScriptedTarget):
        def _terminate_object(self, obj, block):
            obj.posts.clear()  # forgets to complete posted receives
            super()._terminate_object(obj, block)
            if self.drop_chain:
                block.NetBufferListChain = None  # and loses the send data

    tgt = Sloppy(auto_ack=False)
    tgt.drop_chain = False
    b = connected(strict=False, target=tgt)
    b.host.post_receive("T", 10)
    b.run()
    b.host.terminate(["T"])
    b.run()
    assert "outstanding receive" in assert_flagged(b, "V9").message
    tgt2 = Sloppy(auto_ack=False)
    tgt2.drop_chain = True
    b2 = connected(strict=False, target=tgt2)
    b2.host.send("T", b"keep me")
    b2.host.terminate(["T"])
    b2.run()
    assert "send data neither completed nor handed back" in assert_flagged(b2, "V9").message


# V10 -----------------------------------------------------------------------------------------

def test_v10_legal():
    b = connected()
    b.target.indicate_event("T", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect)
    b.host.terminate(["T"])
    b.run()
    assert_clean(b)


def test_v10_indication_after_terminate():
    b = connected(strict=False)
    obj = b.target.objects["T"]
    b.host.terminate(["T"])
    b.run()
    b.target.indicate_event(obj, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect)
    assert_flagged(b, "V10")


# V11 -----------------------------------------------------------------------------------------

def test_v11_legal():
    b = connected()
    b.target.request_upload("T", TCP_UPLOAD_REASON.HighDropRate)
    b.run()
    assert_clean(b)


def test_v11_retrieve_on_path_and_bad_reason():
    b = connected(strict=False)
    b.host.auto_upload = False
    b.target.request_upload("P", TCP_UPLOAD_REASON.LowActivity)
    assert "neighbor/path" in assert_flagged(b, "V11").message
    b.checker.violations.clear()
    b.target.request_upload("T", 0)
    assert "invalid reason" in assert_flagged(b, "V11").message


# C4 (TcpIndicateSendBacklogChange) -----------------------------------------------------------

def test_c4_legal():
    b = connected()
    for value in (0, 65536, 0xFFFFFFFF):  # any ULONG: the host decides what to make of it
        b.target.indicate_event("T", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, value)
    b.host.terminate(["T"])
    b.run()
    assert_clean(b)


def test_c4_backlog_change_before_initiate_complete_on_path_and_too_big():
    b = ChimneyBench(0, strict=False)
    root = held_offload(b)
    b.target._initiate(root)
    tblock = root.DependentBlockList.DependentBlockList
    b.target.ndis.NdisTcpOffloadEventHandler(
        tblock.NdisOffloadHandle, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 4096)
    assert "before NdisMInitiateOffloadComplete" in assert_flagged(b, "C4").message
    b2 = connected(strict=False)
    b2.target.indicate_event("P", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 4096)
    assert "neighbor/path" in assert_flagged(b2, "C4").message
    b2.checker.violations.clear()
    b2.target.indicate_event("T", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 1 << 32)
    assert "not a ULONG" in assert_flagged(b2, "C4").message


def test_c4_backlog_change_after_terminate_is_v10():
    b = connected(strict=False)
    obj = b.target.objects["T"]
    b.host.terminate(["T"])
    b.run()
    b.target.indicate_event(obj, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 4096)
    assert_flagged(b, "V10")


# V12 -----------------------------------------------------------------------------------------

def test_v12_legal_overlapping_queries():
    b = connected()
    b.target.hold = True
    b.host.query(["T"])
    b.host.query(["T"])  # c.3: queries may overlap
    b.target.hold = False
    b.target.release()
    b.run()
    assert_clean(b)


def test_v12_double_initiate_and_update_of_invalidated():
    b = ChimneyBench(0, strict=False)
    b.target.hold = True
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    handle = b.host.handles["N"]
    from ndis.blocks import new_offload_block

    b.host.offload(new_offload_block(sample_states()[0], handle, label="N-again"))
    assert "already offloaded" in assert_flagged(b, "V12").message
    b2 = connected(strict=False)
    b2.host.invalidate(["T"])
    b2.run()
    b2.host.update("T", TCP_OFFLOAD_STATE_CACHED())
    assert "invalidated" in assert_flagged(b2, "V12").message


# V13 -----------------------------------------------------------------------------------------

def test_v13_legal():
    b = connected()
    b.host.query(["T"])
    b.run()
    b.host.terminate(["T"])
    b.run()
    assert_clean(b)


def test_v13_send_after_terminate_and_terminate_during_query():
    b = connected(strict=False)
    b.target.hold = True
    b.host.terminate(["T"])
    b.host.send("T", b"late")
    assert "after NdisTerminateOffload" in assert_flagged(b, "V13").message
    b2 = connected(strict=False)
    b2.target.hold = True
    b2.host.query(["T"])
    b2.host.terminate(["T"])
    assert "outstanding" in assert_flagged(b2, "V13").message


# V14 -----------------------------------------------------------------------------------------

def test_v14_legal_terminate_with_dependents():
    b = connected()
    b.host.terminate(["P"])  # builder includes T
    b.run()
    assert_clean(b)


def test_v14_terminate_path_without_dependents_and_tcp_relink():
    b = connected(strict=False)
    b.target.hold = True
    p = b.host.nodes["P"]
    b.binding.NdisTerminateOffload(reference_block(p.handle, OffloadLayer.PATH))
    assert "dependents outside the tree" in assert_flagged(b, "V14").message
    b2 = connected(strict=False)
    pb = reference_block(b2.host.nodes["P"].handle, OffloadLayer.PATH)
    tb = reference_block(b2.host.nodes["T"].handle, OffloadLayer.TCP, state=TCP_OFFLOAD_STATE_CACHED())
    add_dependents(pb, tb)
    b2.binding.NdisUpdateOffload(pb)
    assert "TCP connection to a path" in assert_flagged(b2, "V14").message


# V15 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["TcpConnectionEstablished", "TcpConnectionCloseWait", "TcpConnectionLastAck"])
def test_v15_legal(state):
    b = ChimneyBench(0)
    n, p, t = sample_states()
    t.Delegated.State = TCP_OFFLOAD_CONNECTION_STATE[state]
    b.host.offload_connection(n, p, t)
    b.run()
    assert_clean(b)


@pytest.mark.parametrize("state", ["TcpConnectionSynSent", "TcpConnectionTimeWait", "TcpConnectionListen"])
def test_v15_offload_in_wrong_state(state):
    b = ChimneyBench(0, strict=False)
    n, p, t = sample_states()
    t.Delegated.State = TCP_OFFLOAD_CONNECTION_STATE[state]
    b.host.offload_connection(n, p, t)
    assert_flagged(b, "V15")


# V16 -----------------------------------------------------------------------------------------

def test_v16_legal():
    b = connected()
    b.host.forward("T", b"seg")
    b.host.send("T", b"a")
    b.host.send("T", b"b")
    b.run()
    assert_clean(b)


def test_v16_forward_before_offload_and_unserialized_sends():
    b = ChimneyBench(0, strict=False)
    b.target.hold = True
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.host.forward("T", b"seg")
    assert "forward while the object is being offloaded" in assert_flagged(b, "V16").message

    class Reentrant(ScriptedTarget):
        def TcpOffloadSend(self, MiniportOffloadContext, NetBufferList):  # noqa: N802,N803
            if not getattr(self, "once", False):
                self.once = True
                self.host.send("T", b"nested")  # a second send before the first returned
            return super().TcpOffloadSend(MiniportOffloadContext, NetBufferList)

    tgt = Reentrant()
    b2 = connected(strict=False, target=tgt)
    tgt.host = b2.host
    b2.host.send("T", b"first")
    assert "not serialized" in assert_flagged(b2, "V16").message


# V17 -----------------------------------------------------------------------------------------

def test_v17_legal_through_ims():
    b = connected(ims=3)
    b.host.send("T", b"x")
    b.target.deliver("T", b"y")
    b.target.request_upload("T")
    b.run()
    assert_clean(b)


def test_v17_im_not_restoring_saved_fields():
    class ForgetfulIM(PassThroughIM):
        def _up(self, op, root):
            saved = root.ImReserved[0]
            super_calls = self.miniport_handle.NdisMInitiateOffloadComplete
            self.miniport_handle.NdisMInitiateOffloadComplete = lambda r: (
                setattr(r, "SourceHandle", None), super_calls(r))
            try:
                super()._up(op, root)
            finally:
                del self.miniport_handle.NdisMInitiateOffloadComplete
            assert saved is not None

    b = ChimneyBench(0, strict=False)
    im = ForgetfulIM("bad")
    top = im.attach(b.ndis, b.target_handle)
    host = ScriptedHost("h2")
    b.ndis.open_adapter(host, top)
    n, p, t = sample_states()
    host.offload_connection(n, p, t)
    b.ndis.deliver_pending()
    assert "SourceHandle not restored" in assert_flagged(b, "V17").message


def test_v17_wrong_flavor_and_untranslated_handle():
    b = connected(strict=False)
    n, p, t = sample_states(40900)
    from ndis.blocks import offload_connection_tree

    root = offload_connection_tree(n, p, t)
    for blk in iter_blocks(root):
        ndis_to_miniport(blk)  # the host passes a miniport-flavored tree
    b.binding.NdisInitiateOffload(root)
    assert "flavored" in assert_flagged(b, "V17").message

    class LeakyIM(PassThroughIM):
        pass

    b2 = connected(ims=1, strict=False)
    im = b2.ims[0]
    entry = im.entries[-1]
    # the IM passes its *own* handle up instead of the stored upper handle
    im.handlers.NdisTcpOffloadEventHandler(entry.own_handle, TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect, 0)
    assert "not the upper handle" in assert_flagged(b2, "V17").message


# C3.2 ----------------------------------------------------------------------------------------

def test_c3_2_legal():
    b = connected()
    b.host.send("T", b"after the offload completed")
    b.run()
    assert_clean(b)


def test_c3_2_send_while_being_offloaded():
    b = ChimneyBench(0, strict=False)
    b.target.hold = True
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.host.send("T", b"too early")
    assert_flagged(b, "C3.2")


def test_report_mode_collects_many():
    b = connected(strict=False)
    b.target.request_upload("P", TCP_UPLOAD_REASON.LowActivity)
    b.target.request_upload("N", 99)
    assert len(b.checker.violations) >= 3
    assert {v.rule for v in b.checker.violations} == {"V11"}
    h = NDIS_OFFLOAD_HANDLE("stranger")
    b.target.ndis.NdisTcpOffloadEventHandler(h, 2, 0)
    assert "V10" in b.checker.rules_broken
    assert isinstance(TCP_OFFLOAD_STATE_DELEGATED(), TCP_OFFLOAD_STATE_DELEGATED)


# Each broken-sequence test above depends on its rule: with that rule waived it fails.
BROKEN = {
    "V1": [test_v1_synchronous_completion, test_v1_illegal_status_double_and_missing_completion],
    "V2": [test_v2_context_written_for_failed_block, test_v2_not_depth_first,
           test_v2_failed_root_and_linker_status],
    "V3": [test_v3_status_modified_or_completed],
    "V4": [test_v4_indication_before_initiate_complete, test_v4_nested_indication,
           test_v4_indication_during_completion],
    "V5": [test_v5_io_handler_not_pending_and_receive_return_not_success],
    "V6": [test_v6_out_of_order_and_success_without_full_ack],
    "V7": [test_v7_receive_out_of_order_and_non_push_not_full],
    "V8": [test_v8_graceful_before_sends_and_abortive_without_abort],
    "V9": [test_v9_terminate_with_outstanding_receive_or_lost_send_data],
    "V10": [test_v10_indication_after_terminate],
    "V11": [test_v11_retrieve_on_path_and_bad_reason],
    "V12": [test_v12_double_initiate_and_update_of_invalidated],
    "V13": [test_v13_send_after_terminate_and_terminate_during_query],
    "V14": [test_v14_terminate_path_without_dependents_and_tcp_relink],
    "V15": [lambda: test_v15_offload_in_wrong_state("TcpConnectionSynSent")],
    "V16": [test_v16_forward_before_offload_and_unserialized_sends],
    "V17": [test_v17_im_not_restoring_saved_fields, test_v17_wrong_flavor_and_untranslated_handle],
    "C3.2": [test_c3_2_send_while_being_offloaded],
    "C4": [test_c4_backlog_change_before_initiate_complete_on_path_and_too_big],
}


def test_every_rule_has_a_broken_test():
    assert set(BROKEN) == set(RULES)


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_broken_tests_fail_when_their_rule_is_waived(rule, monkeypatch):
    from ndis.checker import ConformanceChecker

    monkeypatch.setattr(ConformanceChecker, "DEFAULT_DISABLED", frozenset({rule}))
    for fn in BROKEN[rule]:
        with pytest.raises(AssertionError):
            fn()
