"""The big one: a TAP lab with the Linux kernel peer, 32 connections moving 16 MiB each way,
10 offload/terminate cycles per connection at random points (some while data is in flight,
some while the peer's window is zero, some while the host application is not reading; uploads
by host decision and on target request), 1% loss each way: every stream intact (bytes and
SHA-256 at both ends: the kernel agent's sockets are the kernel-side view of the streams), no
RST, every planned handoff made, the capture verifies, and the peer-namespace capture analysed
by tshark agrees where that second view is available (tcpdump in the namespace).

Marked ``system`` and ``slow``.  It moves 1 GiB through the emulated NIC and verifies a
1.3 GB capture: about two minutes on the development machine (2 vCPUs), so it is part of the
default run where TAP is available; ``VNIC_STRESS=0`` leaves it out.  The captures (2.5 GB with
the kernel-side one) are deleted after the test; the report and the picture stay.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.kernel import LeakGuard
from vnic.runner import RunOptions, render_report, run_scenario
from vnic.scenario import parse_scenario

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VNIC_STRESS") == "0", reason="VNIC_STRESS=0"),
]

CONNECTIONS = int(os.environ.get("VNIC_STRESS_CONNECTIONS", "32"))
SIZE = os.environ.get("VNIC_STRESS_BYTES", "16MiB")
CYCLES = 10


def stress_scenario(seed: int = 1) -> object:
    return parse_scenario({
        "run": {"name": "stress", "mode": "tap", "seed": seed, "timeout": 1800,
                "checker": False},
        "flow": [{"count": CONNECTIONS, "direction": "both", "bytes": SIZE,
                  # the kernel application stops reading early on for a while: its window
                  # goes to zero while connections are offloaded / being handed over
                  "pause": {"side": "peer", "at_bytes": "2MiB", "seconds": 2.0},
                  # a small kernel receive buffer, so that the pause closes the window
                  "peer_rcvbuf": "64KiB"}],
        "schedule": [{"action": "cycles", "cycles": CYCLES, "terminate": "mixed",
                      "conditions": ["data", "data", "peer_zero_window", "app_not_reading"]}],
        "faults": {"both": {"loss": 0.01}},
        "expect": {"intact": True, "no_rst": True,
                   "min_handoffs": CONNECTIONS * (CYCLES - 1) * 2,
                   "verify": True, "kernel_view": True},
    }, "<stress test>")


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for f in (*tmp_path.glob("*/capture.pcapng"), *tmp_path.glob("*/kernel.pcap")):
        f.unlink()  # 2.5 GB; the report and the picture stay


def test_32_connections_16mib_10_cycles_1pct_loss(run_dir: Path, leak_guard: LeakGuard) -> None:
    report = run_scenario(stress_scenario(), RunOptions(out=str(run_dir), progress=print))
    print(render_report(report))
    leak_guard.register(report["lab"]["name"], report["lab"]["tap"])
    assert report["mode"] == "tap" and report["completed"]
    conns = report["connections"]
    assert len(conns) == CONNECTIONS
    for c in conns:
        assert c["intact"], c
        assert c["rsts"] == 0, c  # (RSTs after both FINs were ACKed are counted apart)
        # every cycle, less at most one that met the connection's close (the target then
        # uploads it on its own, which is a handoff too)
        assert c["offloads"] >= CYCLES - 1 and c["uploads"] >= CYCLES - 1, c
    conditions = [h.get("condition") for c in conns for h in c["handoffs"]]
    assert "data" in conditions and "app_not_reading" in conditions
    assert "peer_zero_window" in conditions, "no handoff happened while the peer's window was zero"
    causes = {h["cause"].split(":")[0] for c in conns for h in c["handoffs"] if h["kind"] == "uploaded"}
    assert {"host", "target"} <= causes
    assert report["faults"]["a_to_b"]["dropped"] > 0 and report["faults"]["b_to_a"]["dropped"] > 0
    kv = report.get("kernel_view") or {}
    failed = {e["name"]: e for e in report["expectations"] if e["ok"] is False}
    assert not failed, failed
    assert report["verify"]["available"] and report["verify"]["ok"], report["verify"]["failures"]
    if kv.get("available") and not (kv.get("tcpdump") or {}).get("dropped"):
        assert kv["agrees"], kv.get("disagreements")
    if not kv.get("available") or (kv.get("tcpdump") or {}).get("dropped"):
        pytest.skip("everything held; the tshark second view was not available or incomplete: "
                    f"{ {k: v for k, v in kv.items() if k not in ('connections', 'totals')} }")
