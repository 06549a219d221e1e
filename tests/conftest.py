"""Shared fixtures; ``@pytest.mark.system`` tests are skipped without root/TUN/netns.

The lab fixtures are the pytest plugin's (``vnic/pytest_plugin.py``, the one users get from the
installed package): it is loaded here by the same name as its ``pytest11`` entry point, so the
suite gets it exactly once whether or not the installed package's entry point is active (an
editable install made before the entry point existed has none).  The names the tests use
(``lab``, ``peer_agent``, ``lab_privileges``, ``virtual_clock``) delegate to the plugin's
``vnic_*`` fixtures; the stale-lab sweep at session start is the plugin's too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnic.clock import VirtualClock
from vnic.lab import Lab
from vnic.peer import PeerAgent
from vnic.pytest_plugin import lab_privileges as _lab_privileges

pytest_plugins = ["vnic.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _lab_privileges(config)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"system test skipped: {reason}")
    for item in items:
        if "system" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab_privileges(vnic_lab_privileges: str | None) -> str | None:
    """The reason a lab cannot be built here, or None."""
    return vnic_lab_privileges


@pytest.fixture
def lab(vnic_lab: Lab) -> Lab:
    """A TAP lab (peer namespace + TAP fd); torn down after the test, also on failure."""
    return vnic_lab


@pytest.fixture
def peer_agent(lab: Lab, vnic_peer_agent: Callable[..., PeerAgent]) -> Callable[..., PeerAgent]:
    """Factory: ``peer_agent("sink", "--port", "5001")`` runs ``vnic.peer`` in the lab."""
    return vnic_peer_agent


@pytest.fixture
def capture_path(tmp_path: Path) -> Path:
    return tmp_path / "capture.pcapng"


@pytest.fixture
def virtual_clock(vnic_virtual_clock: VirtualClock) -> VirtualClock:
    return vnic_virtual_clock


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_labs(pytestconfig: pytest.Config) -> Iterator[None]:
    """Fail loudly (at the end of the session) if this process left a lab behind."""
    yield
    if _lab_privileges(pytestconfig) is not None:
        return
    from vnic.lab import list_labs

    mine = [rec["name"] for rec in list_labs() if rec["pid"] == os.getpid()]
    if mine:
        from vnic.lab import down_lab

        for name in mine:
            down_lab(name)
        pytest.fail(f"tests leaked labs {mine} (removed now)")
