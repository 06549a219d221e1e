"""Shared fixtures; ``@pytest.mark.system`` tests are skipped without root/TUN/netns."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnic.clock import VirtualClock
from vnic.lab import Lab, LabError, sweep_stale_labs
from vnic.peer import PeerAgent
from vnic.privileges import check_lab_privileges

_LAB_REASON: str | None = check_lab_privileges()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _LAB_REASON is None:
        return
    skip = pytest.mark.skip(reason=f"system test skipped: {_LAB_REASON}")
    for item in items:
        if "system" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove labs that killed test runs left behind (their owner process is gone)."""
    if _LAB_REASON is None:
        try:
            sweep_stale_labs()
        except LabError as exc:  # never stop the session over housekeeping
            warnings.warn(f"could not sweep stale labs: {exc}", stacklevel=1)


@pytest.fixture
def lab_privileges() -> str | None:
    """The reason a lab cannot be built here, or None."""
    return _LAB_REASON


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A TAP lab (peer namespace + TAP fd); torn down after the test, also on failure."""
    if _LAB_REASON is not None:
        pytest.skip(_LAB_REASON)
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def peer_agent(lab: Lab) -> Iterator[Callable[..., PeerAgent]]:
    """Factory: ``peer_agent("sink", "--port", "5001")`` runs ``vnic.peer`` in the lab."""
    agents: list[PeerAgent] = []

    def start(mode: str, *args: str) -> PeerAgent:
        agent = PeerAgent.start(lab, mode, *args)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def capture_path(tmp_path: Path) -> Path:
    return tmp_path / "capture.pcapng"


@pytest.fixture
def virtual_clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_labs() -> Iterator[None]:
    """Fail loudly (at the end of the session) if this process left a lab behind."""
    yield
    if _LAB_REASON is not None:
        return
    from vnic.lab import list_labs

    mine = [rec["name"] for rec in list_labs() if rec["pid"] == os.getpid()]
    if mine:
        from vnic.lab import down_lab

        for name in mine:
            down_lab(name)
        pytest.fail(f"tests leaked labs {mine} (removed now)")
