"""Every example scenario in scenarios/ runs on the simulated wire and meets its expectations;
scenario files with mistakes are refused with one line naming the file and the key (exit 2);
the demo's live table and its fallback to the simulated wire without lab privileges."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from offload_target import table as table_mod
from vnic import cli
from vnic.demo import LiveTable, demo_scenario, render_table
from vnic.runner import RunOptions, run_scenario
from vnic.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")


def test_there_are_example_scenarios() -> None:
    assert 4 <= len(SCENARIOS) <= 11, SCENARIOS


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_example_scenario_parses(path: Path) -> None:
    scn = load_scenario(path)
    assert scn.connections >= 1 and scn.schedule
    assert scn.expect.intact and scn.expect.verify and scn.expect.min_handoffs > 0
    # a fault scenario says which connections it damages; the others must stay intact
    assert len(set(scn.expect.lost) | set(scn.expect.damaged)) < scn.connections


@needs_datapath
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_example_scenario_runs_in_simulation(path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", str(path), "--sim", "--out", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "sim"
    for key in ("report", "capture", "png", "svg"):
        f = Path(report["files"][key])
        assert f.is_file() and f.stat().st_size > 0, key
    assert json.loads(Path(report["files"]["report"]).read_text())["ok"] == report["ok"]
    assert status == 0, [e for e in report["expectations"] if e["ok"] is False]
    expect = load_scenario(path).expect
    assert report["handoffs"] >= expect.min_handoffs
    faulted = set(expect.lost) | set(expect.damaged)
    assert report["verify"]["available"]
    if not faulted and not expect.verify_fails:
        assert report["verify"]["ok"], report["verify"]["failures"]
    assert all(c["intact"] and c["rsts"] == 0 for c in report["connections"]
               if c["index"] not in faulted)
    assert not any(c["intact"] for c in report["connections"] if c["index"] in faulted)


@needs_datapath
def test_same_seed_same_run(tmp_path: Path) -> None:
    """A simulated run is a function of its seed: the same handoffs at the same times."""
    scn = load_scenario(ROOT / "scenarios" / "basic-handoff.toml")
    a = run_scenario(scn, RunOptions(sim=True, out=str(tmp_path / "a"), picture=False, verify=False))
    b = run_scenario(scn, RunOptions(sim=True, out=str(tmp_path / "b"), picture=False, verify=False))
    assert [c["handoffs"] for c in a["connections"]] == [c["handoffs"] for c in b["connections"]]
    assert a["simulated_seconds"] == b["simulated_seconds"]


PEER_OPENS_TIMED = """
[run]
name = "peer-opens-timed"
seed = 2
timeout = 60
[[flow]]
count = 2
direction = "down"
bytes = "512KiB"
open = "peer"
pause = { side = "host", at_bytes = "100KiB", seconds = 0.05 }
[[flow]]
count = 2
direction = "up"
bytes = "512KiB"
[[schedule]]
at = 0.0
action = "offload"
[[schedule]]
at = 0.15
action = "terminate"
conns = "random:2"
[[schedule]]
at = 0.2
action = "upload_all"
[[schedule]]
at = 0.25
action = "offload"
[[schedule]]
at = 0.3
action = "target_request"
reason = "InvalidState"
[faults]
during = "offloaded"
[faults.down]
loss = 0.05
[expect]
min_handoffs = 8
"""


@needs_datapath
def test_peer_opened_flows_time_schedule_and_faults_while_offloaded(tmp_path: Path) -> None:
    """The peer connects to a host listener; the schedule goes by time (`at`, including
    entries due before every connection exists); loss only while connections are Offloaded."""
    path = tmp_path / "peer-opens.toml"
    path.write_text(PEER_OPENS_TIMED)
    report = run_scenario(load_scenario(path), RunOptions(sim=True, out=str(tmp_path)))
    assert report["ok"], [e for e in report["expectations"] if e["ok"] is not True]
    peer_opened = [c for c in report["connections"] if c["opened_by"] == "peer"]
    assert len(peer_opened) == 2 and {c["local_port"] for c in peer_opened} == {5001}
    assert len({c["remote_port"] for c in peer_opened}) == 2
    assert report["upload_all"] == 1
    assert report["faults"]["b_to_a"]["dropped"] > 0  # lost while offloaded only
    events = [e["event"] for e in report["events"]]
    assert "offload_resume" in events and "target_request" in events


@needs_datapath
def test_fragments_scenario_reports_the_fragments(tmp_path: Path) -> None:
    """scenarios/fragments.toml: the peer's frames arrive fragmented, a few fragments are lost;
    the report counts the fragments made and lost, the datagrams the host reassembled and the
    segments it forwarded."""
    from vnic.runner import render_report

    scn = load_scenario(ROOT / "scenarios" / "fragments.toml")
    assert scn.faults.down is not None and scn.faults.down.fragment > 0
    report = run_scenario(scn, RunOptions(sim=True, out=str(tmp_path), picture=False))
    assert report["ok"], [e for e in report["expectations"] if e["ok"] is not True]
    wire = report["faults"]["b_to_a"]
    assert wire["fragmented"] > 100 and wire["fragments"] >= 3 * wire["fragmented"]
    assert report["faults"]["a_to_b"]["fragmented"] == 0
    ra = report["reassembly"]
    # fragment_loss: the lost fragments never reach the host, their datagrams never complete
    lost = wire["fragments_lost"]
    # what the fault injector released but the simulated wire had not delivered to the host
    # when the run ended (a retransmission after the last byte already arrived)
    in_flight = wire["delivered"] - report["wire"]["delivered_to_a"]
    assert lost > 0 and 0 <= wire["fragments"] - lost - ra["fragments_in"] <= in_flight
    assert wire["fragmented"] - lost - in_flight <= ra["reassembled"] < wire["fragmented"]
    assert ra["overlaps"] == ra["evicted"] == 0
    assert report["chimney"]["forwarded"] > 0
    text = render_report(report)
    assert f"fragmented {wire['fragmented']}" in text and "host IPv4 reassembly" in text


@needs_datapath
def test_first_segment_after_upload_drops_one_segment_per_upload(tmp_path: Path) -> None:
    """scenarios/first-segment-after-upload.toml: during = "uploading", frames = "data",
    nth = 1.  Host -> peer, exactly one frame is dropped per upload: in this seeded (so
    deterministic) run the host still has data to send after each of its 12 uploads (3 cycles
    at byte points inside the transfer), so every window sees a host data segment and its 1st
    one is the frame dropped.  Peer -> host, the 1st data segment of a window is duplicated;
    the peer may have sent all it had before a late upload: at least one, at most one per
    upload."""
    from vnic.runner import render_report

    scn = load_scenario(ROOT / "scenarios" / "first-segment-after-upload.toml")
    report = run_scenario(scn, RunOptions(sim=True, out=str(tmp_path), picture=False))
    assert report["ok"], [e for e in report["expectations"] if e["ok"] is not True]
    uploads = report["uploads"]
    assert uploads == sum(c["uploads"] for c in report["connections"]) >= 12
    up, down = report["faults"]["a_to_b"], report["faults"]["b_to_a"]
    gate = report["fault_gate"]
    # host -> peer: one drop per upload window, nothing else touched
    assert up["dropped"] == up["eligible"] == uploads
    assert gate["a_to_b"] == {"windows": uploads, "targeted": uploads}
    assert up["duplicated"] == 0 and up["frames_in"] > 100 * uploads
    # peer -> host: one duplicate per window the peer sent data in
    assert 0 < down["duplicated"] == down["eligible"] == gate["b_to_a"]["targeted"] <= uploads
    assert gate["b_to_a"]["windows"] == gate["b_to_a"]["targeted"] and down["dropped"] == 0
    # byte-exact streams, no reset, the verifier content
    for c in report["connections"]:
        assert c["rsts"] == 0 and c["intact"]
        assert all(x["intact"] and x["bytes_received"] == x["bytes_sent"] == 1 << 20
                   for x in c["directions"].values())
    assert report["verify"]["ok"], report["verify"]["failures"]
    text = render_report(report)
    assert f"({uploads} in {uploads} uploading windows); dropped {uploads}" in text


# ---- mistakes in scenario files --------------------------------------------------------------

BAD = [
    ("[run]\nmod = 'sim'\n[[flow]]\n", "run.mod: unknown key"),
    ("[run]\nmode = 'fast'\n[[flow]]\n", "run.mode: must be one of tap, sim, auto"),
    ("[run]\nseed = 'one'\n[[flow]]\n", "run.seed: must be an integer"),
    ("[run]\nname = 'x'\n", "flow: at least one [[flow]] is needed"),
    ("[[flow]]\ncount = 0\n", "flow[0].count: must be within 1..4096"),
    ("[[flow]]\nbytes = 'lots'\n", "flow[0].bytes: not a size"),
    ("[[flow]]\ndirection = 'sideways'\n", "flow[0].direction: must be one of up, down, both"),
    ("[[flow]]\ndirection = 'down'\npause = { side = 'peer', at_bytes = 10 }\n",
     "flow[0].pause.side: the peer receives nothing"),
    ("[[flow]]\ncount = 2\n[[schedule]]\naction = 'explode'\n",
     "schedule[0].action: must be one of offload"),
    ("[[flow]]\ncount = 2\n[[schedule]]\nat = 1\n", "schedule[0].action: missing"),
    ("[[flow]]\ncount = 2\n[[schedule]]\naction = 'offload'\nconns = [0, 5]\n",
     "schedule[0].conns: index 5 out of range (connections are 0..1)"),
    ("[[flow]]\n[[schedule]]\naction = 'target_request'\nreason = 'Bored'\n",
     "schedule[0].reason: not an upload reason: 'Bored'"),
    ("[[flow]]\n[[schedule]]\naction = 'offload'\nat = 1\nafter_bytes = 5\n",
     "schedule[0].at: give either `at` or `after_bytes`"),
    ("[[flow]]\n[[schedule]]\naction = 'offload'\ncycles = 3\n",
     "schedule[0].cycles: only the `cycles` action takes this key"),
    ("[[flow]]\n[faults.up]\nloss = 1.5\n", "faults.up.loss: must be within 0..1"),
    ("[[flow]]\n[faults.both]\nlos = 0.1\n", "faults.both.los: unknown key"),
    ("[[flow]]\n[faults]\nduring = 'sometimes'\n", "faults.during: must be one of always"),
    ("[[flow]]\n[faults]\nduring = 'upload'\n",
     "faults.during: must be one of always, offloaded, handoff, offloading, uploading, not 'upload'"),
    ("[[flow]]\n[faults]\nduring = 'uploading'\nframes = 'payload'\n",
     "faults.frames: must be one of any, data, control, not 'payload'"),
    ("[[flow]]\n[faults]\nduring = 'uploading'\nframes = 1\n", "faults.frames: must be a string"),
    ("[[flow]]\n[faults]\nduring = 'uploading'\nnth = 0\n", "faults.nth: must be >= 1, not 0"),
    ("[[flow]]\n[faults]\nduring = 'offloading'\nnth = 1.5\n", "faults.nth: must be an integer"),
    ("[[flow]]\n[faults]\nduring = 'handoff'\nnth = true\n",
     "faults.nth: must be an integer, not a boolean"),
    ("[[flow]]\n[faults]\nnth = 1\n[faults.up]\nloss = 1.0\n",
     "faults.nth: counts frames per window: needs `during` = offloaded, handoff, offloading or"),
    ("[[flow]]\n[faults]\nnt = 1\n", "faults.nt: unknown key"),
    ("[[flow]]\n[faults.down]\nfragment = 2\n", "faults.down.fragment: must be within 0..1"),
    ("[[flow]]\n[faults.down]\nfragment_size = 100\n",
     "faults.down.fragment_size: must be a multiple of 8"),
    ("[[flow]]\n[faults.up]\nfragment_size = 4\n", "faults.up.fragment_size: must be within 8..65528"),
    ("[[flow]]\n[faults.both]\nfragment_reorder = 'yes'\n",
     "faults.both.fragment_reorder: must be true or false"),
    ("[[flow]]\n[expect]\nintact = 'yes'\n", "expect.intact: must be true or false"),
    ("[[flow]]\n[expect]\nwhatever = true\n", "expect.whatever: unknown key"),
    ("[[flow]\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] for _t, m in BAD])
def test_scenario_mistake_is_one_line_and_exit_2(text: str, message: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert cli.main(["run", str(path), "--sim", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_missing_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(tmp_path / "nope.toml"), "--sim"]) == 2
    assert "no such scenario file" in capsys.readouterr().err


def test_schema_values() -> None:
    scn = parse_scenario({
        "run": {"name": "x", "seed": 4, "duration": 9},
        "flow": [{"count": 2, "direction": "up", "bytes": "1MiB",
                  "pause": {"side": "peer", "at_bytes": "64K", "seconds": 0.5}},
                 {"count": 1, "direction": "down", "open": "peer"}],
        "schedule": [{"action": "target_request", "reason": 8, "conns": [2]},
                     {"action": "cycles", "cycles": 2, "conditions": "peer_zero_window"}],
        "faults": {"during": "handoff", "both": {"loss": 0.1},
                   "down": {"delay": 0.001, "fragment": 0.5, "fragment_size": 256,
                            "fragment_reorder": True}},
        "expect": {"min_handoffs": 3, "kernel_view": True},
    })
    assert scn.connections == 3 and scn.flow_of(2).open == "peer"
    assert scn.flows[0].bytes == 1 << 20 and scn.flows[0].pause.at_bytes == 64_000
    assert scn.flows[1].port == 5002 and scn.run.timeout == 9
    assert scn.schedule[0].reason == 8 and scn.schedule[1].conditions == ("peer_zero_window",)
    assert scn.faults.up.loss == 0.1 and scn.faults.down.loss == 0.1
    assert scn.faults.down.delay == 0.001 and scn.faults.up.delay == 0
    assert (scn.faults.down.fragment, scn.faults.down.fragment_size) == (0.5, 256)
    assert scn.faults.down.fragment_reorder and not scn.faults.up.fragment
    assert scn.expect.min_handoffs == 3 and scn.expect.kernel_view


# ---- the demo ---------------------------------------------------------------------------------


def test_live_table_redraws_in_place_on_a_terminal() -> None:
    scn = demo_scenario()
    rows = [{"conn": i, "port": 40000 + i, "offload_state": s, "tcp_state": "ESTABLISHED",
             "up": 1 << 20, "down": 2 << 20, "offloads": 1, "uploads": 0, "target_requests": 0,
             "from_target": 10, "retransmitted": 0, "zero_window": False, "paused": False,
             "done": False, "error": None}
            for i, s in enumerate(("InHost", "Offloading", "Offloaded", "Uploading"))]
    summary = {"t": 0.5, "moved": 3 << 20, "total": 8 << 20, "offloaded": 1, "handoffs": 1,
               "done": 0, "connections": scn.connections, "virtual": True}
    out = io.StringIO()
    table = LiveTable(out, tty=True)
    table(rows, summary)
    table(rows, summary)
    text = out.getvalue()
    lines = render_table(rows, summary)
    assert f"\x1b[{len(lines)}F\x1b[J" in text  # cursor back over the table, then redraw
    for state in ("InHost", "Offloading", "Offloaded", "Uploading"):
        assert state in text
    plain = io.StringIO()
    LiveTable(plain, tty=False)(rows, summary)
    assert "\x1b" not in plain.getvalue() and plain.getvalue().count("\n") == 1


@needs_datapath
def test_demo_without_lab_privileges_says_so_and_runs_simulated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vnic import privileges

    monkeypatch.setattr(privileges, "check_lab_privileges",
                        lambda: "needs root (CAP_NET_ADMIN) to create a TAP device")
    status = cli.main(["demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "no TAP lab" in out and "simulated wire" in out
    assert "verdict: ok" in out, out[-3000:]
    assert status == 0
    for name in ("report.json", "capture.pcapng", "seqtime.png", "seqtime.svg"):
        assert str(tmp_path) in out and name in out
    report = json.loads(next(tmp_path.glob("demo-*/report.json")).read_text())
    assert report["mode"] == "sim" and report["ok"]
    assert report["handoffs"] >= 30 and report["target_requests"] > 0
    assert {h["cause"] for c in report["connections"] for h in c["handoffs"]
            if h["kind"] == "uploaded"} >= {"host"}


def test_tap_scenario_without_privileges_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vnic import privileges

    monkeypatch.setattr(privileges, "check_lab_privileges",
                        lambda: "needs root (CAP_NET_ADMIN) to create a TAP device")
    path = tmp_path / "tap.toml"
    path.write_text("[run]\nmode = 'tap'\n[[flow]]\n")
    assert cli.main(["run", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --sim" in err and "CAP_NET_ADMIN" in err
    assert not list(tmp_path.glob("tap-*"))  # nothing written
