"""d.7 partial offloads and failures, b.5 linker / placeholder statuses."""

import pytest

from ndis.blocks import NET_BUFFER_LIST, add_dependents, iter_blocks, new_offload_block
from ndis.fakes import ChimneyBench, sample_states
from ndis.status import NdisStatus, status_name


def d7_tree():
    """N1{P1{T1,T2}, P2{T3}}; T2 carries initial send data."""
    n, p1, t1 = sample_states(40001)
    _, p2, t2 = sample_states(40002)
    _, _, t3 = sample_states(40003)
    send = NET_BUFFER_LIST(b"initial", label="T2-data")
    send.Status = 0x1234  # whatever the host had there
    N1, P1, P2 = new_offload_block(n, label="N1"), new_offload_block(p1, label="P1"), new_offload_block(p2, label="P2")
    T1 = new_offload_block(t1, label="T1")
    T2 = new_offload_block(t2, label="T2", send_data=send)
    T3 = new_offload_block(t3, label="T3")
    add_dependents(P1, T1, T2)
    add_dependents(P2, T3)
    add_dependents(N1, P1, P2)
    return N1, send


@pytest.mark.parametrize("ims", [0, 1, 3])
def test_d7_example_statuses(ims):
    b = ChimneyBench(ims)
    b.target.initiate_script = {"T2": NdisStatus.RESOURCES, "P2": NdisStatus.FAILURE}
    root, send = d7_tree()
    b.host.offload(root)
    b.run()
    got = {blk.label: status_name(blk.Status) for blk in iter_blocks(root)}
    assert got == {
        "N1": "NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS",
        "P1": "NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS",
        "T1": "NDIS_STATUS_SUCCESS",
        "T2": "NDIS_STATUS_RESOURCES",
        "P2": "NDIS_STATUS_FAILURE",
        "T3": "NDIS_STATUS_FAILURE",  # never attempted
    }
    # contexts written only for the offloaded objects (d.7)
    assert set(b.target.objects) == {"N1", "P1", "T1"}
    for label in ("N1", "P1", "T1"):
        assert b.host.handles[label].MiniportOffloadContext is not None
    for label in ("T2", "P2", "T3"):
        assert b.host.handles[label].MiniportOffloadContext is None
    # the failed TCP block's send data is untouched and never completed (d.7, V3)
    assert send.Status == 0x1234 and send.DataLength == 7
    assert not any(e[0] == "TcpOffloadSendComplete" for e in b.host.events)
    assert send.SourceHandle is b.binding  # IMs restored what NDIS set at the top edge
    assert set(b.host.nodes) == {"N1", "P1", "T1"}
    assert b.host.errors == [] and b.checker.violations == []


def test_failed_root_stops_traversal():
    b = ChimneyBench(0)
    b.target.initiate_script = {"N1": NdisStatus.OFFLOAD_NEIGHBOR_ENTRIES}
    root, _ = d7_tree()
    root.NextBlock = new_offload_block(sample_states()[0], label="N2")
    b.host.offload(root)
    b.run()
    got = {blk.label: blk.Status for blk in iter_blocks(root)}
    assert got.pop("N1") == NdisStatus.OFFLOAD_NEIGHBOR_ENTRIES
    assert set(got.values()) == {NdisStatus.FAILURE}  # N2 too: traversal stopped
    assert b.target.objects == {}


def test_sibling_failure_does_not_stop_traversal():
    b = ChimneyBench(0)
    b.target.initiate_script = {"P1": NdisStatus.OFFLOAD_PATH_ENTRIES}
    root, _ = d7_tree()
    b.host.offload(root)
    b.run()
    got = {blk.label: blk.Status for blk in iter_blocks(root)}
    assert got["P1"] == NdisStatus.OFFLOAD_PATH_ENTRIES
    assert got["T1"] == got["T2"] == NdisStatus.FAILURE
    assert got["P2"] == got["T3"] == NdisStatus.SUCCESS
    assert got["N1"] == NdisStatus.OFFLOAD_PARTIAL_SUCCESS


@pytest.mark.parametrize("ims", [0, 2])
def test_linker_and_placeholder_statuses(ims):
    b = ChimneyBench(ims)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t)
    b.run()
    # linker N -> new path P9 -> two new TCPs, one of which fails
    _, p9, ta = sample_states(41000)
    _, _, tb = sample_states(41001)
    b.target.initiate_script = {"T9b": NdisStatus.OFFLOAD_TCP_ENTRIES}
    root = b.host.offload_connection("N", p9, [ta, tb], labels=("N", "P9", "T9"))
    root.DependentBlockList.DependentBlockList.label = "T9a"
    root.DependentBlockList.DependentBlockList.NextBlock.label = "T9b"
    b.run()
    got = {blk.label: blk.Status for blk in iter_blocks(root)}
    assert got == {"N": NdisStatus.SUCCESS, "P9": NdisStatus.OFFLOAD_PARTIAL_SUCCESS,
                   "T9a": NdisStatus.SUCCESS, "T9b": NdisStatus.OFFLOAD_TCP_ENTRIES}
    # placeholder neighbor + linker path, all dependents failing -> linker FAILURE, placeholder SUCCESS
    _, _, tc = sample_states(41002)
    b.target.initiate_script = {"T10": NdisStatus.FAILURE}
    root2 = b.host.offload_connection(None, "P", tc, labels=("ph", "P", "T10"))
    b.run()
    got = {blk.label: blk.Status for blk in iter_blocks(root2)}
    assert got == {"ph": NdisStatus.SUCCESS, "P": NdisStatus.FAILURE, "T10": NdisStatus.FAILURE}
    assert b.checker.violations == [] and b.host.errors == []


def test_capacity_exhaustion_gives_tcp_entries():
    from ndis.fakes import ScriptedTarget

    b = ChimneyBench(0, target=ScriptedTarget(capacity=1))
    n, p, t = sample_states()
    _, _, t2 = sample_states(40010)
    root = b.host.offload_connection(n, p, [t, t2])
    b.run()
    # f.2: SUCCESS = self + all *immediately* dependent blocks offloaded, so N stays SUCCESS
    assert [blk.Status for blk in iter_blocks(root)] == [
        NdisStatus.SUCCESS, NdisStatus.OFFLOAD_PARTIAL_SUCCESS,
        NdisStatus.SUCCESS, NdisStatus.OFFLOAD_TCP_ENTRIES,
    ]
