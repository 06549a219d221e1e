"""``vnic bench offload --json`` on the simulated wire: the command runs end to end through
``vnic.cli.main`` and prints the documented JSON shape (figures are not judged here)."""

from __future__ import annotations

import json

import pytest

from offload_target import table as table_mod
from vnic import cli

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

PHASE_KEYS = {"bytes", "seconds", "mbytes_per_s"}


def test_bench_offload_json_sim(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["bench", "offload", "--json", "--bytes", "1MiB", "--sim"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK, out
    r = json.loads(out)
    assert r["bytes"] == 1 << 20
    assert r["goal_ratio"] == 5.0
    assert r["tap"] is None and r["tap_skipped"]
    assert r["intact"] is True
    sim = r["sim"]
    assert sim["wire"] == "sim"
    for d in ("up", "down"):
        x = sim[d]
        assert x["intact"] is True
        for phase in ("host", "offloaded"):
            assert PHASE_KEYS <= set(x[phase])
            assert x[phase]["mbytes_per_s"] > 0
            assert x[phase]["host_side_mbytes_per_s"] > 0
        assert x["offloaded"]["bytes"] > 0
        assert isinstance(x["ratio"], float) and isinstance(x["host_side_ratio"], float)


def test_bench_offload_text_sim(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "offload", "--bytes", "256KiB", "--sim"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "vnic bench offload" in text and "ratio" in text
    assert "TAP, Linux kernel peer: not run" in text
    assert "every stream intact" in text


def test_bench_offload_rejects_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "offload", "--bytes", "lots", "--sim"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "not a size" in capsys.readouterr().err


def test_bench_offload_without_privileges_runs_the_sim_part_and_says_so(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import vnic.privileges

    monkeypatch.setattr(vnic.privileges, "check_lab_privileges",
                        lambda: "needs root (run with sudo)")
    assert cli.main(["bench", "offload", "--bytes", "256KiB"]) == cli.EXIT_OK
    cap = capsys.readouterr()
    assert "needs root (run with sudo): running the simulated part only" in cap.err
    assert "TAP, Linux kernel peer: not run (needs root (run with sudo))" in cap.out
    assert cli.main(["bench", "offload", "--json", "--bytes", "256KiB"]) == cli.EXIT_OK
    r = json.loads(capsys.readouterr().out)
    assert r["tap"] is None and r["tap_skipped"] == "needs root (run with sudo)"


def test_bench_offload_only_one_part(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["bench", "offload", "--json", "--bytes", "1MiB", "--only", "sim:up"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK, out
    r = json.loads(out)
    assert r["tap"] is None and r["tap_offload"] is None
    assert set(r["sim"]) == {"wire", "up"} and r["sim"]["up"]["intact"] is True
    assert r["intact"] is True


@pytest.mark.parametrize("bad", ["tap:sideways", "wire", "sim:up:down", ":up"])
def test_bench_offload_only_rejects_bad_values(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "offload", "--only", bad]) == cli.EXIT_USAGE
    assert "--only" in capsys.readouterr().err


def test_parse_only() -> None:
    from vnic.bench_offload import parse_only

    assert parse_only(None) == (None, ("up", "down"))
    assert parse_only("tap") == ("tap", ("up", "down"))
    assert parse_only("tap_offload:down") == ("tap_offload", ("down",))
