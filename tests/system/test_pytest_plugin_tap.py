"""The pytest plugin's TAP lab fixtures in a user's suite, against the real kernel peer.

A user test file (written into a ``pytester`` directory, run in a subprocess with
``-p vnic.pytest_plugin``) offloads a connection to the kernel's traffic agent and hands it
back, asks for a lab with options, builds two labs with the factory and then fails on purpose.
Every lab's namespace, TAP and record must be gone afterwards, the failed test's included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vnic.lab import STATE_DIR, child_env, sweep_stale_labs

pytestmark = pytest.mark.system
pytest_plugins = ["pytester"]

USER_TESTS = '''
import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from vnic.loop import RunLoop
from vnic.offload_lab import build_offload_host
from vnic.simlab import open_endpoint

NAMES = Path(__file__).with_name("lab-names.txt")


def remember(*labs):
    with NAMES.open("a") as f:
        for lab in labs:
            f.write(f"{lab.namespace} {lab.tap_name}\\n")


@pytest.mark.vnic_system
def test_offload_to_the_kernel_peer(vnic_lab, vnic_peer_agent):
    remember(vnic_lab)
    agent = vnic_peer_agent("both", "--port", "5001", "--size", "300000")
    agent.wait_ready()
    oh = build_offload_host(vnic_lab.host_mac_bytes, vnic_lab.host_ip_bytes, vnic_lab.prefix_len)
    loop = RunLoop(vnic_lab.tap, oh.node)
    conn = open_endpoint(oh.stack, vnic_lab.peer_ip, 5001, loop.run_until)
    data = random.Random(1).randbytes(1_000_000)
    conn.send(data[:400_000])
    assert loop.run_until(lambda: conn.write_done, 10)
    assert oh.offload(conn.sock, loop.run_until)
    conn.send(data[400_000:], close=True)
    assert loop.run_until(lambda: conn.write_done, 10)
    assert oh.watch.conn(conn.sock.local_port).out_from_target > 0  # the NIC sent it
    assert oh.upload(conn.sock, loop.run_until)
    assert loop.run_until(lambda: agent.poll_result() is not None and conn.eof, 10)
    got = agent.result["connections"][0]
    assert got["sha256_received"] == hashlib.sha256(data).hexdigest()
    assert got["sha256_sent"] == hashlib.sha256(conn.received).hexdigest()
    assert len(conn.received) == 300_000
    oh.checker.assert_clean()


@pytest.mark.parametrize("vnic_lab", [{"mtu": 9000, "tap_offload": True}], indirect=True)
def test_lab_options(vnic_lab):
    remember(vnic_lab)
    assert vnic_lab.tap_offload and vnic_lab.mtu == 9000
    proc = vnic_lab.run_in_namespace(["ip", "-o", "link", "show", vnic_lab.tap_name],
                                     stdout=subprocess.PIPE, text=True)
    text, _ = proc.communicate(timeout=10)
    assert "mtu 9000" in text, text


def test_factory_labs_are_removed_when_the_test_fails(vnic_lab_factory, vnic_peer_agent):
    a, b = vnic_lab_factory(), vnic_lab_factory(mtu=1400)
    remember(a, b)
    assert a.namespace != b.namespace and a.peer_ip != b.peer_ip
    vnic_peer_agent("sink", "--port", "5002", lab=b).wait_ready()
    raise AssertionError("deliberate failure with two labs and an agent up")
'''


def _netns_names() -> str:
    return subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True,
                          timeout=10).stdout


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                          text=True, timeout=10).stdout


def test_user_tap_lab_tests_pass_fail_and_leave_nothing_behind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_lab=USER_TESTS)
    res = pytester.runpytest_subprocess("-p", "vnic.pytest_plugin", "-p", "no:cacheprovider",
                                        "--strict-markers", "-rA", timeout=180)
    out = res.stdout.str()
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(["PASSED *test_offload_to_the_kernel_peer",
                              "PASSED *test_lab_options*",
                              "FAILED *test_factory_labs_are_removed_when_the_test_fails*"])
    assert "deliberate failure with two labs and an agent up" in out
    rows = [ln.split() for ln in (pytester.path / "lab-names.txt").read_text().splitlines()]
    assert len(rows) == 4 and len({ns for ns, _tap in rows}) == 4, rows
    netns, links = _netns_names(), _root_links()
    for ns, tap in rows:
        assert ns.startswith("vnic") and tap == f"{ns}t"
        assert ns not in netns.split(), (ns, netns)
        assert f" {tap}:" not in links and f" {tap}@" not in links, (tap, links)
        assert not Path("/run/netns", ns).exists()
        assert not (STATE_DIR / f"{ns}.json").exists(), ns


def test_session_start_sweeps_a_lab_whose_owner_was_killed(pytester: pytest.Pytester) -> None:
    """A run killed with its lab up leaves the namespace; the next session removes it."""
    killed = subprocess.run(
        [sys.executable, "-c", "import os\nfrom vnic.lab import Lab\nlab = Lab().up()\n"
                               "print(lab.namespace, flush=True)\nos._exit(9)  # no teardown"],
        capture_output=True, text=True, timeout=60, env=child_env())
    assert killed.returncode == 9, killed.stderr
    ns = killed.stdout.strip()
    try:
        assert ns in _netns_names().split()  # left behind
        pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
        res = pytester.runpytest_subprocess("-p", "vnic.pytest_plugin", "-p", "no:cacheprovider")
        res.assert_outcomes(passed=1)
        res.stdout.fnmatch_lines([f"vnic: removed stale labs left by dead processes: *{ns}*"])
        assert ns not in _netns_names().split()
        assert not (STATE_DIR / f"{ns}.json").exists()
    finally:
        sweep_stale_labs()
