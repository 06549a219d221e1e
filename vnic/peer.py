"""The kernel-side traffic agent: ``python -m vnic.peer MODE ...`` inside the peer namespace.

Modes (``--connect HOST`` makes any of them open actively instead of listening):

- ``sink``    accept ``--connections`` connections on ``--port``, read everything, report
              bytes + SHA-256 per connection;
- ``source``  send ``--size`` bytes of the deterministic stream (:mod:`vnic.payload`, seed
              ``--seed + connection index``) on each connection, report the SHA-256 sent;
- ``both``    send and receive at the same time on each connection;
- ``connect`` shorthand for ``--role`` (default ``both``) with ``--connect HOST``;
- ``ping``    ICMP echo to ``--connect HOST`` (raw socket) and report the replies.

For throughput benchmarks, ``--offline-digest`` keeps the agent's own work out of the transfer:
the payload of every connection is generated and hashed before ``ready``, and received bytes are
copied into a buffer (``--expect BYTES`` reserves it) and hashed after EOF.  Same report, same
digests; it costs memory (the whole stream).

Knobs for tests: ``--pause-after BYTES --pause-for SECONDS`` stops reading for a while (zero
window), ``--rcvbuf``/``--sndbuf``, ``--keepalive`` (+ idle/interval/count), ``--close`` order
(``first``: FIN as soon as our sending is done; ``wait``: FIN only after the peer's FIN;
``rst``: abort with SO_LINGER 0 when done), ``--abort-after BYTES`` (RST after that many bytes
received).

Output is JSON lines on stdout: ``{"event": "ready", ...}`` once listening (or before connecting),
then ``{"event": "result", "connections": [...], "ok": bool}`` at the end. The exit status is 0
when every connection completed without error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from vnic.payload import DeferredDigest, PayloadStream, StreamDigest, connection_seed

CHUNK = 256 * 1024


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


class _Prepared:
    """``--offline-digest`` sending: the payload generated and hashed before the transfer;
    ``count`` bytes of it were sent (the digest is of those: the whole payload's, precomputed,
    unless the transfer stopped early)."""

    __slots__ = ("data", "count", "_full")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.count = 0
        self._full = hashlib.sha256(data).hexdigest()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.count += len(data)

    def hexdigest(self) -> str:
        if self.count == len(self.data):
            return self._full
        return hashlib.sha256(memoryview(self.data)[:self.count]).hexdigest()


def prepare_payloads(a: argparse.Namespace, role: str) -> list[_Prepared] | None:
    """The payloads of ``--offline-digest`` (None without it, or when this role sends
    nothing)."""
    if not a.offline_digest or role not in ("source", "both"):
        return None
    return [_Prepared(PayloadStream(connection_seed(a.seed, i), a.size).read(a.size))
            for i in range(a.connections)]


class ConnectionJob:
    """One connection: sender and receiver halves, each on its own thread when both run."""

    def __init__(self, sock: socket.socket, index: int, args: argparse.Namespace, role: str,
                 prepared: _Prepared | None = None) -> None:
        self.sock = sock
        self.index = index
        self.args = args
        self.role = role
        self.prepared = prepared
        self.sent: StreamDigest | _Prepared = prepared if prepared is not None else StreamDigest()
        self.received = StreamDigest()
        if getattr(args, "offline_digest", False):
            deferred = DeferredDigest()
            if args.expect:
                deferred.reserve(args.expect)
            self.received = deferred
        self.error: str | None = None
        self.aborted = False
        self.eof = False
        self.started = time.monotonic()
        self.finished = self.started
        self._send_done = threading.Event()
        self._lock = threading.Lock()
        try:
            peer = sock.getpeername()
            local = sock.getsockname()
            self.peer = f"{peer[0]}:{peer[1]}"
            self.local = f"{local[0]}:{local[1]}"
        except OSError:
            self.peer = self.local = "?"

    def _fail(self, msg: str) -> None:
        with self._lock:
            # After a RST exactly one blocked call gets ECONNRESET; the other thread's call
            # sees EPIPE (send) or EOF (recv), and either thread may get here first: keep the
            # reset as the reason.
            if self.error is None or ("reset" in msg.lower() and "reset" not in self.error.lower()):
                self.error = msg

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        self.aborted = True

    def _chunks(self) -> Iterator[bytes | memoryview]:
        """What to send, chunk by chunk: slices of the prepared payload (--offline-digest),
        else the stream generated as it goes."""
        a = self.args
        if self.prepared is not None:
            with memoryview(self.prepared.data) as view:
                for off in range(0, len(view), a.chunk):
                    yield view[off:off + a.chunk]
            return
        stream = PayloadStream(connection_seed(a.seed, self.index), a.size)
        while chunk := stream.read(a.chunk):
            yield chunk

    def _send(self) -> None:
        try:
            for chunk in self._chunks():
                self.sock.sendall(chunk)
                self.sent.update(chunk)
            if self.args.close == "first":
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fail(f"send: {exc}")
        finally:
            self._send_done.set()

    def _receive(self) -> None:
        a = self.args
        paused = a.pause_after is None
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                limit = CHUNK
                if not paused:
                    limit = max(1, min(CHUNK, a.pause_after - self.received.count))
                n = self.sock.recv_into(buf, limit)
                if n == 0:
                    self.eof = True
                    return
                self.received.update(view[:n])
                if not paused and self.received.count >= a.pause_after:
                    paused = True
                    time.sleep(a.pause_for)
                if a.abort_after is not None and self.received.count >= a.abort_after:
                    self._abort()
                    return
        except OSError as exc:
            if not self.aborted:
                self._fail(f"receive: {exc}")

    def run(self) -> None:
        a = self.args
        try:
            if self.role == "sink" and a.close == "first":
                self.sock.shutdown(socket.SHUT_WR)
            sender = None
            if self.role in ("source", "both"):
                sender = threading.Thread(target=self._send, daemon=True)
                sender.start()
            if self.role in ("sink", "both") or a.close in ("first", "wait"):
                # a source drains until the peer's FIN too (clean close, no RST on unread data)
                self._receive()
            if sender is not None and not self.aborted:
                sender.join()  # (after an abort the sender fails on its own; it is a daemon)
            if not self.aborted:
                if a.close == "rst":
                    self._abort()
                else:
                    if a.close == "wait" and self.role != "sink":
                        with contextlib.suppress(OSError):
                            self.sock.shutdown(socket.SHUT_WR)
                    self.sock.close()
        except OSError as exc:
            self._fail(str(exc))
        finally:
            self.finished = time.monotonic()
            with contextlib.suppress(OSError):
                self.sock.close()

    def report(self) -> dict[str, Any]:
        seconds = max(self.finished - self.started, 1e-9)
        return {
            "index": self.index,
            "peer": self.peer,
            "local": self.local,
            "role": self.role,
            "seed": connection_seed(self.args.seed, self.index),
            "bytes_sent": self.sent.count,
            "sha256_sent": self.sent.hexdigest(),
            "bytes_received": self.received.count,
            "sha256_received": self.received.hexdigest(),
            "eof": self.eof,
            "aborted": self.aborted,
            "error": self.error,
            "seconds": round(seconds, 6),
            "mbps_received": round(self.received.count / seconds / 1e6, 3),
            "mbps_sent": round(self.sent.count / seconds / 1e6, 3),
        }


def _configure(sock: socket.socket, a: argparse.Namespace) -> None:
    if a.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    if a.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, a.sndbuf)
    if a.nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if a.keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, a.keepidle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, a.keepintvl)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, a.keepcnt)


def _serve(a: argparse.Namespace, role: str) -> list[ConnectionJob]:
    prepared = prepare_payloads(a, role)  # before "ready": not inside anyone's measurement
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _configure(listener, a)  # buffer sizes are inherited by accepted sockets (window scale!)
    listener.bind((a.bind, a.port))
    listener.listen(max(8, a.connections))
    port = listener.getsockname()[1]
    _emit({"event": "ready", "mode": role, "listen": f"{a.bind}:{port}", "port": port,
           "pid": os.getpid()})
    jobs: list[ConnectionJob] = []
    threads = []
    deadline = None if a.accept_timeout is None else time.monotonic() + a.accept_timeout
    try:
        while len(jobs) < a.connections:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([listener], [], [], wait)
            if not ready:
                break
            sock, _ = listener.accept()
            _configure(sock, a)
            i = len(jobs)
            job = ConnectionJob(sock, i, a, role, prepared[i] if prepared else None)
            jobs.append(job)
            t = threading.Thread(target=job.run, daemon=True)
            t.start()
            threads.append(t)
    finally:
        listener.close()
    for t in threads:
        t.join()
    return jobs


def _connect(a: argparse.Namespace, role: str) -> list[ConnectionJob]:
    prepared = prepare_payloads(a, role)
    _emit({"event": "ready", "mode": role, "connect": f"{a.connect}:{a.port}", "pid": os.getpid()})
    jobs: list[ConnectionJob] = []
    threads = []
    for i in range(a.connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _configure(sock, a)
        if a.source_port:
            sock.bind(("0.0.0.0", a.source_port + i))
        sock.settimeout(a.connect_timeout)
        try:
            sock.connect((a.connect, a.port))
        except OSError as exc:
            job = ConnectionJob(sock, i, a, role)
            job.error = f"connect: {exc}"
            jobs.append(job)
            sock.close()
            continue
        sock.settimeout(None)
        job = ConnectionJob(sock, i, a, role, prepared[i] if prepared else None)
        jobs.append(job)
        t = threading.Thread(target=job.run, daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return jobs


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ping(a: argparse.Namespace) -> dict[str, Any]:
    """ICMP echo with a raw socket (there may be no ``ping`` binary in the container)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    replies = []
    _emit({"event": "ready", "mode": "ping", "connect": a.connect, "pid": os.getpid()})
    try:
        for seq in range(1, a.count + 1):
            payload = b"vnic-ping-%d" % seq
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq) + payload
            sent_at = time.monotonic()
            sock.sendto(pkt, (a.connect, 0))
            deadline = sent_at + a.ping_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, addr = sock.recvfrom(65535)
                ihl = (data[0] & 0x0F) * 4
                icmp = data[ihl:]
                if len(icmp) < 8:
                    continue
                typ, _code, _ck, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if typ == 0 and rid == ident and rseq == seq and addr[0] == a.connect:
                    replies.append({"seq": seq, "rtt_ms": round((time.monotonic() - sent_at) * 1e3, 3)})
                    break
            if seq < a.count:
                time.sleep(a.interval)
    finally:
        sock.close()
    return {"event": "result", "mode": "ping", "sent": a.count, "received": len(replies),
            "replies": replies, "ok": len(replies) == a.count}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vnic.peer", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["sink", "source", "both", "connect", "ping"])
    p.add_argument("--role", choices=["sink", "source", "both"], default="both",
                   help="what `connect` mode does on each connection")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--connect", metavar="HOST", help="open actively to HOST:--port")
    p.add_argument("--source-port", type=int, default=0, help="first local port when connecting")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--size", type=int, default=1 << 20, help="bytes to send per connection")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk", type=int, default=CHUNK)
    p.add_argument("--offline-digest", action="store_true",
                   help="generate and hash the payload before 'ready', hash what arrives after "
                        "EOF: the agent's work stays out of the transfer (benchmarks)")
    p.add_argument("--expect", type=int, default=0,
                   help="with --offline-digest: bytes to reserve for what arrives")
    p.add_argument("--pause-after", type=int, help="stop reading after this many bytes ...")
    p.add_argument("--pause-for", type=float, default=1.0, help="... for this many seconds")
    p.add_argument("--abort-after", type=int, help="RST after receiving this many bytes")
    p.add_argument("--close", choices=["auto", "first", "wait", "rst"], default="auto")
    p.add_argument("--cpu", type=int, metavar="N",
                   help="run on CPU N only (sched_setaffinity; benchmarks: see vnic.bench_offload)")
    p.add_argument("--rcvbuf", type=int, default=0)
    p.add_argument("--sndbuf", type=int, default=0)
    p.add_argument("--nodelay", action="store_true")
    p.add_argument("--keepalive", action="store_true")
    p.add_argument("--keepidle", type=int, default=1)
    p.add_argument("--keepintvl", type=int, default=1)
    p.add_argument("--keepcnt", type=int, default=3)
    p.add_argument("--accept-timeout", type=float, default=None)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--count", type=int, default=1, help="ping: echo requests")
    p.add_argument("--interval", type=float, default=0.2, help="ping: seconds between requests")
    p.add_argument("--ping-timeout", type=float, default=2.0, help="ping: wait per reply")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.cpu is not None:
        # before any thread starts: the connection threads inherit it
        try:
            os.sched_setaffinity(0, {a.cpu})
        except (OSError, ValueError) as exc:
            _emit({"event": "error", "error": f"--cpu {a.cpu}: {exc}"})
            return 2
    if a.mode == "ping":
        if not a.connect:
            _emit({"event": "error", "error": "ping needs --connect HOST"})
            return 2
        result = _ping(a)
        _emit(result)
        return 0 if result["ok"] else 1
    role = a.role if a.mode == "connect" else a.mode
    if a.mode == "connect" and not a.connect:
        _emit({"event": "error", "error": "connect mode needs --connect HOST"})
        return 2
    if a.close == "auto":
        a.close = "wait" if role == "sink" else "first"
    started = time.monotonic()
    try:
        jobs = _connect(a, role) if a.connect else _serve(a, role)
    except OSError as exc:
        _emit({"event": "error", "error": str(exc)})
        return 1
    reports = [j.report() for j in jobs]
    ok = len(reports) == a.connections and all(r["error"] is None for r in reports)
    _emit({"event": "result", "mode": role, "connections": reports, "ok": ok,
           "seconds": round(time.monotonic() - started, 6)})
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------
# driving the agent from the host side (tests, scenarios, benchmarks)


class PeerAgent:
    """A running ``python -m vnic.peer`` in a namespace, with its JSON-lines output collected.

    ``PeerAgent.start(lab, "sink", "--port", "5001")`` (``lab`` is a :class:`vnic.lab.Lab` or a
    namespace name). A reader thread collects stdout lines so the single-threaded run loop can
    poll :meth:`poll_result` without blocking.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    @classmethod
    def start(cls, where: Any, mode: str, *args: str) -> PeerAgent:
        argv = [sys.executable, "-m", "vnic.peer", mode, *args]
        kwargs: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                  "text": True, "bufsize": 1}
        if isinstance(where, str):
            from vnic.lab import popen_in_namespace

            proc = popen_in_namespace(where, argv, **kwargs)
        else:
            proc = where.run_in_namespace(argv, **kwargs)
        return cls(proc)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "garbage", "line": line})

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _take(self, timeout: float | None) -> dict[str, Any] | None:
        try:
            ev = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return None
        if ev.get("event") == "ready":
            self.ready = ev
        elif ev.get("event") in ("result", "error"):
            self.result = ev
        return ev

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.ready is None:
            left = deadline - time.monotonic()
            if self.result is not None or left <= 0:
                raise RuntimeError(f"peer agent not ready: {self.result} {self.stderr[-2000:]}")
            self._take(min(left, 0.1))
            if self.ready is None and self.proc.poll() is not None and self.events.empty():
                self._reader.join(1.0)
                if self.events.empty():
                    raise RuntimeError(f"peer agent exited ({self.proc.returncode}): "
                                       f"{self.stderr[-2000:]}")
        return self.ready

    def poll_result(self) -> dict[str, Any] | None:
        """The final result if it has arrived (never blocks)."""
        while self.result is None and self._take(None) is not None:
            pass
        return self.result

    def wait_result(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"peer agent gave no result in {timeout}s: {self.stderr[-2000:]}")
            self._take(min(left, 0.1))
            if self.result is None and self.proc.poll() is not None:
                self._reader.join(1.0)
                while self._take(None) is not None:
                    pass
                if self.result is None:
                    raise RuntimeError(f"peer agent exited ({self.proc.returncode}) without a "
                                       f"result: {self.stderr[-2000:]}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2.0)
        return self.result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2.0)

    def __enter__(self) -> PeerAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
