"""Wire codecs: golden frames byte for byte, and every codec cross-checked against scapy in both
directions (scapy builds -> we parse; we build -> scapy dissects)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, IPOption_Router_Alert
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.arp import ARP_REPLY, ARP_REQUEST, build_arp, parse_arp
from tcpip.checksum import internet_checksum, pseudo_header_sum
from tcpip.errors import DecodeError
from tcpip.ethernet import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IPV4,
    VlanTag,
    build_ethernet,
    parse_ethernet,
    vlan_tag,
)
from tcpip.icmp import (
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    build_icmp_echo,
    parse_icmp,
)
from tcpip.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, build_ipv4, parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

MAC_A = mac_bytes("02:00:00:00:00:01")
MAC_B = mac_bytes("02:00:00:00:00:02")
IP_A = ip_bytes("198.18.0.1")
IP_B = ip_bytes("198.18.0.2")

# A Linux-style SYN from 198.18.0.2:40000 to 198.18.0.1:7, options in Linux's order.
GOLDEN_SYN = bytes.fromhex(
    "020000000001"
    "020000000002"
    "0800"  # Ethernet: dst, src, IPv4
    "4500003c"
    "12344000"
    "40069c60"
    "c6120002"
    "c6120001"  # IPv4, DF, id 0x1234, TTL 64
    "9c400007"
    "01020304"
    "00000000"
    "a002faf0"
    "1cb20000"  # TCP 40000->7 SYN win 64240
    "020405b4"  # MSS 1460
    "0402080a000003e800000000"  # SACK-permitted, timestamps (1000, 0)
    "01030307"  # NOP, window scale 7
)
# Broadcast ARP request "who has 198.18.0.1? tell 198.18.0.2".
GOLDEN_ARP_REQUEST = bytes.fromhex(
    "ffffffffffff02000000000208060001080006040001020000000002c6120002000000000000c6120001"
)
# ICMP echo request id 0x77 seq 3 with 8 bytes of data.
GOLDEN_ECHO = bytes.fromhex(
    "020000000001"
    "020000000002"
    "0800"
    "45000024"
    "00014000"
    "4001aeb0"
    "c6120002"
    "c6120001"
    "080065f0"
    "00770003"
    "6162636465666768"
)


# ---- golden frames ------------------------------------------------------------------------


def test_golden_syn_parses_field_by_field() -> None:
    eth = parse_ethernet(GOLDEN_SYN)
    assert (eth.dst, eth.src, eth.ethertype, eth.vlan_tags) == (MAC_A, MAC_B, ETH_P_IPV4, ())
    ip = parse_ipv4(eth.payload)
    assert (ip.src, ip.dst, ip.protocol, ip.ttl) == (IP_B, IP_A, IPPROTO_TCP, 64)
    assert (ip.identification, ip.dont_fragment, ip.is_fragment, ip.has_options) == (
        0x1234,
        True,
        False,
        False,
    )
    assert ip.total_length == 60 and ip.checksum == 0x9C60
    seg = parse_tcp(ip.payload, ip.src, ip.dst)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (40000, 7, 0x01020304, 0)
    assert seg.flags == TcpFlags.SYN and seg.window == 64240 and seg.payload == b""
    assert seg.options == TcpOptions(
        mss=1460, wscale=7, sack_permitted=True, sack_blocks=(), timestamp=(1000, 0)
    )


def test_golden_syn_builds_byte_exact() -> None:
    seg = TcpSegment(
        40000,
        7,
        0x01020304,
        0,
        TcpFlags.SYN,
        64240,
        TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(1000, 0)),
    )
    ip = build_ipv4(IP_B, IP_A, IPPROTO_TCP, build_tcp(seg, IP_B, IP_A), identification=0x1234)
    assert build_ethernet(MAC_A, MAC_B, ETH_P_IPV4, ip) == GOLDEN_SYN


def test_golden_arp_request_both_ways() -> None:
    eth = parse_ethernet(GOLDEN_ARP_REQUEST)
    assert eth.ethertype == ETH_P_ARP and eth.is_broadcast
    arp = parse_arp(eth.payload)
    assert (arp.op, arp.sender_mac, arp.sender_ip, arp.target_ip) == (
        ARP_REQUEST,
        MAC_B,
        IP_B,
        IP_A,
    )
    payload = build_arp(ARP_REQUEST, MAC_B, IP_B, b"\x00" * 6, IP_A)
    assert build_ethernet(b"\xff" * 6, MAC_B, ETH_P_ARP, payload) == GOLDEN_ARP_REQUEST
    assert arp.encode() == payload


def test_golden_echo_both_ways() -> None:
    ip = parse_ipv4(parse_ethernet(GOLDEN_ECHO).payload)
    msg = parse_icmp(ip.payload)
    assert (msg.type, msg.code, msg.identifier, msg.sequence) == (ICMP_ECHO_REQUEST, 0, 0x77, 3)
    assert bytes(msg.payload) == b"abcdefgh"
    body = build_icmp_echo(ICMP_ECHO_REQUEST, 0x77, 3, b"abcdefgh")
    ip_out = build_ipv4(IP_B, IP_A, IPPROTO_ICMP, body, identification=1)
    assert build_ethernet(MAC_A, MAC_B, ETH_P_IPV4, ip_out) == GOLDEN_ECHO


def test_golden_frames_agree_with_scapy() -> None:
    syn = Ether(GOLDEN_SYN)
    assert syn[TCP].options == [
        ("MSS", 1460),
        ("SAckOK", b""),
        ("Timestamp", (1000, 0)),
        ("NOP", None),
        ("WScale", 7),
    ]
    for frame in (GOLDEN_SYN, GOLDEN_ECHO):
        pkt = Ether(frame)
        del pkt[IP].chksum
        if TCP in pkt:
            del pkt[TCP].chksum
        if ICMP in pkt:
            del pkt[ICMP].chksum
        assert raw(pkt) == frame  # scapy recomputes the same checksums


# ---- Ethernet and VLAN --------------------------------------------------------------------


def test_vlan_tag_from_scapy() -> None:
    frame = raw(Ether(dst="02:00:00:00:00:01") / Dot1Q(vlan=100, prio=5, dei=1) / IP() / b"x")
    eth = parse_ethernet(frame)
    assert eth.vlan_id == 100 and eth.pcp == 5 and eth.vlan_tags[0].dei
    assert eth.vlan_tags[0].tpid == ETH_P_8021Q
    assert eth.ethertype == ETH_P_IPV4
    assert bytes(eth.payload) == frame[18:]


def test_qinq_from_scapy() -> None:
    frame = raw(Ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20, prio=3) / ARP())
    eth = parse_ethernet(frame)
    assert [(t.tpid, t.vid, t.pcp) for t in eth.vlan_tags] == [
        (ETH_P_8021AD, 10, 0),
        (ETH_P_8021Q, 20, 3),
    ]
    assert eth.ethertype == ETH_P_ARP and eth.vlan_id == 10


def test_vlan_build_is_dissected_by_scapy() -> None:
    frame = build_ethernet(MAC_A, MAC_B, ETH_P_ARP, b"\x00" * 28, (vlan_tag(42, pcp=6),))
    pkt = Ether(frame)
    assert pkt[Dot1Q].vlan == 42 and pkt[Dot1Q].prio == 6 and pkt[Dot1Q].type == ETH_P_ARP
    assert parse_ethernet(frame).encode() == frame


def test_untagged_build_matches_scapy() -> None:
    payload = b"\x45" + b"\x00" * 19
    ours = build_ethernet(MAC_A, MAC_B, ETH_P_IPV4, payload)
    assert ours == raw(
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02", type=0x0800) / payload
    )


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 13, "ethernet-truncated"),
        (MAC_A + MAC_B + b"\x81\x00\x00", "ethernet-truncated"),
        (MAC_A + MAC_B + b"\x00\x2e" + b"\x00" * 46, "ethernet-not-ethernet-ii"),
        (
            MAC_A + MAC_B + b"\x81\x00\x00\x01\x81\x00\x00\x02\x81\x00\x00\x03\x08\x00",
            "ethernet-too-many-vlan-tags",
        ),
    ],
)
def test_ethernet_errors(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        parse_ethernet(frame)
    assert err.value.reason == reason


def test_vlan_tag_range_checked() -> None:
    with pytest.raises(ValueError):
        vlan_tag(4096)
    assert VlanTag(ETH_P_8021Q, 7, True, 4095).tci == 0xFFFF


# ---- ARP ----------------------------------------------------------------------------------


def test_arp_reply_matches_scapy_both_ways() -> None:
    ours = build_arp(ARP_REPLY, MAC_A, IP_A, MAC_B, IP_B)
    theirs = raw(
        ARP(
            op=2,
            hwsrc="02:00:00:00:00:01",
            psrc="198.18.0.1",
            hwdst="02:00:00:00:00:02",
            pdst="198.18.0.2",
        )
    )
    assert ours == theirs
    arp = parse_arp(theirs + b"\x00" * 18)  # Ethernet padding is ignored
    assert (arp.op, arp.sender_mac, arp.sender_ip, arp.target_mac, arp.target_ip) == (
        ARP_REPLY,
        MAC_A,
        IP_A,
        MAC_B,
        IP_B,
    )
    assert arp.is_reply and not arp.is_request


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (ARP(hwtype=6), "arp-unsupported-hardware"),
        (ARP(ptype=0x86DD), "arp-unsupported-protocol"),
        (ARP(plen=16), "arp-unsupported-protocol"),
        (ARP(op=3), "arp-unsupported-op"),
    ],
)
def test_arp_unsupported(pkt: ARP, reason: str) -> None:
    data = raw(pkt)
    data += b"\x00" * max(0, 28 - len(data))
    with pytest.raises(DecodeError) as err:
        parse_arp(data)
    assert err.value.reason == reason


def test_arp_truncated() -> None:
    with pytest.raises(DecodeError, match="arp-truncated"):
        parse_arp(raw(ARP())[:27])


# ---- IPv4 ---------------------------------------------------------------------------------


def test_ipv4_build_matches_scapy() -> None:
    ours = build_ipv4(IP_A, IP_B, 17, b"payload!", identification=0x7FFF, ttl=33, dscp=46, ecn=1)
    theirs = raw(
        IP(
            src="198.18.0.1",
            dst="198.18.0.2",
            proto=17,
            id=0x7FFF,
            ttl=33,
            tos=(46 << 2) | 1,
            flags="DF",
        )
        / b"payload!"
    )
    assert ours == theirs
    pkt = IP(ours)
    assert pkt.flags.DF and not pkt.flags.MF and pkt.frag == 0


def test_ipv4_parse_scapy_fields_and_padding() -> None:
    wire = raw(IP(src="198.18.0.2", dst="198.18.0.1", id=99, ttl=5, tos=0xB8, proto=6) / b"abc")
    ip = parse_ipv4(wire + b"\x00" * 7)  # Ethernet padding after the datagram
    assert (ip.identification, ip.ttl, ip.dscp, ip.ecn, ip.protocol) == (99, 5, 46, 0, 6)
    assert not ip.dont_fragment and bytes(ip.payload) == b"abc"
    assert ip.encode() == build_ipv4(
        ip.src, ip.dst, 6, b"abc", identification=99, ttl=5, dscp=46, dont_fragment=False
    )


@pytest.mark.parametrize(
    ("pkt", "offset", "mf"),
    [
        (IP(flags="MF", frag=0, proto=6) / (b"a" * 16), 0, True),  # first fragment
        (IP(flags=0, frag=185, proto=6) / (b"b" * 16), 185, False),  # last fragment
        (IP(flags="MF", frag=3, proto=6) / (b"c" * 16), 3, True),  # middle
    ],
)
def test_ipv4_fragments_are_reported(pkt: IP, offset: int, mf: bool) -> None:
    ip = parse_ipv4(raw(pkt))
    assert ip.is_fragment and ip.fragment_offset == offset and ip.more_fragments is mf
    assert bytes(ip.payload) == raw(pkt)[20:]  # never interpreted as a TCP segment here


def test_ipv4_options_are_reported_not_misparsed() -> None:
    pkt = (
        IP(src="198.18.0.2", dst="198.18.0.1", options=[IPOption_Router_Alert()], proto=6) / b"xyz"
    )
    wire = raw(pkt)
    ip = parse_ipv4(wire)
    assert ip.has_options and ip.header_length == 24 and ip.options == wire[20:24]
    assert bytes(ip.payload) == b"xyz"
    assert ip.encode() == wire  # every field, options included, survives a round trip
    assert IP(ip.encode()).options[0].option == 20  # router alert survives our encoder


def test_ipv4_bad_checksum() -> None:
    wire = bytearray(raw(IP(src="198.18.0.2", dst="198.18.0.1") / b"x"))
    wire[10] ^= 0xFF
    with pytest.raises(DecodeError) as err:
        parse_ipv4(bytes(wire))
    assert err.value.reason == "ipv4-bad-checksum"
    assert parse_ipv4(bytes(wire), verify_checksum=False).checksum == int.from_bytes(
        wire[10:12], "big"
    )


def _ip_with(**fields: int) -> bytes:
    return raw(IP(src="198.18.0.2", dst="198.18.0.1", **fields) / b"0123456789")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x45" + b"\x00" * 18, "ipv4-truncated"),
        (_ip_with(version=6), "ipv4-bad-version"),
        (_ip_with(ihl=4), "ipv4-bad-header-length"),
        (_ip_with(len=19), "ipv4-bad-total-length"),
        (_ip_with(len=200), "ipv4-truncated"),
        (_ip_with(ihl=15), "ipv4-bad-total-length"),  # header longer than the datagram
        (_ip_with(ihl=6)[:22], "ipv4-truncated"),  # buffer shorter than the total length
    ],
)
def test_ipv4_length_checks(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        parse_ipv4(wire)
    assert err.value.reason == reason


# ---- ICMP ---------------------------------------------------------------------------------


def test_icmp_echo_reply_matches_scapy() -> None:
    ours = build_icmp_echo(ICMP_ECHO_REPLY, 0xBEEF, 0x0102, b"ping data")
    assert ours == raw(ICMP(type=0, id=0xBEEF, seq=0x0102) / b"ping data")
    msg = parse_icmp(ours)
    assert msg.type == ICMP_ECHO_REPLY and msg.is_echo and msg.encode() == ours


def test_icmp_other_types_are_opaque() -> None:
    inner = raw(IP(src="198.18.0.1", dst="198.18.0.9") / TCP(sport=1, dport=2))[:28]
    wire = raw(ICMP(type=3, code=3) / inner)
    msg = parse_icmp(wire)
    assert (msg.type, msg.code, msg.rest) == (ICMP_DEST_UNREACHABLE, 3, b"\x00" * 4)
    assert bytes(msg.payload) == inner and not msg.is_echo


def test_icmp_errors() -> None:
    with pytest.raises(DecodeError, match="icmp-truncated"):
        parse_icmp(b"\x08\x00\x00")
    bad = bytearray(raw(ICMP(type=8) / b"abc"))
    bad[-1] ^= 1
    with pytest.raises(DecodeError, match="icmp-bad-checksum"):
        parse_icmp(bytes(bad))


# ---- TCP ----------------------------------------------------------------------------------


def _scapy_tcp(options: list[tuple[str, object]], payload: bytes = b"", **kw: object) -> bytes:
    pkt = (
        IP(src="198.18.0.2", dst="198.18.0.1")
        / TCP(sport=40000, dport=7, options=options, **kw)
        / payload
    )
    return raw(pkt)[20:]


def _ours(seg: TcpSegment) -> bytes:
    return build_tcp(seg, IP_B, IP_A)


@pytest.mark.parametrize(
    ("options", "scapy_options"),
    [
        (TcpOptions(), []),
        (TcpOptions(timestamp=(7, 9)), [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]),
        (TcpOptions(mss=536), [("MSS", 536)]),
        (TcpOptions(sack_permitted=True), [("NOP", None), ("NOP", None), ("SAckOK", b"")]),
        (
            TcpOptions(mss=1460, sack_permitted=True, timestamp=(1, 0), wscale=14),
            [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 14)],
        ),
        (
            TcpOptions(timestamp=(5, 6), sack_blocks=((100, 200), (300, 400))),
            [
                ("NOP", None),
                ("NOP", None),
                ("Timestamp", (5, 6)),
                ("NOP", None),
                ("NOP", None),
                ("SAck", (100, 200, 300, 400)),
            ],
        ),
        (
            TcpOptions(sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),
            [("NOP", None), ("NOP", None), ("SAck", (1, 2, 3, 4, 5, 6, 7, 8))],
        ),
    ],
)
def test_tcp_build_byte_exact_against_scapy(
    options: TcpOptions, scapy_options: list[tuple[str, object]]
) -> None:
    seg = TcpSegment(40000, 7, 1000, 2000, TcpFlags.ACK | TcpFlags.PSH, 501, options, b"data")
    theirs = _scapy_tcp(scapy_options, b"data", seq=1000, ack=2000, flags="PA", window=501)
    assert _ours(seg) == theirs
    assert parse_tcp(theirs, IP_B, IP_A) == seg


def test_tcp_sack_blocks_trimmed_to_fit() -> None:
    # RFC 2018 section 3: with timestamps only 3 blocks fit in 40 octets of options.
    seg = TcpSegment(
        1,
        2,
        3,
        4,
        TcpFlags.ACK,
        5,
        TcpOptions(timestamp=(1, 1), sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),
    )
    parsed = parse_tcp(_ours(seg), IP_B, IP_A)
    assert parsed.options.sack_blocks == ((1, 2), (3, 4), (5, 6))
    assert len(_ours(seg)) == 60


def test_tcp_ours_dissected_by_scapy() -> None:
    seg = TcpSegment(
        12345,
        80,
        0xFFFFFFFF,
        0x80000000,
        TcpFlags.SYN | TcpFlags.ACK | TcpFlags.ECE | TcpFlags.CWR,
        0xFFFF,
        TcpOptions(mss=1460, wscale=0, sack_permitted=True, timestamp=(0xFFFFFFFF, 42)),
        b"",
        urgent=0,
    )
    wire = build_ipv4(IP_A, IP_B, IPPROTO_TCP, build_tcp(seg, IP_A, IP_B))
    pkt = IP(wire)
    t = pkt[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, t.window) == (12345, 80, 0xFFFFFFFF, 0x80000000, 0xFFFF)
    assert str(t.flags) == "SAEC"
    assert dict(t.options) == {
        "MSS": 1460,
        "WScale": 0,
        "SAckOK": b"",
        "Timestamp": (0xFFFFFFFF, 42),
        "NOP": None,
    }
    chk = t.chksum
    del pkt[TCP].chksum
    assert IP(raw(pkt))[TCP].chksum == chk


def _tcp_with_raw_options(opts: bytes, payload: bytes = b"") -> bytes:
    """A TCP segment with exactly these option octets (scapy would normalise them), checksummed
    for 198.18.0.2 -> 198.18.0.1."""
    hlen = 20 + len(opts)
    assert hlen % 4 == 0
    hdr = bytearray(_ours(TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 100))[:20])
    hdr[12] = (hlen // 4) << 4
    hdr[16:18] = b"\x00\x00"
    body = bytes(hdr) + opts + payload
    csum = internet_checksum(body, pseudo_header_sum(IP_B, IP_A, 6, len(body)))
    return body[:16] + csum.to_bytes(2, "big") + body[18:]


def test_tcp_parse_unknown_options_and_eol() -> None:
    # kind 30 (MPTCP) and 254 (experimental) are skipped; after EOL the rest is padding.
    opts = bytes([30, 4, 0xAA, 0xBB, 254, 6, 1, 2, 3, 4, 2, 4, 0x05, 0xB4, 0, 9, 9, 9, 0, 0])
    wire = _tcp_with_raw_options(opts, b"data")
    parsed = parse_tcp(wire, IP_B, IP_A)
    assert parsed.options == TcpOptions(mss=1460)
    assert parsed.payload == b"data"
    assert TCP(wire).payload.load == b"data"  # scapy agrees where the data starts


def test_tcp_repeated_option_last_wins() -> None:
    opts = bytes([2, 4, 0x02, 0x18, 2, 4, 0x05, 0xB4])
    assert parse_tcp(_tcp_with_raw_options(opts), IP_B, IP_A).options.mss == 1460


@pytest.mark.parametrize(
    "opts",
    [
        bytes([2, 0, 0, 0]),  # length 0
        bytes([2, 1, 0, 0]),  # length 1
        bytes([1, 1, 1, 8]),  # kind without a length octet at the end
        bytes([8, 12, 0, 0]),  # runs past the data offset
        bytes([2, 3, 5, 1]),  # MSS must be 4
        bytes([3, 4, 7, 1]),  # window scale must be 3
        bytes([4, 3, 0, 1]),  # SACK-permitted must be 2
        bytes([5, 9]) + b"\x00" * 7 + bytes([1, 1, 1]),  # SACK not 2 + 8n
        bytes([8, 8]) + b"\x00" * 6,  # timestamps must be 10
        bytes([254, 5, 0, 0]),  # unknown option still needs a sane length
    ],
)
def test_tcp_malformed_option_lengths(opts: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        parse_tcp(_tcp_with_raw_options(opts), IP_B, IP_A)
    assert err.value.reason == "tcp-bad-option-length"


def test_tcp_window_scale_above_14_is_clamped() -> None:
    # RFC 7323 section 2.3: treat a shift above 14 as 14.
    seg = parse_tcp(_tcp_with_raw_options(bytes([1, 3, 3, 15])), IP_B, IP_A)
    assert seg.options.wscale == 14


def test_tcp_checksum_and_offsets() -> None:
    wire = bytearray(_scapy_tcp([], b"hello", flags="A"))
    parse_tcp(bytes(wire), IP_B, IP_A)
    with pytest.raises(DecodeError, match="tcp-bad-checksum"):
        parse_tcp(bytes(wire), IP_A, IP_B[:3] + b"\x09")  # wrong pseudo-header
    wire[-1] ^= 0x20
    with pytest.raises(DecodeError, match="tcp-bad-checksum"):
        parse_tcp(bytes(wire), IP_B, IP_A)
    assert parse_tcp(bytes(wire), IP_B, IP_A, verify_checksum=False).payload == b"hellO"
    short = bytearray(wire)
    short[12] = 4 << 4
    with pytest.raises(DecodeError, match="tcp-bad-data-offset"):
        parse_tcp(bytes(short), IP_B, IP_A, verify_checksum=False)
    short[12] = 15 << 4
    with pytest.raises(DecodeError, match="tcp-truncated"):
        parse_tcp(bytes(short), IP_B, IP_A, verify_checksum=False)
    with pytest.raises(DecodeError, match="tcp-truncated"):
        parse_tcp(bytes(wire[:19]), IP_B, IP_A)


def test_tcp_memoryview_input_and_seg_len() -> None:
    frame = raw(Ether() / IP(src="198.18.0.2", dst="198.18.0.1") / TCP(flags="FA", seq=10) / b"bye")
    eth = parse_ethernet(memoryview(frame))
    ip = parse_ipv4(eth.payload)
    seg = parse_tcp(ip.payload, ip.src, ip.dst)
    assert isinstance(seg.payload, bytes) and seg.payload == b"bye"
    assert seg.seg_len == 4 and seg.flags == TcpFlags.FIN | TcpFlags.ACK


_u32 = st.integers(0, 0xFFFFFFFF)
_options = st.builds(
    TcpOptions,
    mss=st.none() | st.integers(0, 0xFFFF),
    wscale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(_u32, _u32), max_size=2).map(tuple),
    timestamp=st.none() | st.tuples(_u32, _u32),
)
_segments = st.builds(
    TcpSegment,
    src_port=st.integers(0, 0xFFFF),
    dst_port=st.integers(0, 0xFFFF),
    seq=_u32,
    ack=_u32,
    flags=st.integers(0, 255).map(TcpFlags),
    window=st.integers(0, 0xFFFF),
    options=_options,
    payload=st.binary(max_size=64),
    urgent=st.integers(0, 0xFFFF),
)


@given(_segments)
def test_tcp_roundtrip_and_scapy_agrees(seg: TcpSegment) -> None:
    wire = _ours(seg)
    assert parse_tcp(wire, IP_B, IP_A) == seg
    t = TCP(wire)
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, t.urgptr) == (
        seg.src_port,
        seg.dst_port,
        seg.seq,
        seg.ack,
        int(seg.flags),
        seg.window,
        seg.urgent,
    )
    scapy_opts = dict(t.options)
    assert scapy_opts.get("MSS") == seg.options.mss
    assert scapy_opts.get("WScale") == seg.options.wscale
    assert scapy_opts.get("Timestamp") == seg.options.timestamp
    assert ("SAckOK" in scapy_opts) is seg.options.sack_permitted
    assert bytes(t.payload) == seg.payload
