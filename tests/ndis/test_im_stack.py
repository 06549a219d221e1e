"""Reference (e): the same traffic through 0, 1 and 3 pass-through IMs gives identical results at
the host; flavors, handles and saved fields are restored at each edge."""

import pytest

from ndis.blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    iter_blocks,
    link_nbls,
)
from ndis.checker import ConformanceChecker
from ndis.fakes import ChimneyBench, sample_states
from ndis.state import (
    TCP_DISCONNECT_GRACEFUL_CLOSE,
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_UPLOAD_REASON,
)
from ndis.status import NdisStatus


def scenario(ims: int) -> ChimneyBench:
    b = ChimneyBench(ims)
    host, target = b.host, b.target
    target.auto_ack = False
    target.initiate_script = {"T3": NdisStatus.OFFLOAD_TCP_RCV_WINDOW}
    n, p, t1 = sample_states(40001)
    _, _, t2 = sample_states(40002)
    _, _, t3 = sample_states(40003)
    send = link_nbls([NET_BUFFER_LIST(b"early-1"), NET_BUFFER_LIST(b"early-2")])
    host.offload_connection(n, p, [t1, t2, t3], send_data=send)
    b.run()
    target.ack("T1", 7)  # partial: completes early-1 only
    host.send_chain("T1", [b"alpha", b"beta"])
    host.send("T2", b"gamma")
    host.post_receive("T1", 4)
    host.post_receive("T1", 0)
    b.run()
    target.ack("T2", 5)
    target.deliver("T1", b"0123456789")
    target.deliver("T2", b"zz")
    b.run()
    target.indicate_event("T2", TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange, 4096)
    host.query(["T1", "P"])
    host.update("T2", TCP_OFFLOAD_STATE_CACHED(InitialRcvWnd=1 << 16, KaProbeCount=3))
    b.run()
    assert target.reachability_query("N", nrd=9) == host.hrd
    host.invalidate(["T2"])
    b.run()
    target.request_upload("T2", TCP_UPLOAD_REASON.InvalidState)
    b.run()
    host.disconnect("T1", TCP_DISCONNECT_GRACEFUL_CLOSE)
    b.run()
    target.indicate_status(NdisStatus.UPLOAD_ALL)
    b.run()
    return b


@pytest.mark.parametrize("ims", [1, 3])
def test_identical_results_at_the_host(ims):
    base = scenario(0)
    other = scenario(ims)
    assert other.host.events == base.host.events
    assert other.host.errors == base.host.errors == []
    assert other.checker.violations == base.checker.violations == []
    assert {k: bytes(v) for k, v in other.host.received.items()} == {k: bytes(v) for k, v in base.host.received.items()}
    assert {k: bytes(v) for k, v in other.host.resend.items()} == {k: bytes(v) for k, v in base.host.resend.items()}
    assert other.target.objects == {} and base.target.objects == {}
    for im in other.ims:
        assert im.entries == [] and im.calls_in_flight == {}
    # sanity: the scenario exercised the interesting paths
    names = {e[0] for e in base.host.events}
    assert {"InitiateOffloadComplete", "TcpOffloadSendComplete", "TcpOffloadReceiveComplete",
            "ReceiveIndicate", "TcpOffloadEvent", "QueryOffloadComplete", "UpdateOffloadComplete",
            "InvalidateOffloadComplete", "IndicateOffloadEvent", "TerminateOffloadComplete",
            "SendDataReturned", "TcpOffloadDisconnectComplete", "StatusEx"} <= names


class EdgeSpy(ConformanceChecker):
    """Records, per edge, what each side saw."""

    def __init__(self):
        super().__init__(strict=True)
        self.down = []
        self.up = []

    def request_dispatched(self, binding, op, root):
        super().request_dispatched(binding, op, root)
        self.down.append((binding.name, op, [
            (type(b), b.NdisOffloadHandle, b.MiniportOffloadContext, b.SourceHandle, list(b.ImReserved))
            for b in iter_blocks(root)]))

    def complete_delivering(self, binding, op, root):
        super().complete_delivering(binding, op, root)
        self.up.append((binding.name, op, [
            (type(b), b.OffloadHandle, b.SourceHandle, list(b.ImReserved)) for b in iter_blocks(root)]))


def test_flavors_handles_and_saved_fields_at_each_edge():
    spy = EdgeSpy()
    b = ChimneyBench(3, checker=spy)
    n, p, t = sample_states()
    root = b.host.offload_connection(n, p, t)
    b.run()
    edges = [name for name, _, _ in spy.down]
    assert edges == ["host->im2.miniport", "im2.protocol->im1.miniport",
                     "im1.protocol->im0.miniport", "im0.protocol->target"]
    host_handles = [b.host.handles[k] for k in ("N", "P", "T")]
    # down: miniport flavor at every miniport; the handle is the one the driver above allocated
    for i, (name, _op, blocks) in enumerate(spy.down):
        assert all(cls is NDIS_MINIPORT_OFFLOAD_BLOCK_LIST for cls, *_ in blocks)
        handles = [h for _, h, _, _, _ in blocks]
        if i == 0:
            assert handles == host_handles
        else:
            im = b.ims[3 - i]  # the IM above this edge
            assert all(h.label.startswith(im.name + ":") for h in handles)
        assert all(slot is h.slot for _, h, slot, _, _ in blocks)
        assert blocks[0][3] is [bd for bd in b.ndis.miniports if bd.name == name.split("->")[1]][0].bindings[0]
    # up: protocol flavor at every protocol edge, each edge sees its own handles back
    assert [name for name, _, _ in spy.up] == list(reversed(edges))
    for (name, _op, blocks), (dname, _, dblocks) in zip(spy.up, reversed(spy.down), strict=True):
        assert name == dname
        assert all(cls is NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST for cls, *_ in blocks)
        assert [h for _, h, _, _ in blocks] == [h for _, h, _, _, _ in dblocks]
        assert blocks[0][2] is dblocks[0][3]  # SourceHandle as NDIS set it at this edge
        assert [im for *_, im in blocks] == [im for *_, im in dblocks]  # ImReserved restored
    # the host got everything back exactly as it built it
    assert root.SourceHandle is b.binding and list(root.ImReserved) == [None, None]
    assert [blk.OffloadHandle for blk in iter_blocks(root)] == host_handles
    # each upper handle's context names the IM entry just below it
    top = b.ims[-1]
    assert b.host.handles["T"].MiniportOffloadContext in top.entries
    assert top.entries[-1].own_handle.MiniportOffloadContext in b.ims[1].entries
    assert b.ims[0].entries[-1].own_handle.MiniportOffloadContext is b.target.objects["T"]


def test_same_nbl_pointers_and_source_handles_through_ims():
    b = ChimneyBench(3)
    b.target.auto_ack = False
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    nbl = b.host.send("T", b"payload")
    obj = b.target.objects["T"]
    assert obj.sends[0] is nbl  # same NBL pointer at the bottom
    assert nbl.SourceHandle is b.ims[0].lower  # as NDIS stamped it on the bottom edge
    b.target.ack("T", 7)
    b.run()
    assert nbl.SourceHandle is b.binding  # restored edge by edge
    assert not nbl._contexts


def test_im_resource_failure_rule():
    b = ChimneyBench(2)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    im = b.ims[1]
    b.target.auto_ack = False
    im.set_resources(False)
    b.host.auto_upload = False
    b.host.send_chain("T", [b"a", b"b", b"c"])
    b.host.send("T", b"d")
    b.ndis.deliver_pending()
    sends = [e for e in b.host.events if e[0] == "TcpOffloadSendComplete"]
    assert sends[0][1] == (("NDIS_STATUS_REQUEST_UPLOAD", 0), ("NDIS_STATUS_UPLOAD_REQUESTED", 0),
                           ("NDIS_STATUS_UPLOAD_REQUESTED", 0))
    assert sends[1][1] == (("NDIS_STATUS_UPLOAD_REQUESTED", 0),)
    assert b.host.upload_queue == ["T"]
    # the host uploads; the IM must not fail a terminate: it is deferred, then retried
    b.host.poll()
    b.ndis.deliver_pending()
    assert "T" in b.host.nodes and len(im._deferred) == 1
    # an initiate during the shortage is failed (e.3 step 5)
    _, _, t2 = sample_states(40100)
    root = b.host.offload_connection("N", "P", t2, labels=("N", "P", "T2"))
    b.ndis.deliver_pending()
    assert {blk.label: blk.Status for blk in iter_blocks(root)} == {
        "N": NdisStatus.FAILURE, "P": NdisStatus.FAILURE, "T2": NdisStatus.FAILURE}
    im.set_resources(True)
    b.run()
    assert "T" not in b.host.nodes and "T" not in b.target.objects
    assert b.checker.violations == [] and b.host.errors == []
