"""The lab: a TAP device whose kernel side lives in a fresh network namespace.

::

    peer namespace vnic<N>                         this process (the emulated host)
    +-----------------------------+
    | lo (up)                     |
    | vnic<N>t 198.18.N.1/24  <---+--- TAP fd ---> HostStack / NIC at 198.18.N.2
    +-----------------------------+

Everything is done with pyroute2 (no ``ip`` command). Addresses come from 198.18.0.0/15 only:
labs use 198.18.N.0/24 and the veth benchmark uses 198.19.N.0/24, with N unique per lab on the
machine (allocated under a lock in ``/run/vnic``). Each lab (and each veth bench) writes a record
``/run/vnic/<name>.json`` naming its owner process, so ``list_labs()`` / ``down_lab()`` work from
another process and ``sweep_stale_labs()`` removes whatever a killed process left behind.

Signal handling is not installed on import: CLI-facing code wraps its work in
:func:`teardown_on_signals` so SIGTERM/SIGHUP unwind the ``with Lab()`` block like Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from vnic.privileges import check_lab_privileges
from vnic.tap import TapDevice

log = logging.getLogger(__name__)

STATE_DIR = Path(os.environ.get("VNIC_STATE_DIR", "/run/vnic"))
NETNS_DIR = Path("/run/netns")
PREFIX = "vnic"
LAB_SUBNET = "198.18"  # labs: 198.18.N.0/24
BENCH_SUBNET = "198.19"  # veth benchmark: 198.19.N.0/24
MIN_ID, MAX_ID = 1, 254
DEFAULT_MTU = 1500
DEFAULT_TXQUEUELEN = 4096
PEER_HOST_OCTET = 1
EMULATED_HOST_OCTET = 2


class LabError(RuntimeError):
    """The lab could not be built or torn down (message says why)."""


# ------------------------------------------------------------------------------------------------
# helpers: processes, namespaces, records


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot); ``None`` if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces/parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):
        return None  # exited, not yet reaped: it will never tear anything down again
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int, start_time: int | None) -> bool:
    now_start = _proc_start_time(pid)
    if now_start is None:
        return False
    return start_time is None or now_start == start_time


def _netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return _netns_path(name).exists()


def enter_namespace(name: str) -> None:
    """Move the calling thread (use it in a fresh child) into network namespace ``name``."""
    from pyroute2 import netns

    netns.setns(name, flags=0, fork=False)


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(_netns_path(name)).st_ino
    except OSError:
        return None


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (by inode)."""
    ino = _netns_inode(name)
    if ino is None:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill_namespace_processes(name: str, grace: float = 1.0) -> None:
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _proc_start_time(p) is not None]
        if pids:
            time.sleep(0.02)
    for pid in pids:
        log.warning("killing process %d still in namespace %s", pid, name)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _remove_netns(name: str) -> None:
    if not name.startswith(PREFIX):
        raise LabError(f"refusing to remove namespace {name!r} (not a vnic namespace)")
    if not netns_exists(name):
        return
    from pyroute2 import netns

    _kill_namespace_processes(name)
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    log.info("removed namespace %s", name)


def _remove_root_link(ifname: str) -> None:
    """Delete a vnic interface left in the root namespace (e.g. a TAP not yet moved)."""
    if not ifname.startswith(PREFIX) or not os.path.exists(f"/sys/class/net/{ifname}"):
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx[0])
                log.info("removed interface %s", ifname)


def _write_sysctl_in_namespace(name: str, settings: dict[str, str]) -> None:
    """Write ``/proc/sys`` keys inside namespace ``name`` from a forked child (setns).

    Keys that do not exist (e.g. no IPv6 in this kernel) are skipped.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's code
        code = 0
        try:
            os.close(rfd)
            enter_namespace(name)
            for key, value in settings.items():
                path = "/proc/sys/" + key.replace(".", "/")
                try:
                    with open(path, "w") as f:
                        f.write(value)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EROFS:
                        raise
                    code = 4  # /proc/sys read-only (a container without --privileged)
        except BaseException as exc:
            code = 1
            with contextlib.suppress(BaseException):
                os.write(wfd, f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as r:
            err = r.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code == 4:
        # These sysctls only keep IPv6 chatter (router solicitations, DAD) off the TAP; the
        # host stack drops such frames anyway, so a read-only /proc/sys is not fatal.
        log.warning("/proc/sys is read-only here (a container?): %s left as they are in %s",
                    ", ".join(settings), name)
        return
    if exit_code != 0:
        raise LabError(f"could not write sysctls {list(settings)} in namespace {name}: {err}")


@dataclasses.dataclass
class LabRecord:
    """What ``/run/vnic/<name>.json`` says about a lab (or a veth bench)."""

    name: str
    kind: str  # "lab" | "veth-bench"
    pid: int
    pid_start: int | None
    lab_id: int
    namespaces: list[str]
    interfaces: list[str]
    created: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return _pid_alive(self.pid, self.pid_start)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.name}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["alive"] = self.alive
        d["namespaces_present"] = [n for n in self.namespaces if netns_exists(n)]
        return d

    @classmethod
    def load(cls, path: Path) -> LabRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable lab record %s: %s", path, exc)
            return None


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        f = open(STATE_DIR / ".lock", "w")  # noqa: SIM115
    except PermissionError:
        raise LabError(f"needs root to manage labs (cannot write {STATE_DIR})") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_records() -> list[LabRecord]:
    if not STATE_DIR.is_dir():
        return []
    records = []
    for path in sorted(STATE_DIR.glob("*.json")):
        rec = LabRecord.load(path)
        if rec is not None:
            records.append(rec)
    return records


def _id_in_use(lab_id: int, records: list[LabRecord]) -> bool:
    if any(r.lab_id == lab_id for r in records):
        return True
    base = f"{PREFIX}{lab_id}"
    for suffix in ("", "a", "b"):
        if netns_exists(base + suffix):
            return True
    return any(os.path.exists(f"/sys/class/net/{base}{s}") for s in ("t", "a", "b"))


def allocate_record(make: Callable[[int], LabRecord]) -> LabRecord:
    """Pick a free lab id under the state lock and persist the record ``make(lab_id)`` builds."""
    with _state_lock():
        records = _read_records()
        # round robin from the last id handed out: a just-released name (and subnet) is not
        # reused at once, so late packets, captures or log lines of one lab never mix with the next
        last_path = STATE_DIR / ".last_id"
        try:
            last = int(last_path.read_text())
        except (OSError, ValueError):
            last = MIN_ID - 1
        span = MAX_ID - MIN_ID + 1
        for k in range(1, span + 1):
            lab_id = MIN_ID + (last - MIN_ID + k) % span
            if not _id_in_use(lab_id, records):
                rec = make(lab_id)
                rec.save()
                last_path.write_text(str(lab_id))
                return rec
    raise LabError(f"no free lab id in {MIN_ID}..{MAX_ID} (run `vnic lab status` / sweep)")


def new_record(kind: str, lab_id: int, name: str, namespaces: list[str], interfaces: list[str],
               info: dict[str, Any]) -> LabRecord:
    pid = os.getpid()
    return LabRecord(
        name=name,
        kind=kind,
        pid=pid,
        pid_start=_proc_start_time(pid),
        lab_id=lab_id,
        namespaces=namespaces,
        interfaces=interfaces,
        created=time.time(),
        info=info,
    )


def destroy_record_resources(rec: LabRecord) -> None:
    """Remove namespaces, interfaces and the record file of ``rec`` (best effort, logged)."""
    for ns in rec.namespaces:
        try:
            _remove_netns(ns)
        except Exception as exc:  # keep going: remove as much as possible
            log.error("could not remove namespace %s: %s", ns, exc)
    for ifname in rec.interfaces:
        try:
            _remove_root_link(ifname)
        except Exception as exc:
            log.error("could not remove interface %s: %s", ifname, exc)
    with contextlib.suppress(FileNotFoundError):
        rec.path.unlink()


def release_record(rec: LabRecord) -> None:
    """Tear down everything ``rec`` names (under the state lock)."""
    with _state_lock():
        destroy_record_resources(rec)


def list_labs() -> list[dict[str, Any]]:
    """Every recorded lab/bench on this machine with liveness (for ``vnic lab status``)."""
    return [r.as_dict() for r in _read_records()]


def sweep_stale_labs() -> list[str]:
    """Remove labs whose owner process is gone; returns the names removed."""
    removed: list[str] = []
    if not any(STATE_DIR.glob("*.json")):
        return removed
    with _state_lock():
        for rec in _read_records():
            if rec.alive:
                continue
            log.warning("sweeping stale %s %s (owner pid %d is gone)", rec.kind, rec.name, rec.pid)
            destroy_record_resources(rec)
            removed.append(rec.name)
    return removed


def down_lab(name: str, timeout: float = 5.0) -> bool:
    """Stop lab ``name`` from any process: ask the owner (SIGTERM), then remove what is left.

    Returns ``False`` if no such lab is recorded.
    """
    path = STATE_DIR / f"{name}.json"
    rec = LabRecord.load(path) if path.exists() else None
    if rec is None:
        return False
    if rec.alive and rec.pid != os.getpid():
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise LabError(f"not allowed to stop lab {name} (owner pid {rec.pid}): needs root") from None
        deadline = time.monotonic() + timeout
        while rec.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if rec.alive:
            log.warning("owner %d of %s ignored SIGTERM; removing its lab anyway", rec.pid, name)
    with _state_lock():
        if path.exists():
            destroy_record_resources(rec)
    return True


@contextlib.contextmanager
def teardown_on_signals(
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` while the block runs, so ``with Lab()`` unwinds.

    (SIGINT already raises ``KeyboardInterrupt``.) Call from the main thread of CLI-facing code.
    """

    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # a forked helper (pyroute2 forks children and stops them with SIGTERM) must not
            # unwind the parent's ``with Lab()`` blocks in its copy of the stack
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    previous = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------------
# the lab


def _ip_bytes(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def repo_root() -> str:
    """Directory that contains the ``vnic`` package (for PYTHONPATH of child programs)."""
    return str(Path(__file__).resolve().parent.parent)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    root = repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


_CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def popen_in_namespace(namespace: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` inside ``namespace``: the forked child calls setns(2) before exec.

    The namespace file is opened here and the child only makes one libc call (no imports, no
    locks), which keeps ``preexec_fn`` safe in a process with threads.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    setns = _libc.setns
    try:
        fd = os.open(_netns_path(namespace), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"no network namespace {namespace!r}") from None

    def preexec() -> None:
        if setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({namespace}) failed")

    kwargs.setdefault("env", child_env())
    try:
        return subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)
    finally:
        os.close(fd)


class Lab:
    """A TAP + peer namespace for one emulated host. Always use it as a context manager.

    Attributes after entering: ``tap`` (:class:`TapDevice`), ``namespace``, ``tap_name``,
    ``lab_id``, ``peer_ip``/``host_ip`` (dotted str), ``peer_mac``/``host_mac`` (colon str),
    ``*_bytes`` variants (4/6 bytes, for the host stack), ``prefix_len``, ``mtu``.
    """

    def __init__(self, *, mtu: int = DEFAULT_MTU, disable_ipv6: bool = True,
                 tap_read_size: int | None = None, txqueuelen: int = DEFAULT_TXQUEUELEN,
                 tap_offload: bool = False) -> None:
        self.mtu = mtu
        self.txqueuelen = txqueuelen
        self.disable_ipv6 = disable_ipv6
        self._tap_read_size = tap_read_size
        # TCP segmentation/checksum offload on the TAP (vnic.vnet): super-segments both ways
        self.tap_offload = tap_offload
        self.prefix_len = 24
        self.lab_id = 0
        self.namespace = ""
        self.tap_name = ""
        self.peer_ip = ""
        self.host_ip = ""
        self.peer_mac = ""
        self.host_mac = ""
        self._tap: TapDevice | None = None
        self._record: LabRecord | None = None
        self._owner_pid = os.getpid()
        self._processes: list[subprocess.Popen[Any]] = []

    # -- attributes --------------------------------------------------------------------------

    @property
    def tap(self) -> TapDevice:
        if self._tap is None:
            raise LabError("lab is not up")
        return self._tap

    @property
    def peer_ip_bytes(self) -> bytes:
        return _ip_bytes(self.peer_ip)

    @property
    def host_ip_bytes(self) -> bytes:
        return _ip_bytes(self.host_ip)

    @property
    def peer_mac_bytes(self) -> bytes:
        return _mac_bytes(self.peer_mac)

    @property
    def host_mac_bytes(self) -> bytes:
        return _mac_bytes(self.host_mac)

    @property
    def name(self) -> str:
        return self.namespace

    @property
    def is_up(self) -> bool:
        return self._tap is not None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.namespace,
            "namespace": self.namespace,
            "tap": self.tap_name,
            "peer_ip": self.peer_ip,
            "peer_mac": self.peer_mac,
            "host_ip": self.host_ip,
            "host_mac": self.host_mac,
            "prefix_len": self.prefix_len,
            "mtu": self.mtu,
        }

    def publish(self, info: dict[str, Any]) -> None:
        """Merge ``info`` (JSON-able: counters, services ...) into this lab's record so that
        ``list_labs()`` in another process (``vnic lab status``) shows it."""
        rec = self._record
        if rec is None:
            raise LabError("lab is not up")
        rec.info = {**self.describe(), **info}
        try:
            rec.save()
        except OSError as exc:  # a status update must never take the lab down
            log.warning("could not update lab record %s: %s", rec.path, exc)

    # -- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        if self._record is not None:
            raise LabError("lab is already up")
        self._owner_pid = os.getpid()
        reason = check_lab_privileges()
        if reason:
            raise LabError(reason)
        sweep_stale_labs()

        def make(lab_id: int) -> LabRecord:
            ns = f"{PREFIX}{lab_id}"
            return new_record("lab", lab_id, ns, [ns], [f"{ns}t"], {})

        self._record = rec = allocate_record(make)
        try:
            self._build(rec)
        except BaseException:
            self.down()
            raise
        return self

    def _build(self, rec: LabRecord) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        self.lab_id = rec.lab_id
        self.namespace = rec.name
        self.tap_name = f"{rec.name}t"
        self.peer_ip = f"{LAB_SUBNET}.{rec.lab_id}.{PEER_HOST_OCTET}"
        self.host_ip = f"{LAB_SUBNET}.{rec.lab_id}.{EMULATED_HOST_OCTET}"
        # locally administered unicast, unique per lab: 02:76:6e:00:NN:02 ("vn")
        self.host_mac = f"02:76:6e:00:{rec.lab_id:02x}:{EMULATED_HOST_OCTET:02x}"

        try:
            netns.create(self.namespace)
        except OSError as exc:
            raise LabError(f"could not create namespace {self.namespace}: {exc}") from exc
        if self.disable_ipv6:
            # new links inherit "default": the TAP never emits router solicitations / DAD
            _write_sysctl_in_namespace(
                self.namespace,
                {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"},
            )
        kwargs: dict[str, Any] = {"read_size": self._tap_read_size} if self._tap_read_size else {}
        self._tap = TapDevice(self.tap_name, offload=self.tap_offload, mtu=self.mtu, **kwargs)
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.tap_name)
            if not idx:
                raise LabError(f"TAP {self.tap_name} vanished before it could be moved")
            ipr.link("set", index=idx[0], net_ns_fd=self.namespace)
        with NetNS(self.namespace) as ns:
            idx = ns.link_lookup(ifname=self.tap_name)
            if not idx:
                raise LabError(f"TAP {self.tap_name} did not arrive in namespace {self.namespace}")
            tap_idx = idx[0]
            # a deeper kernel->TAP queue absorbs bursts while the user-space loop is busy
            ns.link("set", index=tap_idx, mtu=self.mtu, txqlen=self.txqueuelen)
            ns.addr("add", index=tap_idx, address=self.peer_ip, prefixlen=self.prefix_len)
            lo = ns.link_lookup(ifname="lo")
            if lo:
                ns.link("set", index=lo[0], state="up")
            ns.link("set", index=tap_idx, state="up")
            link = ns.get_links(tap_idx)[0]
            self.peer_mac = str(link.get("IFLA_ADDRESS"))
        if self.disable_ipv6:
            _write_sysctl_in_namespace(
                self.namespace, {f"net.ipv6.conf.{self.tap_name}.disable_ipv6": "1"}
            )
        rec.info = self.describe()
        rec.save()
        log.info(
            "lab %s up: peer %s (%s) on %s, emulated host %s (%s)",
            self.namespace, self.peer_ip, self.peer_mac, self.tap_name, self.host_ip, self.host_mac,
        )

    def down(self) -> None:
        """Stop our processes, close the TAP, remove the namespace and the record. Idempotent.

        A no-op in a forked copy of the owner process (only the owner tears down).
        """
        if os.getpid() != self._owner_pid:
            return
        for proc in self._processes:
            _stop_process(proc)
        self._processes.clear()
        if self._tap is not None:
            tap, self._tap = self._tap, None
            try:
                tap.close()
            except OSError as exc:
                log.error("closing TAP %s: %s", tap.name, exc)
        rec, self._record = self._record, None
        if rec is not None:
            release_record(rec)
            log.info("lab %s down", rec.name)

    # -- programs in the peer namespace ------------------------------------------------------

    def run_in_namespace(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the peer namespace; it is stopped (SIGTERM, then SIGKILL) at teardown."""
        if self._record is None:
            raise LabError("lab is not up")
        proc = popen_in_namespace(self.namespace, argv, **popen_kwargs)
        self._processes.append(proc)
        return proc

    def run_python(self, module_args: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """``python -m <module_args...>`` in the peer namespace with this interpreter."""
        return self.run_in_namespace([sys.executable, "-m", *module_args], **popen_kwargs)

    def __repr__(self) -> str:
        state = "up" if self.is_up else "down"
        return f"Lab({self.namespace or '-'}, {state}, peer={self.peer_ip}, host={self.host_ip})"


def _stop_process(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


__all__ = [
    "Lab",
    "LabError",
    "LabRecord",
    "down_lab",
    "enter_namespace",
    "list_labs",
    "namespace_pids",
    "netns_exists",
    "popen_in_namespace",
    "release_record",
    "sweep_stale_labs",
    "teardown_on_signals",
]
