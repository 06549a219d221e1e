"""Fixtures for the system tests: a running kernel-peer lab and the leak check (the pieces
themselves are in ``tests/system/kernel.py``)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tcpip.stack import HostStack
from tcpip.tcp import TcpConfig
from tests.system.kernel import KernelLab, LeakGuard
from vnic.faults import WireFaults
from vnic.lab import Lab
from vnic.loop import RunLoop
from vnic.pcapng import PcapngWriter


@pytest.fixture
def leak_guard() -> Iterator[LeakGuard]:
    guard = LeakGuard()
    yield guard
    guard.check()


@pytest.fixture
def kernel_lab_factory(tmp_path: Path, leak_guard: LeakGuard) -> Iterator[Callable[..., KernelLab]]:
    """``make(tcp_config=None, faults=None, seed=1)`` -> a running :class:`KernelLab`; every
    lab, agent and capture is torn down after the test, also when it fails."""
    stack_ctx = contextlib.ExitStack()
    count = 0

    def make(tcp_config: TcpConfig | None = None, faults: WireFaults | None = None,
             seed: int = 1) -> KernelLab:
        nonlocal count
        count += 1
        lab = stack_ctx.enter_context(Lab())
        leak_guard.register(lab.namespace, lab.tap_name)
        path = tmp_path / f"capture{count}.pcapng"
        capture = PcapngWriter(path)
        stack_ctx.callback(capture.close)
        stack = HostStack(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                          tcp_config=tcp_config, rng=random.Random(seed), name="host")
        loop = RunLoop(lab.tap, stack, capture=capture, faults=faults)
        kl = KernelLab(lab, stack, loop, capture, path)

        def stop_agents() -> None:
            for agent in kl.agents:
                agent.stop()

        stack_ctx.callback(stop_agents)
        return kl

    with stack_ctx:
        yield make


@pytest.fixture
def kernel_lab(kernel_lab_factory: Callable[..., KernelLab]) -> KernelLab:
    """A running lab with default TCP settings."""
    return kernel_lab_factory()
