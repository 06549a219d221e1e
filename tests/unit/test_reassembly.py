"""IPv4 reassembly (tcpip.reassembly) on its own, then inside the HostStack: order, duplicates,
overlaps, the timer and its ICMP Time Exceeded, the limits, malformed fragments, and a property
test (any fragmentation, any order, any duplication gives back exactly the original octets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, IPOption_Router_Alert
from scapy.layers.l2 import Ether

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.checksum import internet_checksum
from tcpip.ipv4 import IPPROTO_TCP, Ipv4Packet, build_ipv4, parse_ipv4
from tcpip.reassembly import Reassembler, ReassemblyConfig
from tcpip.stack import HostStack
from vnic.faults import fragment_frame

SRC, DST = ip_bytes("198.18.0.2"), ip_bytes("198.18.0.1")
US_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def frag(payload: bytes, start: int, more: bool, *, ident: int = 7, proto: int = IPPROTO_TCP,
         options: bytes = b"", ttl: int = 64, src: bytes = SRC) -> Ipv4Packet:
    """One fragment as the stack sees it: built, then parsed (payload a memoryview)."""
    assert start % 8 == 0
    wire = build_ipv4(src, DST, proto, payload, identification=ident, dont_fragment=False,
                      more_fragments=more, fragment_offset=start // 8, options=options, ttl=ttl)
    return parse_ipv4(memoryview(wire))


def split(data: bytes, size: int, **kw: object) -> list[Ipv4Packet]:
    """RFC 791 fragmentation of ``data`` into pieces of ``size`` (a multiple of 8)."""
    out = []
    for pos in range(0, len(data), size):
        out.append(frag(data[pos:pos + size], pos, pos + size < len(data), **kw))  # type: ignore[arg-type]
    return out


def feed(r: Reassembler, frags: list[Ipv4Packet], now: float = 0.0) -> list[Ipv4Packet]:
    return [w for f in frags if (w := r.add(f, now)) is not None]


def header_ok(p: Ipv4Packet) -> bool:
    wire = build_ipv4(p.src, p.dst, p.protocol, p.payload, identification=p.identification,
                      ttl=p.ttl, dont_fragment=p.dont_fragment, options=p.options)
    reparsed = parse_ipv4(wire)
    return reparsed.checksum == p.checksum and reparsed.total_length == p.total_length


DATA = random.Random(5).randbytes(3001)


def drops() -> tuple[Counter[str], Reassembler]:
    seen: Counter[str] = Counter()
    r = Reassembler(on_drop=lambda reason, n: seen.update({reason: n}))
    return seen, r


# ---- order and duplicates --------------------------------------------------------------------


@pytest.mark.parametrize("order", ["in-order", "reverse", "random-1", "random-2", "random-3"])
def test_any_order_gives_the_datagram_once(order: str) -> None:
    frags = split(DATA, 512)
    if order == "reverse":
        frags.reverse()
    elif order.startswith("random"):
        random.Random(order).shuffle(frags)
    r = Reassembler()
    got = feed(r, frags)
    assert len(got) == 1 and bytes(got[0].payload) == DATA
    w = got[0]
    assert not w.more_fragments and w.fragment_offset == 0 and not w.is_fragment
    assert (w.src, w.dst, w.protocol, w.identification) == (SRC, DST, IPPROTO_TCP, 7)
    assert w.total_length == 20 + len(DATA) and header_ok(w)
    assert len(r) == 0 and r.held_bytes == 0
    c = r.counters
    assert (c.fragments_in, c.reassembled, c.duplicates) == (len(frags), 1, 0)


def test_only_the_last_fragment_completes() -> None:
    frags = split(DATA, 1000)
    r = Reassembler()
    assert [r.add(f, 0.0) for f in frags[:-1]] == [None] * (len(frags) - 1)
    assert len(r) == 1 and r.held_bytes == 3000
    assert r.add(frags[-1], 0.0) is not None


def test_duplicates_are_tolerated() -> None:
    frags = split(DATA, 256)
    doubled = [f for f in frags for _ in range(2)]
    random.Random(1).shuffle(doubled)
    seen, r = drops()
    starts: set[int] = set()
    dups = 0
    got = []
    for f in doubled:
        if got:
            break
        dups += f.fragment_offset in starts
        starts.add(f.fragment_offset)
        if (w := r.add(f, 0.0)) is not None:
            got.append(w)
    assert len(got) == 1 and bytes(got[0].payload) == DATA
    assert r.counters.duplicates == dups > 0 and not seen and len(r) == 0
    # after the completion the datagram is gone: a late copy starts a new one, which never
    # completes and times out (Linux does the same)
    assert r.add(frags[0], 0.0) is None and len(r) == 1


def test_identical_overlap_is_accepted() -> None:
    r = Reassembler()
    assert r.add(frag(DATA[0:16], 0, True), 0.0) is None
    assert r.add(frag(DATA[8:32], 8, True), 0.0) is None  # 8..16 identical, 16..32 new
    assert r.held_bytes == 32
    whole = r.add(frag(DATA[24:40], 24, False), 0.0)  # 24..32 identical again
    assert whole is not None and bytes(whole.payload) == DATA[:40]
    assert r.counters.overlaps == 0


def test_overlap_with_different_octets_drops_the_datagram() -> None:
    seen, r = drops()
    r.add(frag(DATA[0:16], 0, True), 0.0)
    r.add(frag(DATA[32:48], 32, False), 0.0)
    evil = bytearray(DATA[8:32])
    evil[3] ^= 1  # octet 11: overlaps fragment 0..16 with another value
    assert r.add(frag(bytes(evil), 8, True), 0.0) is None
    assert len(r) == 0 and r.held_bytes == 0
    assert r.counters.overlaps == 1 and seen == {"ip-frag-overlap": 1}
    # the missing piece alone cannot complete what was dropped
    assert r.add(frag(DATA[16:32], 16, True), 0.0) is None and len(r) == 1


def test_options_of_fragment_zero_only() -> None:
    ra = bytes([0x94, 0x04, 0x00, 0x00])  # Router Alert (copied flag set)
    frags = [frag(DATA[:8], 0, True, options=ra), frag(DATA[8:16], 8, False, options=ra + ra)]
    whole = feed(Reassembler(), frags[::-1])[0]
    assert whole.options == ra and whole.total_length == 24 + 16 and header_ok(whole)


def test_header_of_fragment_zero() -> None:
    frags = split(DATA[:24], 8, ttl=9)
    frags[1] = frag(DATA[8:16], 8, True, ttl=200)  # a later fragment's header does not count
    whole = feed(Reassembler(), frags[::-1])[0]
    assert whole.ttl == 9 and header_ok(whole)


# ---- the timer ---------------------------------------------------------------------------------


def test_timeout_discards_and_quotes_fragment_zero() -> None:
    seen, r = drops()
    frags = split(DATA, 1024)
    r.add(frags[0], 10.0)
    r.add(frags[1], 25.0)  # a later fragment does not restart the timer
    assert r.next_deadline() == 40.0  # Linux ipfrag_time, 30 s
    assert r.poll(39.99) == []
    (exp,) = r.poll(40.0)
    assert exp.key == (SRC, DST, IPPROTO_TCP, 7)
    wire_header = build_ipv4(SRC, DST, IPPROTO_TCP, DATA[:1024], identification=7,
                             dont_fragment=False, more_fragments=True)[:20]
    assert exp.quote == wire_header + DATA[:8]  # RFC 792: header + 64 bits of data
    assert len(r) == 0 and r.held_bytes == 0 and r.next_deadline() is None
    assert r.counters.timeouts == 1 and r.counters.time_exceeded == 1
    assert seen == {"ip-frag-timeout": 1}
    # the last fragment, too late: a new datagram that will time out as well
    assert r.add(frags[2], 41.0) is None and len(r) == 1


def test_timeout_without_fragment_zero_reports_nothing_to_quote() -> None:
    r = Reassembler(ReassemblyConfig(timeout=5.0))
    r.add(split(DATA, 1024)[1], 0.0)
    assert r.poll(5.0) == [] and r.counters.timeouts == 1 and r.counters.time_exceeded == 0


def test_expired_datagrams_go_first_even_without_poll() -> None:
    """add() runs the timer too: a fragment after the deadline does not join the old one."""
    r = Reassembler(ReassemblyConfig(timeout=5.0))
    frags = split(DATA, 1024)
    r.add(frags[0], 0.0)
    r.add(frags[1], 0.0)
    assert r.add(frags[2], 6.0) is None
    assert r.counters.timeouts == 1 and len(r) == 1
    assert len(r.poll(6.0)) == 1  # the ICMP quote waits for poll()


def test_deadlines_follow_creation_order() -> None:
    r = Reassembler(ReassemblyConfig(timeout=10.0))
    for i, t in enumerate((1.0, 2.0, 3.0)):
        r.add(frag(DATA[:8], 0, True, ident=i), t)
    assert r.next_deadline() == 11.0
    assert [e.key[3] for e in r.poll(12.5)] == [0, 1]
    assert r.next_deadline() == 13.0


# ---- limits and malformed fragments ------------------------------------------------------------


def test_max_datagrams_evicts_the_oldest() -> None:
    seen: Counter[str] = Counter()
    r = Reassembler(ReassemblyConfig(max_datagrams=2),
                    on_drop=lambda reason, n: seen.update({reason: n}))
    for i in range(3):
        r.add(frag(DATA[:8], 0, True, ident=i), float(i))
    assert [k[3] for k in r.keys()] == [1, 2]
    assert r.counters.evicted == 1 and seen == {"ip-frag-evicted": 1}
    assert r.held_bytes == 16


def test_max_bytes_evicts_the_oldest() -> None:
    r = Reassembler(ReassemblyConfig(max_bytes=2000))
    r.add(frag(DATA[:1000], 0, True, ident=1), 0.0)
    r.add(frag(DATA[:800], 0, True, ident=2), 0.0)
    assert r.held_bytes == 1800 and r.counters.evicted == 0
    r.add(frag(DATA[:400], 0, True, ident=3), 0.0)  # 2200 > 2000: the first goes
    assert [k[3] for k in r.keys()] == [2, 3] and r.held_bytes == 1200
    assert r.counters.evicted == 1
    # one datagram alone beyond the limit evicts itself in the end
    r.add(frag(DATA[:2048], 0, True, ident=4), 0.0)
    assert r.keys() == [] and r.held_bytes == 0 and r.counters.evicted == 4


def test_too_big_drops_the_datagram() -> None:
    seen, r = drops()
    r.add(frag(DATA[:64], 0, True), 0.0)
    # 65512 + 24 octets of payload + 20 of header = 65556 > 65535 (RFC 791 3.1)
    assert r.add(frag(DATA[:24], 65512, False), 0.0) is None
    assert len(r) == 0 and r.counters.too_big == 1 and seen == {"ip-frag-too-big": 1}
    # exactly 65535 is fine
    r.add(frag(DATA[:8], 0, True, ident=9), 0.0)
    assert r.add(frag(DATA[:3], 65512, False, ident=9), 0.0) is None  # holes remain
    assert r.counters.too_big == 1 and len(r) == 1


def test_too_big_by_fragment_zero_options() -> None:
    """Fragment zero's options make the whole header longer than the last fragment's."""
    r = Reassembler(ReassemblyConfig(max_datagram_size=600))
    last = frag(DATA[:20], 560, False)  # 20 + 580 = 600: fits with a plain header
    assert r.add(last, 0.0) is None
    ra = bytes([0x94, 0x04, 0x00, 0x00])
    body = [frag(DATA[:560], 0, True, options=ra)]
    assert feed(r, body) == [] and r.counters.too_big == 1 and len(r) == 0


@pytest.mark.parametrize("length", [0, 12, 511])
def test_non_last_fragment_not_a_multiple_of_8_is_dropped(length: int) -> None:
    seen, r = drops()
    assert r.add(frag(DATA[:length], 0, True), 0.0) is None
    assert len(r) == 0 and r.counters.bad_length == 1 and seen == {"ip-frag-bad-length": 1}


def test_last_fragment_may_have_any_length() -> None:
    r = Reassembler()
    r.add(frag(DATA[:8], 0, True), 0.0)
    whole = r.add(frag(DATA[8:13], 8, False), 0.0)
    assert whole is not None and bytes(whole.payload) == DATA[:13]


@pytest.mark.parametrize("case", ["two-ends", "beyond-end", "end-before-data"])
def test_fragments_that_disagree_about_the_end_drop_the_datagram(case: str) -> None:
    seen, r = drops()
    r.add(frag(DATA[:8], 0, True), 0.0)
    if case == "two-ends":
        r.add(frag(DATA[16:24], 16, False), 0.0)
        r.add(frag(DATA[32:40], 32, False), 0.0)
    elif case == "beyond-end":
        r.add(frag(DATA[16:24], 16, False), 0.0)
        r.add(frag(DATA[24:32], 24, True), 0.0)
    else:
        r.add(frag(DATA[32:40], 32, True), 0.0)
        r.add(frag(DATA[16:24], 16, False), 0.0)
    assert len(r) == 0 and r.counters.inconsistent == 1 and seen == {"ip-frag-inconsistent": 1}


def test_datagrams_are_kept_apart_by_key() -> None:
    r = Reassembler()
    a = split(DATA[:40], 16, ident=1)
    b = split(DATA[40:80], 16, ident=2)
    c = split(DATA[80:120], 16, ident=1, proto=17)
    d = split(DATA[120:160], 16, ident=1, src=ip_bytes("198.18.0.3"))
    mixed = [x for group in zip(a, b, c, d, strict=True) for x in group]
    got = feed(r, mixed)
    assert sorted(bytes(w.payload) for w in got) == sorted(
        [DATA[:40], DATA[40:80], DATA[80:120], DATA[120:160]])


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"max_datagrams": 0}, {"max_bytes": 0},
                                 {"max_datagram_size": 500}, {"max_datagram_size": 70000}])
def test_config_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReassemblyConfig(**bad)  # type: ignore[arg-type]


# ---- the property -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=4000),
    cuts=st.lists(st.integers(min_value=1, max_value=499), max_size=30),
    spans=st.lists(st.tuples(st.integers(min_value=0, max_value=500),
                             st.integers(min_value=1, max_value=500)), max_size=8),
    order_seed=st.integers(min_value=0, max_value=2**32 - 1),
    dup=st.floats(min_value=0.0, max_value=1.0),
)
def test_property_any_fragmentation_order_and_duplication(
    data: bytes, cuts: list[int], spans: list[tuple[int, int]], order_seed: int, dup: float
) -> None:
    """Random fragment boundaries (multiples of 8), random order, identical re-sends and
    re-fragmentations of random spans of the same octets (overlapping the original fragments
    anywhere, all identical): exactly the original octets."""
    n = len(data)
    bounds = sorted({8 * c for c in cuts if 8 * c < n} | {0, n})
    pieces = list(zip(bounds, bounds[1:], strict=False))
    rng = random.Random(order_seed)
    stream = [frag(data[a:b], a, b < n) for a, b in pieces]
    stream += [frag(data[a:b], a, b < n) for a, b in pieces if rng.random() < dup]
    for first, length in spans:
        a = min(8 * first, (n - 1) // 8 * 8)
        b = min(a + 8 * length, n)  # a multiple of 8 unless it is the end
        stream.append(frag(data[a:b], a, b < n))
    rng.shuffle(stream)
    r = Reassembler()
    out = [w for f in stream if (w := r.add(f, 0.0)) is not None]
    assert out, "never completed"
    # late copies may complete the datagram again (when they cover it all): the same octets
    for whole in out:
        assert bytes(whole.payload) == data and whole.total_length == 20 + n
    assert r.counters.overlaps == r.counters.inconsistent == r.counters.bad_length == 0


# ---- inside the stack ---------------------------------------------------------------------------


def make_stack(**kw: object) -> HostStack:
    s = HostStack(mac_bytes(US_MAC), DST, 24, rng=random.Random(1), name="us", **kw)  # type: ignore[arg-type]
    s.neighbors.add(SRC, mac_bytes(PEER_MAC), 0.0, permanent=True)  # no ARP timers
    return s


def eth(ip_pkt: object) -> bytes:
    return raw(Ether(dst=US_MAC, src=PEER_MAC) / ip_pkt)


def test_stack_reassembles_a_syn_for_a_listener() -> None:
    """A TCP segment in 3 fragments reaches the listener (SYN -> SYN-ACK) and is counted."""
    s = make_stack()
    s.listen(80, lambda conn: None)
    syn = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=99) / TCP(sport=1234, dport=80, flags="S")
              / (b"q" * 40))
    pieces = fragment_frame(syn, 16, reverse=True)
    assert pieces is not None and len(pieces) == 4
    for p in pieces:
        s.receive_frame(p, 1.0)
    (reply,) = [Ether(f) for f in s.poll(1.0)]
    assert reply[TCP].flags == "SA" and reply[TCP].dport == 1234 and reply[IP].flags == "DF"
    c = s.counters
    assert (c.ip_fragments_in, c.ip_reassembled, c.tcp_in, c.ipv4_in) == (4, 1, 1, 4)
    assert not c.drops


def test_stack_answers_a_fragmented_ping() -> None:
    s = make_stack()
    ping = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=5) / ICMP(id=1, seq=2) / DATA[:2000])
    for p in fragment_frame(ping, 504) or []:
        s.receive_frame(p, 1.0)
    (reply,) = [Ether(f) for f in s.poll(1.0)]
    assert reply[ICMP].type == 0 and bytes(reply[ICMP].payload) == DATA[:2000]


def test_stack_time_exceeded_on_timeout() -> None:
    s = make_stack()
    ping = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=5) / ICMP(id=1, seq=2) / DATA[:2000])
    pieces = fragment_frame(ping, 504)
    assert pieces is not None
    for p in pieces[:-1]:
        s.receive_frame(p, 1.0)
    assert s.poll(1.0) == []
    assert s.next_deadline() == 31.0  # the stack's poll drives the reassembly timer
    assert s.poll(30.9) == []
    (msg,) = [Ether(f) for f in s.poll(31.0)]
    # RFC 792: type 11, code 1 (fragment reassembly time exceeded), header + 64 bits quoted
    assert msg[IP].dst == "198.18.0.2" and msg[IP].flags == "DF"
    icmp = msg[ICMP]
    assert (icmp.type, icmp.code) == (11, 1)
    assert raw(icmp)[8:] == pieces[0][14:14 + 20 + 8]
    assert internet_checksum(raw(icmp)) == 0
    assert s.counters.icmp_time_exceeded_out == 1
    assert s.counters.drops == {"ip-frag-timeout": 1}


def test_stack_no_time_exceeded_without_fragment_zero_or_about_an_icmp_error() -> None:
    s = make_stack()
    err = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=6) / ICMP(type=3, code=1) / DATA[:1000])
    no_zero = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=7) / ICMP() / DATA[:1000])
    for p in (fragment_frame(err, 504) or [])[:-1] + (fragment_frame(no_zero, 504) or [])[1:]:
        s.receive_frame(p, 1.0)
    assert s.poll(40.0) == []
    assert s.counters.drops == {"ip-frag-timeout": 2} and s.counters.icmp_time_exceeded_out == 0


def test_stack_time_exceeded_can_be_turned_off() -> None:
    s = make_stack(reassembly_config=ReassemblyConfig(time_exceeded=False, timeout=2.0))
    ping = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=5) / ICMP() / DATA[:2000])
    s.receive_frame((fragment_frame(ping, 504) or [])[0], 1.0)
    assert s.next_deadline() == 3.0
    assert s.poll(3.0) == [] and s.counters.drops == {"ip-frag-timeout": 1}


def test_stack_reassembled_datagram_with_options_is_dropped_like_any_other() -> None:
    s = make_stack()
    pkt = eth(IP(src="198.18.0.2", dst="198.18.0.1", id=8, options=[IPOption_Router_Alert()])
              / ICMP() / DATA[:600])
    for p in fragment_frame(pkt, 304) or []:
        s.receive_frame(p, 1.0)
    assert s.poll(1.0) == []
    assert s.counters.ip_reassembled == 1 and s.counters.drops == {"ip-options": 1}


def test_stack_fragments_not_for_us_are_not_buffered() -> None:
    s = make_stack()
    pkt = raw(Ether(dst=US_MAC, src=PEER_MAC)
              / IP(src="198.18.0.2", dst="198.18.0.9", id=8) / ICMP() / DATA[:600])
    for p in fragment_frame(pkt, 304) or []:
        s.receive_frame(p, 1.0)
    assert len(s.reassembly) == 0 and s.counters.drops == {"ip-not-ours": 2}
