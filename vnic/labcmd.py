"""``vnic lab up | down | status``: a lab a person can poke at with real tools.

``lab up`` runs in the foreground: the TAP, the peer namespace, the host stack with the built-in
services, until Ctrl-C, SIGTERM or ``vnic lab down`` from another shell.  While it runs it
publishes its addresses and counters in its lab record (``/run/vnic/<name>.json``) once a second,
which is what ``lab status`` shows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SERVICES = {7: "echo", 9: "discard", 19: "chargen"}
#: marks labs that `vnic lab up` runs, so that `vnic lab down` without a name stops only those
#: (and never a lab that a test run or a `vnic transfer` on this machine is using)
STARTED_BY = "vnic lab up"


def lab_up(*, services: bool = True, pcap: str | None = None,
           progress: Callable[[str], None] | None = None,
           until: Callable[[], bool] | None = None) -> int:
    """Run a lab until interrupted (or until ``until()`` is true, for tests). Returns 0."""
    from tcpip import services as builtin_services
    from tcpip.stack import HostStack
    from vnic.cli import UsageError
    from vnic.lab import Lab, teardown_on_signals
    from vnic.loop import RunLoop
    from vnic.pcapng import PcapngWriter
    from vnic.privileges import check_lab_privileges

    reason = check_lab_privileges()
    if reason:
        raise UsageError(reason)
    say = progress or (lambda _m: None)
    capture = PcapngWriter(pcap) if pcap else None
    try:
        with teardown_on_signals(), Lab() as lab:
            stack = HostStack(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                              rng=random.Random(), name="host")
            if services:
                builtin_services.install(stack)
            loop = RunLoop(lab.tap, stack, capture=capture)
            say(f"lab {lab.namespace} is up: emulated host {lab.host_ip} ({lab.host_mac}) behind "
                f"TAP {lab.tap_name}; Linux peer {lab.peer_ip} in namespace {lab.namespace}")
            if services:
                say("services: " + ", ".join(f"{name} ({port})" for port, name in SERVICES.items()))
                say(f"try:  ip netns exec {lab.namespace} nc {lab.host_ip} 7")
                say(f"      ip netns exec {lab.namespace} ping -c 3 {lab.host_ip}")
            say("Ctrl-C or `vnic lab down` stops it and removes everything")
            next_publish = 0.0
            while until is None or not until():
                now = time.monotonic()
                if now >= next_publish:
                    lab.publish(_live_info(lab, stack, loop, services))
                    next_publish = now + 1.0
                loop.run_for(0.2)
    finally:
        if capture is not None:
            capture.close()
    return 0


def _live_info(lab: Any, stack: Any, loop: Any, services: bool) -> dict[str, Any]:
    counters = stack.counters.as_dict() if hasattr(stack.counters, "as_dict") else {}
    return {
        **lab.describe(),
        "started_by": STARTED_BY,
        "services": {str(p): n for p, n in SERVICES.items()} if services else {},
        "connections": stack.connection_count(),
        "counters": {"loop": loop.stats.as_dict(), "stack": counters},
        "updated": time.time(),
    }


def lab_down(name: str | None = None) -> dict[str, Any]:
    from vnic.lab import down_lab, list_labs, sweep_stale_labs

    swept = sweep_stale_labs()
    names = [name] if name else [rec["name"] for rec in list_labs()
                                 if rec.get("info", {}).get("started_by") == STARTED_BY]
    stopped = [n for n in names if down_lab(n)]
    missing = [n for n in names if n not in stopped]
    return {"stopped": stopped, "swept_stale": swept, "not_found": missing}


def render_down(result: dict[str, Any]) -> str:
    lines = []
    if result["stopped"]:
        lines.append("stopped: " + ", ".join(result["stopped"]))
    if result["swept_stale"]:
        lines.append("removed stale: " + ", ".join(result["swept_stale"]))
    if result["not_found"]:
        lines.append("no such lab: " + ", ".join(result["not_found"]))
    return "\n".join(lines) or "no labs running"


def lab_status() -> dict[str, Any]:
    from vnic.lab import list_labs

    return {"labs": list_labs()}


def render_status(result: dict[str, Any]) -> str:
    labs = result["labs"]
    if not labs:
        return "no labs on this machine (start one with `vnic lab up`)"
    lines = []
    for rec in labs:
        info = rec.get("info", {})
        state = "running" if rec.get("alive") else "STALE (owner gone; `vnic lab down` removes it)"
        lines.append(f"{rec['name']} ({rec['kind']}, pid {rec['pid']}): {state}")
        lines.append(f"  namespaces {', '.join(rec['namespaces'])}; interfaces "
                     f"{', '.join(rec['interfaces'])}")
        if info.get("host_ip"):
            lines.append(f"  emulated host {info['host_ip']} ({info.get('host_mac')}), "
                         f"Linux peer {info.get('peer_ip')} ({info.get('peer_mac')}) on "
                         f"{info.get('tap')}")
        if info.get("services"):
            lines.append("  services: " + ", ".join(f"{n} ({p})" for p, n in info["services"].items()))
            lines.append(f"  try: ip netns exec {rec['name']} nc {info.get('host_ip')} 7")
        loop = info.get("counters", {}).get("loop", {})
        if loop:
            lines.append(f"  frames in/out {loop.get('frames_in', 0)}/{loop.get('frames_out', 0)}, "
                         f"bytes in/out {loop.get('bytes_in', 0)}/{loop.get('bytes_out', 0)}, "
                         f"connections {info.get('connections', 0)}")
    return "\n".join(lines)
