"""``vnic bench handoff --upload-only``: only the mass upload (no gap cycles, no lab), JSON and
text, every connection resumed (the figure itself is not judged here)."""

from __future__ import annotations

import json

import pytest

from offload_target import table as table_mod
from vnic import cli

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")


def test_upload_only_json(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["bench", "handoff", "--upload-only", "--json", "--connections", "120"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK, out
    r = json.loads(out)
    assert r["gap"] is None and r["gap_meets_goal"] is None
    u = r["upload"]
    assert u["connections"] == 120 and u["offloaded"] == 120 and u["resumed"] == 120
    assert u["data_checked"] == 240 and u["all_resumed"] is True and u["lost"] == 0
    assert u["upload_ms"] > 0 and r["upload_meets_goal"] is False  # < 10,000 never meets it
    assert r["ok"] is True
    # the default: three independent runs (fresh processes), the median reported
    assert u["runs"] == 3 and len(u["runs_ms"]) == 3
    assert u["upload_ms"] == sorted(u["runs_ms"])[1]


def test_upload_only_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "handoff", "--upload-only", "--connections", "30", "--runs", "2"]) \
        == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "--upload-only" in text and "30/30 resumed" in text
    assert "median of 2 runs, each in a fresh process" in text
    assert "handoff gap" not in text


def test_one_run_is_made_in_this_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "handoff", "--upload-only", "--json", "--connections", "20",
                     "--runs", "1"]) == cli.EXIT_OK
    u = json.loads(capsys.readouterr().out)["upload"]
    assert "runs_ms" not in u and u["resumed"] == 20
