"""pytest plugin: vnic labs as fixtures for your own tests.

Installing vnic registers this module through the ``pytest11`` entry point, so any test suite in
that environment gets the fixtures without importing anything (``pytest --fixtures`` lists them
under "fixtures defined from vnic.pytest_plugin").  Without the installed entry point (a
checkout on ``PYTHONPATH``), load it with ``pytest -p vnic.pytest_plugin`` or
``pytest_plugins = ["vnic.pytest_plugin"]`` in a top-level ``conftest.py``.  The entry point is
named like the module, ``vnic.pytest_plugin``, on purpose: pytest registers a plugin under the
name it was loaded by, and the same module under two names is an error ("Plugin already
registered under a different name").  With one name for all three routes, any combination of
them loads it once; ``-p no:vnic.pytest_plugin`` turns it off.

Fixtures (all prefixed ``vnic_`` so they cannot clash with a suite's own):

- ``vnic_sim_lab`` / ``vnic_sim_lab_factory``: the emulated host with its chimney NIC and a peer
  host stack on an in-memory wire (:class:`vnic.simlab.SimLab`), virtual clock, conformance
  checker on and strict.  Needs no privileges.
- ``vnic_lab`` / ``vnic_lab_factory``: a TAP lab (:class:`vnic.lab.Lab`) whose kernel side is
  in a fresh network namespace with the Linux TCP stack as the peer; skipped with the reason
  when this process may not create TAP devices and namespaces (``vnic_lab_privileges``);
  always torn down.
- ``vnic_peer_agent``: starts the kernel-side traffic agent (``python -m vnic.peer``) in a lab.
- ``vnic_virtual_clock``: a :class:`vnic.clock.VirtualClock`.

Hooks: the marker ``vnic_system`` skips a test (with the reason) where labs cannot be built;
at session start, labs left by killed test runs (their owner process is gone) are swept when
this process may do so; a failure to sweep never stops the session.

The module has no assert statements, so pytest's assertion rewriting is turned off for it (the
marker below): a suite may import it before pytest loads it as a plugin without a warning.
PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from vnic import privileges
from vnic.clock import VirtualClock

if TYPE_CHECKING:  # imported where used: collecting a suite must not build anything
    from vnic.lab import Lab
    from vnic.peer import PeerAgent
    from vnic.simlab import SimLab

log = logging.getLogger(__name__)

__all__ = ["lab_privileges"]

MARKER = "vnic_system"

_REASON_KEY = pytest.StashKey["str | None"]()
_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def lab_privileges(config: pytest.Config) -> str | None:
    """Why this process cannot build a lab (one sentence), or None; asked once per session.

    Computed through ``vnic.privileges.check_lab_privileges`` at the first call, so a suite
    (or a test of this plugin) that replaces that function before the session starts sees its
    answer everywhere: fixtures, the marker and the stale-lab sweep agree.
    """
    if _REASON_KEY not in config.stash:
        config.stash[_REASON_KEY] = privileges.check_lab_privileges()
    return config.stash[_REASON_KEY]


# ---- hooks ------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: needs TAP devices and network namespaces (root or CAP_NET_ADMIN + "
        "CAP_SYS_ADMIN, /dev/net/tun); skipped with the reason where vnic labs cannot be built",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove labs whose owner process is gone (a killed test run), before tests make new ones.

    Housekeeping only: without the privileges it is skipped, and any error is reported as a
    line of output, never raised (a full disk or an odd record must not fail a user's suite).
    """
    if lab_privileges(session.config) is not None:
        return
    try:
        from vnic.lab import sweep_stale_labs

        removed = sweep_stale_labs()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _report(session.config, f"vnic: could not sweep stale labs: {exc}")
        return
    if removed:
        _report(session.config, f"vnic: removed stale labs left by dead processes: {removed}")


def _report(config: pytest.Config, text: str) -> None:
    log.warning("%s", text)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_privileges(config)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"vnic lab not available: {reason}")
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # kept for the sim-lab fixtures: their teardown checks the conformance checker only when
    # the test itself passed (a failed test already shows the violation that failed it)
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    item.stash.setdefault(_REPORTS_KEY, {})[rep.when] = rep


def _test_passed(item: pytest.Item) -> bool:
    rep = item.stash.get(_REPORTS_KEY, {}).get("call")
    return rep is not None and rep.passed


# ---- fixtures: privileges, clock ---------------------------------------------------------------


@pytest.fixture(scope="session")
def vnic_lab_privileges(pytestconfig: pytest.Config) -> str | None:
    """Why a vnic TAP lab cannot be built here (e.g. "needs root (CAP_NET_ADMIN) to create a
    TAP device"), or None when it can.  The TAP fixtures skip with this reason."""
    return lab_privileges(pytestconfig)


@pytest.fixture
def vnic_virtual_clock() -> VirtualClock:
    """A virtual clock at 0.0 (``now()``, ``advance_to``, ``advance_by``).  ``vnic_sim_lab``
    runs on it, so a test that takes both reads the simulation's time from it."""
    return VirtualClock()


# ---- fixtures: the simulated lab ---------------------------------------------------------------


@pytest.fixture
def vnic_sim_lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., SimLab]]:
    """Factory of simulated labs: ``make(seed=1, **kwargs)`` -> :class:`vnic.simlab.SimLab`,
    with :func:`vnic.simlab.build_sim_lab`'s keyword arguments (``capacity``, ``policy``,
    ``tcp_config``, ``faults``, ``latency``, ``bandwidth``, ``strict``, ``capture`` ...); each
    lab has its own wire and clock.  No privileges needed: everything runs in this process on a
    virtual clock.  After the test, captures are closed, and a violation that a strict
    conformance checker recorded without failing the test (e.g. raised inside an application
    coroutine and caught there) fails it in teardown."""
    from vnic.simlab import build_sim_lab

    labs: list[SimLab] = []

    def make(seed: int = 1, **kwargs: Any) -> SimLab:
        lab = build_sim_lab(seed, **kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close_capture()
    if _test_passed(request.node):
        for lab in labs:
            chk = lab.checker
            if chk is not None and chk.strict and chk.violations:
                pytest.fail(f"NDIS conformance violation during the test: {chk.violations[0]}",
                            pytrace=False)


@pytest.fixture
def vnic_sim_lab(request: pytest.FixtureRequest, vnic_sim_lab_factory: Callable[..., SimLab],
                 vnic_virtual_clock: VirtualClock) -> SimLab:
    """A simulated lab (:class:`vnic.simlab.SimLab`): the host stack at 198.18.0.2 with the
    emulated chimney NIC (C connection table and data path, NDIS conformance checker on and
    strict), a peer host stack at 198.18.0.1, and the wire between them, on
    ``vnic_virtual_clock``.  ``lab.connect()`` opens a connection (the peer listens on 5001),
    ``lab.offload(conn)`` / ``lab.upload(conn)`` hand it over and back, ``lab.exchange(conn,
    host_data, peer_data)`` moves data, ``lab.run_until(predicate, timeout)`` runs the
    simulation (virtual seconds).  Other settings: parametrize it indirectly with a dict of
    :func:`vnic.simlab.build_sim_lab` arguments, or use ``vnic_sim_lab_factory``."""
    kwargs: dict[str, Any] = dict(getattr(request, "param", None) or {})
    kwargs.setdefault("clock", vnic_virtual_clock)
    return vnic_sim_lab_factory(**kwargs)


# ---- fixtures: TAP labs with the kernel peer --------------------------------------------------


@pytest.fixture
def vnic_lab_factory(vnic_lab_privileges: str | None) -> Iterator[Callable[..., Lab]]:
    """Factory of TAP labs: ``make(**kwargs)`` -> a running :class:`vnic.lab.Lab` (kwargs:
    ``mtu``, ``tap_offload``, ``tap_read_size``, ``txqueuelen``, ``disable_ipv6``).  Each lab is
    a TAP device whose kernel side sits in a new namespace ``vnicN`` at 198.18.N.1 (the Linux
    TCP peer); the emulated host is 198.18.N.2 on ``lab.tap``.  Skips the test with the reason
    when labs cannot be built here; every lab (and the programs it started in its namespace) is
    removed after the test, also when it fails."""
    if vnic_lab_privileges is not None:
        pytest.skip(f"vnic lab not available: {vnic_lab_privileges}")
    from vnic.lab import Lab

    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> Lab:
            return stack.enter_context(Lab(**kwargs))

        yield make


@pytest.fixture
def vnic_lab(request: pytest.FixtureRequest, vnic_lab_factory: Callable[..., Lab]) -> Lab:
    """A running TAP lab (:class:`vnic.lab.Lab`) with the Linux kernel as the peer in its
    namespace: ``lab.tap`` for a :class:`vnic.loop.RunLoop`, ``lab.host_ip`` /
    ``lab.host_mac_bytes`` ... for the emulated host, ``lab.peer_ip`` for the kernel, and
    ``lab.run_in_namespace(argv)`` for tools.  Skipped with the reason without the privileges;
    torn down after the test, also on failure.  Options: parametrize it indirectly with a dict
    of ``Lab`` arguments (``{"tap_offload": True}``, ``{"mtu": 9000}``) or use
    ``vnic_lab_factory``."""
    return vnic_lab_factory(**dict(getattr(request, "param", None) or {}))


@pytest.fixture
def vnic_peer_agent(request: pytest.FixtureRequest) -> Iterator[Callable[..., PeerAgent]]:
    """Factory: ``vnic_peer_agent("sink", "--port", "5001")`` starts ``python -m vnic.peer`` in
    the namespace of ``vnic_lab`` (or of ``lab=`` another lab) and returns its
    :class:`vnic.peer.PeerAgent` (``wait_ready()``, ``poll_result()``, ``wait_result()``).
    Modes: sink, source, both, connect, ping (``python -m vnic.peer --help``).  Every agent is
    stopped after the test."""
    from vnic.peer import PeerAgent

    agents: list[PeerAgent] = []

    def start(mode: str, *args: str, lab: Lab | str | None = None) -> PeerAgent:
        where = lab if lab is not None else request.getfixturevalue("vnic_lab")
        agent = PeerAgent.start(where, mode, *args)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        try:
            agent.stop()
        except Exception as exc:  # noqa: BLE001 - stop the others; the lab kills what is left
            log.warning("could not stop peer agent %s: %s", agent.proc.pid, exc)
