"""RunLoop on a real TAP: wire faults between the kernel peer and a node."""

from __future__ import annotations

import pytest

from tests.system.responder import Responder
from vnic.faults import FaultSpec, WireFaults
from vnic.lab import Lab
from vnic.loop import RunLoop
from vnic.peer import PeerAgent

pytestmark = pytest.mark.system


def is_echo_reply(frame: bytes) -> bool:
    return len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 1 and frame[34] == 0


def test_outbound_loss_hits_only_the_targeted_frame(lab: Lab) -> None:
    dropped = []

    def first_echo_reply(frame: bytes) -> bool:
        if is_echo_reply(frame) and not dropped:
            dropped.append(frame)
            return True
        return False

    faults = WireFaults.from_specs(a_to_b=FaultSpec(loss=1.0, match=first_echo_reply))
    node = Responder(lab.host_mac, lab.host_ip)
    loop = RunLoop(lab.tap, node, faults=faults)
    agent = PeerAgent.start(lab, "ping", "--connect", lab.host_ip, "--count", "3",
                            "--interval", "0.05", "--ping-timeout", "0.5")
    assert loop.run_until(lambda: agent.poll_result() is not None, timeout=15)
    result = agent.result
    assert result is not None
    assert node.echo_requests == 3
    assert result["received"] == 2 and [r["seq"] for r in result["replies"]] == [2, 3]
    assert faults.a_to_b.counters.dropped == 1 and faults.a_to_b.counters.eligible == 1


def test_inbound_delay_shows_in_rtt(lab: Lab) -> None:
    faults = WireFaults.from_specs(b_to_a=FaultSpec(delay=0.15))
    node = Responder(lab.host_mac, lab.host_ip)
    loop = RunLoop(lab.tap, node, faults=faults)
    agent = PeerAgent.start(lab, "ping", "--connect", lab.host_ip, "--count", "2",
                            "--interval", "0.01")
    assert loop.run_until(lambda: agent.poll_result() is not None, timeout=15)
    result = agent.result
    assert result is not None and result["ok"], result
    assert all(r["rtt_ms"] >= 150 for r in result["replies"])
    assert faults.b_to_a.counters.delayed >= 3  # ARP request + 2 echo requests
