"""T.7 end to end: the real OffloadTarget (C data path) indicates NeighborReachabilityQuery
when neither it nor the host saw the neighbor for NceStaleTicks, and the host follows up
(NRD query, then confirm or unicast ARP, then invalidate) on the simulated wire with a virtual
clock.  Addresses in 198.18.0.0/15 (tests/sim/offload_rig.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ndis.state import NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
from tcpip.addr import ip_bytes
from tcpip.neighbor import NeighborState
from tcpip.offload_socket import OffloadState
from tests.sim.offload_rig import PEER_IP, OffloadRig
from vnic.faults import FaultSpec, WireFaults

STALE_S = 30.0  # NceStaleTicks default (30000 at TicksPerSecond 1000)


def _blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _received(a: bytearray, b: bytearray, na: int, nb: int) -> Callable[[], bool]:
    return lambda: len(a) == na and len(b) == nb


def _upload_reasons(rig: OffloadRig) -> list[Any]:
    reasons: list[Any] = []

    def observe(event: str, info: dict[str, Any]) -> None:
        if event == "upload-requested":
            reasons.append(info["reason"])

    rig.chimney.observers.append(observe)
    return reasons


def test_nic_progress_confirms_the_aging_entry_without_probes_or_uploads() -> None:
    rig = OffloadRig(71)
    h, p = rig.pair(keep_open=True)  # both readers running, nothing written yet
    sock = rig.sock(h)
    rig.offload(sock)
    reasons = _upload_reasons(rig)
    entry = rig.host.neighbors.get(ip_bytes(PEER_IP))
    assert entry is not None
    requests = rig.host.neighbors.counters.requests_sent
    sent_down = bytearray()
    sent_up = bytearray()
    # bursts both ways with idle gaps longer than NceStaleTicks: each burst's first frames
    # find the NIC's and the host's reachability times stale, over minutes of virtual time
    for i in range(5):
        down, up = _blob(100 + i, 200_000), _blob(200 + i, 50_000)
        sent_down += down
        sent_up += up
        h.write_more(down)
        p.write_more(up)
        rig.run_until(_received(p.got, h.got, len(sent_down), len(sent_up)), 30.0)
        rig.run_for(STALE_S + 10.0)
        assert entry.state is not NeighborState.PROBE
    assert rig.now > 200.0
    assert bytes(p.got) == bytes(sent_down) and bytes(h.got) == bytes(sent_up)
    queries = rig.target.counters.get("reachability_queries", 0)
    c = rig.chimney.counters
    assert queries >= 3  # the NIC asked at the start of the bursts after the first
    # every one was answered with HRD 0 (the host's entry had aged), followed up by an NRD
    # query, and the NIC's forward progress confirmed the entry: no ARP, no upload
    assert c["reachability_queries"] == queries
    assert c["reachability_confirmed"] == queries
    assert c["reachability_probes"] == 0 and c["reachability_invalidations"] == 0
    assert rig.host.neighbors.counters.requests_sent == requests
    assert rig.host.neighbors.get(ip_bytes(PEER_IP)) is entry  # pinned, never collected
    assert sock.offload_state is OffloadState.OFFLOADED
    assert c["uploads"] == 0 and reasons == []
    rig.assert_no_rst()
    rig.assert_clean()


def _silent_peer_rig(seed: int) -> tuple[OffloadRig, WireFaults, Any, Any, Any]:
    """An offloaded connection whose peer's frames (data, ACKs and ARP replies) are all
    dropped while ``faults.b_to_a`` is enabled (it starts disabled); the target may retransmit
    15 times, so the NIC keeps sending past NceStaleTicks (the default 5 would end in a
    TimeoutExpiration upload first)."""
    faults = WireFaults.from_specs(None, FaultSpec(loss=1.0))
    faults.b_to_a.enabled = False
    params = NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(TicksPerSecond=1000,
                                                    TcpMaximumRetransmissions=15)
    rig = OffloadRig(seed, faults=faults, params=params)
    h, p = rig.pair(keep_open=True)
    sock = rig.sock(h)
    rig.offload(sock)
    return rig, faults, h, p, sock


def test_silent_peer_gets_the_neighbor_invalidated_and_the_connection_uploaded() -> None:
    rig, faults, h, p, sock = _silent_peer_rig(72)
    reasons = _upload_reasons(rig)
    first, second = _blob(1, 100_000), _blob(2, 100_000)
    h.write_more(first)
    rig.run_until(lambda: len(p.got) == len(first), 30.0)
    faults.b_to_a.enabled = True  # the peer goes silent; the NIC keeps retransmitting
    silent_at = rig.now
    h.write_more(second)
    c = rig.chimney.counters
    rig.run_until(lambda: c["reachability_invalidations"] == 1, 200.0)
    assert rig.now - silent_at > STALE_S  # NRT had to age first
    assert rig.target.counters.get("reachability_queries", 0) >= 1
    assert c["reachability_queries"] >= 1 and c["reachability_probes"] == 1
    assert c["reachability_confirmed"] == 0
    # d.6: the target asks for the upload; the connection comes back to the host
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 10.0)
    assert c["uploads"] == 1 and c["lost"] == 0
    assert "TimeoutExpiration" not in reasons
    rig.settle()
    assert rig.target.tcp_count == 0 and not rig.target.neighbors
    # the peer comes back: the host resolves it again and the stream completes byte-exact
    faults.b_to_a.enabled = False
    rig.run_until(lambda: len(p.got) == len(first) + len(second), 300.0)
    assert bytes(p.got) == first + second
    rig.assert_no_rst()
    rig.assert_clean()


def test_the_host_answers_a_query_with_its_clock_at_the_nics_time() -> None:
    # The target runs before the host stack in a NicNode pass and calls into it.  When a
    # retransmission timer makes the NIC send (the host has nothing to do, so its clock was
    # last set at an earlier pass), the host must already be at the NIC's time: else the T.7
    # follow-up is timed from that earlier pass, up to a backed-off RTO early.
    rig, faults, h, p, sock = _silent_peer_rig(74)
    h.write_more(_blob(7, 50_000))
    rig.run_until(lambda: len(p.got) == 50_000, 30.0)
    faults.b_to_a.enabled = True  # silent peer: the NIC's RTO timer drives its sends
    h.write_more(_blob(8, 50_000))
    rig.run_until(lambda: rig.target.counters.get("reachability_queries", 0) >= 1, 200.0)
    nb = next(iter(rig.chimney._neighbors.values()))
    delay = rig.host.neighbors.config.delay_first_probe_time
    assert nb.followup_at is not None
    assert nb.followup_at == rig.now + delay  # answered at the NIC's time, this very pass
    assert sock.offload_state is OffloadState.OFFLOADED
