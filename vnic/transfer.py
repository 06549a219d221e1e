"""``vnic transfer``: the host stack moves data to and from a peer and proves it arrived intact.

Over TAP the peer is the Linux kernel TCP stack in the lab namespace, driven by the traffic agent
:mod:`vnic.peer` (a source/sink that reports the SHA-256 of what it sent and received per
connection).  With ``--sim`` the peer is a second host stack on the in-memory wire with a virtual
clock, running the same source/sink roles as coroutines.

A stream is *intact* when the receiver counted exactly the bytes the sender sent and both computed
the same SHA-256 (:mod:`vnic.payload` makes the data deterministic per seed and connection).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tcpip import streams
from tcpip.addr import ip_str
from tcpip.stack import HostStack
from tcpip.tcp import TcpConfig
from vnic.faults import FaultSpec, WireFaults
from vnic.payload import PayloadStream, StreamDigest, connection_seed

log = logging.getLogger(__name__)

SERVICE_PORT = 5001
#: largest TCP payload of a super-segment: an IPv4 datagram is at most 65535 bytes, less the
#: IPv4 header and the largest TCP header
TSO_MAX = 65535 - 20 - 60
CHUNK = 64 * 1024
Progress = Callable[[str], None]


@dataclasses.dataclass
class TransferOptions:
    size: int = 16 << 20
    direction: str = "both"  # up = host -> peer, down = peer -> host
    connections: int = 1
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    fragment: float = 0.0  # probability a frame is split into IPv4 fragments (vnic.faults)
    fragment_size: int = 512  # payload octets per fragment (a multiple of 8)
    seed: int = 1
    sim: bool = False
    pcap: str | None = None
    timeout: float = 600.0
    progress: Progress | None = None
    tcp_config: TcpConfig | None = None
    tap_offload: bool = False  # TCP segmentation/checksum offload on the TAP (vnic.vnet)

    @property
    def sends_up(self) -> bool:
        return self.direction in ("up", "both")

    @property
    def sends_down(self) -> bool:
        return self.direction in ("down", "both")

    def wire_faults(self) -> WireFaults | None:
        if not (self.loss or self.reorder or self.duplicate or self.fragment):
            return None
        spec = FaultSpec(loss=self.loss, reorder=self.reorder, duplicate=self.duplicate,
                         fragment=self.fragment, fragment_size=self.fragment_size)
        return WireFaults.from_specs(spec, dataclasses.replace(spec), seed=self.seed)


@dataclasses.dataclass
class HostSide:
    """What the host application did on one connection."""

    index: int
    local_port: int = 0
    sent: StreamDigest = dataclasses.field(default_factory=StreamDigest)
    received: StreamDigest = dataclasses.field(default_factory=StreamDigest)
    started: float = 0.0
    finished: float = 0.0
    done: bool = False
    error: str | None = None
    connection: Any = None  # the TcpConnection, for counters
    # (rsts_in, rsts_out) when the application finished: both FINs were exchanged and every byte
    # was read, so a later RST (e.g. Linux answering our last duplicate ACKs after its LAST-ACK
    # ended, which ends our TIME-WAIT, RFC 9293 3.10.7.4) cannot have touched the data.
    rsts_at_done: tuple[int, int] | None = None


async def _host_client(stack: HostStack, peer_ip: bytes, opts: TransferOptions, side: HostSide) -> None:
    """One connection of the host application: send and/or receive, then close."""
    side.started = stack.now
    try:
        reader, writer = await streams.open_connection(stack, peer_ip, SERVICE_PORT)
        side.local_port = writer.get_extra_info("sockname")[1]
        side.connection = writer.get_extra_info("connection")
        if opts.sends_up:
            stream = PayloadStream(connection_seed(opts.seed, side.index), opts.size)
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
                side.sent.update(chunk)
                await writer.drain()
        # FIN after our data (or at once when we only receive); the peer's data keeps coming.
        writer.close()
        while data := await reader.read(CHUNK):
            side.received.update(data)
        await writer.wait_closed()
    except Exception as exc:  # reported per connection: the verdict names it
        side.error = f"{type(exc).__name__}: {exc}"
    finally:
        side.finished = stack.now
        side.done = True
        counters = getattr(side.connection, "counters", None)
        if counters is not None:
            side.rsts_at_done = (counters.rsts_in, counters.rsts_out)


async def _sim_peer_handler(reader: streams.StreamReader, writer: streams.StreamWriter,
                            opts: TransferOptions, peer_results: dict[int, dict[str, Any]],
                            seeds: dict[int, int]) -> None:
    """The simulated peer's side of one connection (the same roles as ``vnic.peer``)."""
    remote_port = writer.get_extra_info("peername")[1]
    index = len(peer_results)
    seed = connection_seed(opts.seed + 1_000_003, index)
    seeds[remote_port] = seed
    sent, received = StreamDigest(), StreamDigest()
    result: dict[str, Any] = {"peer": remote_port, "error": None}
    peer_results[remote_port] = result
    try:
        if opts.sends_down:
            stream = PayloadStream(seed, opts.size)
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
                sent.update(chunk)
                await writer.drain()
        writer.close()
        while data := await reader.read(CHUNK):
            received.update(data)
        await writer.wait_closed()
    except Exception as exc:  # reported per connection: the verdict names it
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(bytes_sent=sent.count, sha256_sent=sent.hexdigest(),
                  bytes_received=received.count, sha256_received=received.hexdigest(), done=True)


def _connection_report(side: HostSide, peer: dict[str, Any] | None, opts: TransferOptions) -> dict[str, Any]:
    seconds = max(side.finished - side.started, 1e-9)
    directions: dict[str, Any] = {}
    if opts.sends_up:
        got = peer or {}
        directions["up"] = _direction(
            sent=side.sent.count, sent_sha=side.sent.hexdigest(),
            received=got.get("bytes_received", 0), received_sha=got.get("sha256_received"),
            expected=opts.size, seconds=seconds)
    if opts.sends_down:
        got = peer or {}
        directions["down"] = _direction(
            sent=got.get("bytes_sent", 0), sent_sha=got.get("sha256_sent"),
            received=side.received.count, received_sha=side.received.hexdigest(),
            expected=opts.size, seconds=seconds)
    counters = side.connection.counters if side.connection is not None else None
    rsts_in, rsts_out = side.rsts_at_done or (getattr(counters, "rsts_in", 0),
                                              getattr(counters, "rsts_out", 0))
    report = {
        "index": side.index,
        "local_port": side.local_port,
        "directions": directions,
        "retransmissions": getattr(counters, "retransmissions", 0),
        "rsts_in": rsts_in,
        "rsts_out": rsts_out,
        # RSTs after the application was done (both FINs exchanged): not a verdict matter
        "late_rsts_in": getattr(counters, "rsts_in", 0) - rsts_in,
        "error": side.error or (peer or {}).get("error"),
        "seconds": round(seconds, 6),
    }
    if peer is None:
        report["error"] = report["error"] or "the peer reported nothing for this connection"
    report["intact"] = (report["error"] is None and report["rsts_in"] == 0
                        and report["rsts_out"] == 0
                        and all(d["intact"] for d in directions.values()))
    return report


def _direction(*, sent: int, sent_sha: str | None, received: int, received_sha: str | None,
               expected: int, seconds: float) -> dict[str, Any]:
    return {
        "bytes_sent": sent,
        "bytes_received": received,
        "sha256_sent": sent_sha,
        "sha256_received": received_sha,
        "intact": sent == expected and received == expected and sent_sha == received_sha,
        "mbytes_per_s": round(received / seconds / 1e6, 3),
    }


def _summarise(opts: TransferOptions, mode: str, sides: list[HostSide],
               peer_by_port: dict[int, dict[str, Any]], wall: float,
               extra: dict[str, Any]) -> dict[str, Any]:
    conns = [_connection_report(s, peer_by_port.get(s.local_port), opts) for s in sides]
    total = sum(d["bytes_received"] for c in conns for d in c["directions"].values())
    return {
        "mode": mode,
        "direction": opts.direction,
        "bytes_per_connection": opts.size,
        "connections": conns,
        "faults": {"loss": opts.loss, "reorder": opts.reorder, "duplicate": opts.duplicate,
                   "fragment": opts.fragment, "fragment_size": opts.fragment_size,
                   "seed": opts.seed},
        "seconds": round(wall, 3),
        "total_mbytes_per_s": round(total / max(wall, 1e-9) / 1e6, 3),
        "intact": all(c["intact"] for c in conns) and len(conns) == opts.connections,
        **extra,
    }


def _record_digests(capture: Any, t: float, host_ip: bytes, peer_ip: bytes,
                    sides: list[HostSide], peer_by_port: dict[int, dict[str, Any]],
                    opts: TransferOptions) -> None:
    """``stream-digest`` events for ``vnic verify``: per connection and direction, what the
    sending application sent and what the receiving one read (the peer's figures from its
    report), so the capture alone proves the wire stream equals the applications' bytes."""
    from vnic.capture import conn_name, write_digest

    for side in sides:
        if not side.local_port:
            continue
        name = conn_name(host_ip, side.local_port, peer_ip, SERVICE_PORT)
        got = peer_by_port.get(side.local_port) or {}
        if opts.sends_up:
            write_digest(capture, t, name, "host->peer", side.sent.count, side.sent.hexdigest())
            if got.get("sha256_received"):
                write_digest(capture, t, name, "host->peer", int(got.get("bytes_received", 0)),
                             str(got["sha256_received"]), side="received")
        if opts.sends_down:
            write_digest(capture, t, name, "peer->host", side.received.count,
                         side.received.hexdigest(), side="received")
            if got.get("sha256_sent"):
                write_digest(capture, t, name, "peer->host", int(got.get("bytes_sent", 0)),
                             str(got["sha256_sent"]))


# ------------------------------------------------------------------------------------ simulation


def _run_sim(opts: TransferOptions) -> dict[str, Any]:
    from vnic.pcapng import PcapngWriter
    from vnic.simwire import SimWire

    rng = random.Random(opts.seed)
    host = HostStack(b"\x02\x76\x6e\x00\x00\x02", bytes([198, 18, 0, 2]), 24,
                     tcp_config=opts.tcp_config, rng=random.Random(rng.getrandbits(64)), name="host")
    peer = HostStack(b"\x02\x76\x6e\x00\x00\x01", bytes([198, 18, 0, 1]), 24,
                     tcp_config=opts.tcp_config, rng=random.Random(rng.getrandbits(64)), name="peer")
    peer_results: dict[int, dict[str, Any]] = {}
    seeds: dict[int, int] = {}
    streams.start_server(peer, lambda r, w: _sim_peer_handler(r, w, opts, peer_results, seeds),
                         SERVICE_PORT)
    capture = PcapngWriter(opts.pcap) if opts.pcap else None
    try:
        wire = SimWire(host, peer, faults=opts.wire_faults(), capture=capture,
                       latency=100e-6, bandwidth=1.25e9, max_steps=50_000_000)
        sides = [HostSide(i) for i in range(opts.connections)]
        for side in sides:
            host.scheduler.spawn(_host_client(host, peer.ip, opts, side), name=f"client{side.index}")

        def finished() -> bool:
            return all(s.done for s in sides) and all(
                r.get("done") for r in peer_results.values()) and len(peer_results) >= len(
                [s for s in sides if s.local_port])

        start = time.monotonic()
        ok = wire.run_until(finished, timeout=opts.timeout)
        wall = time.monotonic() - start
        if capture is not None:
            _record_digests(capture, wire.now, host.ip, peer.ip, sides, peer_results, opts)
    finally:
        if capture is not None:
            capture.close()
    for side in sides:
        if not side.done:
            side.error = side.error or f"not finished after {opts.timeout} s of simulated time"
    return _summarise(opts, "sim", sides, peer_results, wall, {
        "simulated_seconds": round(wire.now, 6),
        "completed": ok,
        "pcap": opts.pcap,
        "wire": wire.stats.as_dict(),
    })


# -------------------------------------------------------------------------------------- TAP lab


def _peer_command(opts: TransferOptions) -> list[str]:
    role = {"up": "sink", "down": "source", "both": "both"}[opts.direction]
    return [sys.executable, "-m", "vnic.peer", role, "--port", str(SERVICE_PORT),
            "--connections", str(opts.connections), "--size", str(opts.size),
            "--seed", str(opts.seed + 1_000_003), "--accept-timeout", str(opts.timeout)]


def _run_tap(opts: TransferOptions) -> dict[str, Any]:
    from vnic.lab import Lab, popen_in_namespace
    from vnic.loop import RunLoop
    from vnic.pcapng import PcapngWriter

    say = opts.progress or (lambda _m: None)
    rng = random.Random(opts.seed)
    capture = PcapngWriter(opts.pcap) if opts.pcap else None
    agent: subprocess.Popen[str] | None = None
    try:
        with Lab(tap_offload=opts.tap_offload) as lab:
            say(f"lab {lab.namespace}: host {lab.host_ip} behind TAP {lab.tap_name}, "
                f"Linux peer {lab.peer_ip}")
            tcp_config = opts.tcp_config
            if opts.tap_offload:
                # the TAP segments at the MSS (vnic.vnet): send super-segments, like TSO
                tcp_config = dataclasses.replace(tcp_config or TcpConfig(), tso_max=TSO_MAX)
            stack = HostStack(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                              tcp_config=tcp_config, rng=random.Random(rng.getrandbits(64)),
                              name="host")
            agent = popen_in_namespace(lab.namespace, _peer_command(opts),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready = agent.stdout.readline() if agent.stdout else ""
            if '"ready"' not in ready:
                err = agent.stderr.read() if agent.stderr else ""
                raise RuntimeError(f"the peer agent did not start: {ready.strip()} {err.strip()}")
            loop = RunLoop(lab.tap, stack, capture=capture, faults=opts.wire_faults())
            sides = [HostSide(i) for i in range(opts.connections)]
            for side in sides:
                stack.scheduler.spawn(_host_client(stack, lab.peer_ip_bytes, opts, side),
                                      name=f"client{side.index}")
            start = time.monotonic()
            last_report = start

            def finished() -> bool:
                nonlocal last_report
                now = time.monotonic()
                if now - last_report >= 1.0:
                    last_report = now
                    moved = sum(s.sent.count + s.received.count for s in sides)
                    say(f"{now - start:5.1f} s  {moved / 1e6:9.1f} MB moved  "
                        f"{moved / (now - start) / 1e6:7.1f} MB/s")
                return all(s.done for s in sides) and agent.poll() is not None

            completed = loop.run_until(finished, timeout=opts.timeout)
            wall = time.monotonic() - start
            if agent.poll() is None:
                agent.terminate()
            out, err = agent.communicate(timeout=10)
            peer_report = _parse_agent_output(out)
            if not peer_report:
                log.warning("peer agent printed no result; stderr: %s", err.strip())
            peer_by_port = {}
            for conn in peer_report.get("connections", []):
                host_port = int(str(conn.get("peer", ":0")).rsplit(":", 1)[1] or 0)
                peer_by_port[host_port] = conn
            for side in sides:
                if not side.done:
                    side.error = side.error or f"not finished after {opts.timeout} s"
            if capture is not None:
                _record_digests(capture, loop.clock.now(), lab.host_ip_bytes, lab.peer_ip_bytes,
                                sides, peer_by_port, opts)
            return _summarise(opts, "tap", sides, peer_by_port, wall, {
                "completed": completed,
                "lab": lab.describe(),
                "peer_ip": ip_str(lab.peer_ip_bytes),
                "pcap": opts.pcap,
                "loop": loop.stats.as_dict(),
                "stack": stack.counters.as_dict() if hasattr(stack.counters, "as_dict") else {},
            })
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if capture is not None:
            capture.close()


def _parse_agent_output(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "result":
            return obj
    return {}


def run_transfer(opts: TransferOptions) -> dict[str, Any]:
    if opts.sim:
        return _run_sim(opts)
    from vnic.cli import UsageError
    from vnic.privileges import check_lab_privileges

    reason = check_lab_privileges()
    if reason:
        raise UsageError(f"{reason}; add --sim to run the same transfer on the simulated wire")
    return _run_tap(opts)


def render_result(result: dict[str, Any]) -> str:
    lines = [f"vnic transfer ({result['mode']}): {result['direction']}, "
             f"{len(result['connections'])} connection(s) x {result['bytes_per_connection']} bytes"]
    for c in result["connections"]:
        for name, d in c["directions"].items():
            verdict = "intact" if d["intact"] else "NOT INTACT"
            lines.append(
                f"  conn {c['index']:3d} :{c['local_port']:<5d} {name:4s} "
                f"{d['bytes_received']:>12d} B  {d['mbytes_per_s']:8.2f} MB/s  "
                f"sha256 {str(d['sha256_received'])[:12]}  {verdict}")
        lines.append(f"           retransmissions {c['retransmissions']}, RSTs in/out "
                     f"{c['rsts_in']}/{c['rsts_out']}" + (f", error: {c['error']}" if c["error"] else ""))
    lines.append(f"  total {result['total_mbytes_per_s']} MB/s over {result['seconds']} s wall clock"
                 + (f" ({result['simulated_seconds']} s simulated)" if "simulated_seconds" in result else ""))
    if result.get("pcap"):
        lines.append(f"  capture: {result['pcap']}")
    lines.append("verdict: " + ("every stream intact" if result["intact"] else "FAILED: a stream is not intact"))
    return "\n".join(lines)
