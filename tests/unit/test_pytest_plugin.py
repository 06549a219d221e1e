"""The pytest plugin (``vnic/pytest_plugin.py``) as a user's suite sees it.

Each test writes a small user test file into a ``pytester`` directory (outside this repository:
no project conftest, no ``system`` marker) and runs pytest on it with ``-p vnic.pytest_plugin``,
mostly in a subprocess as a user's run would be.  The TAP lab tests are in
``tests/system/test_pytest_plugin_tap.py``.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from vnic import privileges

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "vnic.pytest_plugin"
FIXTURES = ("vnic_lab_privileges", "vnic_lab", "vnic_lab_factory", "vnic_peer_agent",
            "vnic_sim_lab", "vnic_sim_lab_factory", "vnic_virtual_clock")


def test_fixtures_and_marker_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest_subprocess("-p", PLUGIN, "--fixtures")
    assert res.ret == 0, res.stdout.str()
    out = res.stdout.str()
    assert f"fixtures defined from {PLUGIN}" in out
    for name in FIXTURES:
        assert f"\n{name}" in out, name
    # the docstrings, not just the names (a fixture without one shows "no docstring available")
    assert "no docstring available" not in out.split(f"fixtures defined from {PLUGIN}")[1]
    res.stdout.fnmatch_lines(["*vnic_sim_lab*", "*emulated chimney NIC*"])
    res.stdout.fnmatch_lines(["*vnic_lab *", "*Skipped with the reason without the privileges*"])
    res = pytester.runpytest_subprocess("-p", PLUGIN, "--markers")
    res.stdout.fnmatch_lines(["@pytest.mark.vnic_system: needs TAP devices*"])


SIM_TESTS = '''
import random

import pytest

from ndis.checker import ConformanceError
from tcpip.offload_socket import OffloadState


def test_offload_move_data_terminate(vnic_sim_lab, vnic_virtual_clock):
    lab = vnic_sim_lab
    up, down = random.Random(1).randbytes(300_000), random.Random(2).randbytes(200_000)
    conn = lab.connect()
    lab.exchange(conn, up[:100_000], down[:50_000])      # in the host stack
    lab.offload(conn)
    assert conn.offload_state is OffloadState.OFFLOADED
    assert lab.target.tcp_count == 1
    lab.exchange(conn, up[100_000:], down[50_000:])      # on the emulated NIC
    assert lab.watch.conn(conn.sock.local_port).out_from_target > 0
    lab.upload(conn)
    assert conn.offload_state is OffloadState.IN_HOST and lab.target.tcp_count == 0
    lab.close(conn)
    assert bytes(conn.peer.received) == up and bytes(conn.host.received) == down
    assert lab.chimney.counters["offloads"] == 1 and lab.chimney.counters["uploads"] == 1
    lab.assert_clean()
    assert lab.checker is not None and lab.checker.strict
    assert vnic_virtual_clock.now() == lab.now > 0  # the lab runs on the clock fixture


def test_wrong_expectation_fails(vnic_sim_lab):
    conn = vnic_sim_lab.connect()
    vnic_sim_lab.offload(conn)
    vnic_sim_lab.exchange(conn, b"what the host sent")
    assert bytes(conn.peer.received) == b"something else"


@pytest.mark.parametrize("vnic_sim_lab", [{"seed": 7, "latency": 0.01}], indirect=True)
def test_indirect_parameters_reach_the_lab(vnic_sim_lab):
    conn = vnic_sim_lab.connect(opener="peer")
    assert vnic_sim_lab.now >= 0.02  # the handshake took a round trip of the 10 ms wire
    vnic_sim_lab.offload(conn)
    vnic_sim_lab.upload(conn)


def test_factory_builds_independent_labs(vnic_sim_lab_factory):
    a, b = vnic_sim_lab_factory(seed=3), vnic_sim_lab_factory(seed=4, strict=False)
    assert a.wire is not b.wire and a.clock is not b.clock and not b.checker.strict
    for lab in (a, b):
        conn = lab.connect()
        lab.offload(conn)
        lab.exchange(conn, b"x" * 10_000, b"y" * 20_000)
        lab.upload(conn)
        lab.close(conn)
        lab.assert_clean()


def test_swallowed_violation_fails_in_teardown(vnic_sim_lab):
    try:  # as if an application coroutine had caught what the strict checker raised
        vnic_sim_lab.checker._flag("V10", "indication after terminate", "T1", "target")
    except ConformanceError:
        pass
'''


def test_a_user_sim_lab_test_offloads_and_terminates(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_sim=SIM_TESTS)
    res = pytester.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider", "-rA")
    out = res.stdout.str()
    res.assert_outcomes(passed=4, failed=1, errors=1)
    res.stdout.fnmatch_lines(["PASSED *test_offload_move_data_terminate",
                              "PASSED *test_indirect_parameters_reach_the_lab*",
                              "PASSED *test_factory_builds_independent_labs",
                              "FAILED *test_wrong_expectation_fails*"])
    # the fixture's teardown reports the violation the test swallowed
    res.stdout.fnmatch_lines(["ERROR *test_swallowed_violation_fails_in_teardown*"])
    assert "NDIS conformance violation during the test: [V10]" in out


TAP_TESTS = '''
import pytest


def test_lab(vnic_lab):
    raise AssertionError("must have been skipped")


@pytest.mark.parametrize("vnic_lab", [{"tap_offload": True}], indirect=True)
def test_lab_with_options(vnic_lab):
    raise AssertionError("must have been skipped")


def test_factory(vnic_lab_factory):
    raise AssertionError("must have been skipped")


def test_agent(vnic_peer_agent):
    vnic_peer_agent("sink", "--port", "5001")
    raise AssertionError("must have been skipped")


@pytest.mark.vnic_system
def test_marked():
    raise AssertionError("must have been skipped")


def test_privileges(vnic_lab_privileges):
    assert vnic_lab_privileges == "simulated: no CAP_NET_ADMIN here"
'''


def test_tap_fixtures_and_marker_skip_with_the_reason_without_privileges(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in process, so that the replaced check is the one the plugin asks
    monkeypatch.setattr(privileges, "check_lab_privileges",
                        lambda: "simulated: no CAP_NET_ADMIN here")
    pytester.makepyfile(test_user_tap=TAP_TESTS)
    res = pytester.runpytest_inprocess("-p", PLUGIN, "-p", "no:cacheprovider", "-rs",
                                       "--strict-markers")
    res.assert_outcomes(skipped=5, passed=1)
    res.stdout.fnmatch_lines(["SKIPPED *vnic lab not available: simulated: no CAP_NET_ADMIN here"])
    skips = [ln for ln in res.stdout.lines if ln.startswith("SKIPPED")]
    # one line per skipped test (-rs), each with the reason, none from the assertions inside
    assert len(skips) == 5 and all("simulated: no CAP_NET_ADMIN here" in ln for ln in skips), skips


def test_sweep_failure_never_stops_the_session(pytester: pytest.Pytester) -> None:
    """Housekeeping at session start: a sweep that fails is one line of output."""
    pytester.makeconftest('''
import vnic.lab
import vnic.privileges

vnic.privileges.check_lab_privileges = lambda: None  # "may build labs": the sweep runs


def broken_sweep():
    raise OSError("simulated: /run/vnic is unreadable")


vnic.lab.sweep_stale_labs = broken_sweep
''')
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    res = pytester.runpytest_subprocess("-p", PLUGIN)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*vnic: could not sweep stale labs: simulated: /run/vnic*"])


def test_declared_entry_point_loads_once_with_every_other_route(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed vnic (its ``pytest11`` entry point as pyproject.toml declares it) together
    with ``-p vnic.pytest_plugin`` and ``pytest_plugins`` in a conftest: one registration.

    The installed package is emulated by a dist-info directory with that entry point on
    ``sys.path`` of the subprocess (pytest finds entry points through importlib.metadata);
    naming the entry point anything but the module name makes this run fail with "Plugin
    already registered under a different name".
    """
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert eps["pytest11"] == {PLUGIN: PLUGIN}
    site = pytester.mkdir("site")
    info = site / "vnic_entry_point_probe-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vnic-entry-point-probe\n"
                                   "Version: 0.0.0\n")
    (info / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in eps["pytest11"].items()))
    pytester.makeconftest(f'pytest_plugins = ["{PLUGIN}"]\n')
    pytester.makepyfile(test_once='''
def test_registered_once(pytestconfig, vnic_virtual_clock):
    import vnic.pytest_plugin as plugin

    pm = pytestconfig.pluginmanager
    assert [n for n, p in pm.list_name_plugin() if p is plugin] == ["vnic.pytest_plugin"]
    assert any(p is plugin for p, _dist in pm.list_plugin_distinfo())  # via the entry point
''')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    for extra in ([], ["-p", PLUGIN]):
        res = pytester.runpytest_subprocess(*extra)
        assert res.ret == 0, res.stdout.str() + res.stderr.str()
        res.assert_outcomes(passed=1)
    # and the entry point alone gives the fixtures (no conftest, no -p)
    (pytester.path / "conftest.py").unlink()
    pytester.makepyfile(test_alone="def test_alone(vnic_sim_lab):\n"
                                   "    vnic_sim_lab.connect()\n")
    res = pytester.runpytest_subprocess("test_alone.py")
    res.assert_outcomes(passed=1)


def test_project_conftest_loads_the_plugin_by_its_entry_point_name() -> None:
    """tests/conftest.py must use the same name (see the test above)."""
    text = (ROOT / "tests" / "conftest.py").read_text()
    assert f'pytest_plugins = ["{PLUGIN}"]' in text
    assert PLUGIN in sys.modules


def test_readme_examples_run(pytester: pytest.Pytester, lab_privileges: str | None) -> None:
    """The two examples of the README's "Using vnic in your own tests", as they are written
    (the TAP one is skipped where labs cannot be built)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using vnic in your own tests", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    pytester.makepyfile(test_readme_sim=blocks[0], test_readme_tap=blocks[1])
    res = pytester.runpytest_subprocess("-p", PLUGIN, "-p", "no:cacheprovider", "-rA")
    if lab_privileges is None:
        res.assert_outcomes(passed=2)
    else:
        res.assert_outcomes(passed=1, skipped=1)
