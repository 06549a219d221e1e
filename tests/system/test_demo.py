"""``vnic demo`` over TAP against the Linux kernel peer: it finishes with the verdict ok,
writes the report, the capture and the picture, and leaves nothing behind (no namespace,
interface, lab record or traffic agent)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.kernel import vnic_links, vnic_namespaces
from vnic.lab import STATE_DIR, list_labs

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def _demo_agent_pids() -> set[int]:
    """Processes running the demo's traffic agent (``python -m vnic.peer`` with the demo's
    arguments: other sessions may run agents and labs on the same machine at the same time)."""
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vnic.peer" in cmd and b"4194304" in cmd and b"1000004" in cmd:
            pids.add(int(d))
    return pids


def test_demo_over_tap_finishes_ok_and_leaves_nothing(tmp_path: Path) -> None:
    agents_before = _demo_agent_pids()
    # the timeout only guards against a hang; how long the demo takes is measured, not asserted
    proc = subprocess.run([sys.executable, "-m", "vnic.cli", "demo", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "verdict: ok" in out
    assert "offload state" in out and "InHost" in out  # the table (printed once at the end
    #                                                     when stdout is not a terminal)
    paths = dict(re.findall(r"^\s+(report|capture|picture):\s+(\S+)", out, re.M))
    assert set(paths) == {"report", "capture", "picture"}
    report = json.loads(Path(paths["report"]).read_text())
    assert report["mode"] == "tap" and report["ok"] and report["exit_status"] == 0
    assert report["verify"]["available"] and report["verify"]["ok"]
    assert report["handoffs"] >= 30 and report["target_requests"] > 0
    causes = {h["cause"] for c in report["connections"] for h in c["handoffs"]
              if h["kind"] == "uploaded"}
    assert "host" in causes and any(c.startswith("target:") for c in causes)
    for key in ("capture", "png", "svg"):
        assert Path(report["files"][key]).stat().st_size > 0
    # nothing left behind (only what the demo made counts: other sessions may run labs)
    lab, tap = report["lab"]["name"], report["lab"]["tap"]
    assert lab not in vnic_namespaces() and tap not in vnic_links()
    assert not (STATE_DIR / f"{lab}.json").exists()
    assert not [r for r in list_labs() if r.get("name") == lab]
    assert _demo_agent_pids() - agents_before == set()
