"""Every example scenario whose mode allows a TAP lab also runs over TAP against the Linux
kernel peer and meets its expectations (the simulated runs are tests/sim/test_scenarios.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.system.kernel import LeakGuard
from vnic import cli
from vnic.scenario import load_scenario

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
TAP_SCENARIOS = [p for p in sorted((ROOT / "scenarios").glob("*.toml"))
                 if load_scenario(p).run.mode in ("tap", "auto")]


@pytest.mark.parametrize("path", TAP_SCENARIOS, ids=[p.stem for p in TAP_SCENARIOS])
def test_example_scenario_runs_over_tap(path: Path, tmp_path: Path, leak_guard: LeakGuard,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", str(path), "--out", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    leak_guard.register(report["lab"]["name"], report["lab"]["tap"])
    assert report["mode"] == "tap"
    for key in ("report", "capture", "png", "svg"):
        assert Path(report["files"][key]).stat().st_size > 0
    expect = load_scenario(path).expect
    faulted = set(expect.lost) | set(expect.damaged)  # target faults damage these on purpose
    assert all(c["intact"] and c["rsts"] == 0 for c in report["connections"]
               if c["index"] not in faulted)
    failed = [e for e in report["expectations"] if e["ok"] is False]
    assert not failed, failed
    assert report["verify"]["available"]
    if not faulted and not expect.verify_fails:
        assert report["verify"]["ok"], report["verify"]["failures"]
    assert status == 0
