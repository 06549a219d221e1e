"""HostStack below TCP connections: Ethernet demux, ARP, IPv4 checks, ICMP echo, resets for
closed ports and unknown connections, counters.  Frames are built and checked with scapy."""

from __future__ import annotations

import random

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.stack import HostStack

US_MAC, US_IP = "02:00:00:00:00:01", "198.18.0.1"
PEER_MAC, PEER_IP = "02:00:00:00:00:02", "198.18.0.2"
GW_MAC, GW_IP = "02:00:00:00:00:fe", "198.18.0.254"
FAR_IP = "203.0.113.9"


def make_stack(**kw: object) -> HostStack:
    return HostStack(mac_bytes(US_MAC), ip_bytes(US_IP), 24, rng=random.Random(1), name="us", **kw)


@pytest.fixture
def stack() -> HostStack:
    s = make_stack()
    s.neighbors.add(ip_bytes(PEER_IP), mac_bytes(PEER_MAC), 0.0)
    return s


def from_peer(payload: object, src: str = PEER_IP, dst_mac: str = US_MAC) -> bytes:
    return raw(Ether(dst=dst_mac, src=PEER_MAC) / IP(src=src, dst=US_IP) / payload)


def deliver(stack: HostStack, frame: bytes, now: float = 1.0) -> list[Ether]:
    stack.receive_frame(frame, now)
    return [Ether(f) for f in stack.poll(now)]


def checksums_valid(pkt: Ether) -> bool:
    """Let scapy recompute every checksum and compare with what we sent."""
    rebuilt = pkt.copy()
    for layer in (IP, TCP, ICMP):
        if layer in rebuilt:
            del rebuilt[layer].chksum
    return raw(Ether(raw(rebuilt))) == raw(pkt)


# ---- ARP ----------------------------------------------------------------------------------


def test_arp_request_gets_byte_exact_reply() -> None:
    stack = make_stack()
    req = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(
        op=1, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst="00:00:00:00:00:00", pdst=US_IP
    )
    (reply,) = deliver(stack, raw(req))
    expected = Ether(dst=PEER_MAC, src=US_MAC) / ARP(
        op=2, hwsrc=US_MAC, psrc=US_IP, hwdst=PEER_MAC, pdst=PEER_IP
    )
    assert raw(reply) == raw(expected)
    assert stack.counters.arp_in == 1 and stack.neighbors.counters.replies_sent == 1


def test_arp_request_for_another_host_is_ignored() -> None:
    stack = make_stack()
    req = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op=1, psrc=PEER_IP, pdst="198.18.0.7")
    assert deliver(stack, raw(req)) == []
    assert stack.counters.arp_in == 1


# ---- ICMP echo ----------------------------------------------------------------------------


def test_echo_request_gets_echo_reply(stack: HostStack) -> None:
    ping = from_peer(ICMP(type=8, id=0x4242, seq=7) / (b"0123456789" * 5))
    (reply,) = deliver(stack, ping)
    assert (reply.dst, reply.src) == (PEER_MAC, US_MAC)
    ip = reply[IP]
    assert (ip.src, ip.dst, ip.ttl, ip.proto) == (US_IP, PEER_IP, 64, 1)
    assert ip.flags.DF and ip.id < 0x8000  # our half of the ID space (reference T.1)
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x4242, 7)
    assert icmp.load == b"0123456789" * 5  # RFC 1122 3.2.2.6: same data back
    assert checksums_valid(reply)
    assert stack.counters.icmp_echo_replies == 1


def test_echo_reply_waits_for_arp_resolution() -> None:
    stack = make_stack()
    out = deliver(stack, from_peer(ICMP(type=8, id=1, seq=1) / b"abc"))
    (req,) = out
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req[ARP].op == 1 and req[ARP].pdst == PEER_IP
    arp_reply = Ether(dst=US_MAC, src=PEER_MAC) / ARP(
        op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=US_MAC, pdst=US_IP
    )
    (echo,) = deliver(stack, raw(arp_reply), 1.2)
    assert echo.dst == PEER_MAC and echo[ICMP].type == 0 and echo[ICMP].load == b"abc"


def test_ip_identification_stays_in_lower_half_and_wraps(stack: HostStack) -> None:
    stack._ip_id = 0x7FFE  # white-box: start next to the boundary
    ids = [deliver(stack, from_peer(ICMP(type=8, seq=i)))[0][IP].id for i in range(4)]
    assert ids == [0x7FFE, 0x7FFF, 0x0000, 0x0001]


def test_off_link_reply_goes_to_gateway() -> None:
    stack = make_stack(gateway=ip_bytes(GW_IP))
    stack.neighbors.add(ip_bytes(GW_IP), mac_bytes(GW_MAC), 0.0)
    frame = raw(Ether(dst=US_MAC, src=GW_MAC) / IP(src=FAR_IP, dst=US_IP) / ICMP(type=8))
    (reply,) = deliver(stack, frame)
    assert reply.dst == GW_MAC and reply[IP].dst == FAR_IP


def test_off_link_without_gateway_is_no_route() -> None:
    stack = make_stack()
    frame = raw(Ether(dst=US_MAC, src=GW_MAC) / IP(src=FAR_IP, dst=US_IP) / ICMP(type=8))
    assert deliver(stack, frame) == []
    assert stack.counters.drops["no-route"] == 1


# ---- TCP without a connection -------------------------------------------------------------


def test_syn_to_closed_port_gets_rst_ack(stack: HostStack) -> None:
    # RFC 9293 3.10.7.1: ACK off -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    syn = from_peer(TCP(sport=40000, dport=5555, seq=1000, flags="S", options=[("MSS", 1460)]))
    (rst,) = deliver(stack, syn)
    t = rst[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, str(t.flags)) == (5555, 40000, 0, 1001, "RA")
    assert t.window == 0 and t.options == [] and rst[IP].dst == PEER_IP
    assert checksums_valid(rst)
    assert stack.counters.rst_out == 1 and stack.counters.drops["tcp-closed-port"] == 1


def test_syn_fin_with_data_counts_every_octet(stack: HostStack) -> None:
    seg = from_peer(TCP(sport=1, dport=5555, seq=0xFFFFFFFE, flags="SF") / b"abcd")
    (rst,) = deliver(stack, seg)
    assert rst[TCP].ack == (0xFFFFFFFE + 4 + 2) % 2**32  # SEG.LEN counts SYN and FIN, wraps


def test_ack_to_unknown_connection_gets_rst_from_its_ack(stack: HostStack) -> None:
    # RFC 9293 3.10.7.1: ACK on -> <SEQ=SEG.ACK><CTL=RST>
    seg = from_peer(TCP(sport=40000, dport=5555, seq=5, ack=777777, flags="PA") / b"data")
    (rst,) = deliver(stack, seg)
    t = rst[TCP]
    assert (t.seq, t.ack, str(t.flags)) == (777777, 0, "R")


def test_ack_to_listening_port_gets_rst(stack: HostStack) -> None:
    # RFC 9293 3.10.7.2 (LISTEN), second check: an ACK gets <SEQ=SEG.ACK><CTL=RST>.
    stack.listen(7, lambda conn: pytest.fail("no connection expected"))
    (rst,) = deliver(stack, from_peer(TCP(sport=40000, dport=7, seq=1, ack=99, flags="A")))
    assert (rst[TCP].seq, str(rst[TCP].flags)) == (99, "R")
    assert stack.connection_count() == 0


def test_rst_is_never_answered(stack: HostStack) -> None:
    stack.listen(7, lambda conn: None)
    assert deliver(stack, from_peer(TCP(sport=1, dport=5555, flags="R", seq=9))) == []
    assert deliver(stack, from_peer(TCP(sport=1, dport=5555, flags="RA", seq=9, ack=3))) == []
    assert deliver(stack, from_peer(TCP(sport=1, dport=7, flags="R", seq=9))) == []
    assert stack.counters.rst_out == 0
    assert stack.counters.drops["tcp-rst-for-unknown"] == 2
    assert stack.counters.drops["tcp-listen-rst"] == 1


def test_listening_port_without_syn_or_ack_is_dropped(stack: HostStack) -> None:
    stack.listen(7, lambda conn: None)
    assert deliver(stack, from_peer(TCP(sport=1, dport=7, flags="F"))) == []
    assert stack.counters.drops["tcp-listen-no-syn"] == 1


def test_syn_to_listener_creates_a_connection_and_syn_ack(stack: HostStack) -> None:
    pytest.importorskip("tcpip.tcp")
    stack.listen(7, lambda conn: None)
    syn = TCP(sport=40000, dport=7, seq=1000, flags="S", window=64240, options=[("MSS", 1400)])
    (synack,) = deliver(stack, from_peer(syn))
    t = synack[TCP]
    assert str(t.flags) == "SA" and t.ack == 1001 and t.sport == 7 and t.dport == 40000
    assert dict(t.options)["MSS"] <= 1460
    assert stack.connection_count() == 1 and checksums_valid(synack)


def test_syn_fin_to_listener_is_dropped(stack: HostStack) -> None:
    stack.listen(7, lambda conn: None)
    assert deliver(stack, from_peer(TCP(sport=1, dport=7, flags="SF", seq=1))) == []
    assert stack.counters.drops["tcp-listen-syn-fin"] == 1 and stack.connection_count() == 0


def test_embryonic_connection_reset_when_listener_goes_away(stack: HostStack) -> None:
    pytest.importorskip("tcpip.tcp")
    accepted: list[object] = []
    stack.listen(7, accepted.append)
    (synack,) = deliver(stack, from_peer(TCP(sport=40000, dport=7, seq=1000, flags="S")))
    stack.unlisten(7)
    ack = TCP(sport=40000, dport=7, seq=1001, ack=synack[TCP].seq + 1, flags="A")
    (rst,) = deliver(stack, from_peer(ack), 1.1)
    assert "R" in str(rst[TCP].flags) and rst[TCP].seq == synack[TCP].seq + 1
    assert accepted == [] and stack.connection_count() == 0
    assert stack.counters.drops["tcp-listener-gone"] == 1


def test_syn_backlog_is_bounded() -> None:
    pytest.importorskip("tcpip.tcp")
    stack = make_stack(syn_backlog=2)
    stack.neighbors.add(ip_bytes(PEER_IP), mac_bytes(PEER_MAC), 0.0)
    stack.listen(7, lambda conn: None)
    for port in (1, 2, 3):
        deliver(stack, from_peer(TCP(sport=port, dport=7, seq=5, flags="S")))
    assert stack.connection_count() == 2
    assert stack.counters.drops["tcp-syn-backlog-full"] == 1


# ---- drops by reason ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (raw(Ether(dst="02:00:00:00:00:99", src=PEER_MAC) / IP(dst=US_IP)), "mac-not-ours"),
        (raw(Ether(dst="01:00:5e:00:00:01", src=PEER_MAC) / IP(dst=US_IP)), "mac-multicast"),
        (raw(Ether(dst=US_MAC, src=PEER_MAC) / Dot1Q(vlan=5) / IP(dst=US_IP)), "vlan-tagged"),
        (
            raw(Ether(dst=US_MAC, src=PEER_MAC, type=0x86DD) / (b"\x60" * 40)),
            "ethertype-unsupported",
        ),
        (from_peer(ICMP()).replace(b"\xc6\x12\x00\x01", b"\xc6\x12\x00\x09"), "ipv4-bad-checksum"),
        (
            raw(Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst="198.18.0.9") / ICMP()),
            "ip-not-ours",
        ),
        (
            raw(Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER_IP, dst="198.18.0.255") / ICMP()),
            "ip-broadcast",
        ),
        (
            raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / IP(src=PEER_IP, dst=US_IP) / ICMP()),
            "ip-unicast-in-l2-broadcast",
        ),
        (from_peer(ICMP(), src="0.0.0.0"), "ip-bad-source"),
        (from_peer(ICMP(), src=US_IP), "ip-bad-source"),
        (from_peer(ICMP(), src="224.0.0.1"), "ip-bad-source"),
        (
            # RFC 791 3.2: all but the last fragment carry a multiple of 8 octets (here 11)
            raw(
                Ether(dst=US_MAC, src=PEER_MAC)
                / IP(src=PEER_IP, dst=US_IP, flags="MF")
                / ICMP()
                / b"abc"
            ),
            "ip-frag-bad-length",
        ),
        (
            # ends at 8191 * 8 + 48 octets: beyond 65535 (RFC 791 3.1)
            raw(
                Ether(dst=US_MAC, src=PEER_MAC)
                / IP(src=PEER_IP, dst=US_IP, frag=8191)
                / ICMP()
                / (b"x" * 40)
            ),
            "ip-frag-too-big",
        ),
        (
            raw(
                Ether(dst=US_MAC, src=PEER_MAC)
                / IP(src=PEER_IP, dst=US_IP, options=[IPOption_Router_Alert()])
                / ICMP()
            ),
            "ip-options",
        ),
        (from_peer(UDP(sport=1, dport=53)), "ip-unknown-protocol"),
        (from_peer(ICMP(type=13)), "icmp-unhandled"),
        (from_peer(ICMP(type=0)), "icmp-unhandled"),
        (from_peer(TCP(sport=1, dport=2))[:-1], "ipv4-truncated"),
        (b"\x00" * 10, "ethernet-truncated"),
        (
            raw(Ether(dst=US_MAC, src=US_MAC) / IP(src=PEER_IP, dst=US_IP) / ICMP()),
            "mac-own-source",
        ),
    ],
)
def test_drops_by_reason(stack: HostStack, frame: bytes, reason: str) -> None:
    assert deliver(stack, frame) == []
    assert dict(stack.counters.drops) == {reason: 1}
    report = stack.counters.as_dict()
    assert report["frames_in"] == 1 and report["frames_out"] == 0
    assert report["drops"] == {reason: 1}


# ---- VLAN ---------------------------------------------------------------------------------


def test_configured_vlan_is_accepted_and_tagged_on_output() -> None:
    stack = make_stack(vlan_id=42)
    stack.neighbors.add(ip_bytes(PEER_IP), mac_bytes(PEER_MAC), 0.0)
    ping = Ether(dst=US_MAC, src=PEER_MAC) / Dot1Q(vlan=42) / IP(src=PEER_IP, dst=US_IP) / ICMP()
    (reply,) = deliver(stack, raw(ping))
    assert reply[Dot1Q].vlan == 42 and reply[ICMP].type == 0
    untagged = from_peer(ICMP())
    other = raw(Ether(dst=US_MAC, src=PEER_MAC) / Dot1Q(vlan=43) / IP(src=PEER_IP, dst=US_IP))
    assert deliver(stack, untagged) == [] and deliver(stack, other) == []
    assert stack.counters.drops == {"vlan-untagged": 1, "vlan-tagged": 1}


# ---- FrameNode timing ---------------------------------------------------------------------


def test_next_deadline_idle_and_while_resolving() -> None:
    stack = make_stack()
    assert stack.next_deadline() is None
    assert stack.poll(0.0) == []
    stack.receive_frame(from_peer(ICMP(type=8)), 5.0)
    assert stack.next_deadline() is not None and stack.next_deadline() <= 5.0
    (arp_req,) = stack.poll(5.0)
    assert arp_req[0:6] == b"\xff" * 6
    assert stack.next_deadline() == pytest.approx(6.0)  # the ARP retry timer
    retries = stack.poll(6.0)
    assert len(retries) == 1 and Ether(retries[0])[ARP].pdst == PEER_IP
