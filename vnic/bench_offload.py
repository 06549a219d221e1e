"""``vnic bench offload``: one bulk connection while it runs in the host stack and while it is
offloaded to the emulated NIC, measured side by side on the same connection in one run.

Each direction is one connection in three phases: ``size`` bytes with the connection in the
host stack, then it is offloaded (:func:`vnic.offload_lab.build_offload_host`) and ``size``
more bytes move, then it is terminated and closed from the host.  The stream must arrive intact
(byte count and SHA-256 at both ends), so the figures are of a working handoff.

* upload (host -> peer): a phase ends when every byte written was acknowledged (the socket's
  send space is back to its idle value);
* download (peer -> host): the peer sends ``2 * size``; the host phase ends when ``size`` bytes
  were read, the offloaded phase measures from the offload completing to the last byte.

Wires:

* ``sim``: the in-memory wire on a virtual clock.  The peer is a second host whose connection
  is offloaded in both phases (so the peer's cost is the same on both sides of the ratio); the
  figures are wall-clock MB/s of the whole simulation and, next to them, "host side" MB/s: bytes
  per second of wall-clock time spent inside the measured host's node (its CPU cost).
* ``tap``: a lab (TAP + namespace, torn down afterwards), the Linux kernel as the peer through
  the traffic agent (``python -m vnic.peer sink`` / ``source``), the run loop in real time.
  Measured in two modes, each in its own lab: one MTU frame per TAP write/read (``tap``), and
  with virtio-net offload on the TAP (``tap_offload``, ``Lab(tap_offload=True)``), where both
  phases send TCP super-segments that the kernel segments (the host stack with
  ``TcpConfig.tso_max``, the NIC's data path with ``configure(tso_max=)``) and receive GRO'd.

What is timed, in both phases alike: the applications' writes and reads and everything below
them.  Not timed: generating the (deterministic) payload, which ``write`` does before the phase,
and SHA-256, which runs over the bytes counted during the phase after it ends
(:class:`DeferredDigest`); the check is the same (byte count and digest at both ends).

No ConformanceChecker runs here (it is a test instrument, not part of the data path).
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tcpip import streams
from tcpip.offload import ChimneyPolicy
from tcpip.offload_socket import TcpSocket
from vnic.node import batch_receiver
from vnic.offload_lab import OffloadHost, build_offload_host, has_datapath
from vnic.payload import DeferredDigest, PayloadStream

Progress = Callable[[str], None]
RunUntil = Callable[[Callable[[], bool], float], bool]

PORT = 5001
CHUNK = 64 * 1024  # bytes per application write
READ_SIZE = 1 << 20  # bytes per application read (at most)
GOAL_RATIO = 5.0
PHASE_TIMEOUT = 600.0
PEER_SEED = 424242


class _NodeTimer:
    """FrameNode wrapper adding up the wall-clock time spent inside the wrapped node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.seconds = 0.0

    def receive_frame(self, frame: bytes, now: float) -> None:
        t = time.perf_counter()
        self.node.receive_frame(frame, now)
        self.seconds += time.perf_counter() - t

    def receive_frames(self, frames: list[bytes], now: float) -> None:
        # forwards the wire's batches (vnic.node.FrameNode) so that the timer does not turn
        # them back into per-frame calls
        t = time.perf_counter()
        batch = batch_receiver(self.node)  # (the one rule for when the batch form applies)
        if batch is not None:
            batch(frames, now)
        else:
            for frame in frames:
                self.node.receive_frame(frame, now)
        self.seconds += time.perf_counter() - t

    def poll(self, now: float) -> list[bytes]:
        t = time.perf_counter()
        out = self.node.poll(now)
        self.seconds += time.perf_counter() - t
        return out  # type: ignore[no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[no-any-return]


class _Connection:
    """The host's end of the measured connection and what its application did.

    ``sent`` / ``received`` count every byte as it moves and hash it later
    (:class:`DeferredDigest`); ``write`` cuts the payload into chunks before it starts the
    writer, so neither payload generation nor hashing runs inside a measured phase.
    """

    def __init__(self, oh: OffloadHost, reader: streams.StreamReader,
                 writer: streams.StreamWriter) -> None:
        self.oh = oh
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("connection")
        assert isinstance(sock, TcpSocket)
        self.sock = sock
        self.sent = DeferredDigest()
        self.received = DeferredDigest()
        self.eof = False
        self.error: str | None = None
        self.writing = False
        self.stream = PayloadStream(1, None)

    def write(self, size: int) -> None:
        self.writing = True
        # the payload is deterministic: generate it now, before the caller starts its clock
        # (it stays in memory until written and hashed: ``size`` bytes)
        chunks: deque[bytes] = deque()
        left = size
        while left:
            chunk = self.stream.read(min(CHUNK, left))
            if not chunk:
                break  # a bounded stream ended
            chunks.append(chunk)
            left -= len(chunk)

        async def writer() -> None:
            try:
                while chunks:
                    chunk = chunks.popleft()  # (from here on only the digest holds it)
                    self.writer.write(chunk)
                    self.sent.update(chunk)  # what the application wrote (hashed later)
                    await self.writer.drain()
            except Exception as exc:  # reported in the result
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.writing = False

        self.oh.stack.scheduler.spawn(writer(), name="bench-writer")

    def read(self) -> None:
        async def reader() -> None:
            try:
                while data := await self.reader.read(READ_SIZE):
                    self.received.update(data)
                self.eof = True
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"

        self.oh.stack.scheduler.spawn(reader(), name="bench-reader")

    def idle_send_space(self) -> int:
        return self.sock.send_space()


def _phase_upload(conn: _Connection, run_until: RunUntil, size: int, timer: _NodeTimer | None,
                  ) -> dict[str, float]:
    full = conn.idle_send_space()
    conn.write(size)
    t0 = time.perf_counter()
    c0 = timer.seconds if timer else 0.0
    ok = run_until(lambda: (not conn.writing and conn.sock.send_space() >= full)
                   or conn.error is not None, PHASE_TIMEOUT)
    dt = time.perf_counter() - t0
    if not ok or conn.error:
        raise RuntimeError(f"upload phase did not finish: {conn.error or 'timeout'}")
    return _figures(size, dt, (timer.seconds - c0) if timer else None)


def _figures(nbytes: int, seconds: float, host_seconds: float | None) -> dict[str, float]:
    out = {"bytes": nbytes, "seconds": round(seconds, 6),
           "mbytes_per_s": round(nbytes / max(seconds, 1e-9) / 1e6, 3)}
    if host_seconds is not None:
        out["host_side_seconds"] = round(host_seconds, 6)
        out["host_side_mbytes_per_s"] = round(nbytes / max(host_seconds, 1e-9) / 1e6, 3)
    return out


def _offload(conn: _Connection, run_until: RunUntil) -> None:
    if not conn.oh.offload(conn.sock, run_until, 10.0):
        raise RuntimeError(f"the connection was not offloaded ({conn.sock.offload_state})")


def _upload(conn: _Connection, run_until: RunUntil) -> None:
    if not conn.oh.upload(conn.sock, run_until, 10.0):
        raise RuntimeError(f"the connection did not come back ({conn.sock.offload_state})")


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str = "mbytes_per_s") -> float | None:
    if key not in a or key not in b or not a[key]:
        return None
    return round(b[key] / a[key], 3)


def _direction_result(host: dict[str, Any], off: dict[str, Any], intact: bool,
                      extra: dict[str, Any]) -> dict[str, Any]:
    r = {"host": host, "offloaded": off, "ratio": _ratio(host, off), "intact": intact, **extra}
    if "host_side_mbytes_per_s" in host:
        r["host_side_ratio"] = _ratio(host, off, "host_side_mbytes_per_s")
    return r


# ------------------------------------------------------------------------------------ simulation


def _sim_world() -> tuple[OffloadHost, OffloadHost, Any, _NodeTimer]:
    from vnic.simwire import SimWire

    # one send NBL per application write (CHUNK bytes) at both ends, as a protocol driver
    # hands the target the application's buffer; the policy's default cuts each write into
    # 16 KiB NBLs, four NBL round trips through NDIS per write.  The host-stack phase has no
    # NBLs at all, so this only sets how the offloaded path is driven.
    host = build_offload_host(b"\x02\x76\x6e\x00\x00\x02", bytes([198, 18, 0, 2]), 24,
                              rng=random.Random(1), checker=False, watch=False, name="host",
                              policy=ChimneyPolicy(send_chunk=CHUNK))
    peer = build_offload_host(b"\x02\x76\x6e\x00\x00\x01", bytes([198, 18, 0, 1]), 24,
                              rng=random.Random(2), checker=False, watch=False, name="peer",
                              policy=ChimneyPolicy(receive_limit=4 << 20, send_chunk=CHUNK))
    timer = _NodeTimer(host.node)
    wire = SimWire(timer, peer.node, latency=50e-6, bandwidth=None, max_steps=500_000_000)
    return host, peer, wire, timer


def _flush(*conns: _Connection) -> None:
    """Hash what the connections' digests kept so far (call it outside the timed phases)."""
    for c in conns:
        c.sent.flush()
        c.received.flush()


def _sim_direction(size: int, direction: str) -> dict[str, Any]:
    host, peer, wire, timer = _sim_world()

    def run_until(pred: Callable[[], bool], timeout: float) -> bool:
        return wire.run_until(pred, timeout)

    accepted: list[_Connection] = []

    async def handler(r: streams.StreamReader, w: streams.StreamWriter) -> None:
        accepted.append(_Connection(peer, r, w))

    streams.start_server(peer.stack, handler, PORT)
    got: list[_Connection] = []

    async def client() -> None:
        r, w = await streams.open_connection(host.stack, peer.stack.ip, PORT)
        got.append(_Connection(host, r, w))

    host.stack.scheduler.spawn(client())
    if not run_until(lambda: bool(got) and bool(accepted), 10.0):
        raise RuntimeError("the simulated connection did not open")
    h, p = got[0], accepted[0]
    p.stream = PayloadStream(PEER_SEED, None)
    _offload(p, run_until)  # the peer runs on its NIC in both phases
    if direction == "up":
        p.received.reserve(size + CHUNK)  # a phase's worth, reused after each flush
        p.read()
        host_fig = _phase_upload(h, run_until, size, timer)
        _flush(h, p)  # between the timed phases: bounds the bytes kept for hashing
        _offload(h, run_until)
        off_fig = _phase_upload(h, run_until, size, timer)
        _upload(h, run_until)
        h.writer.close()
        run_until(lambda: p.eof or p.error is not None, 60.0)
        intact = (p.received.count == h.sent.count == 2 * size
                  and p.received.hexdigest() == h.sent.hexdigest() and not (h.error or p.error))
    else:
        h.received.reserve(size + READ_SIZE)  # a phase's worth, reused after each flush
        h.read()
        p.write(2 * size)
        host_fig, off_fig = _phases_download(h, run_until, size, timer, flush=(p,))
        _upload(h, run_until)
        p.writer.close()
        run_until(lambda: h.eof or h.error is not None, 60.0)
        intact = (h.received.count == p.sent.count == 2 * size
                  and h.received.hexdigest() == p.sent.hexdigest() and not (h.error or p.error))
    return _direction_result(host_fig, off_fig, intact,
                             {"simulated_seconds": round(wire.now, 6)})


def _phases_download(h: _Connection, run_until: RunUntil, size: int, timer: _NodeTimer | None,
                     *, flush: tuple[_Connection, ...] = ()) -> tuple[dict[str, float], dict[str, float]]:
    t0 = time.perf_counter()
    c0 = timer.seconds if timer else 0.0
    if not run_until(lambda: h.received.count >= size or h.error is not None, PHASE_TIMEOUT) \
            or h.error:
        raise RuntimeError(f"download (host phase) did not finish: {h.error or 'timeout'}")
    host_fig = _figures(h.received.count, time.perf_counter() - t0,
                        (timer.seconds - c0) if timer else None)
    _flush(h, *flush)  # between the timed phases: bounds the bytes kept for hashing
    _offload(h, run_until)
    start = h.received.count
    t1 = time.perf_counter()
    c1 = timer.seconds if timer else 0.0
    if not run_until(lambda: h.received.count >= 2 * size or h.error is not None, PHASE_TIMEOUT) \
            or h.error:
        raise RuntimeError(f"download (offloaded phase) did not finish: {h.error or 'timeout'}")
    off_fig = _figures(h.received.count - start, time.perf_counter() - t1,
                       (timer.seconds - c1) if timer else None)
    return host_fig, off_fig


def run_sim(size: int, progress: Progress | None = None, *,
            directions: tuple[str, ...] = ("up", "down")) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    out: dict[str, Any] = {"wire": "sim"}
    for direction in directions:
        say(f"sim: {direction}load, {size} bytes in the host stack then {size} offloaded")
        out[direction] = _sim_direction(size, direction)
    return out


# -------------------------------------------------------------------------------------- TAP lab


def _agent_cpu() -> tuple[str, ...]:
    """``--cpu N`` for the kernel side's agent: one CPU (the last this process may use) when
    there are several.  Left to the scheduler, its threads' placement made about one run in
    three of the offloaded upload over TAP ~40% slower (2 CPUs: ~320 instead of ~480 MB/s,
    on every commit tried); pinned, 8 runs of 8 were at ~420-520 MB/s.  The agent is the
    test's load generator, not the system measured, and it serves both phases alike."""
    cpus = sorted(os.sched_getaffinity(0))
    return ("--cpu", str(cpus[-1])) if len(cpus) > 1 else ()


def _tap_direction(lab: Any, size: int, direction: str, say: Progress) -> dict[str, Any]:
    from vnic.loop import RunLoop
    from vnic.peer import PeerAgent
    from vnic.transfer import TSO_MAX

    # with virtio-net offload on the TAP both phases send super-segments: the host stack
    # (TcpConfig.tso_max, as ``vnic transfer --tap-offload``) and the NIC's data path
    tso_max = TSO_MAX if lab.tap_offload else 0
    oh = build_offload_host(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                            rng=random.Random(7), checker=False, watch=False, name="host",
                            tso_max=tso_max)
    loop = RunLoop(lab.tap, oh.node)

    def run_until(pred: Callable[[], bool], timeout: float) -> bool:
        return loop.run_until(pred, timeout)

    mode = "sink" if direction == "up" else "source"
    # --offline-digest: the kernel side's payload generation and SHA-256 run before and after
    # the transfer (as the host side's do, DeferredDigest), not on the CPU the transfer needs
    agent = PeerAgent.start(lab, mode, "--port", str(PORT), "--connections", "1",
                            "--size", str(2 * size), "--seed", str(PEER_SEED),
                            "--accept-timeout", str(PHASE_TIMEOUT), "--offline-digest",
                            "--expect", str(2 * size if direction == "up" else 0),
                            *_agent_cpu())
    try:
        if not run_until(lambda: agent.poll_result() is not None or agent.ready is not None
                         or agent.proc.poll() is not None, 15.0) or agent.ready is None:
            raise RuntimeError(f"the peer agent did not start: {agent.stderr[-500:]}")
        got: list[_Connection] = []

        async def client() -> None:
            r, w = await streams.open_connection(oh.stack, lab.peer_ip_bytes, PORT)
            got.append(_Connection(oh, r, w))

        oh.stack.scheduler.spawn(client())
        if not run_until(lambda: bool(got), 10.0):
            raise RuntimeError("the connection to the kernel peer did not open")
        h = got[0]
        if direction == "up":
            host_fig = _phase_upload(h, run_until, size, None)
            _offload(h, run_until)
            off_fig = _phase_upload(h, run_until, size, None)
            _upload(h, run_until)
            h.writer.close()
            h.read()
        else:
            h.received.reserve(size + READ_SIZE)  # as on the simulated wire: no page faults
            h.read()                              # inside the timed phases
            host_fig, off_fig = _phases_download(h, run_until, size, None)
            _upload(h, run_until)
            run_until(lambda: h.eof or h.error is not None, 60.0)
            h.writer.close()
        if not run_until(lambda: agent.poll_result() is not None, 60.0):
            raise RuntimeError(f"the peer agent gave no result: {agent.stderr[-500:]}")
        result = agent.wait_result(10.0)
        conns = result.get("connections") or [{}]
        c = conns[0]
        if direction == "up":
            intact = (c.get("bytes_received") == h.sent.count == 2 * size
                      and c.get("sha256_received") == h.sent.hexdigest())
        else:
            intact = (c.get("bytes_sent") == h.received.count == 2 * size
                      and c.get("sha256_sent") == h.received.hexdigest())
        intact = intact and not h.error and not c.get("error")
        dp = oh.target.table.datapath_counters()
        rings = lab.tap.ring_stats()
        # the TX writer's scheduling (vnic.tap.TX_PRIORITY): may it run SCHED_FIFO, and how
        # many bursts it wrote at SCHED_FIFO (both phases alike: the lab's TAP serves both)
        tx_sched = ({"realtime": rings["tx"].get("realtime"), "boosts": rings["tx"].get("boosts")}
                    if rings else None)
        return _direction_result(host_fig, off_fig, bool(intact),
                                 {"loop": loop.stats.as_dict(), "offloads": oh.chimney.counters["offloads"],
                                  "tx_ring_sched": tx_sched,
                                  "target_frames_out": dp.get("frames_out"),
                                  "target_tso_frames_out": dp.get("tso_frames_out")})
    finally:
        agent.stop()


def run_tap(size: int, progress: Progress | None = None, *, tap_offload: bool = False,
            directions: tuple[str, ...] = ("up", "down")) -> dict[str, Any]:
    """The TAP part in one mode: one MTU frame per write/read (``tap_offload=False``), or with
    virtio-net offload (``Lab(tap_offload=True)``): TCP super-segments both ways, sent by the
    host stack and by the NIC alike (TSO) and received GRO'd."""
    from vnic.lab import Lab
    from vnic.transfer import TSO_MAX

    say = progress or (lambda _m: None)
    name = "tap offload" if tap_offload else "tap"
    out: dict[str, Any] = {"wire": "tap", "tap_offload": tap_offload,
                           "tso_max": TSO_MAX if tap_offload else 0}
    with Lab(tap_offload=tap_offload) as lab:
        say(f"lab {lab.namespace}: host {lab.host_ip} behind TAP {lab.tap_name}, "
            f"Linux peer {lab.peer_ip}" + (" (virtio-net offload)" if tap_offload else ""))
        out["lab"] = lab.name
        for direction in directions:
            say(f"{name}: {direction}load, {size} bytes in the host stack then {size} offloaded")
            out[direction] = _tap_direction(lab, size, direction, say)
    return out


#: ``--only`` values: one part of the benchmark (``MODE`` or ``MODE:DIRECTION``)
ONLY_MODES = ("sim", "tap", "tap_offload")


def parse_only(only: str | None) -> tuple[str | None, tuple[str, ...]]:
    """``"tap_offload:down"`` -> ``("tap_offload", ("down",))``; ``None`` -> everything.
    Raises ValueError on anything else."""
    if not only:
        return None, ("up", "down")
    mode, _, direction = only.partition(":")
    if mode not in ONLY_MODES or direction not in ("", "up", "down"):
        raise ValueError(f"--only {only!r}: expected MODE[:up|down], MODE one of "
                         + ", ".join(ONLY_MODES))
    return mode, (direction,) if direction else ("up", "down")


def run(size: int, progress: Progress | None = None, *, tap: bool = True,
        only: str | None = None) -> dict[str, Any]:
    """The whole benchmark; ``tap=False`` runs the simulated part only; ``only``
    (``MODE[:DIRECTION]``, :func:`parse_only`) runs one part (for iterating on one figure)."""
    if not has_datapath():
        from vnic.cli import UsageError

        raise UsageError("the offload target's C data path is not built "
                         "(python setup.py build_ext --inplace)")
    mode, dirs = parse_only(only)
    sim = run_sim(size, progress, directions=dirs) if mode in (None, "sim") else None
    result: dict[str, Any] = {"bytes": size, "goal_ratio": GOAL_RATIO, "mtu": 1500, "sim": sim}
    # the TAP part in both modes: per-frame, then virtio-net offload (TSO/GRO) in both phases
    result["tap"] = (run_tap(size, progress, directions=dirs)
                     if tap and mode in (None, "tap") else None)
    result["tap_offload"] = (run_tap(size, progress, tap_offload=True, directions=dirs)
                             if tap and mode in (None, "tap_offload") else None)
    parts = [p for p in (result["sim"], result["tap"], result["tap_offload"]) if p]
    result["intact"] = all(p[d]["intact"] for p in parts for d in ("up", "down") if d in p)
    return result


def render(r: dict[str, Any]) -> str:
    lines = [f"vnic bench offload ({r['bytes']} bytes per phase, one connection per direction; "
             f"goal: offloaded >= {r['goal_ratio']:g}x the host stack)"]
    for key, title in (("sim", "simulated wire (peer offloaded too)"),
                       ("tap", "TAP, Linux kernel peer"),
                       ("tap_offload", "TAP with virtio-net offload (TSO/GRO super-segments "
                                       "in both phases), Linux kernel peer")):
        part = r.get(key)
        if not part:
            lines.append(f"  {title}: not run" + (f" ({r['tap_skipped']})"
                                                   if key != "sim" and r.get("tap_skipped") else ""))
            continue
        lines.append(f"  {title}:")
        for d in ("up", "down"):
            if d not in part:
                continue
            x = part[d]
            line = (f"    {d + 'load':9s} host stack {x['host']['mbytes_per_s']:9.2f} MB/s   "
                    f"offloaded {x['offloaded']['mbytes_per_s']:9.2f} MB/s   "
                    f"ratio {x['ratio']}")
            if "host_side_ratio" in x:
                line += (f"   (host side: {x['host']['host_side_mbytes_per_s']:.1f} -> "
                         f"{x['offloaded']['host_side_mbytes_per_s']:.1f} MB/s, "
                         f"ratio {x['host_side_ratio']})")
            line += "" if x["intact"] else "   NOT INTACT"
            lines.append(line)
    lines.append("verdict: " + ("every stream intact" if r["intact"] else "FAILED: a stream is not intact"))
    return "\n".join(lines)
