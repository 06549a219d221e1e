from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnic.faults import (
    FaultInjector,
    FaultSpec,
    GilbertElliott,
    WireFaults,
    all_of,
    any_of,
    is_tcp,
    tcp_data_only,
    tcp_flow,
    tcp_port,
)


def tcp_frame(seq: int, payload: bytes = b"data", sport: int = 40000, dport: int = 5001) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x76\x6e\x00\x01\x02" + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0,
                     bytes([198, 18, 1, 2]), bytes([198, 18, 1, 1]))
    return eth + ip + tcp + payload


FRAMES = [tcp_frame(i, b"p%05d" % i) for i in range(2000)]


def run(inj: FaultInjector, frames: list[bytes] = FRAMES, dt: float = 0.001) -> list[tuple[float, bytes]]:
    out = []
    t = 0.0
    for f in frames:
        out += inj.apply(f, t)
        t += dt
    out += inj.flush(t)
    return out


def test_noop_passes_everything_in_order() -> None:
    inj = FaultInjector()
    out = run(inj)
    assert [f for _, f in out] == FRAMES
    assert inj.counters.delivered == len(FRAMES) and inj.counters.dropped == 0


@pytest.mark.parametrize(
    "spec",
    [
        FaultSpec(loss=0.1),
        FaultSpec(gilbert=GilbertElliott(p=0.02, r=0.3)),
        FaultSpec(duplicate=0.1),
        FaultSpec(reorder=0.1),
        FaultSpec(delay=0.01, jitter=0.02),
        FaultSpec(corrupt=0.1),
        FaultSpec(truncate=0.1),
        FaultSpec(loss=0.05, duplicate=0.05, reorder=0.05, corrupt=0.05, truncate=0.05),
    ],
)
def test_deterministic_per_seed(spec: FaultSpec) -> None:
    a = run(FaultInjector(spec, seed=7))
    b = run(FaultInjector(spec, seed=7))
    c = run(FaultInjector(spec, seed=8))
    assert a == b
    assert a != c


def test_loss() -> None:
    inj = FaultInjector(FaultSpec(loss=0.2), seed=1)
    out = run(inj)
    c = inj.counters
    assert 300 < c.dropped < 500
    assert len(out) == len(FRAMES) - c.dropped == c.delivered
    kept = {x for _, x in out}
    assert [f for _, f in out] == [f for f in FRAMES if f in kept]  # order kept


def _runs(mask: list[bool]) -> list[int]:
    runs, cur = [], 0
    for lost in mask:
        if lost:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return runs


def test_gilbert_elliott_bursts() -> None:
    frames = [tcp_frame(i) for i in range(20000)]
    ge = FaultInjector(FaultSpec(gilbert=GilbertElliott(p=0.01, r=0.2)), seed=3)
    kept = {f for _, f in run(ge, frames)}
    ge_runs = _runs([f not in kept for f in frames])
    rate = ge.counters.dropped / len(frames)
    bern = FaultInjector(FaultSpec(loss=rate), seed=3)
    kept_b = {f for _, f in run(bern, frames)}
    b_runs = _runs([f not in kept_b for f in frames])
    mean_ge = sum(ge_runs) / len(ge_runs)
    mean_b = sum(b_runs) / len(b_runs)
    assert ge.counters.burst_dropped == ge.counters.dropped > 0
    assert mean_ge > 3.0  # expected burst length 1/r = 5
    assert mean_b < 1.2
    assert max(ge_runs) >= 10


def test_duplicate() -> None:
    inj = FaultInjector(FaultSpec(duplicate=0.1), seed=2)
    out = run(inj)
    assert inj.counters.duplicated > 100
    assert len(out) == len(FRAMES) + inj.counters.duplicated == inj.counters.delivered


def test_reorder_by_gap() -> None:
    inj = FaultInjector(FaultSpec(reorder=0.05, reorder_gap=3, reorder_delay=10.0), seed=4)
    out = [f for _, f in run(inj)]
    assert sorted(out) == sorted(FRAMES)
    assert out != FRAMES
    assert inj.counters.reordered > 50
    # a held frame is overtaken by exactly `gap` frames (unless others were held meanwhile)
    pos = {f: i for i, f in enumerate(out)}
    displaced = [pos[f] - i for i, f in enumerate(FRAMES) if pos[f] > i]
    assert max(displaced) <= 3 * 3


def test_reorder_releases_on_deadline() -> None:
    inj = FaultInjector(FaultSpec(reorder=1.0, reorder_gap=5, reorder_delay=0.05), seed=0)
    assert inj.apply(FRAMES[0], 0.0) == []
    assert inj.next_deadline() == pytest.approx(0.05)
    assert inj.poll(0.04) == []
    assert inj.poll(0.05) == [(0.05, FRAMES[0])]
    assert inj.held == 0


def test_delay_and_jitter() -> None:
    inj = FaultInjector(FaultSpec(delay=0.1, jitter=0.05), seed=5)
    out = inj.apply(FRAMES[0], 1.0)
    assert len(out) == 1 and 1.1 <= out[0][0] <= 1.15
    assert inj.counters.delayed == 1


def test_corrupt_keeps_ethernet_header() -> None:
    inj = FaultInjector(FaultSpec(corrupt=1.0), seed=6)
    out = run(inj, FRAMES[:200])
    assert inj.counters.corrupted == 200
    for (_, got), orig in zip(out, FRAMES[:200], strict=True):
        assert got[:14] == orig[:14]
        assert got != orig and len(got) == len(orig)
        assert sum(a != b for a, b in zip(got, orig, strict=True)) == 1


def test_truncate() -> None:
    inj = FaultInjector(FaultSpec(truncate=1.0, truncate_min=14), seed=6)
    out = run(inj, FRAMES[:100])
    assert inj.counters.truncated == 100
    for (_, got), orig in zip(out, FRAMES[:100], strict=True):
        assert 14 <= len(got) < len(orig) and orig.startswith(got)


def test_filter_targets_only_tcp_data() -> None:
    pure_ack = tcp_frame(1, b"")
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28
    assert is_tcp(pure_ack) and not tcp_data_only(pure_ack) and not is_tcp(arp)
    assert tcp_data_only(FRAMES[0])
    inj = FaultInjector(FaultSpec(loss=1.0, match=tcp_data_only), seed=0)
    assert inj.apply(pure_ack, 0.0) == [(0.0, pure_ack)]
    assert inj.apply(arp, 0.0) == [(0.0, arp)]
    assert inj.apply(FRAMES[0], 0.0) == []
    assert inj.counters.eligible == 1 and inj.counters.dropped == 1
    other = tcp_frame(1, b"x", sport=1234, dport=80)
    inj2 = FaultInjector(FaultSpec(loss=1.0, match=tcp_port(5001)))
    assert inj2.apply(other, 0.0) == [(0.0, other)]
    assert inj2.apply(FRAMES[0], 0.0) == []


def test_time_window() -> None:
    inj = FaultInjector(FaultSpec(loss=1.0, start=1.0, stop=2.0))
    assert inj.apply(FRAMES[0], 0.5) != []
    assert inj.apply(FRAMES[0], 1.5) == []
    assert inj.apply(FRAMES[0], 2.0) != []


def test_from_dict_and_wire_faults() -> None:
    spec = FaultSpec.from_dict({"loss": 0.1, "gilbert": {"p": 0.1, "r": 0.5}})
    assert spec.gilbert is not None and spec.gilbert.r == 0.5
    with pytest.raises(ValueError, match="unknown fault keys"):
        FaultSpec.from_dict({"lossy": 1})
    w1 = WireFaults.from_specs(FaultSpec(loss=0.5), FaultSpec(loss=0.5), seed=9)
    w2 = WireFaults.from_specs(FaultSpec(loss=0.5), FaultSpec(loss=0.5), seed=9)
    r1 = [len(w1.a_to_b.apply(f, 0.0)) for f in FRAMES[:100]]
    r2 = [len(w1.b_to_a.apply(f, 0.0)) for f in FRAMES[:100]]
    assert r1 != r2  # directions are independent streams
    assert r1 == [len(w2.a_to_b.apply(f, 0.0)) for f in FRAMES[:100]]
    assert set(w1.counters()) == {"a_to_b", "b_to_a"}


def test_skip_count_and_enabled() -> None:
    inj = FaultInjector(FaultSpec(loss=1.0, skip=2, count=3, match=tcp_data_only))
    kept = [bool(inj.apply(f, 0.0)) for f in FRAMES[:8]]
    assert kept == [True, True, False, False, False, True, True, True]
    inj2 = FaultInjector(FaultSpec(loss=1.0))
    inj2.enabled = False
    assert inj2.apply(FRAMES[0], 0.0) == [(0.0, FRAMES[0])]
    inj2.enabled = True
    assert inj2.apply(FRAMES[0], 0.0) == []


def test_flow_predicates() -> None:
    a = tcp_frame(1, b"x", sport=40000, dport=5001)
    b = tcp_frame(1, b"x", sport=5001, dport=40000)
    c = tcp_frame(1, b"x", sport=40001, dport=5001)
    flow = tcp_flow(40000, 5001)
    assert flow(a) and flow(b) and not flow(c)
    assert any_of(flow, tcp_port(40001))(c)
    assert not all_of(flow, tcp_data_only)(tcp_frame(1, b"", sport=40000, dport=5001))


probability = st.sampled_from([0.0, 0.05, 0.3, 1.0])


@settings(max_examples=60, deadline=None)
@given(
    loss=probability,
    duplicate=probability,
    reorder=probability,
    corrupt=probability,
    jitter=st.sampled_from([0.0, 0.01]),
    gap=st.integers(1, 5),
    seed=st.integers(0, 2**32),
    n=st.integers(0, 200),
)
def test_conservation(loss: float, duplicate: float, reorder: float, corrupt: float,
                      jitter: float, gap: int, seed: int, n: int) -> None:
    """Every frame in is delivered (once, or twice if duplicated) unless it was dropped;
    release times never precede the send time; corrupt frames keep their length."""
    spec = FaultSpec(loss=loss, duplicate=duplicate, reorder=reorder, reorder_gap=gap,
                     corrupt=corrupt, jitter=jitter)
    inj = FaultInjector(spec, seed=seed)
    out: list[tuple[float, bytes]] = []
    t = 0.0
    for f in FRAMES[:n]:
        for rt, g in inj.apply(f, t):
            assert rt >= t
            out.append((rt, g))
        t += 0.001
        out += inj.poll(t)
    out += inj.flush(t)
    c = inj.counters
    assert c.frames_in == n
    assert len(out) == c.delivered == n - c.dropped + c.duplicated
    assert inj.held == 0
    lengths = sorted(len(f) for f in FRAMES[:n])
    if not loss and not duplicate:
        assert sorted(len(g) for _, g in out) == lengths
