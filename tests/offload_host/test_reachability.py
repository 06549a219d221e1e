"""T.7 on the host side: the follow-up after a NeighborReachabilityQuery answered with HRD 0,
and the NRD query of an offloaded neighbor whose host entry is in DELAY.  ChimneyHost against
``ndis.fakes.ScriptedTarget`` (NicReachabilityDelta scripted with set_reachability_delta)
under the strict ConformanceChecker; the peer is a HostStack on a SimWire that answers ARP."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ndis.state import NEIGHBOR_OFFLOAD_STATE_DELEGATED, OffloadLayer
from ndis.status import NdisStatus, Operation
from tcpip.addr import ip_bytes, mac_bytes
from tcpip.arp import ARP_REQUEST, parse_arp
from tcpip.ethernet import ETH_P_ARP, parse_ethernet
from tcpip.neighbor import NeighborState
from tcpip.offload_socket import OffloadState
from tests.offload_host.rig import PEER_IP, PEER_MAC, Rig
from vnic.faults import FaultSpec, WireFaults


def _is_arp(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x06"


def _offloaded(seed: int, **kw: Any) -> tuple[Rig, tuple[Any, Any, Any, Any], Any, str]:
    rig = Rig(seed, **kw)
    conn = rig.connect()
    sock = rig.sock(conn[1])
    rig.offload_and_wait(sock)
    n = next(o.label for o in rig.target.objects.values() if o.layer is OffloadLayer.NEIGHBOR)
    return rig, conn, sock, n


def _age_host_entry(rig: Rig) -> Any:
    """Idle until the host's own entry for the peer is STALE (offloaded traffic never
    confirms it: the host does not see it)."""
    entry = rig.host.neighbors.get(ip_bytes(PEER_IP))
    assert entry is not None and entry.state is NeighborState.REACHABLE
    rig.run_until(lambda: entry.state is NeighborState.STALE, 40.0)
    return entry


def _nrd_queries(rig: Rig) -> list[Any]:
    return [root for op, root in rig.target.requests if op is Operation.QUERY]


def _record_host_frames(rig: Rig) -> list[bytes]:
    """Every frame the host puts on the wire from now on."""
    sent: list[bytes] = []
    poll = rig.node.poll

    def recording(now: float) -> list[bytes]:
        out = poll(now)
        sent.extend(out)
        return out

    rig.node.poll = recording  # type: ignore[method-assign]
    return sent


def _arp_requests(frames: list[bytes]) -> list[tuple[bytes, Any]]:
    out = []
    for f in frames:
        eth = parse_ethernet(f)
        if eth.ethertype == ETH_P_ARP:
            arp = parse_arp(eth.payload)
            if arp.op == ARP_REQUEST:
                out.append((eth.dst, arp))
    return out


def test_hrd_zero_answer_queries_nrd_after_delay_first_probe_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig, _, _, n = _offloaded(41)
    _age_host_entry(rig)
    caplog.set_level(logging.INFO, logger="tcpip.offload")
    assert rig.target.reachability_query(n) == 0  # the host's entry is stale (T.7)
    t0 = rig.now
    delay = rig.host.neighbors.config.delay_first_probe_time
    assert rig.chimney.next_deadline() == pytest.approx(t0 + delay)  # the run loop wakes
    assert rig.target.reachability_query(n) == 0  # no second timer while one is pending
    rig.run_for(delay - 0.01)
    assert _nrd_queries(rig) == []
    rig.run_until(lambda: bool(_nrd_queries(rig)), 1.0)
    assert rig.now == pytest.approx(t0 + delay)
    (root,) = _nrd_queries(rig)
    # the neighbor alone, followed by the DELEGATED structure to fill (NicReachabilityDelta)
    assert root.label == n and root.DependentBlockList is None and root.NextBlock is None
    assert isinstance(root.state, NEIGHBOR_OFFLOAD_STATE_DELEGATED)
    rig.settle()
    assert rig.chimney.counters["reachability_queries"] == 1
    assert any("HRD 0 answered" in r.getMessage() for r in caplog.records)
    assert any("NRD query" in r.getMessage() for r in caplog.records)
    rig.checker.assert_clean()


def test_recent_nic_progress_confirms_the_entry_without_a_probe() -> None:
    rig, _, sock, n = _offloaded(42)
    entry = _age_host_entry(rig)
    sent = _record_host_frames(rig)
    requests = rig.host.neighbors.counters.requests_sent
    rig.target.set_reachability_delta(n, 2000)  # progress 2 s ago (TicksPerSecond 1000)
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_confirmed"] == 1, 10.0)
    assert entry.state is NeighborState.REACHABLE
    assert entry.updated == pytest.approx(rig.now - 2.0)  # confirmed as of the NIC's progress
    rig.run_for(10.0)
    assert _arp_requests(sent) == [] and rig.host.neighbors.counters.requests_sent == requests
    assert rig.chimney.counters["reachability_probes"] == 0
    # the host answers the next query with the age of that confirmation (its clock: the
    # time of its last poll)
    hrd = rig.target.reachability_query(n)
    assert hrd >= 2000 and hrd == round((rig.host.now - entry.updated) * 1000)
    assert sock.offload_state is OffloadState.OFFLOADED
    rig.checker.assert_clean()


def test_old_nic_progress_probes_with_unicast_arp_and_the_reply_ends_it() -> None:
    rig, _, sock, n = _offloaded(43)
    entry = _age_host_entry(rig)
    sent = _record_host_frames(rig)
    rig.target.set_reachability_delta(n, 45_000)  # 45 s: older than reachable_time (30 s)
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_probes"] == 1, 10.0)
    # one unicast request to the MAC the NIC sends to, for the neighbor's address
    ((dst, arp),) = _arp_requests(sent)
    assert dst == mac_bytes(PEER_MAC) and arp.target_ip == ip_bytes(PEER_IP)
    # the peer answers: REACHABLE again, nothing invalidated
    rig.run_until(lambda: entry.state is NeighborState.REACHABLE, 2.0)
    rig.run_for(10.0)
    assert rig.chimney.counters["reachability_invalidations"] == 0
    assert sock.offload_state is OffloadState.OFFLOADED
    assert not any(op is Operation.INVALIDATE for op, _ in rig.target.requests)
    assert len(_arp_requests(sent)) == 1
    rig.checker.assert_clean()


def test_unanswered_probes_invalidate_the_neighbor_and_upload_its_connection() -> None:
    # the peer's ARP is dropped while ``faults.b_to_a`` is enabled
    faults = WireFaults.from_specs(None, FaultSpec(loss=1.0, match=_is_arp))
    faults.b_to_a.enabled = False
    rig, (hr, hw, pr, pw), sock, n = _offloaded(44, faults=faults)
    entry = _age_host_entry(rig)
    hw.write(b"written while offloaded;")  # held by the target (not ACKed), handed back
    rig.settle()
    sent = _record_host_frames(rig)
    faults.b_to_a.enabled = True
    rig.target.set_reachability_delta(n, 60_000)
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_probes"] == 1, 10.0)
    assert entry.state is NeighborState.PROBE
    rig.run_until(lambda: rig.chimney.counters["reachability_invalidations"] == 1, 10.0)
    cfg = rig.host.neighbors.config
    unicast = [a for dst, a in _arp_requests(sent) if dst == mac_bytes(PEER_MAC)]
    assert len(unicast) == cfg.max_probes  # then the cache removed the entry
    # d.6: the invalidate completes, every connection through the neighbor comes back
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 10.0)
    rig.settle()
    assert [op for op, _ in rig.target.requests].count(Operation.INVALIDATE) == 1
    assert rig.target.objects == {}  # the neighbor went with its last connection (V14)
    assert rig.chimney.counters["uploads"] == 1 and rig.chimney.counters["lost"] == 0
    # the resumed connection works: everything arrives in order, both ways
    faults.b_to_a.enabled = False
    hw.write(b"and after the upload")
    pw.write(b"reply")
    got = bytearray()
    back = bytearray()

    async def peer_reader() -> None:
        while len(got) < 44:
            got.extend(await pr.read(100))

    async def host_reader() -> None:
        back.extend(await hr.readexactly(5))

    rig.peer.scheduler.spawn(peer_reader())
    rig.host.scheduler.spawn(host_reader())
    rig.run_until(lambda: len(got) >= 44 and len(back) == 5, 60.0)
    assert bytes(got) == b"written while offloaded;and after the upload"
    assert bytes(back) == b"reply"
    rig.checker.assert_clean()


def test_entry_in_delay_queries_nrd_and_nic_progress_confirms_it() -> None:
    rig, _, sock, n = _offloaded(45)
    _, hw2, _, _ = rig.connect()  # a second connection stays in the host
    entry = _age_host_entry(rig)
    sent = _record_host_frames(rig)
    requests = rig.host.neighbors.counters.requests_sent
    rig.target.set_reachability_delta(n, 3000)
    hw2.write(b"the host sends through the stale entry")  # STALE -> DELAY
    rig.run_until(lambda: rig.chimney.counters["reachability_queries"] == 1, 1.0)
    t_query = rig.now
    rig.run_until(lambda: rig.chimney.counters["reachability_confirmed"] == 1, 1.0)
    assert entry.state is NeighborState.REACHABLE
    assert entry.updated == pytest.approx(t_query - 3.0)
    rig.run_for(2 * rig.host.neighbors.config.delay_first_probe_time)
    assert _arp_requests(sent) == [] and rig.host.neighbors.counters.requests_sent == requests
    assert rig.chimney.counters["reachability_probes"] == 0
    assert sock.offload_state is OffloadState.OFFLOADED
    rig.checker.assert_clean()


def test_offloaded_neighbor_pins_the_host_entry() -> None:
    rig, _, sock, _n = _offloaded(46)
    ip = ip_bytes(PEER_IP)
    cfg = rig.host.neighbors.config
    rig.run_for(cfg.reachable_time + 2 * cfg.gc_stale_time)
    entry = rig.host.neighbors.get(ip)
    assert entry is not None and entry.state is NeighborState.STALE  # not collected
    rig.upload_and_wait(sock)
    rig.settle()
    assert not rig.host.neighbors.pinned(ip)
    rig.checker.assert_clean()


def test_follow_up_through_intermediates() -> None:
    # the NRD query and its completion cross two pass-through IMs (handles translated, V17)
    rig, _, sock, n = _offloaded(47, ims=2)
    entry = _age_host_entry(rig)
    rig.target.set_reachability_delta(n, 1500)
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_confirmed"] == 1, 10.0)
    assert entry.state is NeighborState.REACHABLE
    assert entry.updated == pytest.approx(rig.now - 1.5)
    rig.target.set_reachability_delta(n, 40_000)
    rig.run_until(lambda: entry.state is NeighborState.STALE, 40.0)
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_probes"] == 1, 10.0)
    rig.run_until(lambda: entry.state is NeighborState.REACHABLE, 5.0)  # the peer answered
    rig.run_for(5.0)
    assert sock.offload_state is OffloadState.OFFLOADED
    assert rig.chimney.counters["reachability_invalidations"] == 0
    rig.checker.assert_clean()


def test_a_failed_nrd_query_uploads_the_connections_through_the_neighbor() -> None:
    # d.5: "a failed query means the host will upload objects it could not query"
    rig, (hr, hw, pr, pw), sock, n = _offloaded(48)
    entry = _age_host_entry(rig)
    sent = _record_host_frames(rig)
    rig.target.op_script[(Operation.QUERY, n)] = NdisStatus.FAILURE
    assert rig.target.reachability_query(n) == 0
    rig.run_until(lambda: rig.chimney.counters["reachability_query_failures"] == 1, 10.0)
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 10.0)
    rig.settle()
    assert rig.chimney.counters["reachability_probes"] == 0 and _arp_requests(sent) == []
    assert rig.target.objects == {}  # the neighbor went with its connection
    assert entry.state is NeighborState.STALE
    hw.write(b"after the upload")
    got = bytearray()

    async def peer_reader() -> None:
        while len(got) < 16:
            got.extend(await pr.read(100))

    rig.peer.scheduler.spawn(peer_reader())
    rig.run_until(lambda: len(got) >= 16, 30.0)
    assert bytes(got) == b"after the upload"
    rig.checker.assert_clean()


def _neighbor_block_states(rig: Rig, op: Operation) -> list[Any]:
    from ndis.blocks import iter_tree

    out = []
    for o, root in rig.target.requests:
        if o is op:
            out += [b.state for b, _, _ in iter_tree(root)
                    if b.layer is OffloadLayer.NEIGHBOR or type(b.state).__name__ == "NeighborOffloadState"]
    return out


def test_initiate_and_updates_carry_the_hosts_current_reachability_delta() -> None:
    # T.7: the target sets HRT = now - HRD (and NRT = now - NRD, equal at offload) from the
    # initiate and from every update of the neighbor's cached state
    rig = Rig(49)
    conn = rig.connect()
    sock = rig.sock(conn[1])
    entry = rig.host.neighbors.get(ip_bytes(PEER_IP))
    assert entry is not None and entry.state is NeighborState.REACHABLE
    rig.run_for(4.0)
    rig.host.poll(rig.now)  # (the rig skips idle time without polling: bring the clock along)
    age = rig.host.now - entry.updated
    assert age > 3.9
    rig.offload_and_wait(sock)
    (n_state,) = _neighbor_block_states(rig, Operation.INITIATE)
    assert n_state.Cached.HostReachabilityDelta == round(age * 1000)
    assert n_state.Delegated.NicReachabilityDelta == n_state.Cached.HostReachabilityDelta
    # a new MAC for the peer: the update carries the age the host's entry has now
    rig.run_for(3.0)
    new_mac = b"\x02\x76\x6e\x00\x00\x09"
    rig.host.neighbors.add(ip_bytes(PEER_IP), new_mac, rig.host.now)
    rig.run_for(2.0)
    updates = [r for op, r in rig.target.requests if op is Operation.UPDATE]
    assert len(updates) == 1
    cached = updates[0].state
    assert cached.DlDestinationAddress[:6] == new_mac
    entry = rig.host.neighbors.get(ip_bytes(PEER_IP))
    assert entry is not None
    assert 1 <= cached.HostReachabilityDelta <= round((rig.host.now - entry.updated) * 1000) + 1
    rig.checker.assert_clean()
