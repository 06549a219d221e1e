"""Scenario files: what ``vnic run SCENARIO.toml`` executes.

A scenario is a TOML file (read with :mod:`tomllib`) with these tables; every key is optional
unless marked, sizes are integers or strings like ``"4MiB"``, times are seconds::

    [run]                         # name (default: the file's stem), mode = "tap" | "sim" | "auto",
    name = "basic-handoff"        # seed, timeout (give up after; simulated seconds in sim),
    mode = "auto"                 # capacity (the target's offload capacity), checker (NDIS
    seed = 1                      # conformance checker on), description
    timeout = 120

    [[flow]]                      # connections with the same workload; indices are global,
    count = 2                     # in file order (flow 1 gets 0..count-1, then flow 2 ...)
    direction = "both"            # up = host -> peer, down = peer -> host, both
    bytes = "2MiB"                # per connection and direction
    open = "host"                 # who opens: "host" (peer listens) or "peer" (host listens)
    pause = { side = "peer", at_bytes = "1MiB", seconds = 0.3 }   # an application stops
                                  # reading after at_bytes received, for seconds (zero window)
    peer_rcvbuf = "256KiB"        # TAP: SO_RCVBUF of the kernel's sockets (default: kernel's)

    [[schedule]]                  # one entry per action; `at` (seconds after the run started)
    at = 0.05                     # or `after_bytes` (per connection: bytes it moved on the wire,
    action = "offload"            # both directions together); neither = as soon as connected
    conns = "all"                 # "all" | [0, 2] | "random:k" (k picked with the seed)

Actions: ``offload``, ``terminate`` (host decision), ``target_request`` (the target asks for the
upload, ``reason`` = a TCP_UPLOAD_REASON name such as ``"UploadRequested"`` or its number),
``upload_all`` (NDIS_STATUS_UPLOAD_ALL; offloads resume once everything is back in the host),
``pause_reading`` / ``resume_reading`` (the host application stops / restarts reading; pause may
carry ``seconds``), ``cycles`` (``cycles = n`` offload/terminate pairs per connection at random
byte points; ``terminate = "host" | "target" | "mixed"``; ``conditions`` a list of ``"data"``,
``"peer_zero_window"``, ``"app_not_reading"``: the state handoffs are aimed at; with
``peer_zero_window`` the next step is also made as soon as the peer's window closes, up to two
per zero-window episode), ``target_fault`` (``fault`` = one of :data:`TARGET_FAULTS`, the
hooks of :class:`offload_target.faults.TargetFaults`, with its parameters).  Target-wide
faults (delay_completion ``op seconds [count]``, never_complete ``op [count]``,
release_withheld, shrink_capacity ``n``, auto_send_backlog ``enabled``) take no ``conns`` and
go by total bytes like ``upload_all``; connection faults (fail_blocks ``[status] [ops]
[count]``, corrupt_hardware_state, send_backlog ``value``, wrong_rcv_nxt ``delta``,
drop_buffered_data, duplicate_delivery) need ``conns`` and, except fail_blocks, wait until the
target holds the connection.

::

    [faults]                      # wire faults; `up` = host -> peer, `down` = peer -> host,
    during = "always"             # `both` = each direction. Keys of vnic.faults.FaultSpec:
    after_frames = 16             # loss, duplicate, reorder, delay, jitter, corrupt, truncate,
    frames = "any"                # gilbert = {p, r, loss_good, loss_bad}, start, stop, skip,
    [faults.both]                 # count, fragment (probability: split an IPv4 frame into
    loss = 0.01                   # fragments of fragment_size payload octets, a multiple of 8,
    fragment = 0.5                # default 512; fragment_reorder = true: last fragment first;
    fragment_size = 512           # fragment_loss: probability each fragment is dropped)
                                  # ... `during`: "always", "offloaded" (frames of offloaded
                                  # connections), "handoff" (while Offloading/Uploading and the
                                  # first `after_frames` frames of a connection after each change),
                                  # "offloading" / "uploading" (while in that state and the first
                                  # `after_frames` frames of the state it leads to, Offloaded /
                                  # back in the host, until the next handoff); `frames`: "any",
                                  # "data" (TCP segments with payload) or "control" (without),
                                  # the only frames faulted and counted by after_frames; `nth = N`
                                  # (not with "always"): only the Nth of them in each window (per
                                  # connection and direction, from entering the state: Offloaded,
                                  # Offloading or Uploading); skip/count go over the whole run
    [expect]
    intact = true                 # every stream arrived complete (bytes + SHA-256 at both ends)
    no_rst = true                 # no RST on any connection before its application finished
    min_handoffs = 4              # completed offloads + completed uploads, all connections
    verify = true                 # the capture verifier (vnic.verify) passes
    conformance = true            # the NDIS conformance checker saw no broken rule
    kernel_view = false           # TAP: the peer-namespace capture (tshark) agrees
    lost = [1]                    # these end lost (error + not intact); intact / no_rst / the
                                  # verifier's loss rules are not asked of them
    damaged = [2]                 # these arrive wrong without an error (oracle faults)
    verify_fails = ["resume-at-rcvnxt"]   # the verifier must report each of these rules

Every mistake is a :class:`ScenarioError` whose message names the file and the key.
"""

from __future__ import annotations

import dataclasses
import random
import re
import tomllib
from pathlib import Path
from typing import Any

from ndis.state import TCP_UPLOAD_REASON
from ndis.status import NdisStatus
from offload_target.faults import OPERATIONS
from vnic.faults import FaultSpec, GilbertElliott
from vnic.verify import RULES

__all__ = [
    "ScenarioError", "Scenario", "RunSpec", "FlowSpec", "PauseSpec", "ScheduleEntry",
    "FaultsSpec", "ExpectSpec", "load_scenario", "parse_scenario", "parse_size",
    "ACTIONS", "DURING", "FRAME_KINDS", "CONDITIONS", "TARGET_FAULTS", "LOSS_RULES",
]

ACTIONS = ("offload", "terminate", "target_request", "upload_all", "pause_reading",
           "resume_reading", "cycles", "target_fault")
# target_fault: fault name -> (scope, parameters).  Scope "target": the fault is armed on the
# target as a whole (no `conns`); "conns": it is aimed at the connections named by `conns`
# (required, so a fault never lands on every connection by default).
TARGET_FAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "delay_completion": ("target", ("op", "seconds", "count")),
    "never_complete": ("target", ("op", "count")),
    "release_withheld": ("target", ()),
    "shrink_capacity": ("target", ("n",)),
    "auto_send_backlog": ("target", ("enabled",)),
    "fail_blocks": ("conns", ("status", "ops", "count")),
    "corrupt_hardware_state": ("conns", ()),
    "send_backlog": ("conns", ("value",)),
    "wrong_rcv_nxt": ("conns", ("delta",)),
    "drop_buffered_data": ("conns", ()),
    "duplicate_delivery": ("conns", ()),
}
FAULT_PARAMS = ("op", "seconds", "count", "status", "ops", "n", "value", "enabled", "delta")
BLOCK_OPS = ("initiate", "terminate")
# the verifier rules a lost connection breaks by being lost (excused for `expect.lost`): its
# state is not returned, its streams stop short, the host's stack answers the peer with RSTs
LOSS_RULES = ("terminate-returned-state", "stream-complete", "digest-match", "no-rst")
CONDITIONS = ("data", "peer_zero_window", "app_not_reading")
MODES = ("tap", "sim", "auto")
DIRECTIONS = ("up", "down", "both")
DURING = ("always", "offloaded", "handoff", "offloading", "uploading")
FRAME_KINDS = ("any", "data", "control")  # [faults] frames: TCP segments with / without payload

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


class ScenarioError(ValueError):
    """A mistake in a scenario file; the message is one line naming the file and the key."""


def parse_size(value: Any) -> int:
    """``4096``, ``"64K"``, ``"4MiB"`` -> bytes (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"not a size: {value!r} (examples: 65536, \"64K\", \"4MiB\")")


@dataclasses.dataclass
class RunSpec:
    name: str
    mode: str = "auto"
    seed: int = 1
    timeout: float = 120.0
    capacity: int = 1024
    checker: bool = True
    description: str = ""


@dataclasses.dataclass
class PauseSpec:
    side: str  # "host" | "peer": whose application stops reading
    at_bytes: int
    seconds: float


@dataclasses.dataclass
class FlowSpec:
    index: int
    count: int = 1
    direction: str = "both"
    bytes: int = 1 << 20
    open: str = "host"
    port: int = 0  # 0: 5001 + flow index
    name: str = ""
    pause: PauseSpec | None = None
    peer_rcvbuf: int = 0  # TAP: the kernel sockets' SO_RCVBUF (0: the kernel's default)

    @property
    def sends_up(self) -> bool:
        return self.direction in ("up", "both")

    @property
    def sends_down(self) -> bool:
        return self.direction in ("down", "both")

    @property
    def total_bytes(self) -> int:
        """Bytes one connection moves, both directions together."""
        return self.bytes * (2 if self.direction == "both" else 1)


@dataclasses.dataclass
class ScheduleEntry:
    index: int
    action: str
    conns: str | list[int] = "all"
    at: float | None = None
    after_bytes: int | None = None
    reason: int = int(TCP_UPLOAD_REASON.UploadRequested)
    seconds: float | None = None  # pause_reading: resume after this long
    cycles: int = 1
    terminate: str = "mixed"
    conditions: tuple[str, ...] = ("data",)
    fault: str | None = None  # target_fault: a TARGET_FAULTS name
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # its parameters

    @property
    def target_wide(self) -> bool:
        """A target_fault armed on the target as a whole (not per connection)."""
        return self.fault is not None and TARGET_FAULTS[self.fault][0] == "target"

    def describe(self) -> str:
        when = (f"at {self.at:g}s" if self.at is not None else
                f"after {self.after_bytes} B" if self.after_bytes is not None else "at start")
        extra = ""
        if self.action == "target_request":
            extra = f" ({TCP_UPLOAD_REASON(self.reason).name})"
        if self.action == "cycles":
            extra = f" x{self.cycles} ({self.terminate})"
        if self.action == "target_fault":
            args = ", ".join(f"{k}={v}" for k, v in self.params.items())
            extra = f" {self.fault}({args})"
        return f"{self.action}{extra} {when} conns={self.conns}"


@dataclasses.dataclass
class FaultsSpec:
    up: FaultSpec | None = None
    down: FaultSpec | None = None
    during: str = "always"
    after_frames: int = 16
    frames: str = "any"  # "data" | "control": only TCP segments with / without payload
    nth: int | None = None  # only the nth eligible frame of each window (conn, direction)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        return any(s is not None and not s.is_noop for s in (self.up, self.down))


@dataclasses.dataclass
class ExpectSpec:
    lost: list[int] = dataclasses.field(default_factory=list)  # these end lost, others intact
    damaged: list[int] = dataclasses.field(default_factory=list)  # data arrives wrong, no reset
    verify_fails: list[str] = dataclasses.field(default_factory=list)  # rules that must fail
    intact: bool = True
    no_rst: bool = True
    min_handoffs: int = 0
    verify: bool = True
    conformance: bool = True
    kernel_view: bool = False


@dataclasses.dataclass
class Scenario:
    run: RunSpec
    flows: list[FlowSpec]
    schedule: list[ScheduleEntry]
    faults: FaultsSpec
    expect: ExpectSpec
    path: str = "<built-in>"

    @property
    def connections(self) -> int:
        return sum(f.count for f in self.flows)

    def flow_of(self, conn_index: int) -> FlowSpec:
        base = 0
        for f in self.flows:
            if conn_index < base + f.count:
                return f
            base += f.count
        raise IndexError(conn_index)

    def select(self, spec: str | list[int], rng: random.Random) -> list[int]:
        """Connection indices for a schedule entry's ``conns``."""
        n = self.connections
        if spec == "all":
            return list(range(n))
        if isinstance(spec, str) and spec.startswith("random:"):
            k = min(int(spec.split(":", 1)[1]), n)
            return sorted(rng.sample(range(n), k))
        assert isinstance(spec, list)
        return list(spec)

    def as_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if f.name not in ("match", "raw")}
            if isinstance(obj, (list, tuple)):
                return [plain(x) for x in obj]
            return obj

        return {"path": self.path, "run": plain(self.run), "flows": plain(self.flows),
                "schedule": plain(self.schedule), "faults": self.faults.raw,
                "expect": plain(self.expect)}


# ------------------------------------------------------------------------------------- parsing


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {key}: {problem}")

    def table(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table, not {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                            f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return data

    def typed(self, d: dict[str, Any], key: str, where: str, kinds: tuple[type, ...],
              default: Any) -> Any:
        if key not in d:
            return default
        v = d[key]
        if isinstance(v, bool) and bool not in kinds:
            raise self.fail(f"{where}.{key}", f"must be {_kind_names(kinds)}, not a boolean")
        if not isinstance(v, kinds):
            raise self.fail(f"{where}.{key}", f"must be {_kind_names(kinds)}, not {v!r}")
        return v

    def number(self, d: dict[str, Any], key: str, where: str, default: Any, *, lo: float = 0.0,
               hi: float | None = None, integer: bool = False) -> Any:
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        v = self.typed(d, key, where, kinds, default)
        if v is None:
            return None
        if v < lo or (hi is not None and v > hi):
            def fmt(x: float) -> str:
                return f"{x:g}" if isinstance(x, float) else str(x)

            rng = f">= {fmt(lo)}" if hi is None else f"within {fmt(lo)}..{fmt(hi)}"
            raise self.fail(f"{where}.{key}", f"must be {rng}, not {v!r}")
        return v

    def choice(self, d: dict[str, Any], key: str, where: str, options: tuple[str, ...],
               default: str) -> str:
        v = self.typed(d, key, where, (str,), default)
        if v not in options:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(options)}, not {v!r}")
        return str(v)

    def size(self, d: dict[str, Any], key: str, where: str, default: int | None) -> int | None:
        if key not in d:
            return default
        try:
            return parse_size(d[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (raises :class:`ScenarioError`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(p), default_name=p.stem)


def parse_scenario(data: dict[str, Any], path: str = "<built-in>",
                   default_name: str = "scenario") -> Scenario:
    c = _Ctx(path)
    c.table(data, "", {"run", "flow", "schedule", "faults", "expect"})
    run = _parse_run(c, data.get("run", {}), default_name)
    raw_flows = data.get("flow")
    if raw_flows is None:
        raise c.fail("flow", "at least one [[flow]] is needed")
    if not isinstance(raw_flows, list):
        raise c.fail("flow", "must be an array of tables: write [[flow]]")
    flows = [_parse_flow(c, f, i) for i, f in enumerate(raw_flows)]
    if not flows:
        raise c.fail("flow", "at least one [[flow]] is needed")
    ports = [f.port for f in flows]
    if len(set(ports)) != len(ports):
        raise c.fail("flow.port", f"two flows use the same port ({ports})")
    total = sum(f.count for f in flows)
    raw_sched = data.get("schedule", [])
    if not isinstance(raw_sched, list):
        raise c.fail("schedule", "must be an array of tables: write [[schedule]]")
    schedule = [_parse_entry(c, e, i, total) for i, e in enumerate(raw_sched)]
    faults = _parse_faults(c, data.get("faults", {}))
    expect = _parse_expect(c, data.get("expect", {}), total)
    return Scenario(run, flows, schedule, faults, expect, path)


def _parse_run(c: _Ctx, d: Any, default_name: str) -> RunSpec:
    d = c.table(d, "run", {"name", "mode", "seed", "timeout", "duration", "capacity", "checker",
                           "description"})
    name = c.typed(d, "name", "run", (str,), default_name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise c.fail("run.name", f"use letters, digits, '-', '_' and '.' only, not {name!r}")
    timeout = c.number(d, "timeout", "run", None, lo=0.001)
    if timeout is None:
        timeout = c.number(d, "duration", "run", 120.0, lo=0.001)
    return RunSpec(
        name=name,
        mode=c.choice(d, "mode", "run", MODES, "auto"),
        seed=c.typed(d, "seed", "run", (int,), 1),
        timeout=float(timeout),
        capacity=c.number(d, "capacity", "run", 1024, lo=0, integer=True),
        checker=c.typed(d, "checker", "run", (bool,), True),
        description=c.typed(d, "description", "run", (str,), ""),
    )


def _parse_flow(c: _Ctx, d: Any, i: int) -> FlowSpec:
    where = f"flow[{i}]"
    d = c.table(d, where, {"count", "direction", "bytes", "open", "port", "name", "pause",
                           "peer_rcvbuf"})
    flow = FlowSpec(
        index=i,
        count=c.number(d, "count", where, 1, lo=1, hi=4096, integer=True),
        direction=c.choice(d, "direction", where, DIRECTIONS, "both"),
        bytes=c.size(d, "bytes", where, 1 << 20) or 0,
        open=c.choice(d, "open", where, ("host", "peer"), "host"),
        port=c.number(d, "port", where, 5001 + i, lo=1, hi=65535, integer=True),
        name=c.typed(d, "name", where, (str,), f"flow{i}"),
        peer_rcvbuf=c.size(d, "peer_rcvbuf", where, 0) or 0,
    )
    if "pause" in d:
        pw = f"{where}.pause"
        p = c.table(d["pause"], pw, {"side", "at_bytes", "seconds"})
        if "at_bytes" not in p:
            raise c.fail(f"{pw}.at_bytes", "missing (bytes received before the pause)")
        side = c.choice(p, "side", pw, ("host", "peer"), "peer")
        receives = flow.sends_down if side == "host" else flow.sends_up
        if not receives:
            raise c.fail(f"{pw}.side", f"the {side} receives nothing in direction "
                                       f"{flow.direction!r}, so it has no reading to pause")
        flow.pause = PauseSpec(side=side, at_bytes=c.size(p, "at_bytes", pw, 0) or 0,
                               seconds=float(c.number(p, "seconds", pw, 0.5, lo=0.0)))
    return flow


def _parse_conns(c: _Ctx, v: Any, where: str, total: int) -> str | list[int]:
    if v == "all":
        return "all"
    if isinstance(v, str):
        m = re.fullmatch(r"random:(\d+)", v)
        if not m:
            raise c.fail(where, f"must be \"all\", \"random:k\" or a list of indices, not {v!r}")
        if not 1 <= int(m.group(1)) <= total:
            raise c.fail(where, f"random:k needs 1 <= k <= {total} (the connections), not {v!r}")
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        bad = [x for x in v if not 0 <= x < total]
        if bad:
            raise c.fail(where, f"index {bad[0]} out of range (connections are 0..{total - 1})")
        return list(v)
    raise c.fail(where, f"must be \"all\", \"random:k\" or a list of indices, not {v!r}")


def _parse_reason(c: _Ctx, v: Any, where: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return int(TCP_UPLOAD_REASON(v))
        except ValueError:
            pass
    elif isinstance(v, str) and v in TCP_UPLOAD_REASON.__members__ and v != "MaxUploadReason":
        return int(TCP_UPLOAD_REASON[v])
    names = [n for n in TCP_UPLOAD_REASON.__members__ if n not in ("MaxUploadReason",
                                                                     "NoBufferProposting")]
    raise c.fail(where, f"not an upload reason: {v!r} (one of {', '.join(names)})")


def _parse_entry(c: _Ctx, d: Any, i: int, total: int) -> ScheduleEntry:
    where = f"schedule[{i}]"
    d = c.table(d, where, {"at", "after_bytes", "action", "conns", "reason", "seconds", "cycles",
                           "terminate", "conditions", "fault", *FAULT_PARAMS})
    if "action" not in d:
        raise c.fail(f"{where}.action", f"missing (one of {', '.join(ACTIONS)})")
    action = c.choice(d, "action", where, ACTIONS, "offload")
    if "at" in d and "after_bytes" in d:
        raise c.fail(f"{where}.at", "give either `at` or `after_bytes`, not both")
    e = ScheduleEntry(index=i, action=action,
                      at=c.number(d, "at", where, None, lo=0.0),
                      after_bytes=c.size(d, "after_bytes", where, None))
    e.conns = _parse_conns(c, d.get("conns", "all"), f"{where}.conns", total)
    if action == "target_request":
        e.reason = _parse_reason(c, d.get("reason", "UploadRequested"), f"{where}.reason")
    elif "reason" in d:
        raise c.fail(f"{where}.reason", "only `target_request` takes a reason")
    if action == "target_fault":
        _parse_target_fault(c, d, where, e)
        return e
    if "fault" in d:
        raise c.fail(f"{where}.fault", "only the `target_fault` action takes a fault")
    params = [k for k in FAULT_PARAMS if k in d and k != "seconds"]
    if params:
        raise c.fail(f"{where}.{params[0]}", "only the `target_fault` action takes this key")
    if "seconds" in d:
        if action != "pause_reading":
            raise c.fail(f"{where}.seconds", "only `pause_reading` and `target_fault` "
                                             "(delay_completion) take seconds")
        e.seconds = float(c.number(d, "seconds", where, 0.0, lo=0.0))
    cycle_keys = [k for k in ("cycles", "terminate", "conditions") if k in d]
    if cycle_keys and action != "cycles":
        raise c.fail(f"{where}.{cycle_keys[0]}", "only the `cycles` action takes this key")
    if action == "cycles":
        e.cycles = c.number(d, "cycles", where, 1, lo=1, hi=10_000, integer=True)
        e.terminate = c.choice(d, "terminate", where, ("host", "target", "mixed"), "mixed")
        conds = d.get("conditions", ["data"])
        if isinstance(conds, str):
            conds = [conds]
        if not isinstance(conds, list) or not conds or any(x not in CONDITIONS for x in conds):
            raise c.fail(f"{where}.conditions",
                         f"must be a list of {', '.join(CONDITIONS)}, not {conds!r}")
        e.conditions = tuple(conds)
    return e


def _parse_target_fault(c: _Ctx, d: dict[str, Any], where: str, e: ScheduleEntry) -> None:
    """``action = "target_fault"``: the fault name, its parameters (each checked here, so a
    run never starts with a fault the target would refuse) and whether it takes `conns`."""
    names = ", ".join(TARGET_FAULTS)
    if "fault" not in d:
        raise c.fail(f"{where}.fault", f"missing (one of {names})")
    fault = d["fault"]
    if not isinstance(fault, str) or fault not in TARGET_FAULTS:
        raise c.fail(f"{where}.fault", f"not a target fault: {fault!r} (one of {names})")
    scope, allowed = TARGET_FAULTS[fault]
    for k in ("reason", "cycles", "terminate", "conditions", *FAULT_PARAMS):
        if k in d and k not in allowed:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
            raise c.fail(f"{where}.{k}", f"fault {fault!r} {takes}")
    if scope == "target" and "conns" in d:
        raise c.fail(f"{where}.conns", f"fault {fault!r} acts on the target as a whole, "
                                       "not on connections: remove conns")
    if scope == "conns" and "conns" not in d:
        raise c.fail(f"{where}.conns", f"fault {fault!r} needs the connections it is aimed at "
                                       "(conns = [0] / \"random:k\" / \"all\")")
    p: dict[str, Any] = {}

    def need(k: str, what: str) -> None:
        if k not in d:
            raise c.fail(f"{where}.{k}", f"missing: fault {fault!r} needs {what}")

    if "op" in allowed:
        need("op", f"the operation ({', '.join(OPERATIONS)})")
        p["op"] = c.choice(d, "op", where, OPERATIONS, "initiate")
    if "seconds" in allowed:
        need("seconds", "how much later the completions are made")
        p["seconds"] = float(c.number(d, "seconds", where, 0.0, lo=0.0))
    if "count" in allowed:
        v = d.get("count", 1)
        if v == "all":
            p["count"] = -1
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            p["count"] = v
        else:
            raise c.fail(f"{where}.count", f"must be an integer >= 1 or \"all\", not {v!r}")
    if "status" in allowed:
        st = d.get("status", "FAILURE")
        # an error status (severity bits 11): success and informational codes are no failure
        if (not isinstance(st, str) or st not in NdisStatus.__members__
                or int(NdisStatus[st]) < 0xC0000000):
            raise c.fail(f"{where}.status", f"not a failure status: {st!r} (an NdisStatus name "
                                            "such as FAILURE, RESOURCES, OFFLOAD_TCP_ENTRIES)")
        p["status"] = st
    if "ops" in allowed:
        ops = d.get("ops", ["initiate"])
        if isinstance(ops, str):
            ops = [ops]
        if not isinstance(ops, list) or not ops or any(o not in BLOCK_OPS for o in ops):
            raise c.fail(f"{where}.ops", f"must be a list of {', '.join(BLOCK_OPS)}, not {ops!r}")
        if "terminate" in ops and p["status"] != "FAILURE":
            raise c.fail(f"{where}.status", "a terminate block can only fail with FAILURE "
                                            f"(f.2), not {p['status']}")
        p["ops"] = sorted(set(ops), key=BLOCK_OPS.index)
    if "n" in allowed:
        need("n", "the new offload capacity")
        p["n"] = c.number(d, "n", where, 0, lo=0, integer=True)
    if "value" in allowed:
        need("value", "the SendBacklogSize to indicate (bytes)")
        p["value"] = c.number(d, "value", where, 0, lo=0, hi=0xFFFFFFFF, integer=True)
    if "enabled" in allowed:
        need("enabled", "true or false")
        p["enabled"] = c.typed(d, "enabled", where, (bool,), True)
    if "delta" in allowed:
        need("delta", "how far off the returned RcvNxt is (bytes, not 0)")
        delta = c.typed(d, "delta", where, (int,), 0)
        if delta == 0 or not -(1 << 31) < delta < (1 << 31):
            raise c.fail(f"{where}.delta", f"must be a non-zero integer within +-2**31, not {delta}")
        p["delta"] = delta
    e.fault, e.params = fault, p


def _parse_faults(c: _Ctx, d: Any) -> FaultsSpec:
    d = c.table(d, "faults", {"up", "down", "both", "during", "after_frames", "frames", "nth"})
    fs = FaultsSpec(during=c.choice(d, "during", "faults", DURING, "always"),
                    after_frames=c.number(d, "after_frames", "faults", 16, lo=0, integer=True),
                    frames=c.choice(d, "frames", "faults", FRAME_KINDS, "any"),
                    nth=c.number(d, "nth", "faults", None, lo=1, integer=True),
                    raw=dict(d))
    if fs.nth is not None and fs.during == "always":
        raise c.fail("faults.nth", "counts frames per window: needs `during` = offloaded, "
                                   "handoff, offloading or uploading, not \"always\"")
    specs: dict[str, dict[str, Any]] = {"up": {}, "down": {}}
    for key in ("both", "up", "down"):
        if key not in d:
            continue
        t = d[key]
        if not isinstance(t, dict):
            raise c.fail(f"faults.{key}", "must be a table")
        _fault_spec(c, t, f"faults.{key}")  # errors name the table as written
        for direction in (("up", "down") if key == "both" else (key,)):
            specs[direction].update(t)
    for direction, spec in specs.items():
        if not spec:
            continue
        setattr(fs, direction, _fault_spec(c, spec, f"faults.{direction}"))
    return fs


_PROBABILITIES = ("loss", "duplicate", "reorder", "corrupt", "truncate", "fragment",
                  "fragment_loss")
_BOOLEANS = ("corrupt_keep_ethernet", "fragment_reorder")


def _fault_spec(c: _Ctx, d: dict[str, Any], where: str) -> FaultSpec:
    allowed = {f.name for f in dataclasses.fields(FaultSpec)} - {"match"}
    c.table(d, where, allowed)
    for k, v in d.items():
        if k == "gilbert":
            g = c.table(v, f"{where}.gilbert", {f.name for f in dataclasses.fields(GilbertElliott)})
            for gk in g:
                c.number(g, gk, f"{where}.gilbert", 0.0, lo=0.0, hi=1.0)
        elif k in _BOOLEANS:
            c.typed(d, k, where, (bool,), True)
        elif k in ("reorder_gap", "truncate_min", "skip", "count"):
            c.number(d, k, where, 0, lo=0, integer=True)
        elif k == "fragment_size":
            size = c.number(d, k, where, 512, lo=8, hi=65528, integer=True)
            if size % 8:
                # RFC 791 section 3.1: fragment offsets count 8-octet units
                raise c.fail(f"{where}.{k}", f"must be a multiple of 8 (fragment offsets count "
                                             f"8-octet units), not {size}")
        elif k in _PROBABILITIES:
            c.number(d, k, where, 0.0, lo=0.0, hi=1.0)
        else:
            c.number(d, k, where, 0.0, lo=0.0)
    try:
        return FaultSpec.from_dict(d)
    except (TypeError, ValueError) as exc:
        raise c.fail(where, str(exc)) from None


def _parse_expect(c: _Ctx, d: Any, total: int) -> ExpectSpec:
    d = c.table(d, "expect", {f.name for f in dataclasses.fields(ExpectSpec)})
    e = ExpectSpec()
    for f in dataclasses.fields(ExpectSpec):
        if f.name in ("lost", "damaged"):
            if f.name in d:
                setattr(e, f.name, sorted(set(_conn_list(c, d[f.name], f.name, total))))
        elif f.name == "verify_fails":
            rules = d.get("verify_fails", [])
            if isinstance(rules, str):
                rules = [rules]
            if not isinstance(rules, list) or any(r not in RULES for r in rules):
                raise c.fail("expect.verify_fails", f"must be a list of verifier rules "
                                                    f"({', '.join(RULES)}), not {rules!r}")
            e.verify_fails = list(dict.fromkeys(rules))
        elif f.name == "min_handoffs":
            e.min_handoffs = c.number(d, "min_handoffs", "expect", 0, lo=0, integer=True)
        else:
            setattr(e, f.name, c.typed(d, f.name, "expect", (bool,), getattr(e, f.name)))
    both = sorted(set(e.lost) & set(e.damaged))
    if both:
        raise c.fail("expect.damaged", f"connection {both[0]} is also in expect.lost (lost: ends "
                                       "with a reset; damaged: wrong data, no reset)")
    if e.verify_fails and not e.verify:
        raise c.fail("expect.verify_fails", "expects the verifier to fail, but verify = false "
                                            "turns the verifier's check off")
    return e


def _conn_list(c: _Ctx, v: Any, key: str, total: int) -> list[int]:
    if isinstance(v, list) and not v:
        return []
    conns = _parse_conns(c, v, f"expect.{key}", total)
    if not isinstance(conns, list):
        raise c.fail(f"expect.{key}", f"must be a list of connection indices, not {v!r}")
    return conns
