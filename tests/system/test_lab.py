"""The lab against the real kernel: namespaces, TAP, teardown, sweep, ARP/ICMP, peer agent."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from tests.system.responder import Responder
from vnic.lab import (
    STATE_DIR,
    Lab,
    LabError,
    child_env,
    down_lab,
    list_labs,
    netns_exists,
    sweep_stale_labs,
    teardown_on_signals,
)
from vnic.loop import RunLoop
from vnic.payload import connection_seed, payload_digest
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter, read_pcapng
from vnic.peer import PeerAgent
from vnic.privileges import check_lab_privileges
from vnic.veth_bench import VethPair, veth_throughput

pytestmark = pytest.mark.system


def ip_netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def link_in_namespace(ns: str, ifname: str) -> bool:
    from pyroute2 import NetNS

    with NetNS(ns) as n:
        return bool(n.link_lookup(ifname=ifname))


def assert_gone(name: str, tap: str) -> None:
    """Nothing of lab ``name`` is left (ids are handed out round robin, so a concurrent user of
    this machine does not get the same name again within a test)."""
    assert not netns_exists(name)
    assert name not in ip_netns_list().split()
    assert not os.path.exists(f"/sys/class/net/{tap}")
    assert not (STATE_DIR / f"{name}.json").exists()


def wait_for(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition driven by another process (no fixed sleeps)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_privileges_ok_here() -> None:
    assert check_lab_privileges() is None


def test_lab_up_and_down_leaves_nothing() -> None:
    with Lab() as lab:
        name, tap = lab.namespace, lab.tap_name
        assert name.startswith("vnic") and len(tap) <= 15
        assert netns_exists(name) and name in ip_netns_list()
        assert link_in_namespace(name, tap)
        assert not os.path.exists(f"/sys/class/net/{tap}")  # not in the root namespace
        assert lab.peer_ip.startswith("198.18.") and lab.host_ip.startswith("198.18.")
        assert lab.peer_ip_bytes[:3] == lab.host_ip_bytes[:3] and lab.prefix_len == 24
        assert len(lab.host_mac_bytes) == 6 and lab.host_mac_bytes[0] & 0x02
        assert len(lab.peer_mac_bytes) == 6
        rec = [r for r in list_labs() if r["name"] == name]
        assert rec and rec[0]["alive"] and rec[0]["pid"] == os.getpid()
        assert rec[0]["info"]["host_ip"] == lab.host_ip
        assert lab.tap.fileno() >= 0
    assert_gone(name, tap)
    assert lab.tap_name == tap and not lab.is_up


def test_teardown_on_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        name, tap = lab.namespace, lab.tap_name
        raise RuntimeError("boom")
    assert_gone(name, tap)


def test_concurrent_labs_get_distinct_subnets() -> None:
    with Lab() as a, Lab() as b:
        assert a.namespace != b.namespace
        assert a.peer_ip.rsplit(".", 1)[0] != b.peer_ip.rsplit(".", 1)[0]
        assert a.host_mac != b.host_mac
    assert not netns_exists(a.namespace) and not netns_exists(b.namespace)


CHILD_LAB = """
import json, sys, time
from vnic.lab import Lab, teardown_on_signals
with teardown_on_signals(), Lab() as lab:
    sleeper = lab.run_in_namespace(["sleep", "60"])
    print(json.dumps({"name": lab.namespace, "tap": lab.tap_name, "sleeper": sleeper.pid}),
          flush=True)
    time.sleep(60)
"""


def _start_child_lab() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD_LAB], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"child lab did not come up: {proc.stderr.read()[-3000:]}")
    return proc, json.loads(line)


def test_stale_lab_of_killed_process_is_swept() -> None:
    proc, info = _start_child_lab()
    proc.kill()
    proc.wait()
    name = info["name"]
    # SIGKILL: nobody cleaned up. (Every Lab.up() on this machine sweeps too, so a concurrent
    # user may get there first; then the record is already gone.)
    rec = [r for r in list_labs() if r["name"] == name]
    if rec:
        assert not rec[0]["alive"]
        assert rec[0]["namespaces_present"] == [name]
    sweep_stale_labs()
    assert_gone(name, info["tap"])
    assert wait_for(lambda: not process_running(info["sleeper"]), 5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_tears_down(sig: signal.Signals) -> None:
    proc, info = _start_child_lab()
    proc.send_signal(sig)
    code = proc.wait(10)
    # SIGINT: KeyboardInterrupt unwinds, then CPython re-raises the signal to die by it
    assert code == (-sig if sig == signal.SIGINT else 128 + sig)
    assert_gone(info["name"], info["tap"])
    assert wait_for(lambda: not process_running(info["sleeper"]), 5)


def test_down_lab_from_another_process() -> None:
    proc, info = _start_child_lab()
    try:
        assert down_lab(info["name"])
        assert proc.wait(10) != 0
        assert_gone(info["name"], info["tap"])
        assert not down_lab(info["name"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kernel_arp_request_arrives_on_tap(lab: Lab) -> None:
    agent = PeerAgent.start(lab, "ping", "--connect", lab.host_ip, "--ping-timeout", "5")
    agent.wait_ready()
    arp = None
    end = time.monotonic() + 5
    while arp is None and time.monotonic() < end:
        select.select([lab.tap.fileno()], [], [], 0.5)
        for frame in lab.tap.read_frames():
            pkt = Ether(frame)
            if ARP in pkt and pkt[ARP].op == 1:
                arp = pkt
    assert arp is not None, "no ARP request from the kernel peer"
    assert arp[ARP].pdst == lab.host_ip and arp[ARP].psrc == lab.peer_ip
    assert arp.src == lab.peer_mac and arp.dst == "ff:ff:ff:ff:ff:ff"
    agent.stop()


def test_handmade_arp_and_echo_reply_make_kernel_ping_succeed(lab: Lab, capture_path: Path) -> None:
    node = Responder(lab.host_mac, lab.host_ip)
    with PcapngWriter(capture_path) as cap:
        loop = RunLoop(lab.tap, node, capture=cap)
        agent = PeerAgent.start(lab, "ping", "--connect", lab.host_ip, "--count", "3",
                                "--interval", "0.05")
        assert loop.run_until(lambda: agent.poll_result() is not None, timeout=15)
    result = agent.result
    assert result is not None and result["ok"], result
    assert result["received"] == 3
    assert node.arp_requests >= 1 and node.echo_requests == 3
    assert loop.stats.frames_in >= 4 and loop.stats.frames_out >= 4

    frames = read_pcapng(capture_path)
    pkts = [Ether(f.frame) for f in frames]
    kinds = [("arp" if ARP in p else "icmp" if ICMP in p else "other", f.direction)
             for p, f in zip(pkts, frames, strict=True)]
    assert ("arp", DIR_INBOUND) in kinds and ("arp", DIR_OUTBOUND) in kinds
    echo_req = [p for p in pkts if ICMP in p and p[ICMP].type == 8]
    echo_rep = [p for p in pkts if ICMP in p and p[ICMP].type == 0]
    assert len(echo_req) == 3 and len(echo_rep) == 3
    assert all(p[IP].src == lab.host_ip for p in echo_rep)
    assert frames[0].comment.startswith("dir=peer->host component=peer")
    assert any(f.comment == "dir=host->peer component=host" for f in frames)
    ts = [f.timestamp for f in frames]
    assert ts == sorted(ts) and abs(ts[0] - time.time()) < 60


def test_peer_agent_sink_source_over_veth() -> None:
    size = 3_000_000
    with VethPair() as pair:
        with PeerAgent.start(pair.ns_b, "sink", "--port", "5001", "--connections", "2",
                             "--bind", pair.ip_b) as sink:
            sink.wait_ready()
            with PeerAgent.start(pair.ns_a, "source", "--connect", pair.ip_b, "--port", "5001",
                                 "--connections", "2", "--size", str(size), "--seed", "5") as src:
                sent = src.wait_result(30)
            got = sink.wait_result(30)
        names = (pair.ns_a, pair.ns_b)
    assert not any(netns_exists(n) for n in names)
    assert sent["ok"] and got["ok"], (sent, got)
    by_port = {c["local"]: c for c in sent["connections"]}
    for conn in got["connections"]:
        s = by_port[conn["peer"]]
        assert conn["bytes_received"] == size == s["bytes_sent"]
        assert conn["sha256_received"] == s["sha256_sent"]
        assert conn["sha256_received"] == payload_digest(connection_seed(5, s["index"]), size)
        assert conn["eof"]


@pytest.mark.parametrize("expect", [0, 3_000_000])
def test_peer_agent_offline_digest_reports_the_same_digests(expect: int) -> None:
    """--offline-digest (benchmarks): payload generated and hashed before 'ready', received
    bytes hashed after EOF (into a reserved buffer with --expect, else kept as chunks): the
    same byte counts and SHA-256 values as the inline mode, both roles, both ways."""
    size = 2_500_000
    with VethPair() as pair:
        with PeerAgent.start(pair.ns_b, "both", "--port", "5004", "--size", str(size),
                             "--seed", "31", "--offline-digest", "--expect", str(expect)) as srv:
            srv.wait_ready()
            with PeerAgent.start(pair.ns_a, "connect", "--connect", pair.ip_b, "--port", "5004",
                                 "--size", str(size + 7), "--seed", "41", "--offline-digest",
                                 "--expect", str(expect)) as cli:
                c = cli.wait_result(30)
            s = srv.wait_result(30)
    assert c["ok"] and s["ok"], (c, s)
    cc, sc = c["connections"][0], s["connections"][0]
    assert cc["bytes_sent"] == sc["bytes_received"] == size + 7
    assert cc["sha256_sent"] == sc["sha256_received"] == payload_digest(41, size + 7)
    assert sc["bytes_sent"] == cc["bytes_received"] == size
    assert sc["sha256_sent"] == cc["sha256_received"] == payload_digest(31, size)


def test_peer_agent_both_and_knobs_over_veth() -> None:
    with VethPair() as pair:
        # both directions at once, the listener pauses reading (zero window) then resumes
        with PeerAgent.start(pair.ns_b, "both", "--port", "5002", "--size", "2000000",
                             "--seed", "11", "--pause-after", "100000", "--pause-for", "0.3",
                             "--rcvbuf", "65536", "--keepalive") as srv:
            srv.wait_ready()
            with PeerAgent.start(pair.ns_a, "connect", "--connect", pair.ip_b, "--port", "5002",
                                 "--size", "1500000", "--seed", "21") as cli:
                c = cli.wait_result(30)
            s = srv.wait_result(30)
        assert c["ok"] and s["ok"], (c, s)
        cc, sc = c["connections"][0], s["connections"][0]
        assert cc["sha256_sent"] == sc["sha256_received"] == payload_digest(21, 1_500_000)
        assert sc["sha256_sent"] == cc["sha256_received"] == payload_digest(11, 2_000_000)
        assert sc["seconds"] >= 0.3

        # abort with RST: the sender sees the reset
        with PeerAgent.start(pair.ns_b, "sink", "--port", "5003", "--abort-after", "50000") as srv:
            srv.wait_ready()
            with PeerAgent.start(pair.ns_a, "source", "--connect", pair.ip_b, "--port", "5003",
                                 "--size", "50000000") as cli:
                c = cli.wait_result(30)
            s = srv.wait_result(30)
        assert s["connections"][0]["aborted"]
        assert not c["ok"] and "reset" in (c["connections"][0]["error"] or "").lower()


def test_veth_bench_reports_positive_rate() -> None:
    r = veth_throughput(size=32 << 20)
    assert r["ok"] and r["sha256_ok"]
    assert r["mb_per_s"] > 0 and r["bytes"] == 32 << 20


def test_lab_error_is_human_when_not_up() -> None:
    lab = Lab()
    with pytest.raises(LabError, match="not up"):
        _ = lab.tap


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh not installed")
@pytest.mark.parametrize(
    ("drop", "expected"),
    [("cap_net_admin,cap_sys_admin", "CAP_NET_ADMIN"), ("cap_sys_admin", "CAP_SYS_ADMIN")],
)
def test_missing_capability_gives_one_line_reason(drop: str, expected: str) -> None:
    code = (
        "from vnic.lab import Lab, LabError\n"
        "try:\n    Lab().up()\nexcept LabError as e:\n    print(e)\n"
    )
    out = subprocess.run(["capsh", f"--drop={drop}", "--", "-c", f"{sys.executable} -c '{code}'"],
                         capture_output=True, text=True, env=child_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout and "Traceback" not in out.stderr
    assert len(out.stdout.strip().splitlines()) == 1


def test_forked_helper_never_tears_down_the_owners_lab() -> None:
    """pyroute2 forks helpers and stops them with SIGTERM; that must not unwind our ``with``."""
    with teardown_on_signals(), Lab() as lab:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper: would run Lab.__exit__ if SIGTERM raised SystemExit here
            os.write(w, b"x")  # (a signal that races the fork itself is dropped by CPython)
            time.sleep(30)
            os._exit(0)
        os.read(r, 1)
        os.close(r)
        os.close(w)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
        assert netns_exists(lab.namespace)
        assert (STATE_DIR / f"{lab.namespace}.json").exists()
        # and a forked copy calling down() explicitly is a no-op too
        pid = os.fork()
        if pid == 0:
            lab.down()
            os._exit(0)
        os.waitpid(pid, 0)
        assert netns_exists(lab.namespace) and lab.is_up
    assert not netns_exists(lab.namespace)
