from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpip.checksum import internet_checksum
from tcpip.ipv4 import parse_ipv4
from tcpip.reassembly import Reassembler
from vnic.faults import (
    FaultInjector,
    FaultSpec,
    GilbertElliott,
    WireFaults,
    all_of,
    any_of,
    fragment_frame,
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


# ---- fragment: split IPv4 frames into fragments (RFC 791 section 3.2) ---------------------------

def with_ip_checksum(frame: bytes) -> bytes:
    """tcp_frame with its IPv4 header checksum set (the fragmenter refuses bad headers)."""
    return frame[:24] + internet_checksum(frame[14:34]).to_bytes(2, "big") + frame[26:]


BIG = with_ip_checksum(tcp_frame(77, bytes(range(256)) * 6 + b"tail"))  # 1580 octets of IP
BIG_IP = parse_ipv4(BIG[14:])


def ip_of(frame: bytes) -> object:
    ip = parse_ipv4(frame[14:])  # checks the header checksum
    assert internet_checksum(frame[14:14 + ip.header_length]) == 0
    return ip


def reassemble(frames: list[bytes]) -> bytes:
    r = Reassembler()
    got = [w for f in frames if (w := r.add(parse_ipv4(f[14:]), 0.0)) is not None]
    assert len(got) == 1 and len(r) == 0
    return bytes(got[0].payload)


@pytest.mark.parametrize("size", [8, 256, 512, 1496, 1536])
def test_fragment_frame_sizes_offsets_mf_and_checksums(size: int) -> None:
    frags = fragment_frame(BIG, size)
    assert frags is not None
    payload = bytes(BIG_IP.payload)
    assert len(frags) == -(-len(payload) // size)
    pos = 0
    for i, f in enumerate(frags):
        assert f[:14] == BIG[:14]  # the Ethernet header copied
        ip = ip_of(f)
        assert ip.is_fragment and ip.fragment_offset * 8 == pos
        assert ip.more_fragments is (i < len(frags) - 1)
        assert ip.total_length == 20 + len(ip.payload) == len(f) - 14
        assert len(ip.payload) == (size if i < len(frags) - 1 else len(payload) - pos)
        assert (ip.identification, ip.ttl, ip.protocol, ip.src, ip.dst) == (
            BIG_IP.identification, BIG_IP.ttl, BIG_IP.protocol, BIG_IP.src, BIG_IP.dst)
        assert bytes(ip.payload) == payload[pos:pos + len(ip.payload)]
        pos += len(ip.payload)
    assert reassemble(frags) == payload


def test_fragment_frame_keeps_df_and_can_reverse() -> None:
    """A fault injector, not a router: DF set, fragmented anyway, DF kept."""
    df = bytearray(BIG)
    df[20] |= 0x40
    df[24:26] = b"\x00\x00"
    df[24:26] = internet_checksum(bytes(df[14:34])).to_bytes(2, "big")
    frags = fragment_frame(bytes(df), 512, reverse=True)
    assert frags is not None and len(frags) == 4
    ips = [ip_of(f) for f in frags]
    assert all(ip.dont_fragment for ip in ips)
    assert [ip.fragment_offset for ip in ips] == [192, 128, 64, 0]
    assert reassemble(frags) == bytes(BIG_IP.payload)


def test_fragment_frame_leaves_other_frames_alone() -> None:
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28
    small = with_ip_checksum(tcp_frame(1, b"x" * 40))
    bad = bytearray(BIG)
    bad[22] ^= 1  # TTL changed: the header checksum no longer matches
    assert fragment_frame(arp, 8) is None
    assert fragment_frame(small, 64) is None  # 60 octets of IP payload fit in 64
    assert fragment_frame(bytes(bad), 512) is None
    assert fragment_frame(BIG[:100], 8) is None  # truncated: Total Length beyond the frame
    with pytest.raises(ValueError):
        fragment_frame(BIG, 100)


def test_fragment_frame_options_and_refragmenting() -> None:
    from tcpip.ipv4 import build_ipv4

    ra = bytes([0x94, 0x04, 0x00, 0x00])  # Router Alert: copied flag set
    ts = bytes([0x44, 0x08, 0x05, 0x00]) + bytes(4)  # Timestamp: copied flag clear
    opts = bytes([0x01]) + ts + ra + bytes(3)  # NOP, TS, RA, EOL padding
    ip = build_ipv4(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), 6, bytes(1000),
                    identification=9, options=opts)
    frame = BIG[:14] + ip
    frags = fragment_frame(frame, 400)
    assert frags is not None and len(frags) == 3
    ips = [ip_of(f) for f in frags]
    assert ips[0].options == opts and ips[1].options == ips[2].options == ra
    # a fragment fragmented again: offsets add up, the last piece keeps MF
    again = fragment_frame(frags[1], 200)
    assert again is not None
    sub = [ip_of(f) for f in again]
    assert [x.fragment_offset for x in sub] == [50, 75] and all(x.more_fragments for x in sub)
    assert reassemble([frags[0], *again, frags[2]]) == bytes(1000)


def test_fragment_fault_in_the_injector() -> None:
    inj = FaultInjector(FaultSpec(fragment=1.0, fragment_size=512, delay=0.01), seed=0)
    pure_ack = tcp_frame(5, b"")
    out = inj.apply(BIG, 1.0)
    assert len(out) == 4 and {t for t, _ in out} == {1.01}
    assert reassemble([f for _, f in out]) == bytes(BIG_IP.payload)
    assert inj.apply(pure_ack, 2.0) == [(2.01, pure_ack)]  # fits in 512: as it is
    c = inj.counters
    assert (c.frames_in, c.eligible, c.fragmented, c.fragments, c.delivered) == (2, 2, 1, 4, 5)


def test_fragment_fault_reorder_duplicate_and_hold() -> None:
    inj = FaultInjector(FaultSpec(fragment=1.0, fragment_reorder=True, duplicate=1.0), seed=0)
    out = [f for _, f in inj.apply(BIG, 0.0)]
    assert len(out) == 8 and out[:4] == out[4:]
    assert [ip_of(f).fragment_offset for f in out[:4]] == [192, 128, 64, 0]
    held = FaultInjector(FaultSpec(fragment=1.0, reorder=1.0, reorder_gap=1), seed=0)
    assert held.apply(BIG, 0.0) == [] and held.held == 4
    out2 = held.apply(FRAMES[0], 0.0)  # one frame later the whole group is released ...
    assert len(out2) == 4 and reassemble([f for _, f in out2]) == bytes(BIG_IP.payload)
    assert held.flush(0.0) == [(0.0, FRAMES[0])]  # ... while that frame was held in turn
    assert held.counters.delivered == 5


def test_fragment_fault_honours_match_window_skip_and_count() -> None:
    other = with_ip_checksum(tcp_frame(1, bytes(1000), sport=1234, dport=80))
    inj = FaultInjector(FaultSpec(fragment=1.0, match=tcp_port(5001), start=1.0, stop=2.0,
                                  skip=1, count=2))
    assert inj.apply(other, 1.5) == [(1.5, other)]  # not matching
    assert inj.apply(BIG, 0.5) == [(0.5, BIG)]  # before start
    assert inj.apply(BIG, 1.0) == [(1.0, BIG)]  # skipped
    assert len(inj.apply(BIG, 1.1)) == 4
    assert len(inj.apply(BIG, 1.2)) == 4
    assert inj.apply(BIG, 1.3) == [(1.3, BIG)]  # count used up
    assert inj.apply(BIG, 2.0) == [(2.0, BIG)]  # after stop
    assert inj.counters.fragmented == 2


def test_fragment_probability_and_spec_checks() -> None:
    inj = FaultInjector(FaultSpec(fragment=0.3), seed=4)
    for i in range(1000):
        inj.apply(BIG, i * 0.001)
    assert 230 < inj.counters.fragmented < 370
    assert inj.counters.fragments == 4 * inj.counters.fragmented  # 1560 octets / 512
    assert not FaultSpec(fragment=0.1).is_noop and FaultSpec(fragment_size=64).is_noop
    for bad in (0, 100, -8, 1.5, True):
        with pytest.raises(ValueError, match="multiple of 8"):
            FaultSpec(fragment=1.0, fragment_size=bad)  # type: ignore[arg-type]
    spec = FaultSpec.from_dict({"fragment": 0.5, "fragment_size": 256, "fragment_reorder": True})
    assert (spec.fragment, spec.fragment_size, spec.fragment_reorder) == (0.5, 256, True)


def test_specs_without_fragment_draw_the_same_numbers() -> None:
    """The fragment draw happens only when `fragment` is set: seeds of existing scenarios
    replay as before (the same frames for the same seed with and without the new fields)."""
    spec = FaultSpec(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1)
    plain = run(FaultInjector(spec, seed=3))
    ignored = run(FaultInjector(FaultSpec(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1,
                                          fragment_size=64, fragment_reorder=True), seed=3))
    assert plain == ignored


def test_fragment_loss_drops_single_fragments() -> None:
    inj = FaultInjector(FaultSpec(fragment=1.0, fragment_size=512, fragment_loss=0.5), seed=3)
    kept_counts = []
    for i in range(200):
        out = inj.apply(BIG, float(i))
        kept = [f for _, f in out]
        kept_counts.append(len(kept))
        offsets = [parse_ipv4(memoryview(f)[14:]).fragment_offset for f in kept]
        assert offsets == sorted(set(offsets))  # whole fragments, in order, none twice
    c = inj.counters
    assert c.fragmented == 200 and c.fragments == 800
    assert c.fragments_lost == 800 - sum(kept_counts)
    assert 300 < c.fragments_lost < 500  # about half
    assert 0 in kept_counts and 4 in kept_counts  # all lost, none lost: both happen
    assert c.delivered == sum(kept_counts) and c.dropped == 0
    with pytest.raises(ValueError):
        FaultSpec.from_dict({"fragment_loss": 0.5, "fragment_lost": 1})


def test_fragment_loss_needs_no_draw_when_zero() -> None:
    # the draws for fragment_loss happen only when it is set: existing seeds replay exactly
    a = FaultInjector(FaultSpec(fragment=0.5, duplicate=0.3, fragment_size=512), seed=9)
    b = FaultInjector(FaultSpec(fragment=0.5, duplicate=0.3, fragment_size=512,
                                fragment_loss=0.0), seed=9)
    assert [a.apply(BIG, float(i)) for i in range(50)] == [b.apply(BIG, float(i)) for i in range(50)]
