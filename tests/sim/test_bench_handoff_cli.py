"""``vnic bench handoff --sim --json`` runs end to end through ``vnic.cli.main``: the documented
JSON shape, every handoff measured, the stream intact and every connection resumed after the
one-tree upload (the figures themselves are not judged here)."""

from __future__ import annotations

import json

import pytest

from offload_target import table as table_mod
from vnic import cli

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

GAP_KEYS = {"count", "handoffs", "median_ms", "p90_ms", "p99_ms", "max_ms", "intact", "wire",
            "clock", "failures"}
UPLOAD_KEYS = {"connections", "upload_ms", "goal_ms", "ratio_to_goal", "all_resumed", "resumed",
               "setup_seconds"}


def test_bench_handoff_json_sim(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["bench", "handoff", "--sim", "--json", "--handoffs", "20",
                       "--connections", "200", "--runs", "1"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK, out
    r = json.loads(out)
    assert r["tap_skipped"] == "--sim given"
    assert r["goals"] == {"gap_median_ms": 1.0, "upload_ms": 200.0, "upload_connections": 10_000}
    assert r["ok"] is True
    g = r["gap"]
    assert GAP_KEYS <= set(g)
    assert g["wire"] == "sim" and g["handoffs"] == 20 and g["count"] == 20
    assert g["intact"] is True
    assert not any(g["failures"].values())
    assert 0 < g["median_ms"] <= g["p90_ms"] <= g["p99_ms"] <= g["max_ms"]
    u = r["upload"]
    assert UPLOAD_KEYS <= set(u)
    assert u["connections"] == 200 and u["resumed"] == 200 and u["all_resumed"] is True
    assert u["upload_ms"] > 0
    assert isinstance(r["gap_meets_goal"], bool)
    assert r["upload_meets_goal"] is False  # fewer than 10,000 connections never meet it


def test_bench_handoff_text_sim_says_which_wire(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "handoff", "--sim", "--handoffs", "5", "--connections", "20",
                     "--runs", "1"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "vnic bench handoff" in text
    assert "simulated wire" in text and "wall-clock" in text
    assert "20/20 resumed" in text


def test_bench_handoff_rejects_a_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "handoff", "--sim", "--handoffs", "0"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "must be at least 1" in capsys.readouterr().err
