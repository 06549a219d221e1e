"""Neighbor (ARP) cache: resolution, retries, bounded queues, learning, aging, replies."""

from __future__ import annotations

import pytest

from tcpip.addr import BROADCAST_MAC, ZERO_MAC, ip_bytes, mac_bytes
from tcpip.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, parse_arp
from tcpip.ethernet import ETH_P_ARP, ETH_P_IPV4
from tcpip.neighbor import NeighborCache, NeighborConfig, NeighborState

MAC_US = mac_bytes("02:00:00:00:00:01")
IP_US = ip_bytes("198.18.0.1")
MAC_PEER = mac_bytes("02:00:00:00:00:02")
IP_PEER = ip_bytes("198.18.0.2")
MAC_OTHER = mac_bytes("02:00:00:00:00:03")
IP_OTHER = ip_bytes("198.18.0.3")

CFG = NeighborConfig(
    reachable_time=30.0,
    retrans_time=1.0,
    delay_first_probe_time=5.0,
    max_probes=3,
    gc_stale_time=60.0,
    queue_len=3,
)


@pytest.fixture
def drops() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def cache(drops: list[tuple[str, int]]) -> NeighborCache:
    return NeighborCache(MAC_US, IP_US, CFG, on_drop=lambda r, n: drops.append((r, n)))


def reply_from_peer(mac: bytes = MAC_PEER) -> ArpPacket:
    return ArpPacket(ARP_REPLY, mac, IP_PEER, MAC_US, IP_US)


def request_from_peer(target: bytes = IP_US) -> ArpPacket:
    return ArpPacket(ARP_REQUEST, MAC_PEER, IP_PEER, ZERO_MAC, target)


def arp_out(outputs: list[tuple[bytes, int, bytes]]) -> list[tuple[bytes, ArpPacket]]:
    assert all(et == ETH_P_ARP for _, et, _ in outputs)
    return [(dst, parse_arp(payload)) for dst, _, payload in outputs]


def test_resolve_unknown_sends_one_broadcast_request(cache: NeighborCache) -> None:
    assert cache.resolve(IP_PEER, 0.0) is None
    assert cache.resolve(IP_PEER, 0.1) is None  # rate-limited: no second request yet
    ((dst, req),) = arp_out(cache.poll(0.1))
    assert dst == BROADCAST_MAC
    assert (req.op, req.sender_mac, req.sender_ip, req.target_mac, req.target_ip) == (
        ARP_REQUEST,
        MAC_US,
        IP_US,
        ZERO_MAC,
        IP_PEER,
    )
    assert cache.get(IP_PEER).state is NeighborState.INCOMPLETE
    assert cache.next_deadline() == 1.0


def test_reply_resolves_and_releases_queue_in_order(
    cache: NeighborCache, drops: list[tuple[str, int]]
) -> None:
    for i in range(5):
        cache.hold(IP_PEER, ETH_P_IPV4, b"packet%d" % i, 0.0)
    cache.poll(0.0)
    assert drops == [("neighbor-queue-overflow", 1)] * 2  # the two oldest went
    cache.receive_arp(reply_from_peer(), 0.5)
    out = cache.poll(0.5)
    assert out == [(MAC_PEER, ETH_P_IPV4, b"packet%d" % i) for i in (2, 3, 4)]
    assert cache.resolve(IP_PEER, 0.6) == MAC_PEER
    assert cache.get(IP_PEER).state is NeighborState.REACHABLE
    assert cache.counters.released == 3


def test_retries_then_failure_drops_queue(
    cache: NeighborCache, drops: list[tuple[str, int]]
) -> None:
    cache.hold(IP_PEER, ETH_P_IPV4, b"a", 0.0)
    cache.hold(IP_PEER, ETH_P_IPV4, b"b", 0.0)
    requests = len(cache.poll(0.0))
    t = 0.0
    while IP_PEER in cache:
        t = cache.next_deadline()
        requests += len(cache.poll(t))
    assert requests == CFG.max_probes  # RFC 1122 2.3.2.1: bounded, 1/s
    assert t == pytest.approx(3.0)
    assert cache.counters.resolution_failures == 1
    assert drops == [("neighbor-unresolved", 2)]
    # A later attempt starts again from scratch.
    assert cache.resolve(IP_PEER, 10.0) is None
    assert len(cache.poll(10.0)) == 1


def test_hold_after_resolution_sends_at_once(cache: NeighborCache) -> None:
    cache.add(IP_PEER, MAC_PEER, 0.0)
    assert cache.hold(IP_PEER, ETH_P_IPV4, b"now", 1.0)
    assert cache.poll(1.0) == [(MAC_PEER, ETH_P_IPV4, b"now")]


def test_request_for_us_is_answered_and_learned(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    ((dst, rep),) = arp_out(cache.poll(0.0))
    assert dst == MAC_PEER
    assert (rep.op, rep.sender_mac, rep.sender_ip, rep.target_mac, rep.target_ip) == (
        ARP_REPLY,
        MAC_US,
        IP_US,
        MAC_PEER,
        IP_PEER,
    )
    e = cache.get(IP_PEER)
    assert e.state is NeighborState.STALE and e.mac == MAC_PEER  # RFC 826 merge, Linux STALE
    assert cache.resolve(IP_PEER, 0.1) == MAC_PEER


def test_request_for_someone_else_neither_learned_nor_answered(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(target=IP_OTHER), 0.0)
    assert cache.poll(0.0) == [] and IP_PEER not in cache


def test_known_sender_is_updated_even_when_not_for_us(cache: NeighborCache) -> None:
    # RFC 826: the merge step happens before "Am I the target protocol address?".
    cache.add(IP_PEER, MAC_OTHER, 0.0)
    cache.receive_arp(request_from_peer(target=IP_OTHER), 1.0)
    assert cache.get(IP_PEER).mac == MAC_PEER
    assert cache.get(IP_PEER).state is NeighborState.STALE  # a changed MAC needs verifying
    assert cache.poll(1.0) == []


def test_gratuitous_arp_updates_existing_entry_only(cache: NeighborCache) -> None:
    garp = ArpPacket(ARP_REQUEST, MAC_OTHER, IP_OTHER, ZERO_MAC, IP_OTHER)
    cache.receive_arp(garp, 0.0)
    assert IP_OTHER not in cache
    cache.add(IP_OTHER, MAC_PEER, 0.0)
    cache.receive_arp(garp, 1.0)
    assert cache.get(IP_OTHER).mac == MAC_OTHER


def test_someone_claiming_our_address_is_not_learned(cache: NeighborCache) -> None:
    cache.receive_arp(ArpPacket(ARP_REPLY, MAC_OTHER, IP_US, MAC_US, IP_US), 0.0)
    assert cache.counters.address_conflicts == 1 and len(cache) == 0


def test_arp_probe_is_answered_not_learned(cache: NeighborCache) -> None:
    # RFC 5227 2.1.1: sender IP 0.0.0.0; we defend our address but learn nothing.
    probe = ArpPacket(ARP_REQUEST, MAC_OTHER, b"\0\0\0\0", ZERO_MAC, IP_US)
    cache.receive_arp(probe, 0.0)
    ((dst, rep),) = arp_out(cache.poll(0.0))
    assert dst == MAC_OTHER and rep.op == ARP_REPLY and rep.target_ip == b"\0\0\0\0"
    assert len(cache) == 0


def test_aging_reachable_stale_delay_probe_then_removed(cache: NeighborCache) -> None:
    cache.resolve(IP_PEER, 0.0)
    cache.poll(0.0)
    cache.receive_arp(reply_from_peer(), 0.0)
    assert cache.get(IP_PEER).state is NeighborState.REACHABLE
    cache.poll(30.0)
    assert cache.get(IP_PEER).state is NeighborState.STALE
    assert cache.resolve(IP_PEER, 31.0) == MAC_PEER  # still used while stale
    assert cache.get(IP_PEER).state is NeighborState.DELAY
    assert cache.poll(35.9) == []
    ((dst, req),) = arp_out(cache.poll(36.0))
    assert dst == MAC_PEER and req.target_ip == IP_PEER  # unicast poll, RFC 1122 2.3.2.1
    assert cache.get(IP_PEER).state is NeighborState.PROBE
    cache.poll(37.0)
    cache.poll(38.0)
    cache.poll(39.0)
    assert IP_PEER not in cache


def test_reply_during_probe_makes_it_reachable(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    cache.poll(0.0)
    cache.resolve(IP_PEER, 1.0)
    cache.poll(6.0)
    assert cache.get(IP_PEER).state is NeighborState.PROBE
    cache.receive_arp(reply_from_peer(), 6.5)
    assert cache.get(IP_PEER).state is NeighborState.REACHABLE
    assert cache.next_deadline() == pytest.approx(36.5)


def test_confirm_in_delay_avoids_probe(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    cache.poll(0.0)
    cache.resolve(IP_PEER, 1.0)
    cache.confirm(IP_PEER, MAC_PEER, 2.0)
    assert cache.get(IP_PEER).state is NeighborState.REACHABLE
    assert cache.poll(6.0) == []
    cache.confirm(IP_PEER, MAC_OTHER, 7.0)  # a different MAC confirms nothing
    assert cache.get(IP_PEER).updated == 2.0


def test_confirm_at_an_earlier_time_ages_from_then(cache: NeighborCache) -> None:
    # T.7: the offload target saw forward progress 4 s before the host asked
    cache.receive_arp(request_from_peer(), 0.0)
    cache.poll(0.0)
    cache.resolve(IP_PEER, 1.0)  # DELAY
    cache.confirm(IP_PEER, MAC_PEER, 10.0, at=6.0)
    e = cache.get(IP_PEER)
    assert e.state is NeighborState.REACHABLE and e.updated == 6.0
    assert cache.next_deadline() == pytest.approx(36.0)
    cache.confirm(IP_PEER, MAC_PEER, 11.0, at=5.0)  # older evidence changes nothing
    assert e.updated == 6.0
    assert cache.poll(36.0) == [] and e.state is NeighborState.STALE


def test_probe_polls_a_usable_entry_now_then_removes_it(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    cache.poll(0.0)
    assert cache.probe(IP_PEER, 2.0)
    assert cache.get(IP_PEER).state is NeighborState.PROBE
    ((dst, req),) = arp_out(cache.poll(2.0))
    assert dst == MAC_PEER and req.target_ip == IP_PEER  # unicast, to the cached MAC
    assert cache.probe(IP_PEER, 2.5)  # already polling: nothing more sent
    assert cache.poll(2.5) == []
    assert len(arp_out(cache.poll(3.0))) == 1
    assert len(arp_out(cache.poll(4.0))) == 1
    cache.poll(5.0)
    assert IP_PEER not in cache and cache.counters.resolution_failures == 1


def test_probe_of_a_missing_entry_needs_a_mac(cache: NeighborCache) -> None:
    assert not cache.probe(IP_PEER, 0.0)
    assert cache.probe(IP_PEER, 0.0, MAC_PEER)
    ((dst, _),) = arp_out(cache.poll(0.0))
    assert dst == MAC_PEER
    cache.receive_arp(reply_from_peer(), 0.1)
    assert cache.get(IP_PEER).state is NeighborState.REACHABLE
    cache.add(IP_OTHER, MAC_OTHER, 0.0, permanent=True)
    assert not cache.probe(IP_OTHER, 1.0)


def test_pinned_stale_entry_is_not_collected_until_unpinned(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    cache.pin(IP_PEER)
    cache.pin(IP_PEER)
    cache.poll(60.0)
    assert IP_PEER in cache and cache.next_deadline() is None  # no timer spinning
    cache.unpin(IP_PEER, 100.0)
    cache.poll(500.0)
    assert IP_PEER in cache  # still pinned once
    cache.unpin(IP_PEER, 500.0)
    assert not cache.pinned(IP_PEER)
    assert cache.next_deadline() == pytest.approx(500.0)
    cache.poll(500.0)
    assert IP_PEER not in cache


def test_unused_stale_entry_is_garbage_collected(cache: NeighborCache) -> None:
    cache.receive_arp(request_from_peer(), 0.0)
    cache.poll(0.0)
    cache.poll(59.0)
    assert IP_PEER in cache
    cache.poll(60.0)
    assert IP_PEER not in cache
    assert cache.next_deadline() is None


def test_permanent_entry_never_ages_or_changes(cache: NeighborCache) -> None:
    cache.add(IP_PEER, MAC_PEER, 0.0, permanent=True)
    assert cache.next_deadline() is None
    cache.receive_arp(ArpPacket(ARP_REPLY, MAC_OTHER, IP_PEER, MAC_US, IP_US), 1.0)
    assert cache.resolve(IP_PEER, 1e6) == MAC_PEER


def test_table_is_bounded() -> None:
    cache = NeighborCache(MAC_US, IP_US, NeighborConfig(max_entries=4))
    for i in range(10):
        cache.add(bytes([198, 18, 1, i]), MAC_PEER, float(i))
    assert len(cache) == 4
    assert cache.counters.evicted == 6
    assert bytes([198, 18, 1, 9]) in cache and bytes([198, 18, 1, 0]) not in cache
