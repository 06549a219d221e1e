"""`vnic bench table` on a small table: the report has every rate, the ratios are computed
from them, and the goal verdicts follow from the figures (not from fixed values)."""

from __future__ import annotations

import io
import json

import pytest

from vnic import bench_table


@pytest.mark.skipif(bench_table._ctable is None, reason="the C extension is not built")
def test_small_run_reports_consistent_figures_and_verdicts() -> None:
    out = io.StringIO()
    r = bench_table.run_table_bench(2_000, 2_000, json_mode=True, out=out)
    assert json.loads(out.getvalue())["n_connections"] == 2_000
    for op in bench_table.OPERATIONS:
        assert r["c"][f"{op}_per_s"] > 0 and r["python"][f"{op}_per_s"] > 0
        assert r["ratio"][op] == pytest.approx(r["c"][f"{op}_per_s"] / r["python"][f"{op}_per_s"])
    g = r["goals"]
    assert g["lookup_ratio_met"] == (r["ratio"]["lookup"] >= bench_table.LOOKUP_RATIO_GOAL)
    assert g["frame_lookup_ratio_met"] == (
        min(r["ratio"]["lookup_frame"], r["ratio"]["lookup_frames"]) >= bench_table.LOOKUP_RATIO_GOAL)
    assert g["lookup_call_ceiling"] == pytest.approx(
        r["c"]["lookup_empty_table_per_s"] / r["python"]["lookup_per_s"])
    assert g["memory_met"] == (r["memory"]["memory_bytes_per_connection"] <= bench_table.MEMORY_GOAL_BYTES)
    text = bench_table.render(r)
    assert "per-frame classifier" in text and "ceiling" in text
