"""``action = "target_fault"``: the target-side fault hooks (offload_target.faults) from
scenario files.  Mistakes are one line naming the key; each fault has its documented effect in
a simulated run; ``expect.lost`` / ``damaged`` / ``verify_fails`` state the outcome a fault
is meant to have, and fail when it does not happen (or happens where it was not expected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offload_target import table as table_mod
from vnic import cli
from vnic.runner import RunOptions, run_scenario
from vnic.scenario import ScenarioError, load_scenario, parse_scenario

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")

FLOW2 = "[[flow]]\ncount = 2\n"
TF = "[[schedule]]\naction = 'target_fault'\n"

BAD = [
    (FLOW2 + TF, "schedule[0].fault: missing (one of delay_completion"),
    (FLOW2 + TF + "fault = 'melt'\n", "schedule[0].fault: not a target fault: 'melt'"),
    (FLOW2 + TF + "fault = 'delay_completion'\nseconds = 1\n",
     "schedule[0].op: missing: fault 'delay_completion' needs the operation"),
    (FLOW2 + TF + "fault = 'delay_completion'\nop = 'initiate'\n",
     "schedule[0].seconds: missing: fault 'delay_completion' needs"),
    (FLOW2 + TF + "fault = 'never_complete'\nop = 'teleport'\n",
     "schedule[0].op: must be one of initiate, terminate"),
    (FLOW2 + TF + "fault = 'delay_completion'\nop = 'initiate'\nseconds = -1\n",
     "schedule[0].seconds: must be >= 0"),
    (FLOW2 + TF + "fault = 'never_complete'\nop = 'initiate'\ncount = 0\n",
     "schedule[0].count: must be an integer >= 1 or \"all\""),
    (FLOW2 + TF + "fault = 'shrink_capacity'\nn = 1\nconns = [0]\n",
     "schedule[0].conns: fault 'shrink_capacity' acts on the target as a whole"),
    (FLOW2 + TF + "fault = 'shrink_capacity'\n", "schedule[0].n: missing"),
    (FLOW2 + TF + "fault = 'corrupt_hardware_state'\n",
     "schedule[0].conns: fault 'corrupt_hardware_state' needs the connections"),
    (FLOW2 + TF + "fault = 'corrupt_hardware_state'\nconns = [0]\ndelta = 3\n",
     "schedule[0].delta: fault 'corrupt_hardware_state' takes no parameters"),
    (FLOW2 + TF + "fault = 'wrong_rcv_nxt'\nconns = [0]\ndelta = 0\n",
     "schedule[0].delta: must be a non-zero integer"),
    (FLOW2 + TF + "fault = 'wrong_rcv_nxt'\nconns = [0]\n", "schedule[0].delta: missing"),
    (FLOW2 + TF + "fault = 'send_backlog'\nconns = [1]\nvalue = 5000000000\n",
     "schedule[0].value: must be within 0..4294967295"),
    (FLOW2 + TF + "fault = 'auto_send_backlog'\nenabled = 'no'\n",
     "schedule[0].enabled: must be true or false"),
    (FLOW2 + TF + "fault = 'fail_blocks'\nconns = [0]\nstatus = 'OOPS'\n",
     "schedule[0].status: not a failure status: 'OOPS'"),
    (FLOW2 + TF + "fault = 'fail_blocks'\nconns = [0]\nstatus = 'PENDING'\n",
     "schedule[0].status: not a failure status: 'PENDING'"),
    (FLOW2 + TF + "fault = 'fail_blocks'\nconns = [0]\nops = ['query']\n",
     "schedule[0].ops: must be a list of initiate, terminate"),
    (FLOW2 + TF + "fault = 'fail_blocks'\nconns = [0]\nops = 'terminate'\nstatus = 'RESOURCES'\n",
     "schedule[0].status: a terminate block can only fail with FAILURE"),
    (FLOW2 + TF + "fault = 'fail_blocks'\nconns = [2]\n",
     "schedule[0].conns: index 2 out of range"),
    (FLOW2 + "[[schedule]]\naction = 'offload'\nfault = 'melt'\n",
     "schedule[0].fault: only the `target_fault` action takes a fault"),
    (FLOW2 + "[[schedule]]\naction = 'offload'\ndelta = 3\n",
     "schedule[0].delta: only the `target_fault` action takes this key"),
    (FLOW2 + "[expect]\nlost = [2]\n", "expect.lost: index 2 out of range"),
    (FLOW2 + "[expect]\nlost = 'random:1'\n", "expect.lost: must be a list of connection indices"),
    (FLOW2 + "[expect]\nlost = [0]\ndamaged = [0, 1]\n",
     "expect.damaged: connection 0 is also in expect.lost"),
    (FLOW2 + "[expect]\nverify_fails = ['no-bugs']\n",
     "expect.verify_fails: must be a list of verifier rules"),
    (FLOW2 + "[expect]\nverify = false\nverify_fails = ['no-rst']\n",
     "expect.verify_fails: expects the verifier to fail, but verify = false"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] + ":" + m.split(":")[1][:30]
                                                        for _t, m in BAD])
def test_target_fault_mistake_is_one_line_and_exit_2(text: str, message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert cli.main(["run", str(path), "--sim", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_target_fault_values() -> None:
    scn = parse_scenario({
        "flow": [{"count": 3}],
        "schedule": [
            {"action": "target_fault", "fault": "delay_completion", "op": "terminate",
             "seconds": 0.5},
            {"action": "target_fault", "fault": "never_complete", "op": "send", "count": "all"},
            {"action": "target_fault", "fault": "fail_blocks", "conns": [1],
             "ops": ["terminate", "initiate"]},
            {"action": "target_fault", "fault": "wrong_rcv_nxt", "conns": "random:2",
             "delta": -7, "after_bytes": "1K"},
        ],
        "expect": {"lost": [2, 1], "damaged": 0, "verify_fails": "resume-at-rcvnxt"},
    })
    s = scn.schedule
    assert (s[0].fault, s[0].params) == ("delay_completion",
                                         {"op": "terminate", "seconds": 0.5, "count": 1})
    assert s[0].target_wide and not s[2].target_wide
    assert s[1].params == {"op": "send", "count": -1}
    assert s[2].params == {"status": "FAILURE", "ops": ["initiate", "terminate"], "count": 1}
    assert s[3].params == {"delta": -7} and s[3].conns == "random:2" and s[3].after_bytes == 1000
    assert "wrong_rcv_nxt(delta=-7)" in s[3].describe()
    assert scn.expect.lost == [1, 2] and scn.expect.damaged == [0]
    assert scn.expect.verify_fails == ["resume-at-rcvnxt"]


# ---- runs -------------------------------------------------------------------------------------

HEAD = """
[run]
name = "{name}"
mode = "sim"
seed = {seed}
timeout = {timeout}
[[flow]]
count = {count}
direction = "both"
bytes = "{size}"
"""


def run(tmp_path: Path, body: str, *, name: str = "t", seed: int = 5, count: int = 1,
        size: str = "256KiB", timeout: float = 30, verify: bool = True) -> dict[str, Any]:
    path = tmp_path / f"{name}.toml"
    path.write_text(HEAD.format(name=name, seed=seed, timeout=timeout, count=count, size=size)
                    + body)
    return run_scenario(load_scenario(path), RunOptions(sim=True, out=str(tmp_path),
                                                        picture=False, verify=verify))


def expectation(rep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in rep["expectations"] if e["name"] == name)


def events(rep: dict[str, Any], kind: str, conn: int | None = None) -> list[dict[str, Any]]:
    return [e for e in rep["events"] if e["event"] == kind and (conn is None or e["conn"] == conn)]


OFFLOAD_AT_64K = "[[schedule]]\nafter_bytes = '64KiB'\naction = 'offload'\n"


def handoff_time(rep: dict[str, Any]) -> float:
    """Seconds from conn 0's offload request to its offload completing."""
    asked = events(rep, "offload_requested", 0)[0]["t"]
    done = events(rep, "offloaded", 0)[0]["t"]
    return float(done - asked)


@needs_datapath
def test_delay_completion_makes_the_offload_take_that_long(tmp_path: Path) -> None:
    plain = run(tmp_path, OFFLOAD_AT_64K, name="plain", verify=False)
    delayed = run(tmp_path, TF + "fault = 'delay_completion'\nop = 'initiate'\nseconds = 0.05\n"
                  + OFFLOAD_AT_64K, name="delayed", verify=False)
    assert plain["ok"] and delayed["ok"], delayed["expectations"]
    assert handoff_time(plain) < 0.01
    assert handoff_time(delayed) >= 0.05 - 1e-5  # (report times are rounded to 1 us)
    assert delayed["target_faults"] == [{"t": 0.0, "entry": 0, "fault": "delay_completion",
                                         "conn": None, "op": "initiate", "seconds": 0.05,
                                         "count": 1}]
    assert [e["entry"] for e in delayed["target_fault_log"]] == [["delayed", "initiate", "0.05s"]]


NEVER_TERMINATE = (OFFLOAD_AT_64K + TF + "fault = 'never_complete'\nop = 'terminate'\n"
                   "[[schedule]]\nafter_bytes = '128KiB'\naction = 'terminate'\n")


@needs_datapath
def test_never_complete_holds_the_upload_until_released(tmp_path: Path) -> None:
    rep = run(tmp_path, NEVER_TERMINATE + TF + "fault = 'release_withheld'\nat = 0.2\n",
              verify=False)
    assert rep["ok"], rep["expectations"]
    release = next(f for f in rep["target_faults"] if f["fault"] == "release_withheld")
    assert release["released"] == 1 and release["t"] >= 0.2
    uploaded = events(rep, "uploaded", 0)[0]["t"]
    assert uploaded >= 0.2 > events(rep, "terminate_requested", 0)[0]["t"]
    assert ["withheld", "terminate"] in [e["entry"] for e in rep["target_fault_log"]]


@needs_datapath
def test_a_release_due_before_anything_is_withheld_waits_for_it(tmp_path: Path) -> None:
    """The release is due at once (no condition), the terminate whose completion is withheld
    comes later: the release waits while the never_complete is armed (over TAP the byte counts
    of different connections reach their triggers in any order)."""
    rep = run(tmp_path, NEVER_TERMINATE + TF + "fault = 'release_withheld'\n", verify=False)
    assert rep["ok"], rep["expectations"]
    release = next(f for f in rep["target_faults"] if f["fault"] == "release_withheld")
    assert release["released"] == 1
    assert release["t"] >= events(rep, "terminate_requested", 0)[0]["t"]


@needs_datapath
def test_a_withheld_completion_never_released_fails_the_run(tmp_path: Path) -> None:
    rep = run(tmp_path, NEVER_TERMINATE, timeout=1.0, verify=False)
    assert not rep["ok"] and rep["exit_status"] == 1
    assert expectation(rep, "completed")["ok"] is False
    assert rep["connections"][0]["final_offload_state"] == "Uploading"


@needs_datapath
def test_fail_blocks_at_initiate_keeps_the_connection_in_the_host(tmp_path: Path) -> None:
    rep = run(tmp_path, TF + "fault = 'fail_blocks'\nconns = [1]\nstatus = 'OFFLOAD_TCP_ENTRIES'\n"
              + OFFLOAD_AT_64K + "[[schedule]]\nafter_bytes = '192KiB'\naction = 'offload'\n",
              count=2)
    assert rep["ok"], rep["expectations"]
    c0, c1 = rep["connections"]
    assert c1["offload_failures"] == 1 and c0["offload_failures"] == 0
    assert c1["intact"] and c0["intact"]
    # failed once (count = 1): the second offload of conn 1 works
    assert c1["offloads"] == 1 and c1["handoffs"][0]["t"] > events(rep, "offload_failed", 1)[0]["t"]
    failed = events(rep, "block_failed")
    assert len(failed) == 1 and failed[0]["conn"] == 1
    assert "initiate" in failed[0]["detail"] and "OFFLOAD_TCP_ENTRIES" in failed[0]["detail"]
    assert [e["conn"] for e in rep["target_fault_log"] if e["entry"][0] == "failed"] == [1]


CORRUPT = (OFFLOAD_AT_64K + TF + "after_bytes = '128KiB'\nfault = 'corrupt_hardware_state'\n"
           "conns = [0]\n")


@needs_datapath
def test_corrupt_hardware_state_loses_the_connection_as_expected(tmp_path: Path) -> None:
    rep = run(tmp_path, CORRUPT + "[expect]\nlost = [0]\n", count=2)
    assert rep["ok"], [e for e in rep["expectations"] if e["ok"] is not True]
    lost, other = rep["connections"]
    assert not lost["intact"] and "ConnectionResetError" in lost["error"]
    assert other["intact"] and other["rsts"] == 0
    assert expectation(rep, "lost")["ok"] is True
    assert not rep["verify"]["ok"]  # the verifier sees the loss ...
    assert {f["conn"] for f in rep["verify"]["failed_rules"]} == {0}  # ... on conn 0 only
    assert "excused" in expectation(rep, "verify")["detail"]
    first = rep["target_fault_log"][0]
    assert first["conn"] == 0 and first["entry"][0] == "corrupt"
    assert first["t"] == rep["target_faults"][0]["t"]


@needs_datapath
def test_a_loss_not_stated_fails_the_run(tmp_path: Path) -> None:
    rep = run(tmp_path, CORRUPT, count=2)
    assert not rep["ok"]
    failed = {e["name"] for e in rep["expectations"] if e["ok"] is False}
    assert {"intact", "no_rst", "verify"} <= failed


@needs_datapath
def test_an_expected_loss_that_does_not_happen_fails_the_run(tmp_path: Path) -> None:
    rep = run(tmp_path, OFFLOAD_AT_64K + "[expect]\nlost = [1]\n", count=2, verify=False)
    assert not rep["ok"]
    e = expectation(rep, "lost")
    assert e["ok"] is False and "connections [1]" in e["detail"] and "intact" in e["detail"]


@needs_datapath
def test_a_connection_fault_on_a_connection_never_offloaded_is_skipped(tmp_path: Path) -> None:
    """The fault waits for the target to hold the connection; it never does here, so the
    fault is skipped (and said so), and the loss stated in [expect] does not happen."""
    rep = run(tmp_path, TF + "fault = 'corrupt_hardware_state'\nconns = [0]\n"
              "[expect]\nlost = [0]\n", count=2, verify=False)
    assert not rep["ok"] and expectation(rep, "lost")["ok"] is False
    assert [e["conn"] for e in events(rep, "target_fault_skipped")] == [0]
    assert rep["target_faults"] == [] and rep["target_fault_log"] == []


@needs_datapath
def test_fail_blocks_at_terminate_loses_the_connection(tmp_path: Path) -> None:
    rep = run(tmp_path, TF + "fault = 'fail_blocks'\nconns = [0]\nops = ['terminate']\n"
              + OFFLOAD_AT_64K + "[[schedule]]\nafter_bytes = '128KiB'\naction = 'terminate'\n"
              "[expect]\nlost = [0]\n", count=2)
    assert rep["ok"], [e for e in rep["expectations"] if e["ok"] is not True]
    assert "lost by the offload target" in rep["connections"][0]["error"]
    assert rep["connections"][1]["intact"]


@needs_datapath
def test_shrink_capacity_uploads_beyond_n_and_refuses_more_offloads(tmp_path: Path) -> None:
    rep = run(tmp_path, "[[schedule]]\nafter_bytes = '32KiB'\naction = 'offload'\n"
              + TF + "after_bytes = '512KiB'\nfault = 'shrink_capacity'\nn = 2\n"
              "[[schedule]]\nafter_bytes = '160KiB'\naction = 'offload'\n",
              count=4, size="256KiB", verify=False)
    assert rep["ok"], [e for e in rep["expectations"] if e["ok"] is not True]
    shrink = next(f for f in rep["target_faults"] if f["fault"] == "shrink_capacity")
    offloaded: set[int] = set()
    for e in rep["events"]:
        if e["event"] == "offloaded":
            offloaded.add(e["conn"])
        elif e["event"] == "uploaded":
            offloaded.discard(e["conn"])
        if e["t"] > shrink["t"] and e["event"] == "offloaded":
            assert len(offloaded) <= 2, e  # never beyond the new capacity
    asked_back = [e for e in rep["events"] if e["event"] == "uploaded"
                  and e["detail"] == "target" and e["t"] >= shrink["t"]]
    assert len(asked_back) >= 2
    assert ["shrink_capacity", "2"] in [e["entry"] for e in rep["target_fault_log"]]


@needs_datapath
def test_forced_send_backlog_with_the_targets_own_off(tmp_path: Path) -> None:
    rep = run(tmp_path, TF + "fault = 'auto_send_backlog'\nenabled = false\n" + OFFLOAD_AT_64K
              + TF + "fault = 'send_backlog'\nconns = [0, 1]\nvalue = 1234\n", count=2,
              verify=False)
    assert rep["ok"], rep["expectations"]
    # exactly the two forced indications: the target's own evaluation is off
    assert rep["chimney"]["send_backlog_indications"] == 2
    forced = [e for e in rep["target_fault_log"] if e["entry"][0] == "indicate_send_backlog"]
    assert sorted(e["conn"] for e in forced) == [0, 1]
    assert all(e["entry"][2] == "1234" for e in forced)


WRONG_RCV_NXT = (OFFLOAD_AT_64K + TF + "after_bytes = '96KiB'\nfault = 'wrong_rcv_nxt'\n"
                 "conns = [0]\ndelta = 100\n"
                 "[[schedule]]\nafter_bytes = '128KiB'\naction = 'terminate'\n")


@needs_datapath
def test_wrong_rcv_nxt_is_caught_by_the_verifier_as_expected(tmp_path: Path) -> None:
    rep = run(tmp_path, WRONG_RCV_NXT + "[expect]\ndamaged = [0]\n"
              "verify_fails = ['resume-at-rcvnxt']\n", count=2)
    assert rep["ok"], [e for e in rep["expectations"] if e["ok"] is not True]
    assert "resume-at-rcvnxt" in expectation(rep, "verify_fails")["detail"]
    assert {(f["rule"], f["conn"]) for f in rep["verify"]["failed_rules"]} >= {("resume-at-rcvnxt", 0)}
    assert rep["connections"][1]["intact"]


@needs_datapath
def test_verify_fails_naming_a_rule_that_holds_fails_the_run(tmp_path: Path) -> None:
    rep = run(tmp_path, WRONG_RCV_NXT + "[expect]\ndamaged = [0]\n"
              "verify_fails = ['buffered-once']\n", count=2)
    assert not rep["ok"]
    e = expectation(rep, "verify_fails")
    assert e["ok"] is False and "did not report buffered-once" in e["detail"]
    assert "resume-at-rcvnxt" in e["detail"]


@needs_datapath
def test_a_verifier_that_passes_fails_verify_fails(tmp_path: Path) -> None:
    rep = run(tmp_path, OFFLOAD_AT_64K + "[expect]\nverify_fails = ['delivered-once']\n"
              "damaged = [0]\n")
    assert not rep["ok"]
    assert expectation(rep, "verify_fails")["ok"] is False
    assert "failed: nothing" in expectation(rep, "verify_fails")["detail"]
    assert expectation(rep, "damaged")["ok"] is False  # it arrived intact
