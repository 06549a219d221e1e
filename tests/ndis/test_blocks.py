"""b.1 - b.6 block lists, handles, NBLs, traversal, builders, rendering."""

import pytest

from ndis.blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_OFFLOAD_HANDLE,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    BlockRole,
    ContextSlot,
    OffloadNode,
    TreeError,
    add_dependents,
    block_role,
    iter_blocks,
    iter_nbls,
    iter_tree,
    link_nbls,
    list_blocks,
    ndis_to_miniport,
    ndis_to_protocol,
    new_offload_block,
    offload_connection_tree,
    placeholder_block,
    reference_block,
    render_tree,
    terminate_connections,
    terminate_tree,
)
from ndis.fakes import sample_states
from ndis.state import NEIGHBOR_OFFLOAD_STATE_DELEGATED, TCP_OFFLOAD_STATE_DELEGATED, OffloadLayer


def worked_example():
    """b.4: N1{P1{T1,T2}, P2{T3}}, N2{P3{T4,T5}}."""
    def new(label, layer):
        n, p, t = sample_states()
        return new_offload_block({"N": n, "P": p, "T": t}[layer], label=label)

    n1, n2 = new("N1", "N"), new("N2", "N")
    p1, p2, p3 = new("P1", "P"), new("P2", "P"), new("P3", "P")
    ts = [new(f"T{i}", "T") for i in range(1, 6)]
    add_dependents(p1, ts[0], ts[1])
    add_dependents(p2, ts[2])
    add_dependents(p3, ts[3], ts[4])
    add_dependents(n1, p1, p2)
    add_dependents(n2, p3)
    n1.NextBlock = n2
    return n1


def test_traversal_order_b4_worked_example():
    root = worked_example()
    assert [b.label for b in iter_blocks(root)] == [
        "N1", "P1", "T1", "T2", "P2", "T3", "N2", "P3", "T4", "T5"
    ]
    depths = {b.label: d for b, d, _ in iter_tree(root)}
    assert depths["N2"] == 0 and depths["P3"] == 1 and depths["T5"] == 2
    parents = {b.label: (p.label if p else None) for b, _, p in iter_tree(root)}
    assert parents["T3"] == "P2" and parents["N2"] is None


def test_cycle_and_depth_detected():
    a, b = placeholder_block(label="a"), placeholder_block(label="b")
    a.NextBlock, b.NextBlock = b, a
    with pytest.raises(TreeError):
        list(iter_tree(a))
    x, y, z, w = (placeholder_block(label=c) for c in "xyzw")
    x.DependentBlockList, y.DependentBlockList, z.DependentBlockList = y, z, w
    with pytest.raises(TreeError):
        list(iter_tree(x))


def test_list_blocks_is_iter_blocks_as_a_list():
    root = worked_example()
    assert list_blocks(root) == list(iter_blocks(root))
    assert [b.label for b in list_blocks(root)][:3] == ["N1", "P1", "T1"]
    assert list_blocks(None) == []
    a, b = placeholder_block(label="a"), placeholder_block(label="b")
    a.NextBlock, b.NextBlock = b, a
    with pytest.raises(TreeError, match="cycle"):
        list_blocks(a)
    x, y, z, w = (placeholder_block(label=c) for c in "xyzw")
    x.DependentBlockList, y.DependentBlockList, z.DependentBlockList = y, z, w
    with pytest.raises(TreeError, match="three levels"):
        list_blocks(x)


def test_reserved_words_start_null_and_keep_what_is_written():
    b = placeholder_block(label="r")
    assert b.ProtocolReserved == [None, None] and b.MiniportReserved == [None, None]
    assert b.ImReserved == [None, None] and b.Scratch == [None, None]
    b.ProtocolReserved[1] = "mine"
    b.ImReserved[:] = ["call", None]
    b.Scratch = ["s0", "s1"]
    assert b.ProtocolReserved == [None, "mine"] and b.ImReserved == ["call", None]
    assert b.Scratch == ["s0", "s1"] and b.MiniportReserved == [None, None]
    assert b.ProtocolReserved is b.ProtocolReserved  # one list, not a fresh one per access
    m = ndis_to_miniport(b)
    assert m.ProtocolReserved == [None, "mine"] and m.ImReserved == ["call", None]


def test_flavor_conversion_in_place_b2():
    n, p, t = sample_states()
    block = new_offload_block(t, label="T")
    handle = block.OffloadHandle
    same = block
    ndis_to_miniport(block)
    assert block is same and isinstance(block, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
    assert block.NdisOffloadHandle is handle
    assert block.MiniportOffloadContext is handle.slot  # &OffloadHandle->MiniportOffloadContext
    assert len(block.NdisReserved) == 2
    with pytest.raises(AttributeError):
        block.OffloadHandle  # noqa: B018 - other flavor
    block.MiniportOffloadContext.value = "target-context"
    assert handle.MiniportOffloadContext == "target-context"
    ndis_to_protocol(block)
    assert isinstance(block, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST) and block is same
    assert block.OffloadHandle is handle and len(block.NdisReserved) == 3
    assert block.NdisReserved[2] is None
    with pytest.raises(AttributeError):
        block.MiniportOffloadContext  # noqa: B018


def test_roles_b5():
    n, p, t = sample_states()
    new = new_offload_block(t, label="T")
    assert block_role(new) is BlockRole.NEW_OFFLOAD
    h = NDIS_OFFLOAD_HANDLE("P")
    h.MiniportOffloadContext = object()
    ref = reference_block(h, OffloadLayer.PATH)
    assert block_role(ref) is BlockRole.REFERENCE
    ph = placeholder_block(OffloadLayer.NEIGHBOR)
    assert block_role(ph) is BlockRole.PLACEHOLDER
    for b in (new, ref, ph):
        ndis_to_miniport(b)
    assert block_role(new) is BlockRole.NEW_OFFLOAD
    assert block_role(ref) is BlockRole.REFERENCE
    assert block_role(ph) is BlockRole.PLACEHOLDER and ph.MiniportOffloadContext is None


def test_handle_slot_identity_and_write_order():
    h = NDIS_OFFLOAD_HANDLE()
    assert h.slot is h.slot
    s1, s2 = ContextSlot(), ContextSlot()
    s1.value = 1
    s2.value = 2
    assert s1.write_seq < s2.write_seq and s2.value == 2


def test_offload_connection_tree_with_send_data():
    n, p, t = sample_states()
    data = link_nbls([NET_BUFFER_LIST(b"ab"), NET_BUFFER_LIST(b"cd")])
    root = offload_connection_tree(n, p, t, send_data=data)
    labels = [b.label for b in iter_blocks(root)]
    assert labels == ["N", "P", "T"]
    tblock = root.DependentBlockList.DependentBlockList
    assert tblock.NetBufferListChain is data
    assert t.Delegated.SendDataHead is data and t.Delegated.SendDataTail is data.Next
    # linker + placeholder variants
    hn = root.OffloadHandle
    hn.MiniportOffloadContext = "ctx"
    _, _, t2 = sample_states()
    root2 = offload_connection_tree(hn, None, [t2, sample_states()[2]])
    roles = [block_role(b) for b in iter_blocks(root2)]
    assert roles == [BlockRole.REFERENCE, BlockRole.PLACEHOLDER, BlockRole.NEW_OFFLOAD, BlockRole.NEW_OFFLOAD]
    with pytest.raises(ValueError):
        offload_connection_tree(NDIS_OFFLOAD_HANDLE(), p, t)  # not offloaded: cannot link


def test_terminate_builders_include_dependents_and_delegated():
    hs = {k: NDIS_OFFLOAD_HANDLE(k) for k in ("N", "P", "T1", "T2")}
    tnodes = [OffloadNode(OffloadLayer.TCP, hs["T1"], label="T1"),
              OffloadNode(OffloadLayer.TCP, hs["T2"], label="T2")]
    pnode = OffloadNode(OffloadLayer.PATH, hs["P"], tnodes, label="P")
    nnode = OffloadNode(OffloadLayer.NEIGHBOR, hs["N"], [pnode], label="N")
    root = terminate_tree([nnode])
    assert [b.label for b in iter_blocks(root)] == ["N", "P", "T1", "T2"]
    assert isinstance(root.state, NEIGHBOR_OFFLOAD_STATE_DELEGATED)
    assert all(isinstance(b.state, TCP_OFFLOAD_STATE_DELEGATED) for b in iter_blocks(root) if b.label[0] == "T")
    chain = terminate_connections([hs["T1"], hs["T2"]])
    assert [b.label for b in iter_blocks(chain)] == ["T1", "T2"] and chain.DependentBlockList is None


def test_nbl_model():
    nbl = NET_BUFFER_LIST(b"hello world")
    nbl.advance_data_start(6)
    assert bytes(nbl.data) == b"world" and nbl.DataLength == 5
    nbl.retreat_data_start(6)
    assert nbl.DataLength == 11
    with pytest.raises(ValueError):
        nbl.advance_data_start(12)
    owner = object()
    nbl.push_context(owner, "saved")
    assert nbl.has_context(owner) and nbl.pop_context(owner) == "saved"
    chain = link_nbls([NET_BUFFER_LIST(b"a"), NET_BUFFER_LIST(b"b"), NET_BUFFER_LIST(b"c")])
    assert [bytes(n.data) for n in iter_nbls(chain)] == [b"a", b"b", b"c"]
    assert NET_BUFFER_LIST(16).DataLength == 16


def test_render_tree_mentions_roles_statuses_and_handles():
    root = worked_example()
    text = render_tree(root)
    lines = text.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("N1 (N) [new] NeighborOffloadState Status=NDIS_STATUS_SUCCESS")
    assert lines[2].startswith("    T1 (T) [new] TcpOffloadState")
    ndis_to_miniport(root)
    assert "NdisOffloadHandle=" in render_tree(root)
