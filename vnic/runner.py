"""``vnic run``: execute a scenario (:mod:`vnic.scenario`) on a TAP lab or the simulated wire.

The host is :func:`vnic.offload_lab.build_offload_host` (HostStack + ChimneyHost + NDIS with a
ConformanceChecker + the emulated NIC).  The peer is the Linux kernel in the lab's namespace,
driven by the traffic agent :mod:`vnic.peer` (one agent per flow), or, in simulation, a second
:class:`~tcpip.stack.HostStack` on a :class:`~vnic.simwire.SimWire` running the same roles as
coroutines.  A :class:`Controller` runs between the loop's work passes (the ``run_until``
predicate): it follows every connection's offload state, fires the schedule (offload, terminate,
target requests, UPLOAD_ALL, application pauses, random cycles), gates the wire faults on the
connections' offload phase and feeds the live view.

A run writes ``<out>/<name>-<timestamp>/``: ``report.json``, ``capture.pcapng`` (every frame,
annotated by :class:`vnic.capture.HandoffRecorder` when present) and ``seqtime.png`` /
``seqtime.svg`` (:mod:`vnic.picture`), then runs the capture verifier (:mod:`vnic.verify`).
The exit status is 0 only if every expectation of the scenario holds.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ndis.state import (
    OID_IP4_OFFLOAD_STATS,
    OID_TCP4_OFFLOAD_STATS,
    TCP_UPLOAD_REASON,
    OffloadLayer,
)
from ndis.status import NdisStatus, Operation, status_name
from tcpip import streams
from tcpip.offload import MANDATORY_UPLOAD_REASONS
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.seq import seq_ge
from tcpip.stack import HostStack
from tcpip.tcp import TcpConfig
from vnic.faults import (
    FaultInjector,
    FaultSpec,
    FramePredicate,
    WireFaults,
    tcp_control_only,
    tcp_data_only,
)
from vnic.offload_lab import TARGET_IP_ID_MIN, OffloadHost, WireWatch, build_offload_host
from vnic.payload import PayloadStream, StreamDigest, connection_seed
from vnic.scenario import LOSS_RULES, Scenario, ScheduleEntry

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "run_scenario", "render_report", "Controller", "ConnRun"]

CHUNK = 64 * 1024
PEER_SEED_OFFSET = 1_000_003
EXIT_OK, EXIT_FAILED = 0, 1
Progress = Callable[[str], None]
LiveView = Callable[[list[dict[str, Any]], dict[str, Any]], None]
_OFFLOADABLE = {"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK"}
# [faults] frames = ...: which frames the wire faults may touch ("any": no predicate)
_FRAME_KIND: dict[str, FramePredicate] = {"data": tcp_data_only, "control": tcp_control_only}
_DIRECTION_NAMES = ("a_to_b", "b_to_a")  # WireFaults' injectors: host -> peer, peer -> host
_MANDATORY = sorted(int(r) for r in MANDATORY_UPLOAD_REASONS)


@dataclasses.dataclass
class RunOptions:
    sim: bool = False  # force the simulated wire
    seed: int | None = None  # override [run] seed
    out: str = "out"  # parent directory of the run directory
    progress: Progress | None = None
    live: LiveView | None = None
    live_interval: float = 0.25  # wall-clock seconds between live-view updates
    picture: bool = True
    verify: bool = True
    kernel_view: bool = True  # TAP: tcpdump in the peer namespace + tshark (when available)


# ------------------------------------------------------------------------------- per connection


class ConnRun:
    """One connection of the run: the host application's state and what happened to it."""

    def __init__(self, index: int, flow: Any, seed: int) -> None:
        self.index = index
        self.flow = flow
        self.seed = seed
        self.sock: TcpSocket | None = None
        self.local_port = 0
        self.remote_port = 0
        self.name = ""
        self.sent = StreamDigest()
        self.received = StreamDigest()
        self.write_done = not flow.sends_up
        self.eof = False
        self.done = False
        self.error: str | None = None
        self.paused = False  # the host application is not reading
        self.pause_owner: str | None = None
        self.resume_at: float | None = None
        self.phase = OffloadState.IN_HOST
        self.phase_since = 0.0
        self.intervals: list[tuple[str, float, float | None]] = []
        self.handoffs: list[dict[str, Any]] = []
        self.offloads = 0
        self.uploads = 0
        self.offload_failures = 0
        self.target_requests = 0
        self.upload_cause: str | None = None
        self.condition: str | None = None  # what the pending handoff was aimed at
        self.rsts = 0  # RSTs either way before both FINs were exchanged and ACKed
        self.late_rsts = 0  # after that (see SeqSampler._closing)
        self.peer: dict[str, Any] | None = None
        self.cycle: CyclePlan | None = None
        self.wire_up = 0  # highest relative sequence sent (from the SeqSampler)
        # fault gating (during = "handoff"): last state seen by each direction's predicate
        self.gate_state = [OffloadState.IN_HOST, OffloadState.IN_HOST]
        self.gate_left = [0, 0]
        # times the connection entered each state (from the chimney's events, synchronously,
        # so a state no frame was sent in still opens a window) ...
        self.entered = {OffloadState.OFFLOADING: 0, OffloadState.OFFLOADED: 0,
                        OffloadState.UPLOADING: 0}
        # ... the entry each direction's predicate last opened a window for, and the eligible
        # frames it saw in that window (faults.nth)
        self.gate_window = [0, 0]
        self.gate_nth_window = [-1, -1]
        self.gate_seen = [0, 0]

    @property
    def progress(self) -> int:
        """Bytes moved so far: sent on the wire (not just written into the socket) + read."""
        return min(self.sent.count, self.wire_up) + self.received.count

    @property
    def established(self) -> bool:
        return self.sock is not None or self.error is not None

    def attach(self, writer: streams.StreamWriter) -> None:
        sock = writer.get_extra_info("connection")
        assert isinstance(sock, TcpSocket)
        self.sock = sock
        self.local_port = sock.local_port
        self.remote_port = sock.remote_port
        self.name = sock.name


@dataclasses.dataclass
class CyclePlan:
    """The offload/terminate steps of a ``cycles`` entry for one connection."""

    points: list[int]  # byte progress at which step k is due
    actions: list[tuple[str, int | None]]  # ("offload", None) / ("terminate", None) /
    #                                          ("target_request", reason)
    conditions: list[str]
    react: bool = False  # peer_zero_window: also step when the peer's window closes
    step: int = 0
    hold_until: float | None = None  # app_not_reading: when the action fires
    zw_episode: int = 0  # steps made in the current zero-window episode
    zw_steps: int = 0  # steps made in zero-window episodes


async def _host_app(stack: HostStack, conn: ConnRun, reader: streams.StreamReader,
                    writer: streams.StreamWriter) -> None:
    """The host application of one connection: write the up stream, read the down stream."""
    flow = conn.flow
    sched = stack.scheduler
    conn.attach(writer)
    pause = flow.pause if flow.pause is not None and flow.pause.side == "host" else None

    async def write() -> None:
        try:
            stream = PayloadStream(conn.seed, flow.bytes)
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
                conn.sent.update(chunk)
                await writer.drain()
            writer.close()  # FIN after our data; the peer's data keeps coming
        except Exception as exc:  # reported per connection
            conn.error = conn.error or f"send: {type(exc).__name__}: {exc}"
        finally:
            conn.write_done = True
            sched.notify(conn)  # the reader may be waiting for this (keyed wait)

    if flow.sends_up:
        sched.spawn(write(), name=f"conn{conn.index}-writer")
    try:
        paused_once = False
        while True:
            if conn.paused:
                await sched.wait_until(lambda: not conn.paused, key=conn)
            if pause is not None and not paused_once and conn.received.count >= pause.at_bytes:
                paused_once = True
                await sched.sleep(pause.seconds)
            limit = CHUNK
            if pause is not None and not paused_once:
                limit = max(1, min(CHUNK, pause.at_bytes - conn.received.count))
            data = await reader.read(limit)
            if not data:
                conn.eof = True
                break
            conn.received.update(data)
        if not flow.sends_up:
            writer.close()
        await sched.wait_until(lambda: conn.write_done, key=conn)
        await writer.wait_closed()
    except Exception as exc:  # reported per connection
        conn.error = conn.error or f"receive: {type(exc).__name__}: {exc}"
    finally:
        conn.done = True


# ------------------------------------------------------------------------------------ the peer


async def _sim_peer_app(stack: HostStack, flow: Any, seed: int, result: dict[str, Any],
                        reader: streams.StreamReader, writer: streams.StreamWriter) -> None:
    """The simulated peer's side of one connection (the roles of :mod:`vnic.peer`)."""
    sched = stack.scheduler
    sent, received = StreamDigest(), StreamDigest()
    pause = flow.pause if flow.pause is not None and flow.pause.side == "peer" else None
    state = {"write_done": not flow.sends_down}

    async def write() -> None:
        try:
            stream = PayloadStream(seed, flow.bytes)
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
                sent.update(chunk)
                await writer.drain()
            writer.close()
        except Exception as exc:
            result["error"] = result.get("error") or f"send: {type(exc).__name__}: {exc}"
        finally:
            state["write_done"] = True
            stack.scheduler.notify(state)

    if flow.sends_down:
        sched.spawn(write())
    try:
        paused_once = False
        while True:
            if pause is not None and not paused_once and received.count >= pause.at_bytes:
                paused_once = True
                await sched.sleep(pause.seconds)
            limit = CHUNK
            if pause is not None and not paused_once:
                limit = max(1, min(CHUNK, pause.at_bytes - received.count))
            data = await reader.read(limit)
            if not data:
                break
            received.update(data)
        if not flow.sends_down:
            writer.close()
        await sched.wait_until(lambda: state["write_done"], key=state)
        await writer.wait_closed()
    except Exception as exc:
        result["error"] = result.get("error") or f"receive: {type(exc).__name__}: {exc}"
    result.update(bytes_sent=sent.count, sha256_sent=sent.hexdigest(),
                  bytes_received=received.count, sha256_received=received.hexdigest(), done=True)


# ------------------------------------------------------------------------------ the controller


class Controller:
    """Runs between work passes: offload states, schedule, fault gates, live view."""

    def __init__(self, scn: Scenario, oh: OffloadHost, conns: list[ConnRun], seed: int,
                 now: Callable[[], float], *, virtual: bool, say: Progress,
                 live: LiveView | None, live_interval: float) -> None:
        self.scn = scn
        self.oh = oh
        self.conns = conns
        self.by_port: dict[tuple[int, int], ConnRun] = {}  # (local port, remote port)
        self.rng = random.Random(f"{seed}:schedule")
        self.clock = now
        self.virtual = virtual
        self.say = say
        self.live = live
        self.live_interval = live_interval
        self.t0: float | None = None  # `at` times count from here (the start of the run)
        self.established = False
        self.start = now()
        self.events: list[dict[str, Any]] = []
        self.pending: list[tuple[ScheduleEntry, set[int]]] = []
        self.entries_done: list[int] = []
        self.upload_all_active = False
        self.upload_all_count = 0
        self.tick_interval = 0.0 if virtual else 0.001
        self._last_tick = -1.0
        self._last_live = 0.0
        self._last_progress = time.monotonic()
        self.hold = 0.02  # app_not_reading: how long the app stops reading before the handoff
        self.injectors: list[FaultInjector] = []
        # the fault gate (faults.during other than "always"), per direction: windows that saw a
        # frame of the kind faults.frames, frames handed to the injector
        self.gate_stats = {n: {"windows": 0, "targeted": 0} for n in _DIRECTION_NAMES}
        self.watch: WireWatch | None = oh.watch
        self.sampler: SeqSampler | None = None
        self.target_faults: list[dict[str, Any]] = []  # target_fault entries as applied
        self.fault_log: list[dict[str, Any]] = []  # TargetFaults.log entries, timed
        self._fault_log_seen = 0
        # chimney handoff events not yet replayed by _update_phases, by connection key
        self._seen_states: dict[Any, list[tuple[float, OffloadState]]] = {}

    # -- time ------------------------------------------------------------------------------------
    def rel(self, t: float) -> float:
        return round(t - self.start, 6)

    def next_deadline(self) -> float | None:
        """The next time a schedule entry is due (a deadline source for the loop)."""
        if self.t0 is None:
            return None
        cands = [self.t0 + e.at for e, _ in self.pending if e.at is not None]
        cands += [c.resume_at for c in self.conns if c.resume_at is not None]
        cands += [c.cycle.hold_until for c in self.conns
                  if c.cycle is not None and c.cycle.hold_until is not None]
        # only future times: an entry already due that waits for a connection (e.g. still
        # connecting) is retried at every pass and must not pin the loop to the present
        now = self.clock()
        future = [t for t in cands if t > now]
        return min(future) if future else None

    # -- the per-pass hook -----------------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_tick < self.tick_interval:
            return
        self._last_tick = now
        self._update_phases(now)
        if self.sampler is not None:
            mx = self.sampler.max_seq
            for c in self.conns:
                c.wire_up = mx.get((c.local_port, c.remote_port, 0), 0)
        if self.t0 is None:
            self.t0 = self.start
            self.pending = [(e, set(self.scn.select(e.conns, self.rng))) for e in self.scn.schedule]
        if not self.established and all(c.established for c in self.conns):
            self.established = True
            self.note(now, None, "established", f"{len(self.conns)} connections")
        self._schedule(now)
        self._cycles(now)
        self._resume_reading(now)
        self._upload_all_done(now)
        self._collect_fault_log(now)
        self._gate_faults()
        self._report(now)

    def note(self, now: float, conn: ConnRun | None, kind: str, text: str = "") -> None:
        ev = {"t": self.rel(now), "conn": conn.index if conn else None, "event": kind}
        if text:
            ev["detail"] = text
        self.events.append(ev)
        log.info("scenario: t=%.3f %s %s %s", now - self.start,
                 f"conn{conn.index}" if conn else "-", kind, text)

    # -- offload states ------------------------------------------------------------------------
    _PHASE_OF_EVENT = {"offload-start": OffloadState.OFFLOADING,
                       "offload-complete": OffloadState.OFFLOADED,
                       "offload-failed": OffloadState.IN_HOST,
                       "terminate-start": OffloadState.UPLOADING,
                       "terminate-complete": OffloadState.IN_HOST}

    def watch_handoffs(self) -> None:
        """Follow the chimney's handoff events, so that a connection going through several
        states between two passes (an initiate failing at once; a late initiate completion
        followed by the target's upload request) is seen in every one of them."""
        def observe(event: str, info: dict[str, Any]) -> None:
            st = self._PHASE_OF_EVENT.get(event)
            if st is not None:
                key = info.get("key")
                self._seen_states.setdefault(key, []).append((self.clock(), st))
                if st is not OffloadState.IN_HOST:
                    for c in self.conns:
                        if c.sock is not None and c.sock.key == key:
                            c.entered[st] += 1

        self.oh.chimney.observers.append(observe)

    def _update_phases(self, now: float) -> None:
        seen = self._seen_states
        for c in self.conns:
            if c.sock is None:
                continue
            if seen:
                for t, st in seen.pop(c.sock.key, ()):
                    self._phase_change(t, c, st)
            self._phase_change(now, c, c.sock.offload_state)

    def _phase_change(self, now: float, c: ConnRun, st: OffloadState) -> None:
        if st is c.phase:
            return
        old = c.phase
        if c.intervals and c.intervals[-1][2] is None:
            s, t, _ = c.intervals[-1]
            c.intervals[-1] = (s, t, self.rel(now))
        if st is not OffloadState.IN_HOST:
            c.intervals.append((str(st), self.rel(now), None))
        c.phase, c.phase_since = st, now
        if st is OffloadState.OFFLOADED or (old is OffloadState.IN_HOST
                                            and st is OffloadState.UPLOADING):
            c.offloads += 1
            self._handoff(now, c, "offloaded", "host")
        if st is OffloadState.IN_HOST and old in (OffloadState.UPLOADING, OffloadState.OFFLOADED):
            if old is OffloadState.OFFLOADED:
                c.upload_cause = c.upload_cause or "target"
            c.uploads += 1
            self._handoff(now, c, "uploaded", c.upload_cause or "target")
            c.upload_cause = None
        elif st is OffloadState.IN_HOST and old is OffloadState.OFFLOADING:
            c.offload_failures += 1
            self.note(now, c, "offload_failed")
        elif st is OffloadState.UPLOADING and c.upload_cause is None:
            c.upload_cause = "target"  # asked by the target on its own (e.g. TIME_WAIT)

    def _handoff(self, now: float, c: ConnRun, kind: str, cause: str) -> None:
        h = {"t": self.rel(now), "kind": kind, "cause": cause}
        if c.condition:
            h["condition"] = c.condition
            c.condition = None
        c.handoffs.append(h)
        self.note(now, c, kind, cause)

    # -- actions ---------------------------------------------------------------------------------
    def apply(self, now: float, c: ConnRun, action: str, reason: int | None = None,
              seconds: float | None = None) -> str:
        """Do ``action`` on ``c``: "done", "wait" (try again later) or "skip"."""
        if action == "pause_reading":
            c.paused, c.pause_owner = True, "schedule"
            c.resume_at = now + seconds if seconds else None
            self.note(now, c, "pause_reading", f"{seconds:g}s" if seconds else "")
            return "done"
        if action == "resume_reading":
            self._resume(now, c)
            return "done"
        sock = c.sock
        if sock is None or c.done:
            return "skip"
        st = sock.offload_state
        chimney = self.oh.chimney
        if action == "offload":
            if st is OffloadState.OFFLOADED:
                return "skip"
            if st is not OffloadState.IN_HOST or self.upload_all_active:
                return "wait"
            if sock.state.name not in _OFFLOADABLE:
                return "skip"
            if chimney.offload(sock) is None:
                return "wait"  # paused, at capacity, or its neighbor/path in transition
            self.note(now, c, "offload_requested")
            return "done"
        if action in ("terminate", "target_request"):
            if st is OffloadState.IN_HOST:
                return "skip"
            if st is not OffloadState.OFFLOADED:
                return "wait"
            if action == "terminate":
                c.upload_cause = "host"
                chimney.terminate(sock)
                self.note(now, c, "terminate_requested")
                return "done"
            rec = chimney.records.get(sock.key)
            if rec is None:
                return "skip"
            r = int(reason if reason is not None else TCP_UPLOAD_REASON.UploadRequested)
            name = TCP_UPLOAD_REASON(r).name
            c.upload_cause = f"target:{name}"
            c.target_requests += 1
            self.oh.target.faults.request_upload(self.oh.target.find(rec.handle), r)
            self.note(now, c, "target_request", name)
            return "done"
        raise ValueError(action)

    def _resume(self, now: float, c: ConnRun) -> None:
        if c.paused:
            c.paused, c.pause_owner, c.resume_at = False, None, None
            self.oh.stack.scheduler.notify(c)
            self.note(now, c, "resume_reading")

    def _schedule(self, now: float) -> None:
        assert self.t0 is not None
        keep = []
        for e, targets in self.pending:
            if e.action == "upload_all" or e.target_wide:
                total = sum(c.progress for c in self.conns)
                due = ((e.at is None or now - self.t0 >= e.at)
                       and (e.after_bytes is None or total >= e.after_bytes))
                if not due:
                    keep.append((e, targets))
                elif e.target_wide:
                    if self._target_fault(now, None, e) == "wait":
                        keep.append((e, targets))
                    else:
                        self.entries_done.append(e.index)
                elif self.upload_all_active:
                    keep.append((e, targets))  # one UPLOAD_ALL at a time
                else:
                    self._upload_all(now)
                continue
            if e.at is not None and now - self.t0 < e.at:
                keep.append((e, targets))
                continue
            left = set()
            for i in sorted(targets):
                c = self.conns[i]
                if c.sock is None and not c.done:
                    left.add(i)  # not connected yet
                    continue
                if e.after_bytes is not None and c.progress < e.after_bytes and not c.done:
                    left.add(i)
                    continue
                if e.action == "cycles":
                    self._plan_cycles(now, c, e)
                    continue
                if e.action == "target_fault":
                    r = self._target_fault(now, c, e)
                    if r == "skip":  # finished before the target held it: say so
                        self.note(now, c, "target_fault_skipped", str(e.fault))
                else:
                    r = self.apply(now, c, e.action, e.reason, e.seconds)
                if r == "wait" and not c.done:
                    left.add(i)
            if left:
                keep.append((e, left))
            else:
                self.entries_done.append(e.index)
        self.pending = keep

    # -- target faults (offload_target.faults.TargetFaults) ----------------------------------------
    def _target_fault(self, now: float, c: ConnRun | None, e: ScheduleEntry) -> str:
        """Arm fault ``e.fault`` on the target (``c`` None) or for connection ``c``: "done",
        "wait" (the target does not hold the connection yet; for release_withheld: nothing is
        withheld yet while a never_complete is armed) or "skip" (it finished).

        A connection fault other than fail_blocks acts on the target's copy of the
        connection, so it waits until the target holds it (Offloading with the initiate
        taken, or Offloaded), also across an upload: it is aimed at the next offload then."""
        faults = self.oh.target.faults
        p = e.params
        fault = e.fault
        assert fault is not None
        if c is None:
            if fault == "delay_completion":
                faults.delay_completion(p["op"], p["seconds"], p["count"])
            elif fault == "never_complete":
                faults.never_complete(p["op"], p["count"])
            elif fault == "release_withheld":
                if not faults.withheld and faults.withholding:
                    # nothing withheld yet, but an armed never_complete will hold one: the
                    # release waits for it (as a connection action waits until the
                    # connection is ready), whatever order the byte counts reached
                    return "wait"
                p = {"released": faults.release_withheld()}
            elif fault == "shrink_capacity":
                faults.shrink_capacity(p["n"])
            elif fault == "auto_send_backlog":
                faults.auto_send_backlog(p["enabled"])
            else:
                raise ValueError(fault)
            self._fault_applied(now, None, e, p)
            return "done"
        if c.done:
            return "skip"
        if fault == "fail_blocks":
            self._fail_blocks(c, e)
            self._fault_applied(now, c, e, p)
            return "done"
        sock = c.sock
        if sock is None or sock.offload_state not in (OffloadState.OFFLOADING, OffloadState.OFFLOADED):
            return "wait"
        rec = self.oh.chimney.records.get(sock.key)
        try:
            obj = self.oh.target.find(rec.handle) if rec is not None else None
        except KeyError:
            obj = None
        if obj is None:
            return "wait"  # the initiate has not reached the target yet
        if fault == "corrupt_hardware_state":
            faults.corrupt_hardware_state(obj)
        elif fault == "send_backlog":
            faults.indicate_send_backlog(obj, p["value"])
        elif fault == "wrong_rcv_nxt":
            faults.wrong_rcv_nxt(obj, p["delta"])
        elif fault == "drop_buffered_data":
            faults.drop_buffered_data(obj)
        elif fault == "duplicate_delivery":
            faults.duplicate_delivery(obj)
        else:
            raise ValueError(fault)
        self._fault_applied(now, c, e, p)
        return "done"

    def _fail_blocks(self, c: ConnRun, e: ScheduleEntry) -> None:
        """fail_blocks for one connection: its TCP block fails in the next ``count`` initiates
        / terminates (each op counted on its own) with ``status``.  The block is recognized
        by its label, which the host gives each offload of the connection anew."""
        ops = tuple(Operation.INITIATE if o == "initiate" else Operation.TERMINATE
                    for o in e.params["ops"])
        left = {op: e.params["count"] for op in ops}  # -1: every time
        chimney = self.oh.chimney

        def selector(block: Any, op: Operation) -> bool:
            if left.get(op, 0) == 0 or getattr(block, "layer", None) is not OffloadLayer.TCP:
                return False
            rec = chimney.records.get(c.sock.key) if c.sock is not None else None
            if rec is None or block.label != rec.handle.label:
                return False
            if left[op] > 0:
                left[op] -= 1
            self.note(self.clock(), c, "block_failed",
                      f"{op.value.lower()} {block.label} {e.params['status']}")
            return True

        self.oh.target.faults.fail_blocks(selector, int(NdisStatus[e.params["status"]]), ops)

    def _fault_applied(self, now: float, c: ConnRun | None, e: ScheduleEntry,
                       p: dict[str, Any]) -> None:
        self.target_faults.append({"t": self.rel(now), "entry": e.index, "fault": e.fault,
                                   "conn": c.index if c is not None else None, **p})
        args = " ".join(f"{k}={v}" for k, v in p.items())
        self.note(now, c, "target_fault", f"{e.fault} {args}".strip())

    def _collect_fault_log(self, now: float) -> None:
        """Time-stamp what the target's fault hooks did since the last pass (TargetFaults.log:
        completions delayed / withheld / queued, blocks failed, ...), with the connection when
        an entry names a TCP block (label ``T<n>:<local port>``)."""
        log_ = self.oh.target.faults.log
        if len(log_) == self._fault_log_seen:
            return
        by_local = {c.local_port: c.index for c in self.conns if c.local_port}
        for entry in log_[self._fault_log_seen:]:
            conn = None
            for x in entry[1:]:
                if x.startswith("T") and ":" in x:
                    port = x.rsplit(":", 1)[1]
                    if port.isdigit():
                        conn = by_local.get(int(port))
            self.fault_log.append({"t": self.rel(now), "conn": conn, "entry": list(entry)})
        self._fault_log_seen = len(log_)

    def _upload_all(self, now: float) -> None:
        self.upload_all_active = True
        self.upload_all_count += 1
        for c in self.conns:
            if c.phase in (OffloadState.OFFLOADED, OffloadState.OFFLOADING) and c.upload_cause is None:
                c.upload_cause = "upload_all"
        self.oh.target.faults.upload_all()
        self.note(now, None, "upload_all")

    def _upload_all_done(self, now: float) -> None:
        if not self.upload_all_active:
            return
        chimney = self.oh.chimney
        if chimney.records or chimney.pending:
            return
        self.upload_all_active = False
        self.oh.target.resume()
        self.note(now, None, "offload_resume")

    def _resume_reading(self, now: float) -> None:
        for c in self.conns:
            if c.resume_at is not None and now >= c.resume_at:
                self._resume(now, c)

    # -- cycles ----------------------------------------------------------------------------------
    def _plan_cycles(self, now: float, c: ConnRun, e: ScheduleEntry) -> None:
        total = c.flow.total_bytes
        lo = c.progress
        hi = max(lo + 2 * e.cycles, int(total * 0.7))  # room to finish the last cycle
        points = sorted(self.rng.sample(range(lo + 1, hi + 1), 2 * e.cycles)) if hi - lo >= 2 * e.cycles \
            else [lo + k for k in range(2 * e.cycles)]
        actions: list[tuple[str, int | None]] = []
        for _k in range(e.cycles):
            actions.append(("offload", None))
            kind = e.terminate if e.terminate != "mixed" else self.rng.choice(("host", "target"))
            if kind == "host":
                actions.append(("terminate", None))
            else:
                actions.append(("target_request", self.rng.choice(_MANDATORY)))
        # peer_zero_window is reactive (the step is made when the window closes): the last
        # cycle is kept for it (its points move to the end of the range: made when the window
        # closes, or there if it never does); the byte points get the other conditions
        if "peer_zero_window" in e.conditions:
            points[-2:] = [hi, hi]
        planned = [x for x in e.conditions if x != "peer_zero_window"] or ["data"]
        conds = [self.rng.choice(planned) for _ in actions]
        c.cycle = CyclePlan(points, actions, conds, react="peer_zero_window" in e.conditions)
        self.note(now, c, "cycles_planned", f"{e.cycles} cycles, points {points[:4]}...")

    def _cycles(self, now: float) -> None:
        for c in self.conns:
            plan = c.cycle
            if plan is None or plan.step >= len(plan.actions):
                continue
            if c.done:
                plan.step = len(plan.actions)
                continue
            k = plan.step
            if plan.react and plan.hold_until is None and self._zero_window_step(now, c, plan):
                continue
            if c.progress < plan.points[k] and plan.hold_until is None:
                continue
            cond = plan.conditions[k]
            if cond == "app_not_reading" and c.flow.sends_down:
                if plan.hold_until is None:
                    if not c.paused:
                        c.paused, c.pause_owner = True, "cycle"
                        self.note(now, c, "pause_reading", "cycle")
                    plan.hold_until = now + self.hold
                    continue
                if now < plan.hold_until:
                    continue
            action, reason = plan.actions[k]
            c.condition = cond
            r = self.apply(now, c, action, reason)
            if r == "wait":
                c.condition = None
                continue
            if r == "skip":
                c.condition = None
                self.note(now, c, "cycle_step_skipped", action)
            plan.step += 1
            plan.hold_until = None
            if c.pause_owner == "cycle":
                # resume once the handoff was made (the app was not reading across it)
                c.resume_at = now + self.hold

    def _zero_window_step(self, now: float, c: ConnRun, plan: CyclePlan) -> bool:
        """``peer_zero_window``: when the peer's advertised window drops to zero, make the
        next step now (whatever its byte point), and the one after it if the window is still
        closed once the first handoff is done: up to two handoffs per zero-window episode."""
        w = self._watch(c)
        if w is None or not w.peer_window_zero:
            plan.zw_episode = 0
            return False
        if plan.zw_episode >= 2 or c.phase not in (OffloadState.IN_HOST, OffloadState.OFFLOADED):
            return False
        action, reason = plan.actions[plan.step]
        c.condition = "peer_zero_window"
        r = self.apply(now, c, action, reason)
        if r == "wait":
            c.condition = None
            return False
        if r == "skip":
            c.condition = None
        plan.step += 1
        plan.zw_episode += 1
        plan.zw_steps += 1
        return True

    def _watch(self, c: ConnRun) -> Any:
        if self.watch is None:
            return None
        return self.watch.conns.get((c.local_port, c.remote_port))

    # -- faults aimed at offload phases ---------------------------------------------------------
    def install_fault_gates(self, faults: WireFaults | None) -> None:
        fs = self.scn.faults
        if faults is None:
            return
        if fs.during == "always":
            kind = _FRAME_KIND.get(fs.frames)
            if kind is not None:  # frames = "data" | "control" on the whole run
                for inj in (faults.a_to_b, faults.b_to_a):
                    inj.spec.match = kind
            return
        self.injectors = [faults.a_to_b, faults.b_to_a]
        for d, inj in enumerate(self.injectors):
            inj.spec.match = self._gate(d)

    def _gate(self, d: int) -> Callable[[bytes], bool]:
        """Direction ``d``'s predicate (0: host -> peer): is this frame in a window of
        ``faults.during`` (and of the kind ``faults.frames``, the ``faults.nth`` of its window)?
        Counts per direction in :attr:`gate_stats`: windows that saw an eligible frame, frames
        handed to the injector."""
        fs = self.scn.faults
        during = fs.during
        after = fs.after_frames
        kind = _FRAME_KIND.get(fs.frames)
        nth = fs.nth
        stats = self.gate_stats[_DIRECTION_NAMES[d]]
        by_port = self.by_port
        handoff_states = (OffloadState.OFFLOADING, OffloadState.UPLOADING)
        phase = {"offloading": OffloadState.OFFLOADING, "uploading": OffloadState.UPLOADING,
                 "offloaded": OffloadState.OFFLOADED}.get(during)
        off = 14
        # the state a phase leads to: its "after" frames are that state's first ones
        after_phase = (OffloadState.IN_HOST if phase is OffloadState.UPLOADING
                       else OffloadState.OFFLOADED if phase is OffloadState.OFFLOADING else None)

        def window_of(c: ConnRun) -> int:
            """Which window of ``c`` a frame in a window belongs to (entries into the phase)."""
            if phase is None:  # handoff: a window per Offloading or Uploading entered
                return c.entered[OffloadState.OFFLOADING] + c.entered[OffloadState.UPLOADING]
            return c.entered[phase]

        def in_window(c: ConnRun, frame: bytes) -> bool:
            st = c.sock.offload_state
            if during == "offloaded":
                return st is OffloadState.OFFLOADED and (kind is None or kind(frame))
            if during == "handoff":
                if st is not c.gate_state[d]:
                    c.gate_state[d] = st
                    c.gate_left[d] = after
                if kind is not None and not kind(frame):
                    return False
                if st in handoff_states:
                    return True
            else:  # offloading | uploading: a window opens when the connection enters it
                n = c.entered[phase]
                if n != c.gate_window[d]:
                    c.gate_window[d] = n
                    c.gate_left[d] = after
                if kind is not None and not kind(frame):
                    return False
                if st is phase:
                    return True
                if st is not after_phase:
                    # the "after" frames are those of the state the phase leads to (back in
                    # the host after Uploading, Offloaded after Offloading): a next handoff
                    # closes the window
                    c.gate_left[d] = 0
                    return False
            if c.gate_left[d] > 0:
                c.gate_left[d] -= 1
                return True
            return False

        def match(frame: bytes) -> bool:
            if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                return False
            t = off + (frame[off] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", frame, t)
            c = by_port.get((sport, dport) if d == 0 else (dport, sport))
            if c is None or c.sock is None or not in_window(c, frame):
                return False
            w = window_of(c)
            if w != c.gate_nth_window[d]:
                c.gate_nth_window[d] = w
                c.gate_seen[d] = 0
                stats["windows"] += 1
            c.gate_seen[d] += 1
            if nth is not None and c.gate_seen[d] != nth:
                return False
            stats["targeted"] += 1
            return True

        return match

    def _gate_faults(self) -> None:
        if self.scn.faults.during == "offloaded" and self.injectors:
            on = any(c.phase is OffloadState.OFFLOADED for c in self.conns)
            for inj in self.injectors:
                inj.enabled = on

    # -- progress and the live view ----------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        out = []
        for c in self.conns:
            w = self._watch(c)
            f = c.flow
            out.append({
                "conn": c.index, "flow": f.name,
                "port": c.local_port if f.open == "host" else c.remote_port,
                "offload_state": str(c.sock.offload_state) if c.sock else "-",
                "tcp_state": c.sock.state.name if c.sock else "CONNECTING",
                "up": c.sent.count if f.sends_up else None,
                "down": c.received.count if f.sends_down else None,
                "bytes": f.bytes, "offloads": c.offloads, "uploads": c.uploads,
                "target_requests": c.target_requests,
                "retransmitted": w.out_retransmitted if w else 0,
                "from_target": w.out_from_target if w else 0,
                "zero_window": bool(w.peer_window_zero) if w else False,
                "paused": c.paused, "done": c.done, "error": c.error,
            })
        return out

    def summary(self, now: float) -> dict[str, Any]:
        moved = sum(c.progress for c in self.conns)
        total = sum(c.flow.total_bytes for c in self.conns)
        return {"t": self.rel(now), "moved": moved, "total": total,
                "offloaded": sum(1 for c in self.conns if c.phase is OffloadState.OFFLOADED),
                "handoffs": sum(c.offloads + c.uploads for c in self.conns),
                "done": sum(1 for c in self.conns if c.done), "connections": len(self.conns),
                "virtual": self.virtual}

    def _report(self, now: float, final: bool = False) -> None:
        wall = time.monotonic()
        if self.live is not None:
            if final or wall - self._last_live >= self.live_interval:
                self._last_live = wall
                self.live(self.rows(), self.summary(now))
            return
        if final or wall - self._last_progress >= 2.0:
            self._last_progress = wall
            s = self.summary(now)
            self.say(f"t={s['t']:7.3f}s  {s['moved'] / 1e6:8.1f}/{s['total'] / 1e6:.1f} MB  "
                     f"{s['offloaded']:3d} offloaded  {s['handoffs']:4d} handoffs  "
                     f"{s['done']}/{s['connections']} done")

    def finish(self) -> None:
        now = self.clock()
        self._update_phases(now)
        for c in self.conns:
            if c.intervals and c.intervals[-1][2] is None:
                s, t, _ = c.intervals[-1]
                c.intervals[-1] = (s, t, self.rel(now))
        self._report(now, final=True)


# ------------------------------------------------------------------------------------ sequence


class SeqSampler:
    """FrameNode wrapper sampling (time, relative sequence end) of data frames per connection
    and direction, and who built them (target: IPv4 identification >= 0x8000), for the picture.
    Of a fragmented segment (the ``fragment`` wire fault) only the first fragment, the one
    with the TCP header, is sampled."""

    def __init__(self, node: Any, clock: Callable[[], float], resolution: float) -> None:
        self.node = node
        self.clock = clock
        self.resolution = resolution
        self.base: dict[tuple[int, int, int], int] = {}
        self.series: dict[tuple[int, int, int], list[tuple[float, int, int]]] = {}
        self._last: dict[tuple[int, int, int], float] = {}
        self.max_seq: dict[tuple[int, int, int], int] = {}
        self._fin: dict[tuple[int, int], list[list[Any]]] = {}
        self.rsts: dict[tuple[int, int], int] = {}  # (local, remote) -> RSTs either way
        self.late_rsts: dict[tuple[int, int], int] = {}  # ... after both FINs were ACKed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def _closing(self, key: tuple[int, int, int], d: int, seq: int, ack: int, flags: int,
                 plen: int) -> None:
        """FIN bookkeeping per connection: ``[fin end, acked]`` per direction; an RST after
        both FINs were sent and acknowledged is *late* (e.g. the kernel, already CLOSED,
        answering our duplicate ACK of its own retransmission): the streams were complete."""
        conn = key[:2]
        st = self._fin.setdefault(conn, [[None, False], [None, False]])
        if flags & 0x04:
            late = all(x[0] is not None and x[1] for x in st)
            bucket = self.late_rsts if late else self.rsts
            bucket[conn] = bucket.get(conn, 0) + 1
            return
        if flags & 0x01:
            st[d][0] = (seq + plen + 1) & 0xFFFFFFFF
        other = st[1 - d]
        if flags & 0x10 and other[0] is not None and not other[1] and seq_ge(ack, other[0]):
            other[1] = True

    def receive_frame(self, frame: bytes, now: float) -> None:
        self._sample(frame, now, 1)
        self.node.receive_frame(frame, now)

    def poll(self, now: float) -> list[bytes]:
        out = self.node.poll(now)
        for f in out:
            self._sample(f, now, 0)
        return out  # type: ignore[no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[no-any-return]

    def _sample(self, frame: bytes, now: float, d: int) -> None:
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            return
        if ((frame[20] << 8) | frame[21]) & 0x1FFF:
            return  # a later IPv4 fragment: no TCP header in it
        ihl = (frame[14] & 0x0F) * 4
        total = (frame[16] << 8) | frame[17]
        ident = (frame[18] << 8) | frame[19]
        t = 14 + ihl
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, t)
        flags = frame[t + 13]
        plen = total - ihl - (frame[t + 12] >> 4) * 4
        key = (sport, dport, 0) if d == 0 else (dport, sport, 1)  # (local, remote, direction)
        if flags & 0x05 or key[:2] in self._fin:  # FIN / RST, or a connection closing
            self._closing(key, d, seq, ack, flags, plen)
        if flags & 0x02:  # SYN: the sequence base
            self.base[key] = (seq + 1) & 0xFFFFFFFF
            return
        if plen <= 0:
            return
        base = self.base.setdefault(key, seq)
        end = (seq + plen - base) & 0xFFFFFFFF
        last = self._last.get(key)
        if last is not None and now - last < self.resolution and end <= self.max_seq.get(key, 0):
            return
        self._last[key] = now
        if end > self.max_seq.get(key, 0):
            self.max_seq[key] = end
        self.series.setdefault(key, []).append((now, end, 1 if d == 0 and ident >= TARGET_IP_ID_MIN else 0))


# --------------------------------------------------------------------------------------- the run


def _new_run_dir(parent: str, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    path.mkdir(parents=True)
    return path


def _handoff_recorder(capture: Any, oh: OffloadHost) -> Any:
    try:
        from vnic.capture import HandoffRecorder  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        return HandoffRecorder(capture, oh.chimney, oh.stack)
    except Exception as exc:  # a missing annotation must not stop the run
        log.warning("capture annotation unavailable: %s", exc)
        return None


def _wire_faults(scn: Scenario, seed: int) -> WireFaults | None:
    fs = scn.faults
    if not fs.any and fs.during == "always":
        return None
    up = dataclasses.replace(fs.up) if fs.up is not None else FaultSpec()
    down = dataclasses.replace(fs.down) if fs.down is not None else FaultSpec()
    return WireFaults.from_specs(up, down, seed=seed)


def _target_statistics(oh: OffloadHost) -> dict[str, Any]:
    """The target's b.17 counters of the run (offloaded traffic only), as the host stack
    queries them: OID_TCP4_OFFLOAD_STATS and OID_IP4_OFFLOAD_STATS through NDIS."""
    out: dict[str, Any] = {}
    for name, oid in (("tcp4", OID_TCP4_OFFLOAD_STATS), ("ip4", OID_IP4_OFFLOAD_STATS)):
        status, stats = oh.chimney.binding.NdisQueryOffloadStatistics(oid)
        out[name] = (dataclasses.asdict(stats) if status == NdisStatus.SUCCESS
                     else {"status": status_name(status)})
    return out


def run_scenario(scn: Scenario, opts: RunOptions) -> dict[str, Any]:
    """Run ``scn`` and return the report (``report["exit_status"]`` is the verdict)."""
    from vnic.offload_lab import has_datapath

    say = opts.progress or (lambda _m: None)
    seed = scn.run.seed if opts.seed is None else opts.seed
    mode = "sim" if opts.sim or scn.run.mode == "sim" else scn.run.mode
    note = None
    if mode in ("tap", "auto"):
        from vnic.privileges import check_lab_privileges

        reason = check_lab_privileges()
        if reason and mode == "tap":
            from vnic.cli import UsageError

            raise UsageError(f"scenario {scn.run.name} wants a TAP lab, but this process {reason}; "
                             "add --sim to run it on the simulated wire")
        if reason:
            note = f"no TAP lab: this process {reason}; running on the simulated wire"
            say(note)
            mode = "sim"
        else:
            mode = "tap"
    if not has_datapath():
        from vnic.cli import UsageError

        raise UsageError("the offload target's C data path is not built "
                         "(.venv/bin/python setup.py build_ext --inplace)")
    run_dir = _new_run_dir(opts.out, scn.run.name)
    paths = {"dir": str(run_dir), "report": str(run_dir / "report.json"),
             "capture": str(run_dir / "capture.pcapng"), "png": str(run_dir / "seqtime.png"),
             "svg": str(run_dir / "seqtime.svg"), "kernel_pcap": str(run_dir / "kernel.pcap")}
    say(f"scenario {scn.run.name}: {scn.connections} connection(s), {len(scn.schedule)} schedule "
        f"entries, {mode} wire, seed {seed}; writing {run_dir}")
    wall0 = time.monotonic()
    if mode == "sim":
        result = _run_sim(scn, opts, seed, paths, say)
    else:
        result = _run_tap(scn, opts, seed, paths, say)
    result["wall_seconds"] = round(time.monotonic() - wall0, 3)
    if note:
        result["note"] = note
    return _finish(scn, opts, seed, mode, paths, result, say)


def _make_conns(scn: Scenario, seed: int) -> list[ConnRun]:
    conns = []
    for f in scn.flows:
        for _k in range(f.count):
            i = len(conns)
            conns.append(ConnRun(i, f, connection_seed(seed, i)))
    return conns


def _resolved(stack: HostStack, ip: bytes) -> bool:
    e = stack.neighbors.get(ip)
    return e is not None and e.mac is not None


def _start_host_side(stack: HostStack, scn: Scenario, conns: list[ConnRun], peer_ip: bytes) -> None:
    """Host clients for host-opened flows, listeners for peer-opened flows."""
    base = 0
    for f in scn.flows:
        mine = conns[base:base + f.count]
        base += f.count
        if f.open == "host":
            for c in mine:
                async def client(c: ConnRun = c, port: int = f.port) -> None:
                    if c.index > 0:  # one SYN resolves the peer's MAC, the rest wait for it
                        # (the neighbor queue holds 3 packets; more SYNs would be dropped)
                        await stack.scheduler.wait_until(lambda: _resolved(stack, peer_ip))
                    try:
                        r, w = await streams.open_connection(stack, peer_ip, port)
                    except Exception as exc:
                        c.error = f"connect: {type(exc).__name__}: {exc}"
                        c.done = True
                        return
                    await _host_app(stack, c, r, w)

                stack.scheduler.spawn(client(), name=f"conn{c.index}")
        else:
            queue = list(mine)

            async def handler(r: streams.StreamReader, w: streams.StreamWriter,
                              queue: list[ConnRun] = queue) -> None:
                if not queue:
                    w.abort()
                    return
                await _host_app(stack, queue.pop(0), r, w)

            streams.start_server(stack, handler, f.port)


def _run_sim(scn: Scenario, opts: RunOptions, seed: int, paths: dict[str, str],
             say: Progress) -> dict[str, Any]:
    from vnic.pcapng import PcapngWriter
    from vnic.simwire import SimWire

    rng = random.Random(seed)
    host_ip, peer_ip = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    cfg = TcpConfig(msl=1.0)
    oh = build_offload_host(b"\x02\x76\x6e\x00\x00\x02", host_ip, 24, capacity=scn.run.capacity,
                            tcp_config=cfg, rng=random.Random(rng.getrandbits(64)),
                            checker=scn.run.checker, strict=False, name="host")
    peer = HostStack(b"\x02\x76\x6e\x00\x00\x01", peer_ip, 24, tcp_config=cfg,
                     rng=random.Random(rng.getrandbits(64)), name="peer")
    conns = _make_conns(scn, seed)
    peer_results: dict[int, dict[str, Any]] = {}  # by the host's port of the connection
    for f in scn.flows:
        n_accepted = [0]
        if f.open == "host":
            async def handler(r: streams.StreamReader, w: streams.StreamWriter, f: Any = f,
                              n: list[int] = n_accepted) -> None:
                k = n[0]
                n[0] += 1
                host_port = w.get_extra_info("peername")[1]
                res: dict[str, Any] = {"error": None}
                peer_results[host_port] = res
                s = connection_seed(seed + PEER_SEED_OFFSET + 7919 * f.index, k)
                await _sim_peer_app(peer, f, s, res, r, w)

            streams.start_server(peer, handler, f.port)
        else:
            for k in range(f.count):
                async def client(f: Any = f, k: int = k) -> None:
                    res: dict[str, Any] = {"error": None}
                    if k > 0:
                        await peer.scheduler.wait_until(lambda: _resolved(peer, host_ip))
                    try:
                        r, w = await streams.open_connection(peer, host_ip, f.port)
                    except Exception as exc:
                        res.update(error=f"connect: {exc}", done=True)
                        peer_results[-1 - len(peer_results)] = res
                        return
                    # keyed by the peer's own port (= the host connection's remote port)
                    peer_results[100000 + w.get_extra_info("sockname")[1]] = res
                    s = connection_seed(seed + PEER_SEED_OFFSET + 7919 * f.index, k)
                    await _sim_peer_app(peer, f, s, res, r, w)

                peer.scheduler.spawn(client())
    capture = PcapngWriter(paths["capture"], time_base=0.0)
    recorder = _handoff_recorder(capture, oh)
    faults = _wire_faults(scn, seed)
    sampler = SeqSampler(oh.node, lambda: 0.0, resolution=0.0002)
    # captured where each node sends (before wire faults): the capture shows every frame the
    # host and the target built, so the handoff rules see the first frame after a resume
    wire = SimWire(sampler, peer, faults=faults, capture=capture, capture_point="send",
                   annotate=recorder.annotate if recorder is not None else None,
                   latency=200e-6, bandwidth=12.5e6, max_steps=200_000_000)
    sampler.clock = wire.clock.now
    ctl = Controller(scn, oh, conns, seed, wire.clock.now, virtual=True, say=say, live=opts.live,
                     live_interval=opts.live_interval)
    ctl.sampler = sampler
    ctl.watch_handoffs()
    ctl.install_fault_gates(faults)
    wire.deadline_sources.append(ctl.next_deadline)
    _start_host_side(oh.stack, scn, conns, peer_ip)

    def peer_result(c: ConnRun) -> dict[str, Any] | None:
        if c.flow.open == "host":
            return peer_results.get(c.local_port)
        return peer_results.get(c.remote_port + 100000)

    def finished() -> bool:
        for c in conns:
            if c.sock is not None and (c.local_port, c.remote_port) not in ctl.by_port:
                ctl.by_port[(c.local_port, c.remote_port)] = c
        ctl.tick()
        if not all(c.done for c in conns):
            return False
        return all((peer_result(c) or {}).get("done") or c.sock is None for c in conns)

    completed = wire.run_until(finished, timeout=scn.run.timeout)
    ctl.finish()
    for c in conns:
        c.peer = peer_result(c)
    return {"mode": "sim", "completed": completed, "simulated_seconds": round(wire.now, 6),
            "oh": oh, "conns": conns, "ctl": ctl, "capture": capture, "recorder": recorder,
            "sampler": sampler, "faults": faults, "wire": wire.stats.as_dict(),
            "time_base": 0.0, "lab": None, "kernel_view": None}


def _agent_args(f: Any, lab: Any, seed: int, timeout: float) -> tuple[str, list[str]]:
    role = {"up": "sink", "down": "source", "both": "both"}[f.direction]
    args = ["--port", str(f.port), "--connections", str(f.count), "--size", str(f.bytes),
            "--seed", str(seed + PEER_SEED_OFFSET + 7919 * f.index)]
    if f.pause is not None and f.pause.side == "peer":
        args += ["--pause-after", str(f.pause.at_bytes), "--pause-for", str(f.pause.seconds)]
    if f.peer_rcvbuf:
        args += ["--rcvbuf", str(f.peer_rcvbuf)]
    if f.open == "host":
        return role, args + ["--accept-timeout", str(timeout)]
    return "connect", args + ["--role", role, "--connect", lab.host_ip]


def _run_tap(scn: Scenario, opts: RunOptions, seed: int, paths: dict[str, str],
             say: Progress) -> dict[str, Any]:
    import contextlib

    from vnic.lab import Lab
    from vnic.loop import RunLoop
    from vnic.pcapng import PcapngWriter
    from vnic.peer import PeerAgent

    rng = random.Random(seed)
    conns = _make_conns(scn, seed)
    agents: list[tuple[Any, PeerAgent]] = []
    capture = PcapngWriter(paths["capture"])
    kernel: dict[str, Any] | None = None
    peer_cap: Any = None
    try:
        with Lab() as lab, contextlib.ExitStack() as cleanup:
            say(f"lab {lab.namespace}: host {lab.host_ip} behind TAP {lab.tap_name}, "
                f"Linux peer {lab.peer_ip}")
            if opts.kernel_view:
                peer_cap = _start_peer_capture(lab, cleanup)
            oh = build_offload_host(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                                    capacity=scn.run.capacity,
                                    rng=random.Random(rng.getrandbits(64)),
                                    checker=scn.run.checker, strict=False, name="host")
            recorder = _handoff_recorder(capture, oh)
            faults = _wire_faults(scn, seed)
            from vnic.clock import RealClock

            clock = RealClock()
            sampler = SeqSampler(oh.node, clock.now, resolution=0.001)
            loop = RunLoop(lab.tap, sampler, clock, capture=capture, faults=faults,
                           annotate=recorder.annotate if recorder is not None else None)
            ctl = Controller(scn, oh, conns, seed, clock.now, virtual=False, say=say,
                             live=opts.live, live_interval=opts.live_interval)
            ctl.sampler = sampler
            ctl.watch_handoffs()
            ctl.install_fault_gates(faults)
            loop.deadline_sources.append(ctl.next_deadline)
            _start_host_side(oh.stack, scn, conns, lab.peer_ip_bytes)
            for f in scn.flows:
                if f.open == "host":
                    mode, args = _agent_args(f, lab, seed, scn.run.timeout)
                    agent = PeerAgent.start(lab, mode, *args)
                    cleanup.callback(agent.stop)
                    agent.wait_ready(15.0)
                    agents.append((f, agent))
            for f in scn.flows:
                if f.open == "peer":
                    mode, args = _agent_args(f, lab, seed, scn.run.timeout)
                    agent = PeerAgent.start(lab, mode, *args)
                    cleanup.callback(agent.stop)
                    agents.append((f, agent))

            def finished() -> bool:
                for c in conns:
                    if c.sock is not None and (c.local_port, c.remote_port) not in ctl.by_port:
                        ctl.by_port[(c.local_port, c.remote_port)] = c
                ctl.tick()
                if not all(c.done for c in conns):
                    return False
                return all(a.poll_result() is not None for _f, a in agents)

            completed = loop.run_until(finished, timeout=scn.run.timeout)
            ctl.finish()
            # the kernel's last ACKs / FINs: let the loop answer while the agents report
            loop.run_until(lambda: all(a.poll_result() is not None or a.proc.poll() is not None
                                       for _f, a in agents), 5.0)
            _match_agent_results(conns, agents)
            if peer_cap is not None:
                capture.flush()
                kernel = _stop_peer_capture(peer_cap, capture.frames, loop.run_until,
                                            paths["kernel_pcap"])
            result = {"mode": "tap", "completed": completed, "oh": oh, "conns": conns,
                      "ctl": ctl, "capture": capture, "recorder": recorder, "sampler": sampler,
                      "faults": faults, "loop": loop.stats.as_dict(), "time_base": capture.time_base,
                      "lab": lab.describe(), "kernel_view": kernel}
            for _f, a in agents:
                a.stop()
            return result
    except BaseException:
        capture.close()
        raise


def _start_peer_capture(lab: Any, cleanup: Any) -> Any:
    """tcpdump in the peer namespace (:mod:`vnic.kernel_view`), or a dict saying why not."""
    try:
        from vnic.kernel_view import PeerCapture
    except ImportError:
        return {"error": "vnic.kernel_view is not in this tree"}
    try:
        pc = PeerCapture(lab)
        cleanup.enter_context(pc)
        return pc
    except Exception as exc:  # the second view is optional: say why it is missing
        log.warning("kernel-side capture unavailable: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _stop_peer_capture(pc: Any, frames: int, run_until: Any, dest: str) -> dict[str, Any]:
    """Wait (running the loop) until tcpdump has written every frame of our own capture, stop
    it, keep its file next to ours and analyse it with tshark."""
    if isinstance(pc, dict):
        return {"available": False, **pc}
    try:
        import shutil

        from vnic.kernel_view import analyze_with_tshark

        pc.wait_for_packets(frames, run_until, 10.0)
        stats = pc.stop()
        shutil.move(str(pc.path), dest)
        pc.path = Path(dest)
        out = analyze_with_tshark(pc)
        return {"available": True, "path": dest, "tcpdump": stats, **out}
    except Exception as exc:  # the second view is optional: say why it is missing
        log.warning("kernel-side view failed: %s", exc)
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}


def _match_agent_results(conns: list[ConnRun], agents: list[tuple[Any, Any]]) -> None:
    for f, agent in agents:
        res = agent.poll_result() or {}
        by_port: dict[int, dict[str, Any]] = {}
        for pc in res.get("connections", []) or []:
            # listening agent: "peer" is the host's end; connecting agent: "local" is its own end
            field = "peer" if f.open == "host" else "local"
            try:
                by_port[int(str(pc.get(field, ":0")).rsplit(":", 1)[1])] = pc
            except ValueError:
                continue
        for c in conns:
            if c.flow is not f:
                continue
            key = c.local_port if f.open == "host" else c.remote_port
            c.peer = by_port.get(key)
            if c.peer is None and res.get("event") == "error":
                c.peer = {"error": res.get("error")}


# ------------------------------------------------------------------------------------ the report


def _conn_report(c: ConnRun) -> dict[str, Any]:
    f = c.flow
    peer = c.peer or {}
    dirs: dict[str, Any] = {}
    if f.sends_up:
        dirs["up"] = {"bytes_sent": c.sent.count, "sha256_sent": c.sent.hexdigest(),
                      "bytes_received": peer.get("bytes_received", 0),
                      "sha256_received": peer.get("sha256_received")}
    if f.sends_down:
        dirs["down"] = {"bytes_sent": peer.get("bytes_sent", 0), "sha256_sent": peer.get("sha256_sent"),
                        "bytes_received": c.received.count, "sha256_received": c.received.hexdigest()}
    for d in dirs.values():
        d["intact"] = (d["bytes_sent"] == f.bytes and d["bytes_received"] == f.bytes
                       and d["sha256_sent"] == d["sha256_received"])
    error = c.error or peer.get("error")
    if c.peer is None and c.sock is not None:
        error = error or "the peer reported nothing for this connection"
    return {
        "index": c.index, "flow": f.name, "name": c.name, "local_port": c.local_port,
        "remote_port": c.remote_port, "opened_by": f.open,
        "directions": dirs, "intact": error is None and all(d["intact"] for d in dirs.values())
        and bool(dirs), "error": error, "rsts": c.rsts, "late_rsts": c.late_rsts,
        "offloads": c.offloads, "uploads": c.uploads, "offload_failures": c.offload_failures,
        "target_requests": c.target_requests, "final_offload_state": str(c.phase),
        "handoffs": c.handoffs,
        "zero_window_steps": c.cycle.zw_steps if c.cycle else 0,
    }


def _finish(scn: Scenario, opts: RunOptions, seed: int, mode: str, paths: dict[str, str],
            r: dict[str, Any], say: Progress) -> dict[str, Any]:
    conns: list[ConnRun] = r["conns"]
    oh: OffloadHost = r["oh"]
    ctl: Controller = r["ctl"]
    capture = r["capture"]
    recorder = r["recorder"]
    sampler: SeqSampler = r["sampler"]
    for c in conns:
        c.rsts = sampler.rsts.get((c.local_port, c.remote_port), 0)
        c.late_rsts = sampler.late_rsts.get((c.local_port, c.remote_port), 0)
    conn_reports = [_conn_report(c) for c in conns]
    if recorder is not None:
        try:
            recorder.record_info({"scenario": scn.run.name, "mode": mode, "seed": seed,
                                  "connections": len(conns)})
            for c, cr in zip(conns, conn_reports, strict=True):
                if c.sock is None:
                    continue
                for d, x in cr["directions"].items():
                    wire_dir = "host->peer" if d == "up" else "peer->host"
                    if x["sha256_sent"] is not None:
                        recorder.record_digest(c.sock, wire_dir, x["bytes_sent"], x["sha256_sent"],
                                               side="sent")
                    if x["sha256_received"] is not None:
                        recorder.record_digest(c.sock, wire_dir, x["bytes_received"],
                                               x["sha256_received"], side="received")
        except Exception as exc:
            log.warning("could not record digests in the capture: %s", exc)
    capture.close()
    say(f"capture: {paths['capture']} ({capture.frames} frames)")
    handoffs = sum(c.offloads + c.uploads for c in conns)
    checker = oh.checker
    violations = [str(v) for v in checker.violations] if checker is not None else []
    report: dict[str, Any] = {
        "scenario": scn.as_dict(), "name": scn.run.name, "mode": mode, "seed": seed,
        "completed": r["completed"], "wall_seconds": r.get("wall_seconds"),
        "simulated_seconds": r.get("simulated_seconds"),
        "connections": conn_reports,
        "handoffs": handoffs,
        "offloads": sum(c.offloads for c in conns), "uploads": sum(c.uploads for c in conns),
        "target_requests": sum(c.target_requests for c in conns),
        "upload_all": ctl.upload_all_count,
        "chimney": dict(oh.chimney.counters),
        "target_statistics": _target_statistics(oh),
        "conformance_violations": violations[:20],
        "conformance_violation_count": len(violations),
        "events": ctl.events[-2000:],
        "target_faults": ctl.target_faults,
        "target_fault_log": ctl.fault_log[-2000:],
        "faults": r["faults"].counters() if r["faults"] is not None else None,
        # the gate of faults.during/frames/nth, per direction: windows that saw an eligible
        # frame, frames handed to the injector (its counters say what it did to them)
        "fault_gate": ctl.gate_stats if ctl.injectors else None,
        # the host stack's IPv4 reassembly (fragments come up the ordinary receive path, T.9)
        "reassembly": oh.stack.reassembly.counters.as_dict(),
        "files": {k: v for k, v in paths.items() if k != "dir" and (k != "kernel_pcap"
                                                                   or os.path.exists(v))},
        "directory": paths["dir"],
    }
    for k in ("wire", "loop", "lab", "note"):
        if r.get(k) is not None:
            report[k] = r[k]
    if opts.picture:
        try:
            from vnic.picture import render_seqtime

            render_seqtime(_picture_data(scn, conns, r["sampler"], ctl), paths["png"], paths["svg"],
                           title=f"{scn.run.name} ({mode}, seed {seed})")
            say(f"picture: {paths['png']}")
        except Exception as exc:
            log.exception("picture failed")
            report["picture_error"] = f"{type(exc).__name__}: {exc}"
    report["verify"], vrep = _verify(paths["capture"], opts.verify)
    if vrep is not None:
        report["verify"]["failed_rules"] = _failed_rules(vrep, conns)
    kernel = r.get("kernel_view")
    if kernel is not None:
        if kernel.get("available") and vrep is not None:
            try:
                from vnic.kernel_view import compare_with_capture

                kernel.update(compare_with_capture(kernel, vrep))
            except Exception as exc:
                kernel["compare_error"] = f"{type(exc).__name__}: {exc}"
        report["kernel_view"] = kernel
    report["expectations"] = _expectations(scn, report)
    report["ok"] = all(e["ok"] is not False for e in report["expectations"])
    report["exit_status"] = EXIT_OK if report["ok"] else EXIT_FAILED
    with open(paths["report"], "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True, default=str)
    return report


def _verify(path: str, enabled: bool) -> tuple[dict[str, Any], Any]:
    """(the verifier's result as a dict, its VerifyReport or None)."""
    if not enabled:
        return {"available": False, "reason": "disabled"}, None
    try:
        from vnic.verify import verify_capture
    except ImportError:
        return {"available": False, "reason": "vnic.verify is not in this tree"}, None
    try:
        rep = verify_capture(path)
        out = rep.as_dict() if hasattr(rep, "as_dict") else {}
        return {"available": True, "ok": bool(rep.ok),
                "failures": [str(f) for f in rep.failures][:50],
                **{k: v for k, v in out.items() if k not in ("ok", "failures")}}, rep
    except Exception as exc:  # a verifier crash is a failed check, not a crashed run
        log.exception("verify failed")
        return {"available": True, "ok": False,
                "failures": [f"verifier crashed: {type(exc).__name__}: {exc}"]}, None


def _failed_rules(vrep: Any, conns: list[ConnRun]) -> list[dict[str, Any]]:
    """The verifier's failures as (rule, connection index): its connection names are
    ``host ip:port-peer ip:port``."""
    by_ports = {(c.local_port, c.remote_port): c.index for c in conns}
    out = []
    for f in getattr(vrep, "failures", []):
        conn = None
        try:
            local, remote = str(f.conn).split("-", 1)
            conn = by_ports.get((int(local.rsplit(":", 1)[1]), int(remote.rsplit(":", 1)[1])))
        except (ValueError, IndexError):
            pass
        out.append({"rule": f.rule, "conn": conn, "text": str(f)})
    return out


def _verify_expectation(e: Any, v: dict[str, Any], lost: set[int]) -> tuple[bool | None, str]:
    """``verify`` / ``verify_fails``: the verifier's failures, less those a lost connection
    makes by being lost (LOSS_RULES on a connection of ``expect.lost``) and the digest
    mismatch of a damaged one (``expect.damaged``: its data differs by design)."""
    damaged = set(e.damaged)
    if not v.get("available"):
        return None, f"not evaluated: {v.get('reason')}"
    failed = v.get("failed_rules")
    if failed is None:  # no report (the verifier crashed): its failures as they are
        failed = [{"rule": "?", "conn": None, "text": t} for t in v.get("failures") or ["?"]]
    rest = [f for f in failed if not (f["conn"] in lost and f["rule"] in LOSS_RULES)
            and not (f["conn"] in damaged and f["rule"] == "digest-match")]
    excused = len(failed) - len(rest)
    note = f" ({excused} failures of lost / damaged connections excused)" if excused else ""
    if not e.verify_fails:
        if not rest:
            return True, "capture verified" + note
        return False, f"verify failed: {rest[0]['text']}"
    seen = list(dict.fromkeys(f["rule"] for f in rest))
    missing = [r for r in e.verify_fails if r not in seen]
    if missing:
        return False, (f"the verifier did not report {', '.join(missing)} (failed: "
                       f"{', '.join(seen) or 'nothing'})")
    return True, f"the verifier failed as expected: {', '.join(seen)}{note}"


def _expectations(scn: Scenario, rep: dict[str, Any]) -> list[dict[str, Any]]:
    e = scn.expect
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append({"name": name, "ok": ok, "detail": detail})

    conns = rep["connections"]
    add("completed", bool(rep["completed"]),
        "every connection finished" if rep["completed"] else "timed out before every connection finished")
    lost = set(e.lost)
    if lost:
        # lost: the connection did not arrive intact and an application saw it end with an
        # error (the host's: ConnectionResetError; the peer's: the RST that follows)
        missed = [i for i in e.lost if conns[i]["intact"] or not conns[i]["error"]]
        add("lost", not missed, f"connections {e.lost} lost as expected" if not missed else
            f"expected lost but not: connections {missed[:10]} "
            f"({'intact' if conns[missed[0]]['intact'] else 'no error'})")
    if e.damaged:
        # damaged: the data arrived wrong (not intact), but no application saw an error
        missed = [i for i in e.damaged if conns[i]["intact"] or conns[i]["error"]]
        add("damaged", not missed, f"connections {e.damaged} damaged as expected" if not missed
            else f"expected damaged but not: connections {missed[:10]} "
                 f"({'intact' if conns[missed[0]]['intact'] else conns[missed[0]]['error']})")
    faulted = lost | set(e.damaged)
    others = "" if not faulted else " (the connections not expected lost or damaged)"
    if e.intact:
        bad_c = [c for c in conns if not c["intact"] and c["index"] not in faulted]
        bad = [c["index"] for c in bad_c]
        add("intact", not bad, f"every stream intact{others}" if not bad else
            f"not intact: connections {bad[:10]} ({bad_c[0]['error'] or 'digest mismatch'})")
    if e.no_rst:
        bad = [c["index"] for c in conns if c["rsts"] and c["index"] not in lost]
        add("no_rst", not bad, f"no RST{others}" if not bad else f"RSTs on connections {bad[:10]}")
    if e.min_handoffs:
        add("min_handoffs", rep["handoffs"] >= e.min_handoffs,
            f"{rep['handoffs']} handoffs (at least {e.min_handoffs} expected)")
    if e.conformance and not rep["scenario"]["run"]["checker"]:
        add("conformance", None, "not evaluated: the conformance checker is off ([run] checker)")
    elif e.conformance:
        n = rep["conformance_violation_count"]
        add("conformance", n == 0, "no NDIS rule broken" if n == 0 else
            f"{n} conformance violations, first: {rep['conformance_violations'][0]}")
    if e.verify:
        ok, detail = _verify_expectation(e, rep["verify"], lost)
        add("verify_fails" if e.verify_fails else "verify", ok, detail)
    if e.kernel_view:
        k = rep.get("kernel_view")
        if not k or not k.get("available"):
            add("kernel_view", None, "not evaluated: " + (str(k.get("error")) if k else "sim run"))
        elif "agrees" not in k:
            add("kernel_view", None, f"not compared: {k.get('compare_error', 'no verifier report')}")
        elif (k.get("tcpdump") or {}).get("dropped"):
            add("kernel_view", None, f"not evaluated: tcpdump in the peer namespace dropped "
                                     f"{k['tcpdump']['dropped']} frames (the second view is "
                                     f"incomplete); {len(k.get('disagreements') or [])} differences")
        else:
            dis = k.get("disagreements") or []
            add("kernel_view", bool(k["agrees"]),
                f"tshark in the peer namespace agrees ({k.get('tcp_frames')} TCP frames, "
                f"{k.get('rsts')} RSTs)" if k["agrees"] else f"disagrees: {dis[0] if dis else '?'}")
    return out


def _picture_data(scn: Scenario, conns: list[ConnRun], sampler: SeqSampler,
                  ctl: Controller) -> dict[str, Any]:
    out = []
    for c in conns:
        series = {}
        for d, name in ((0, "up"), (1, "down")):
            pts = sampler.series.get((c.local_port, c.remote_port, d), [])
            series[name] = [(ctl.rel(t), y, who) for t, y, who in pts]
        port = c.local_port if c.flow.open == "host" else c.remote_port
        out.append({"index": c.index, "label": f"conn {c.index} :{port} ({c.flow.name})",
                    "up": series["up"], "down": series["down"], "intervals": c.intervals,
                    "handoffs": c.handoffs})
    return {"connections": out, "name": scn.run.name}


def render_report(rep: dict[str, Any]) -> str:
    lines = [f"vnic run {rep['name']} ({rep['mode']}, seed {rep['seed']}): "
             f"{len(rep['connections'])} connection(s), {rep['handoffs']} handoffs "
             f"({rep['offloads']} offloads, {rep['uploads']} uploads, "
             f"{rep['target_requests']} target requests, {rep['upload_all']} upload-all), "
             f"{rep['wall_seconds']} s wall" + (f", {rep['simulated_seconds']} s simulated"
                                               if rep.get("simulated_seconds") is not None else "")]
    if rep.get("note"):
        lines.append(f"  note: {rep['note']}")
    for c in rep["connections"]:
        parts = []
        for d, x in c["directions"].items():
            parts.append(f"{d} {x['bytes_received']}/{x['bytes_sent']} B "
                         f"{'intact' if x['intact'] else 'NOT INTACT'}")
        port = c["local_port"] if c.get("opened_by", "host") == "host" else c.get("remote_port", 0)
        lines.append(f"  conn {c['index']:3d} :{port:<5d} {'; '.join(parts)}; "
                     f"offloads {c['offloads']} uploads {c['uploads']} RSTs {c['rsts']}"
                     + (f"  error: {c['error']}" if c["error"] else ""))
    names = {"a_to_b": "host->peer", "b_to_a": "peer->host"}
    during = ((rep.get("scenario") or {}).get("faults") or {}).get("during", "")
    for d, fc in (rep.get("faults") or {}).items():
        acted = {k: v for k, v in fc.items() if v and k not in ("frames_in", "eligible", "delivered")}
        if acted:
            gate = (rep.get("fault_gate") or {}).get(d)
            lines.append(f"  wire faults {names.get(d, d)}: {fc['eligible']} of {fc['frames_in']} "
                         "frames eligible"
                         + (f" ({gate['targeted']} in {gate['windows']} {during} windows)"
                            if gate else "")
                         + "; " + ", ".join(f"{k} {v}" for k, v in acted.items()))
    ra = rep.get("reassembly") or {}
    if ra.get("fragments_in"):
        lost = {k: v for k, v in ra.items() if v and k not in ("fragments_in", "reassembled")}
        lines.append(f"  host IPv4 reassembly: {ra['reassembled']} datagrams from "
                     f"{ra['fragments_in']} fragments" + "".join(f", {k} {v}" for k, v in lost.items())
                     + f"; {rep['chimney'].get('forwarded', 0)} segments forwarded to the target")
    for f in rep.get("target_faults") or []:
        args = " ".join(f"{k}={v}" for k, v in f.items() if k not in ("t", "entry", "fault", "conn"))
        who = f"conn {f['conn']}" if f["conn"] is not None else "target"
        lines.append(f"  fault t={f['t']:.4f}s {who}: {f['fault']} {args}".rstrip())
    for e in rep["expectations"]:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[e["ok"]]
        lines.append(f"  [{mark}] {e['name']}: {e['detail']}")
    lines.append(f"  report:  {rep['files']['report']}")
    lines.append(f"  capture: {rep['files']['capture']}")
    lines.append(f"  picture: {rep['files']['png']}  {rep['files']['svg']}")
    lines.append("verdict: " + ("ok: every expectation holds" if rep["ok"]
                                else "FAILED: " + ", ".join(e["name"] for e in rep["expectations"]
                                                            if e["ok"] is False)))
    return "\n".join(lines)


def scenario_files(directory: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(directory).glob("*.toml"))
