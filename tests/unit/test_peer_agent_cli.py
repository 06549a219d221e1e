"""vnic.peer's command line: --cpu pins the agent (the kernel side's load generator) to one
CPU before any of its threads start; a CPU it may not use is a clear error, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnic import peer

ROOT = Path(__file__).resolve().parents[2]


def test_a_cpu_the_agent_may_not_use_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    before = os.sched_getaffinity(0)
    assert peer.main(["sink", "--cpu", "100000"]) == 2
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["event"] == "error" and "--cpu 100000" in event["error"]
    assert os.sched_getaffinity(0) == before


def test_the_agent_runs_on_the_cpu_it_was_given() -> None:
    cpu = max(os.sched_getaffinity(0))
    # (in a child: the pinning is process-wide) the agent reports its affinity through the
    # error of a ping without --connect, which comes after the pinning
    code = ("import os, sys\nfrom vnic import peer\nrc = peer.main(sys.argv[1:])\n"
            "print(sorted(os.sched_getaffinity(0)))\nsys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code, "ping", "--cpu", str(cpu)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 2 and json.loads(lines[0])["error"] == "ping needs --connect HOST"
    assert lines[-1] == f"[{cpu}]"
