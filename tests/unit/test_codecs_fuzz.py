"""Fuzzing: bad input is a DecodeError from a parser, and a counted drop in the stack; never any
other exception."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.arp import ARP_REQUEST, build_arp, parse_arp
from tcpip.errors import DecodeError
from tcpip.ethernet import ETH_P_ARP, ETH_P_IPV4, build_ethernet, parse_ethernet
from tcpip.icmp import ICMP_ECHO_REQUEST, build_icmp_echo, parse_icmp
from tcpip.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, build_ipv4, parse_ipv4
from tcpip.stack import HostStack
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

MAC_US = mac_bytes("02:00:00:00:00:01")
MAC_PEER = mac_bytes("02:00:00:00:00:02")
IP_US = ip_bytes("198.18.0.1")
IP_PEER = ip_bytes("198.18.0.2")

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tcp_frame(flags: TcpFlags, dport: int, payload: bytes = b"") -> bytes:
    seg = TcpSegment(
        40000,
        dport,
        1000,
        2000,
        flags,
        1000,
        TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 2)),
        payload,
    )
    ip = build_ipv4(IP_PEER, IP_US, IPPROTO_TCP, build_tcp(seg, IP_PEER, IP_US))
    return build_ethernet(MAC_US, MAC_PEER, ETH_P_IPV4, ip)


SEEDS = [
    _tcp_frame(TcpFlags.SYN, 7),
    _tcp_frame(TcpFlags.ACK | TcpFlags.PSH, 7, b"hello"),
    _tcp_frame(TcpFlags.ACK, 4444, b"x" * 40),
    build_ethernet(
        MAC_US,
        MAC_PEER,
        ETH_P_IPV4,
        build_ipv4(IP_PEER, IP_US, IPPROTO_ICMP, build_icmp_echo(ICMP_ECHO_REQUEST, 1, 2, b"abcd")),
    ),
    build_ethernet(
        b"\xff" * 6,
        MAC_PEER,
        ETH_P_ARP,
        build_arp(ARP_REQUEST, MAC_PEER, IP_PEER, b"\0" * 6, IP_US),
    ),
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid seed frame with a few bytes changed, truncated or extended: reaches deep layers."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    if draw(st.booleans()):
        frame = frame[:cut]
    frame += draw(st.binary(max_size=8))
    return bytes(frame)


def _stack() -> HostStack:
    stack = HostStack(MAC_US, IP_US, 24, rng=random.Random(7), name="fuzz")
    return stack


def _feed(stack: HostStack, frame: bytes, now: float) -> None:
    c = stack.counters
    before = (c.total_drops, c.arp_in, c.icmp_in, c.tcp_in)
    stack.receive_frame(frame, now)
    after = (c.total_drops, c.arp_in, c.icmp_in, c.tcp_in)
    assert c.drops["internal-error"] == 0
    # Every frame is either dropped with a reason or handed to a protocol.
    assert after != before
    stack.poll(now)  # whatever was queued must also go out without raising
    assert c.drops["internal-error"] == 0


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_into_the_stack(frame: bytes) -> None:
    _feed(_stack(), frame, 1.0)


@FUZZ
@given(st.lists(mutated_frames(), min_size=1, max_size=6))
def test_mutated_frames_into_the_stack(frames: list[bytes]) -> None:
    stack = _stack()
    stack.listen(7, lambda conn: None)
    for i, frame in enumerate(frames):
        _feed(stack, frame, 1.0 + i)


def test_drops_are_counted_by_reason() -> None:
    stack = _stack()
    stack.receive_frame(b"\x01\x02", 0.0)
    bad_ip = bytearray(SEEDS[1])
    bad_ip[14 + 10] ^= 0xFF  # break the IPv4 header checksum
    stack.receive_frame(bytes(bad_ip), 0.0)
    bad_tcp = bytearray(SEEDS[1])
    bad_tcp[-1] ^= 0xFF  # break the TCP checksum
    stack.receive_frame(bytes(bad_tcp), 0.0)
    assert stack.counters.drops == {
        "ethernet-truncated": 1,
        "ipv4-bad-checksum": 1,
        "tcp-bad-checksum": 1,
    }
    assert stack.counters.frames_in == 3


PARSERS: list[tuple[str, Callable[[bytes], object]]] = [
    ("ethernet", parse_ethernet),
    ("arp", parse_arp),
    ("ipv4", parse_ipv4),
    ("icmp", parse_icmp),
    ("tcp", lambda b: parse_tcp(b, IP_PEER, IP_US)),
    ("tcp-nocsum", lambda b: parse_tcp(b, IP_PEER, IP_US, verify_checksum=False)),
    ("ipv4-nocsum", lambda b: parse_ipv4(b, verify_checksum=False)),
    ("icmp-nocsum", lambda b: parse_icmp(b, verify_checksum=False)),
]


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
@FUZZ
@given(data=st.binary(max_size=120) | mutated_frames().map(lambda f: f[14:]))
def test_parsers_raise_only_decode_error(
    name: str, parser: Callable[[bytes], object], data: bytes
) -> None:
    try:
        parser(data)
    except DecodeError as exc:
        assert exc.reason and " " not in exc.reason  # a counter key
    try:
        parser(memoryview(data))  # the stack feeds memoryviews
    except DecodeError:
        pass
