"""NDIS routing of every call in reference (a), with a scripted target and a scripted host."""

import pytest

from ndis.blocks import NET_BUFFER_LIST, iter_blocks, link_nbls
from ndis.checker import ConformanceChecker
from ndis.driver import Miniport, Protocol
from ndis.fakes import ChimneyBench, ScriptedHost, ScriptedTarget, sample_states
from ndis.ndis import Ndis
from ndis.state import (
    INDICATE_OFFLOAD_EVENT,
    NDIS_CHIMNEY_OFFLOAD_TYPE,
    NDIS_TCP_CONNECTION_OFFLOAD,
    NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    TCP_DISCONNECT_ABORTIVE_CLOSE,
    TCP_DISCONNECT_GRACEFUL_CLOSE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_UPLOAD_REASON,
    TcpOffloadState,
)
from ndis.status import NdisStatus, Operation


@pytest.fixture
def bench():
    b = ChimneyBench(0)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    return b


def test_initiate_round_trip_same_root_and_queued_completion():
    b = ChimneyBench(0)
    n, p, t = sample_states()
    root = b.host.offload_connection(n, p, t)
    assert b.host.completed == []  # nothing synchronous
    assert b.ndis.has_pending() and b.ndis.pending() >= 1
    b.run()
    op, completed_root = b.host.completed[0]
    assert op is Operation.INITIATE and completed_root is root
    assert [blk.Status for blk in iter_blocks(root)] == [NdisStatus.SUCCESS] * 3
    assert b.host.handles["T"].MiniportOffloadContext is b.target.objects["T"]
    assert b.host.errors == []


@pytest.mark.parametrize("op", ["query", "update", "invalidate", "terminate"])
def test_each_state_operation_round_trips(bench, op):
    host = bench.host
    if op == "query":
        root = host.query(["T", "P"])
    elif op == "update":
        root = host.update("T", TCP_OFFLOAD_STATE_CACHED(InitialRcvWnd=1 << 17))
    elif op == "invalidate":
        root = host.invalidate(["N"])
    else:
        root = host.terminate(["T"])
    bench.run()
    got_op, got_root = host.completed[-1]
    assert got_op.name == op.upper() and got_root is root
    assert all(blk.Status == NdisStatus.SUCCESS for blk in iter_blocks(root))
    if op == "query":
        assert isinstance(root.state, TcpOffloadState)
        assert root.state.Delegated.RcvNxt == 1000 and root.state.Delegated.SendBacklogSize == 0xFFFFFFFF
    if op == "update":
        assert bench.target.objects["T"].state.Cached.InitialRcvWnd == 1 << 17
    if op == "invalidate":
        assert bench.target.objects["N"].invalidated
    if op == "terminate":
        assert "T" not in bench.target.objects and "T" not in host.nodes
    assert host.errors == [] and bench.checker.violations == []


def test_tcp_io_paths(bench):
    host, target = bench.host, bench.target
    obj = target.objects["T"]
    status = host.binding.NdisOffloadTcpSend(host.handles["T"], NET_BUFFER_LIST(b"data"))
    assert status == NdisStatus.PENDING
    host.post_receive("T", 5)
    host.forward("T", b"\x00" * 20)
    bench.run()
    target.deliver("T", b"12345678")
    bench.run()
    host.disconnect("T", TCP_DISCONNECT_GRACEFUL_CLOSE, b"bye")
    bench.run()
    names = [e[0] for e in host.events]
    for n in ("TcpOffloadSendComplete", "TcpOffloadReceiveComplete", "TcpOffloadForwardComplete",
              "ReceiveIndicate", "TcpOffloadDisconnectComplete"):
        assert n in names
    assert bytes(obj.sent_data) == b"databye" and obj.forwarded == [b"\x00" * 20]
    assert ("ReceivedData", b"12345") in host.events
    assert bytes(host.received["T"]) == b"678"
    # the host returned the indicated NBL (NdisOffloadTcpReceiveReturn), synchronously
    assert [bytes(n.data) for n in target.returned_nbls] == [b"678"]
    assert not obj.indicated


def test_miniport_offload_context_argument_is_stored_context(bench):
    seen = []
    orig = bench.target.TcpOffloadSend

    def spy(ctx, nbl):
        seen.append(ctx)
        return orig(ctx, nbl)

    bench.ndis.miniports[0].provider_tcp.TcpOffloadSendHandler = spy
    bench.host.send("T", b"x")
    assert seen == [bench.target.objects["T"]]


def test_abortive_disconnect_completes_sends_aborted_first(bench):
    bench.target.auto_ack = False
    bench.host.send("T", b"one")
    bench.host.disconnect("T", TCP_DISCONNECT_ABORTIVE_CLOSE)
    bench.run()
    evs = [e for e in bench.host.events if e[0].startswith("TcpOffload")]
    assert evs[-2] == ("TcpOffloadSendComplete", (("NDIS_STATUS_REQUEST_ABORTED", 0),))
    assert evs[-1] == ("TcpOffloadDisconnectComplete", (("NDIS_STATUS_SUCCESS", 0),))


@pytest.mark.parametrize("accept,expect", [("all", "SUCCESS"), ("none", "NOT_ACCEPTED"), (2, "PARTIAL")])
def test_receive_indication_results(accept, expect):
    b = ChimneyBench(0, host=ScriptedHost(accept=accept))
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    b.target.deliver("T", b"abcd")
    b.run()
    ev = [e for e in b.host.events if e[0] == "ReceiveIndicate"][0]
    assert ev[3] == expect
    left = bytes(b.target.objects["T"].rx_pending)
    assert left == {"SUCCESS": b"", "NOT_ACCEPTED": b"abcd", "PARTIAL": b"cd"}[expect]


def test_events_and_upload_request(bench):
    bench.target.indicate_event("T", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect)
    bench.target.indicate_event("T", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 65536)
    bench.target.request_upload("T", TCP_UPLOAD_REASON.TimeoutExpiration)
    bench.run()
    evs = [e for e in bench.host.events if e[0] == "TcpOffloadEvent"]
    assert evs == [("TcpOffloadEvent", "T", 2, 0), ("TcpOffloadEvent", "T", 1, 65536),
                   ("TcpOffloadEvent", "T", 3, 8)]
    assert "T" not in bench.target.objects  # host uploaded on the request


def test_neighbor_reachability_query(bench):
    bench.host.hrd = 1234
    hrd = bench.target.reachability_query("N", nrd=50)
    assert hrd == 1234
    assert ("IndicateOffloadEvent", "N", INDICATE_OFFLOAD_EVENT.NeighborReachabilityQuery) in bench.host.events


def test_status_indications_pause_resume_upload_all(bench):
    bench.target.indicate_status(NdisStatus.OFFLOAD_PAUSE)
    assert bench.host.paused
    caps = NDIS_TCP_CONNECTION_OFFLOAD(TcpConnectionOffloadCapacity=7)
    bench.target.indicate_status(NdisStatus.OFFLOAD_RESUME, caps)
    assert not bench.host.paused and bench.host.chimney_capacity == 7
    bench.target.indicate_status(NdisStatus.UPLOAD_ALL)
    bench.run()
    assert bench.target.objects == {} and bench.host.nodes == {}
    term = [e for e in bench.host.events if e[0] == "TerminateOffloadComplete"][-1]
    assert [lbl for lbl, _ in term[2]] == ["N", "P", "T"]


def test_capabilities_passed_up_at_bind():
    b = ChimneyBench(2, target=ScriptedTarget(capacity=33))
    assert b.host.bind_parameters.ChimneyEnabled
    assert b.host.bind_parameters.TcpConnectionOffloadCapabilities.TcpConnectionOffloadCapacity == 33
    params = NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(TicksPerSecond=100)
    assert b.binding.NdisSetTcpConnectionOffloadParameters(params) == NdisStatus.SUCCESS
    assert b.target.parameters is params  # passed down through both IMs (e.1)


def test_get_offload_handlers():
    ndis = Ndis()
    mp = ndis.register_miniport(ScriptedTarget(), capabilities=NDIS_TCP_CONNECTION_OFFLOAD())
    status, handlers = mp.NdisMGetOffloadHandlers(NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload)
    assert status == NdisStatus.SUCCESS
    assert handlers.Header.Type == NDIS_CHIMNEY_OFFLOAD_TYPE.NdisTcpChimneyOffload
    assert handlers.Header.Revision == 1
    assert mp.NdisMGetOffloadHandlers(NDIS_CHIMNEY_OFFLOAD_TYPE.NdisIpsecChimneyOffload) == (
        NdisStatus.NOT_SUPPORTED, None)


def test_non_chimney_miniport_safe_defaults():
    ndis = Ndis(checker=ConformanceChecker())
    mp = ndis.register_miniport(Miniport(), capabilities=None, name="plain")
    host = ScriptedHost()
    ndis.open_adapter(host, mp)
    assert not host.bind_parameters.ChimneyEnabled
    assert host.bind_parameters.TcpConnectionOffloadCapabilities is None
    n, p, t = sample_states()
    root = host.offload_connection(n, p, t)
    ndis.deliver_pending()
    assert host.completed[0][1] is root
    assert all(b.Status == NdisStatus.FAILURE for b in iter_blocks(root))
    assert host.nodes == {}


def test_partial_handler_table_defaults_fail_asynchronously():
    class OnlyInitiate(ScriptedTarget):
        QueryOffload = Miniport.QueryOffload  # falls back to the safe default

    b = ChimneyBench(0, target=OnlyInitiate())
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    root = b.host.query(["T"])
    b.run()
    assert root.Status == NdisStatus.FAILURE and b.checker.violations == []


def test_default_protocol_refuses_indications():
    ndis = Ndis(checker=ConformanceChecker())
    target = ScriptedTarget()
    mp = ndis.register_miniport(target, capabilities=target.capabilities)
    proto = Protocol()
    binding = ndis.open_adapter(proto, mp)
    n, p, t = sample_states()
    from ndis.blocks import offload_connection_tree

    root = offload_connection_tree(n, p, t)
    binding.NdisInitiateOffload(root)
    ndis.deliver_pending()
    target.deliver("T", b"xy")
    ndis.deliver_pending()
    assert bytes(target.objects["T"].rx_pending) == b"xy"  # NOT_ACCEPTED: target keeps it


def test_send_completion_chain_split_per_binding():
    ndis = Ndis(checker=ConformanceChecker())
    target = ScriptedTarget(auto_ack=False)
    mp = ndis.register_miniport(target, capabilities=target.capabilities)
    h1, h2 = ScriptedHost("h1"), ScriptedHost("h2")
    ndis.open_adapter(h1, mp)
    ndis.open_adapter(h2, mp)
    n, p, t = sample_states()
    h1.offload_connection(n, p, t, labels=("N1", "P1", "T1"))
    n, p, t = sample_states(40001)
    h2.offload_connection(n, p, t, labels=("N2", "P2", "T2"))
    ndis.deliver_pending()
    a, b_ = h1.send("T1", b"aa"), h2.send("T2", b"bbb")
    for nbl in (a, b_):
        nbl.TcpOffloadBytesTransferred = nbl.DataLength
        nbl.advance_data_start(nbl.DataLength)
        nbl.Status = NdisStatus.SUCCESS
    target.objects["T1"].sends.clear()
    target.objects["T2"].sends.clear()
    mp.NdisTcpOffloadSendComplete(link_nbls([a, b_]))  # one chain, two bindings
    ndis.deliver_pending()
    assert ("TcpOffloadSendComplete", (("NDIS_STATUS_SUCCESS", 2),)) in h1.events
    assert ("TcpOffloadSendComplete", (("NDIS_STATUS_SUCCESS", 3),)) in h2.events


def test_deliver_pending_is_not_reentrant_and_fifo():
    b = ChimneyBench(0)
    order = []
    b.target.ndis.NdisQueueIoWorkItem(order.append, 1)
    b.target.ndis.NdisQueueIoWorkItem(lambda: b.target.ndis.NdisQueueIoWorkItem(order.append, 3))
    b.target.ndis.NdisQueueIoWorkItem(order.append, 2)
    # FIFO, except that what a delivery queues runs right after it
    assert b.ndis.deliver_pending() == 4 and order == [1, 3, 2]
    b.target.ndis.NdisQueueIoWorkItem(b.ndis.deliver_pending)
    with pytest.raises(RuntimeError):
        b.ndis.deliver_pending()


@pytest.mark.parametrize("ims", [0, 2])
def test_normal_receive_path_and_status_through_ims(ims):
    b = ChimneyBench(ims)
    frames = link_nbls([NET_BUFFER_LIST(b"frag-1"), NET_BUFFER_LIST(b"arp")])
    b.target_handle.NdisMIndicateReceiveNetBufferLists(frames)
    assert ("ReceiveNetBufferLists", (b"frag-1", b"arp")) in b.host.events
    b.target.indicate_status(NdisStatus.OFFLOAD_PAUSE)
    assert b.host.paused


def test_dump_tree_shows_block_and_state_bytes():
    from ndis.blocks import dump_tree, offload_connection_tree

    n, p, t = sample_states()
    text = dump_tree(offload_connection_tree(n, p, t))
    assert "NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST T @ ffffa" in text
    assert "00000000  11 01 98 00" in text  # Type 17 (TcpOffloadState), Revision 1, Size 0x98
