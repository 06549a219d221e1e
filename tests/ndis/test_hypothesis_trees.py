"""Property tests: encode/decode round trips; random tree shapes and outcome scripts are
accepted by the checker and follow d.7; random operation sequences give identical results
with and without IMs; deliberately broken completions are flagged."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ndis.blocks import (
    NDIS_MINIPORT_OFFLOAD_BLOCK_LIST,
    NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST,
    NET_BUFFER_LIST,
    BlockRole,
    add_dependents,
    block_role,
    chain_blocks,
    decode_block,
    encode_block,
    iter_blocks,
    new_offload_block,
    placeholder_block,
    reference_block,
)
from ndis.checker import ConformanceChecker
from ndis.fakes import ChimneyBench, ScriptedTarget, sample_states
from ndis.state import (
    NEIGHBOR_OFFLOAD_STATE_CACHED,
    NEIGHBOR_OFFLOAD_STATE_CONST,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    PATH_OFFLOAD_STATE_CACHED,
    PATH_OFFLOAD_STATE_CONST,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_OFFLOAD_STATE_CONST,
    TCP_OFFLOAD_STATE_DELEGATED,
    TCP_UPLOAD_REASON,
    KeepAliveState,
    OffloadLayer,
    PointerTable,
    RetransmitState,
    TcpOffloadState,
)
from ndis.status import OFFLOADED_STATUSES, NdisStatus

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)

tcp_delegated = st.builds(
    TCP_OFFLOAD_STATE_DELEGATED,
    State=st.integers(0, 10), Flags=U16, RcvNxt=U32, RcvWnd=U32, SndUna=U32, SndNxt=U32,
    SndMax=U32, SndWnd=U32, MaxSndWnd=U32, SendWL1=U32, CWnd=U32, SsThresh=U32, SRtt=U16,
    RttVar=U16, TsRecent=U32, TsRecentAge=U32, TsTime=U32, TotalRT=U32, DupAckCount=U8,
    SndWndProbeCount=U8, KeepAlive=st.builds(KeepAliveState, U8, U32),
    Retransmit=st.builds(RetransmitState, U8, U32), DWnd=U32,
    SendDataHead=st.none() | st.builds(NET_BUFFER_LIST, st.binary(max_size=8)),
    SendDataTail=st.none() | st.builds(NET_BUFFER_LIST, st.binary(max_size=8)),
    BufferedData=st.none() | st.builds(NET_BUFFER_LIST, st.binary(max_size=8)),
)
tcp_const = st.builds(
    TCP_OFFLOAD_STATE_CONST, Flags=U16, RemotePort=U16, LocalPort=U16,
    SndWindScale=st.integers(0, 14), RcvWindScale=st.integers(0, 14), RemoteMss=U16, HashValue=U32,
)
tcp_cached = st.builds(
    TCP_OFFLOAD_STATE_CACHED, Flags=U16, InitialRcvWnd=U32, RcvIndicationSize=U32,
    KaProbeCount=U8, KaTimeout=U32, KaInterval=U32, MaxRT=U32, FlowLabel=st.integers(0, 0xFFFFF),
    TtlOrHopLimit=U8, TosOrTrafficClass=U8, UserPriority=st.integers(0, 7),
)
mac32 = st.binary(min_size=32, max_size=32)
other_structs = st.one_of(
    st.builds(NEIGHBOR_OFFLOAD_STATE_CONST, mac32, st.integers(0, 0xFFF)),
    st.builds(NEIGHBOR_OFFLOAD_STATE_CACHED, mac32, U32),
    st.builds(NEIGHBOR_OFFLOAD_STATE_DELEGATED, U32),
    st.builds(PATH_OFFLOAD_STATE_CACHED, U32),
    st.sampled_from([4, 16]).flatmap(
        lambda n: st.builds(PATH_OFFLOAD_STATE_CONST, st.binary(min_size=n, max_size=n),
                            st.binary(min_size=n, max_size=n))),
    tcp_const,
    tcp_cached,
)


@given(tcp_delegated)
def test_tcp_delegated_round_trip(d):
    ptrs = PointerTable()
    raw = d.encode(ptrs)
    assert len(raw) == 0x80
    back = TCP_OFFLOAD_STATE_DELEGATED.decode(raw, ptrs)
    assert back == d
    assert back.SendDataHead is d.SendDataHead and back.BufferedData is d.BufferedData
    assert back.encode(ptrs) == raw


@given(other_structs)
def test_state_structs_round_trip(s):
    ptrs = PointerTable()
    raw = s.encode(ptrs)
    assert len(raw) == s.SIZE
    assert type(s).decode(raw, ptrs) == s


@given(tcp_const, tcp_cached, tcp_delegated)
def test_full_tcp_state_round_trip(c, k, d):
    ptrs = PointerTable()
    s = TcpOffloadState(c, k, d)
    assert TcpOffloadState.decode(s.encode(ptrs), ptrs) == s


@given(field=st.sampled_from(["RcvNxt", "SndUna", "CWnd", "TsTime"]), value=st.integers(1 << 32, 1 << 40))
def test_validation_rejects_overflow(field, value):
    import pytest

    from ndis.state import StateValidationError

    d = TCP_OFFLOAD_STATE_DELEGATED(**{field: value})
    with pytest.raises(StateValidationError):
        d.encode()


# ---------------------------------------------------------------------------------------------
# random trees

FAILURES = [NdisStatus.FAILURE, NdisStatus.RESOURCES, NdisStatus.OFFLOAD_TCP_ENTRIES,
            NdisStatus.OFFLOAD_PATH_ENTRIES, NdisStatus.OFFLOAD_NEIGHBOR_ENTRIES,
            NdisStatus.OFFLOAD_VLAN_MISMATCH, NdisStatus.OFFLOAD_CONNECTION_REJECTED]

tcp_spec = st.just("new")
path_spec = st.tuples(st.sampled_from(["new", "link"]), st.lists(tcp_spec, max_size=3))
neighbor_spec = st.sampled_from(["new", "link", "placeholder"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        st.lists(st.tuples(st.just("new") if kind == "new" else st.sampled_from(["new", "link"]),
                           st.lists(tcp_spec, max_size=3)), max_size=3),
    )
)
forest_spec = st.lists(neighbor_spec, min_size=1, max_size=3)


def build(bench, forest, port=[50000]):  # noqa: B006 - a counter
    """Build a protocol tree from the spec; 'link' blocks reference the base N0 / P0."""
    host = bench.host
    roots, order = [], []
    for i, (nkind, paths) in enumerate(forest):
        if nkind == "new":
            nb = new_offload_block(sample_states()[0], label=f"N{i + 1}")
        elif nkind == "link":
            nb = reference_block(host.handles["N0"], OffloadLayer.NEIGHBOR, label=f"N0@{i + 1}")
        else:
            nb = placeholder_block(OffloadLayer.NEIGHBOR, label=f"ph{i + 1}")
        pblocks = []
        for j, (pkind, tcps) in enumerate(paths):
            if pkind == "new":
                pb = new_offload_block(sample_states()[1], label=f"P{i + 1}.{j + 1}")
            else:
                pb = reference_block(host.handles["P0"], OffloadLayer.PATH, label=f"P0@{i + 1}.{j + 1}")
            tblocks = []
            for k, _ in enumerate(tcps):
                port[0] += 1
                tblocks.append(new_offload_block(sample_states(port[0])[2], label=f"T{i + 1}.{j + 1}.{k + 1}"))
            if tblocks:
                add_dependents(pb, *tblocks)
            pblocks.append(pb)
        if pblocks:
            add_dependents(nb, *pblocks)
        roots.append(nb)
    root = chain_blocks(*roots)
    order = list(iter_blocks(root))
    return root, order


def oracle(root, script):
    """d.7 / b.4 / b.5 computed from the tree independently of the target."""
    expected: dict[str, int] = {}
    roles = {id(b): block_role(b) for b in iter_blocks(root)}
    stop = [False]

    def visit(block, parent_ok, is_root):
        role = roles[id(block)]
        deps = []
        d = block.DependentBlockList
        while d is not None:
            deps.append(d)
            d = d.NextBlock
        if role is BlockRole.PLACEHOLDER:
            expected[block.label] = NdisStatus.SUCCESS
            for c in deps:
                visit(c, parent_ok, False)
            return True
        if role is BlockRole.REFERENCE:
            ok = [visit(c, parent_ok and not stop[0], False) for c in deps]
            expected[block.label] = (NdisStatus.SUCCESS if all(ok) else
                                     NdisStatus.OFFLOAD_PARTIAL_SUCCESS if any(ok) else NdisStatus.FAILURE)
            # [I] a linker whose dependents all failed reports FAILURE, and its parent counts it
            # as a failed dependent (the status of a block is what its parent looks at)
            return expected[block.label] in OFFLOADED_STATUSES
        if stop[0] or not parent_ok:
            expected[block.label] = NdisStatus.FAILURE
            for c in deps:
                visit(c, False, False)
            return False
        status = script.get(block.label, NdisStatus.SUCCESS)
        if status != NdisStatus.SUCCESS:
            expected[block.label] = status
            if is_root:
                stop[0] = True
            for c in deps:
                visit(c, False, False)
            return False
        ok = [visit(c, True, False) for c in deps]
        expected[block.label] = NdisStatus.SUCCESS if all(ok) else NdisStatus.OFFLOAD_PARTIAL_SUCCESS
        return True

    b = root
    first = True
    while b is not None:
        visit(b, True, first)
        first = False
        b = b.NextBlock
    return expected


def base_bench(ims):
    b = ChimneyBench(ims, target=ScriptedTarget(capacity=10_000))
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t, labels=("N0", "P0", "T0"))
    b.run()
    return b


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(forest=forest_spec, ims=st.integers(0, 2), data=st.data())
def test_random_trees_follow_d7_and_pass_the_checker(forest, ims, data):
    b = base_bench(ims)
    root, order = build(b, forest)
    new_labels = [blk.label for blk in order if block_role(blk) is BlockRole.NEW_OFFLOAD]
    failing = data.draw(st.lists(st.sampled_from(new_labels), unique=True) if new_labels else st.just([]))
    script = {lbl: data.draw(st.sampled_from(FAILURES)) for lbl in failing}
    expected = oracle(root, script)
    b.target.initiate_script = script
    b.host.offload(root)
    b.run()
    assert b.host.completed[-1][1] is root  # same root pointer back
    got = {blk.label: blk.Status for blk in iter_blocks(root)}
    assert got == expected
    offloaded = {lbl for lbl in new_labels if expected[lbl] in OFFLOADED_STATUSES}
    assert set(b.target.objects) - {"N0", "P0", "T0"} == offloaded
    for blk in order:
        assert isinstance(blk, NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST)
    b.checker.assert_quiescent()
    assert b.checker.violations == [] and b.host.errors == []
    # and everything can be uploaded again
    b.host.upload_all()
    b.run()
    assert b.target.objects == {} and b.checker.violations == []


@settings(max_examples=40, deadline=None)
@given(forest=forest_spec)
def test_block_encode_decode_round_trip(forest):
    b = base_bench(0)
    root, order = build(b, forest)
    ptrs = PointerTable()
    for blk in order:
        raw = encode_block(blk, ptrs)
        assert len(raw) == 0x98
        back = decode_block(raw, ptrs, flavor=type(blk))
        assert back.NextBlock is blk.NextBlock and back.DependentBlockList is blk.DependentBlockList
        assert back.OffloadHandle is blk.OffloadHandle and back.Header == blk.Header
        assert encode_block(back, ptrs) == raw


def mutate_strategy(order, roles, statuses):
    idx = st.integers(0, len(order) - 1)
    return st.tuples(idx, st.sampled_from(["flip", "illegal"]))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(forest=forest_spec, data=st.data())
def test_broken_initiate_completions_are_flagged(forest, data):
    checker = ConformanceChecker(strict=False)
    b = ChimneyBench(0, target=ScriptedTarget(capacity=10_000), checker=checker)
    n, p, t = sample_states()
    b.host.offload_connection(n, p, t, labels=("N0", "P0", "T0"))
    b.run()
    root, order = build(b, forest)
    roles = {blk.label: block_role(blk) for blk in order}
    b.target.hold = True
    b.host.offload(root)
    _op, held = b.target.held.pop()
    b.target._initiate(held)
    k = data.draw(st.integers(0, len(order) - 1))
    how = data.draw(st.sampled_from(["flip", "illegal"]))
    blk = order[k]
    assert isinstance(blk, NDIS_MINIPORT_OFFLOAD_BLOCK_LIST)
    role = roles[blk.label]
    if how == "illegal":
        blk.Status = 0xC0000005  # not an NDIS chimney status at all
    elif role is BlockRole.PLACEHOLDER:
        blk.Status = NdisStatus.FAILURE
    elif role is BlockRole.REFERENCE:
        blk.Status = NdisStatus.FAILURE if blk.Status != NdisStatus.FAILURE else NdisStatus.SUCCESS
    elif blk.Status in OFFLOADED_STATUSES:
        blk.Status = NdisStatus.RESOURCES  # claims failure, but the context was written
    else:
        blk.Status = NdisStatus.SUCCESS  # claims success, nothing written
    b.target.ndis.NdisMInitiateOffloadComplete(held)
    assert checker.rules_broken & {"V1", "V2"}, [str(v) for v in checker.violations]


# ---------------------------------------------------------------------------------------------
# random operation sequences, 0 IMs vs 2 IMs in lockstep


class Lockstep(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.benches = [ChimneyBench(0), ChimneyBench(2)]
        for b in self.benches:
            b.target.auto_ack = False
        self.n = 0
        self.closed: set[str] = set()

    def each(self, fn):
        for b in self.benches:
            fn(b)
            b.run()

    def live_tcp(self):
        host = self.benches[0].host
        return sorted(lbl for lbl, node in host.nodes.items() if node.layer is OffloadLayer.TCP)

    def live_paths(self):
        host = self.benches[0].host
        return sorted(lbl for lbl, node in host.nodes.items() if node.layer is OffloadLayer.PATH)

    @rule(link=st.booleans(), fail=st.sampled_from([None] * 6 + ["N", "P", "T"]), data=st.data())
    def offload(self, link, fail, data):
        self.n += 1
        i = self.n
        paths = self.live_paths()
        port = 30000 + i

        def go(b):
            n, p, t = sample_states(port)
            b.target.initiate_script = {f"{fail}{i}": NdisStatus.FAILURE} if fail else {}
            if link and paths:
                pl = paths[0]
                nl = next(lbl for lbl, node in b.host.nodes.items()
                          if any(c.label == pl for c in node.children))
                b.host.offload_connection(nl, pl, t, labels=(nl, pl, f"T{i}"))
            else:
                b.host.offload_connection(n, p, t, labels=(f"N{i}", f"P{i}", f"T{i}"))

        self.each(go)

    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=16), acked=st.integers(-1, 20))
    def send(self, data, payload, acked):
        live = [lbl for lbl in self.live_tcp() if lbl not in self.closed]
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.send(lbl, payload))
            if acked >= 0:  # the peer ACKs part or all of what is outstanding
                self.each(lambda b: b.target.ack(lbl, acked))

    @rule(data=st.data(), nbytes=st.integers(0, 40))
    def ack(self, data, nbytes):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.target.ack(lbl, nbytes))

    @rule(data=st.data(), size=st.integers(0, 8))
    def post(self, data, size):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.post_receive(lbl, size))

    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=16))
    def deliver(self, data, payload):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.target.deliver(lbl, payload))

    @rule(data=st.data())
    def query(self, data):
        live = sorted(self.benches[0].host.nodes)
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.query([lbl]))

    @rule(data=st.data(), wnd=U16)
    def update(self, data, wnd):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.update(lbl, TCP_OFFLOAD_STATE_CACHED(InitialRcvWnd=wnd)))

    @rule(data=st.data(), reason=st.sampled_from(list(TCP_UPLOAD_REASON)[:11]))
    def request_upload(self, data, reason):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.target.request_upload(lbl, reason))

    @rule(data=st.data())
    def invalidate_then_upload(self, data):
        live = self.live_tcp()
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.invalidate([lbl]))
            self.each(lambda b: b.target.request_upload(lbl, TCP_UPLOAD_REASON.InvalidState))

    @rule(data=st.data())
    def disconnect(self, data):
        live = [lbl for lbl in self.live_tcp() if lbl not in self.closed]
        if live:
            lbl = data.draw(st.sampled_from(live))
            self.closed.add(lbl)
            self.each(lambda b: b.host.disconnect(lbl, 1))

    @rule(data=st.data(), dice=st.integers(0, 2))
    def terminate(self, data, dice):
        live = sorted(self.benches[0].host.nodes)
        if live and not dice:
            lbl = data.draw(st.sampled_from(live))
            self.each(lambda b: b.host.terminate([lbl]))

    @rule(dice=st.integers(0, 5))
    def upload_all(self, dice):
        if dice:  # rare: it empties everything
            return
        self.each(lambda b: b.target.indicate_status(NdisStatus.UPLOAD_ALL))

    @invariant()
    def same_at_the_host(self):
        a, c = self.benches
        assert a.host.events == c.host.events
        assert a.host.errors == c.host.errors == []
        assert a.checker.violations == c.checker.violations == []

    def teardown(self):
        for b in self.benches:
            b.checker.assert_quiescent()


Lockstep.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_random_operation_sequences = Lockstep.TestCase
