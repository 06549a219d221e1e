"""`vnic lab up / status / down` as a person uses them, in separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vnic.lab import list_labs, netns_exists

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
VNIC = [sys.executable, "-m", "vnic.cli"]


def _wait_for(predicate, timeout: float, what: str):  # polling another process: no other way
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _our_lab(pid: int) -> dict | None:
    for rec in list_labs():
        if rec["pid"] == pid and rec.get("info", {}).get("services"):
            return rec
    return None


ECHO_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=10)
msg = b"hello through the emulated host\\n" * 100
s.sendall(msg)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print("ECHO-OK" if got == msg else f"ECHO-BAD {len(got)}")
"""


def test_lab_up_serves_echo_then_status_and_down_clean_up() -> None:
    up = subprocess.Popen(VNIC + ["lab", "up"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        rec = _wait_for(lambda: _our_lab(up.pid), 30, "the lab record with services")
        info = rec["info"]
        ns, host_ip = rec["name"], info["host_ip"]
        assert host_ip.startswith("198.18.") and info["peer_ip"].startswith("198.18.")

        echo = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_CLIENT,
                               host_ip], capture_output=True, text=True, timeout=60)
        assert "ECHO-OK" in echo.stdout, echo.stdout + echo.stderr

        status = subprocess.run(VNIC + ["lab", "status", "--json"], cwd=REPO,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0
        labs = {lab["name"]: lab for lab in json.loads(status.stdout)["labs"]}
        assert labs[ns]["alive"] and labs[ns]["info"]["host_ip"] == host_ip
        text = subprocess.run(VNIC + ["lab", "status"], cwd=REPO, capture_output=True,
                              text=True, timeout=30).stdout
        assert ns in text and f"nc {host_ip} 7" in text

        down = subprocess.run(VNIC + ["lab", "down", "--json"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert down.returncode == 0 and ns in json.loads(down.stdout)["stopped"]
        assert up.wait(timeout=30) is not None
        assert not netns_exists(ns)
        assert not Path(f"/sys/class/net/{ns}t").exists()
        assert all(lab["name"] != ns for lab in list_labs())
        assert "Traceback" not in up.stderr.read()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
            subprocess.run(VNIC + ["lab", "down"], cwd=REPO, capture_output=True, timeout=60)
