"""Pieces for tests against the kernel peer: a running lab with a HostStack + RunLoop + capture
(:class:`KernelLab`), the traffic agent driven from the run loop, connection state logs, RST
counts in pcapng captures, and :class:`LeakGuard` (nothing left behind).  The fixtures that
build them are in ``tests/system/conftest.py``.

All waiting is ``RunLoop.run_until(predicate, timeout)``: the loop keeps serving the TAP (ARP,
TCP) while the kernel-side agent works, so nothing here sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tcpip.aio import Task
from tcpip.stack import HostStack
from tcpip.tcp import TcpConnection, TcpState
from tests.helpers import is_rst
from vnic.lab import STATE_DIR, Lab, list_labs
from vnic.loop import RunLoop
from vnic.pcapng import DIR_OUTBOUND, PcapngWriter, read_pcapng
from vnic.peer import PeerAgent

NETNS_DIR = Path("/run/netns")
SYS_NET = Path("/sys/class/net")


# ---- what exists on the machine ---------------------------------------------------------------


def vnic_namespaces() -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith("vnic")}
    except FileNotFoundError:
        return set()


def vnic_links() -> set[str]:
    """vnic interfaces in the root namespace (a TAP not yet moved, a veth end)."""
    return {n for n in os.listdir(SYS_NET) if n.startswith("vnic")}


class LeakGuard:
    """Snapshot of vnic namespaces/links/records; :meth:`check` fails on what this test made
    and left.  Other processes may run labs at the same time, so only names this test
    registered, or created under a record owned by this process, count."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.ns_before = vnic_namespaces()
        self.links_before = vnic_links()

    def register(self, *names: str) -> None:
        self.names.update(n for n in names if n)

    def check(self) -> None:
        mine = {rec["name"] for rec in list_labs() if rec.get("pid") == os.getpid()}
        ns_new = vnic_namespaces() - self.ns_before
        links_new = vnic_links() - self.links_before
        ours = self.names | mine
        left = {n for n in ns_new | links_new if n in ours or n.rstrip("t") in ours}
        left |= {n for n in self.names if n in vnic_namespaces() or n in vnic_links()}
        left |= {n for n in self.names if (STATE_DIR / f"{n}.json").exists()}
        assert not left and not mine, f"left behind: {sorted(left)} records {sorted(mine)}"


# ---- captures ----------------------------------------------------------------------------------


def capture_rst_frames(path: Path | str, *, dissect: bool = True) -> list[tuple[str, str]]:
    """Every frame with the TCP RST flag in a pcapng capture, as ``(comment, summary)``.

    ``dissect``: parse every frame with scapy (Ether/IP/TCP); otherwise scapy's raw pcapng
    reader and a byte check of the flags (fast enough for captures of 64 MiB transfers)."""
    out: list[tuple[str, str]] = []
    if dissect:
        from scapy.layers.inet import TCP
        from scapy.utils import PcapNgReader

        with PcapNgReader(str(path)) as reader:
            for pkt in reader:
                if TCP in pkt and pkt[TCP].flags & 0x04:
                    comments = getattr(pkt, "comments", None) or [b""]
                    out.append((comments[0].decode(errors="replace"), pkt.summary()))
        return out
    from scapy.utils import RawPcapNgReader

    with RawPcapNgReader(str(path)) as reader:
        for data, meta in reader:
            if is_rst(data):
                comment = getattr(meta, "comments", None) or b""
                if isinstance(comment, list):
                    comment = comment[0] if comment else b""
                out.append((comment.decode(errors="replace") if isinstance(comment, bytes)
                            else str(comment), data[:64].hex()))
    return out


def outbound_rst_count(path: Path | str) -> tuple[int, int]:
    """(RSTs the host sent, RSTs the kernel sent) in a capture (epb direction flags)."""
    sent = received = 0
    for f in read_pcapng(path):
        if is_rst(f.frame):
            if f.direction == DIR_OUTBOUND:
                sent += 1
            else:
                received += 1
    return sent, received


# ---- a running lab ---------------------------------------------------------------------------


class KernelLab:
    """Lab + HostStack + RunLoop (+ pcapng capture) and the agents started in it."""

    def __init__(self, lab: Lab, stack: HostStack, loop: RunLoop, capture: PcapngWriter,
                 capture_path: Path) -> None:
        self.lab = lab
        self.stack = stack
        self.loop = loop
        self.capture = capture
        self.capture_path = capture_path
        self.agents: list[PeerAgent] = []

    @property
    def peer_ip(self) -> str:
        return self.lab.peer_ip

    @property
    def host_ip(self) -> str:
        return self.lab.host_ip

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0,
                  what: str = "condition") -> None:
        if not self.loop.run_until(predicate, timeout):
            raise AssertionError(
                f"{what} not reached within {timeout} s; stack {self.stack.counters.as_dict()} "
                f"agents {[a.stderr[-500:] for a in self.agents]}")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "app") -> Task:
        return self.stack.scheduler.spawn(coro, name=name)

    def run_task(self, task: Task, timeout: float = 30.0) -> Any:
        self.run_until(task.done, timeout, f"task {task.name}")
        return task.result()

    def agent(self, mode: str, *args: str, timeout: float = 15.0) -> PeerAgent:
        """Start ``python -m vnic.peer MODE ARGS`` in the namespace; returns once it is ready
        (the loop runs meanwhile, so an agent that connects to us gets its ARP answered)."""
        agent = PeerAgent.start(self.lab, mode, *args)
        self.agents.append(agent)
        self.run_until(lambda: agent.poll_result() is not None or agent.ready is not None
                       or agent.proc.poll() is not None, timeout, f"agent {mode} ready")
        if agent.ready is None:
            raise AssertionError(f"agent did not start: {agent.result} {agent.stderr[-2000:]}")
        return agent

    def agent_result(self, agent: PeerAgent, timeout: float = 30.0) -> dict[str, Any]:
        """Run the loop until the agent printed its result (and exited)."""
        self.run_until(lambda: agent.poll_result() is not None, timeout, "agent result")
        result = agent.wait_result(timeout)
        return result

    def close_capture(self) -> Path:
        self.capture.close()
        return self.capture_path

    def rst_frames(self, *, dissect: bool = True) -> list[tuple[str, str]]:
        return capture_rst_frames(self.close_capture(), dissect=dissect)


class StateLog:
    """The states a connection passed through (hooks ``on_state_change``)."""

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.states: list[TcpState] = [conn.state]
        previous = conn.on_state_change

        def hook(c: TcpConnection, old: TcpState, new: TcpState) -> None:
            self.states.append(new)
            if previous is not None:
                previous(c, old, new)

        conn.on_state_change = hook

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.states]
