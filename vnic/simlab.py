"""A simulated lab: the emulated host with its chimney NIC and a peer host stack on an in-memory
wire, on a virtual clock, ready for a test to open connections, offload them and move data.

::

    SimLab.host (HostStack 198.18.0.2)                     SimLab.peer (HostStack 198.18.0.1)
      + chimney (ChimneyHost) --NDIS, checked-- target (OffloadTarget, C data path)
      = offload_host.node (NicNode in a WireWatch)  <-- SimLab.wire (SimWire) -->  peer

It is what :func:`vnic.offload_lab.build_offload_host` builds (HostStack + ChimneyHost + NDIS
under a strict :class:`~ndis.checker.ConformanceChecker` + OffloadTarget + NicNode) put on one
side of a :class:`~vnic.simwire.SimWire`, with a second, plain HostStack on the other side as
the peer; plus the few conveniences every handoff test needs: :meth:`SimLab.connect` returns a
:class:`SimConnection` whose two :class:`Endpoint` applications read everything that arrives and
write what they are given, :meth:`SimLab.offload` / :meth:`SimLab.upload` drive a handoff to its
completion, and :meth:`SimLab.run_until` raises :class:`SimTimeout` (with the chimney's and the
target's state) instead of returning False, so a test that hangs says where.

The peer is a Python stack, not a kernel: on the virtual clock a run is a pure function of its
seed (a failing seed replays exactly) and thousands of handoffs take seconds.  The same steps
against the Linux kernel run on a TAP lab (:class:`vnic.lab.Lab`, a :class:`vnic.loop.RunLoop`
and the ``vnic.peer`` agent).  The pytest plugin (:mod:`vnic.pytest_plugin`) hands one out as
the ``vnic_sim_lab`` fixture.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.offload import ChimneyPolicy
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig
from vnic.clock import VirtualClock
from vnic.faults import WireFaults
from vnic.offload_lab import OffloadHost, WireWatch, build_offload_host, has_datapath
from vnic.simwire import SimWire

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PORT",
    "Endpoint",
    "SimConnection",
    "SimLab",
    "SimTimeout",
    "build_sim_lab",
    "open_endpoint",
]

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
HOST_MAC, PEER_MAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"
DEFAULT_PORT = 5001
_WRITE_CHUNK = 64 * 1024


class SimTimeout(TimeoutError):
    """A :meth:`SimLab.run_until` condition did not hold within its virtual timeout."""


class Endpoint:
    """One application end of a connection, on the stack's scheduler.

    It reads everything that arrives into :attr:`received` (until EOF, unless :attr:`paused`:
    then the receive window closes as in any application that stops reading) and writes what
    :meth:`send` queues, in order.  Errors (a reset, a refused write) are kept in :attr:`error`
    rather than raised, because they happen inside the simulation where no caller could catch
    them; :meth:`SimLab.assert_clean` reports them.
    """

    def __init__(self, stack: HostStack, reader: StreamReader, writer: StreamWriter, *,
                 read: bool = True, chunk: int = 65536) -> None:
        self.stack = stack
        self.reader = reader
        self.writer = writer
        self.chunk = chunk
        self.received = bytearray()
        self.queued = 0  # bytes given to send()
        self._queued_hash = hashlib.sha256()  # of those bytes (for the capture's digests)
        self.sent = 0  # bytes written and drained (taken by the stack or the offload target)
        self.eof = False  # the other side's FIN arrived (every byte before it is in received)
        self.closed = False  # our FIN was sent after everything queued
        self.paused = False
        self.error: BaseException | None = None
        self._queue: collections.deque[bytes] = collections.deque()
        self._closing = False
        self._writing = False
        if read:
            stack.scheduler.spawn(self._read_loop(), name=f"{stack.name} reader")

    def __repr__(self) -> str:
        return (f"<Endpoint {self.stack.name} received={len(self.received)} sent={self.sent}/"
                f"{self.queued} eof={self.eof} closed={self.closed} error={self.error!r}>")

    @property
    def sock(self) -> TcpSocket:
        """The stack's socket record of this end (on the host: the one to offload)."""
        s = self.writer.get_extra_info("connection")
        assert isinstance(s, TcpSocket), s
        return s

    @property
    def queued_sha256(self) -> str:
        """SHA-256 (hex) of everything :meth:`send` was given."""
        return self._queued_hash.hexdigest()

    @property
    def write_done(self) -> bool:
        """Everything :meth:`send` queued has been written and drained."""
        return self.sent >= self.queued and not self._queue

    def send(self, data: bytes | bytearray | memoryview, *, close: bool = False) -> None:
        """Queue ``data`` (written in order after what is already queued); ``close``: send a
        FIN after it."""
        data = bytes(data)
        for i in range(0, len(data), _WRITE_CHUNK):
            self._queue.append(data[i:i + _WRITE_CHUNK])
        self.queued += len(data)
        self._queued_hash.update(data)
        if close:
            self._closing = True
        self._kick()

    def close(self) -> None:
        """Send a FIN once everything queued is written (reading goes on until EOF)."""
        self._closing = True
        self._kick()

    def abort(self) -> None:
        """Reset the connection now (RST), dropping whatever is still queued."""
        self._queue.clear()
        self.writer.abort()

    def pause(self) -> None:
        """Stop reading: data stays in the stack (or the offload target) and the window closes
        (a read already waiting when this is called still completes once)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def _kick(self) -> None:
        if not self._writing and not self.closed:
            self._writing = True
            self.stack.scheduler.spawn(self._write_loop(), name=f"{self.stack.name} writer")

    async def _write_loop(self) -> None:
        try:
            while self._queue:
                piece = self._queue.popleft()
                self.writer.write(piece)
                await self.writer.drain()
                self.sent += len(piece)
            if self._closing and not self.closed:
                self.writer.close()
                self.closed = True
        except Exception as exc:  # noqa: BLE001 - kept for the test to see (see the docstring)
            log.info("%s writer: %s", self.stack.name, exc)
            self.error = self.error or exc
        finally:
            self._writing = False

    async def _read_loop(self) -> None:
        sched = self.stack.scheduler
        try:
            while True:
                if self.paused:
                    await sched.wait_until(lambda: not self.paused)
                data = await self.reader.read(self.chunk)
                if not data:
                    self.eof = True
                    return
                self.received += data
        except Exception as exc:  # noqa: BLE001 - kept for the test to see
            log.info("%s reader: %s", self.stack.name, exc)
            self.error = self.error or exc


def open_endpoint(stack: HostStack, host: str | bytes, port: int,
                  run_until: Callable[[Callable[[], bool], float], bool], *,
                  timeout: float = 5.0, read: bool = True) -> Endpoint:
    """Connect ``stack`` to ``host:port`` and return the :class:`Endpoint` once established.

    ``run_until(predicate, timeout) -> bool`` drives whatever wire the stack is on: a
    :class:`vnic.loop.RunLoop` over a TAP lab (real seconds, the kernel as the peer) or
    :meth:`SimLab.try_run_until` (virtual seconds).  Raises ``ConnectionRefusedError`` /
    ``TimeoutError`` as :func:`tcpip.streams.open_connection` does, and ``TimeoutError`` when
    nothing happened within ``timeout``.
    """
    got: list[Any] = []

    async def open_it() -> None:
        try:
            got.append(await open_connection(stack, host, port))
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the stack's tasks
            got.append(exc)

    stack.scheduler.spawn(open_it(), name=f"connect {host!r}:{port}")
    if not run_until(lambda: bool(got), timeout):
        raise TimeoutError(f"connection to {host!r}:{port} not established in {timeout}s")
    if isinstance(got[0], BaseException):
        raise got[0]
    reader, writer = got[0]
    return Endpoint(stack, reader, writer, read=read)


@dataclasses.dataclass(eq=False)
class SimConnection:
    """A connection between the host stack (:attr:`host`) and the peer stack (:attr:`peer`),
    whichever side opened it."""

    host: Endpoint
    peer: Endpoint

    @property
    def sock(self) -> TcpSocket:
        """The host's socket: what ``ChimneyHost.offload`` / ``terminate`` take."""
        return self.host.sock

    @property
    def offload_state(self) -> OffloadState:
        return self.sock.offload_state

    def delivered(self) -> bool:
        """Everything either end queued so far has arrived at the other (a predicate for
        :meth:`SimLab.run_until`)."""
        return (len(self.peer.received) >= self.host.queued
                and len(self.host.received) >= self.peer.queued)

    def finished(self) -> bool:
        """Both ends saw the other's FIN, or one of them failed (a predicate)."""
        return (self.host.eof and self.peer.eof) or self.error is not None

    @property
    def error(self) -> BaseException | None:
        return self.host.error or self.peer.error


ConnLike = SimConnection | TcpSocket


@dataclasses.dataclass(eq=False)
class SimLab:
    """The emulated host with the chimney NIC, a peer stack and the wire (module docstring).

    Build it with :func:`build_sim_lab`.  ``host``/``chimney``/``target``/``checker`` are
    shortcuts into :attr:`offload_host`; ``watch`` records per connection which frames the
    target built (``out_from_target``) and every RST.
    """

    offload_host: OffloadHost
    peer: HostStack
    wire: SimWire
    capture: Any = None  # a PcapngWriter when built with capture=
    recorder: Any = None  # its vnic.capture.HandoffRecorder
    connections: list[SimConnection] = dataclasses.field(default_factory=list)
    _accepted: dict[tuple[str, int], list[tuple[StreamReader, StreamWriter]]] = dataclasses.field(
        default_factory=dict, repr=False)

    # -- parts --------------------------------------------------------------------------------
    @property
    def host(self) -> HostStack:
        return self.offload_host.stack

    @property
    def chimney(self) -> Any:
        return self.offload_host.chimney

    @property
    def target(self) -> Any:
        return self.offload_host.target

    @property
    def checker(self) -> Any:
        return self.offload_host.checker

    @property
    def ndis(self) -> Any:
        return self.offload_host.ndis

    @property
    def watch(self) -> WireWatch:
        w = self.offload_host.watch
        assert w is not None, "built with watch=False"
        return w

    @property
    def clock(self) -> VirtualClock:
        return self.wire.clock

    @property
    def now(self) -> float:
        return self.wire.now

    @property
    def host_ip(self) -> str:
        return HOST_IP

    @property
    def peer_ip(self) -> str:
        return PEER_IP

    # -- running ------------------------------------------------------------------------------
    def try_run_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Run the simulation until ``predicate()`` (True) or ``timeout`` virtual seconds
        passed (False)."""
        return self.wire.run_until(predicate, timeout)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Run until ``predicate()``; raises :class:`SimTimeout` naming the virtual time, the
        chimney's connections and the target's state when ``timeout`` virtual seconds pass."""
        if not self.wire.run_until(predicate, timeout):
            raise SimTimeout(
                f"condition still false after {timeout} virtual seconds (t={self.now:.6f}): "
                f"chimney {self.chimney.status()} target {self.target.describe()}")

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (timers fire, data moves)."""
        self.wire.run_for(seconds)

    # -- connections --------------------------------------------------------------------------
    def _listen(self, stack: HostStack, port: int) -> list[tuple[StreamReader, StreamWriter]]:
        key = (stack.name, port)
        accepted = self._accepted.get(key)
        if accepted is None:
            accepted = self._accepted[key] = []

            async def handler(r: StreamReader, w: StreamWriter,
                              into: list[tuple[StreamReader, StreamWriter]] = accepted) -> None:
                into.append((r, w))

            start_server(stack, handler, port)
        return accepted

    def connect(self, port: int = DEFAULT_PORT, *, opener: Literal["host", "peer"] = "host",
                read: bool = True, timeout: float = 5.0) -> SimConnection:
        """Open a connection and run until both ends have it.

        ``opener="host"``: the host stack connects to the peer, which listens on ``port``
        (started on first use); ``"peer"``: the other way round.  ``read=False``: the
        endpoints do not read (start nothing; use their ``reader`` yourself).
        """
        if opener not in ("host", "peer"):
            raise ValueError(f"opener must be 'host' or 'peer', not {opener!r}")
        client, server = (self.host, self.peer) if opener == "host" else (self.peer, self.host)
        dst = PEER_IP if opener == "host" else HOST_IP
        accepted = self._listen(server, port)
        got: list[Any] = []

        async def open_it() -> None:
            try:
                got.append(await open_connection(client, dst, port))
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the simulation
                got.append(exc)

        def match() -> tuple[StreamReader, StreamWriter] | None:
            local_port = got[0][1].get_extra_info("sockname")[1]
            for r, w in accepted:
                if w.get_extra_info("peername")[1] == local_port:
                    return r, w
            return None

        client.scheduler.spawn(open_it(), name=f"connect {dst}:{port}")
        self.run_until(lambda: bool(got) and (isinstance(got[0], BaseException)
                                              or match() is not None), timeout)
        if isinstance(got[0], BaseException):
            raise got[0]
        cr, cw = got[0]
        sr, sw = match() or (None, None)
        assert sr is not None and sw is not None
        client_end = Endpoint(client, cr, cw, read=read)
        server_end = Endpoint(server, sr, sw, read=read)
        conn = (SimConnection(client_end, server_end) if opener == "host"
                else SimConnection(server_end, client_end))
        self.connections.append(conn)
        return conn

    def exchange(self, conn: SimConnection, host_data: bytes = b"", peer_data: bytes = b"",
                 timeout: float = 60.0) -> None:
        """Send ``host_data`` from the host and ``peer_data`` from the peer at the same time and
        run until both arrived."""
        if host_data:
            conn.host.send(host_data)
        if peer_data:
            conn.peer.send(peer_data)
        self.run_until(lambda: conn.delivered() or conn.error is not None, timeout)
        if conn.error is not None:
            raise conn.error

    def close(self, conn: SimConnection, timeout: float = 60.0) -> None:
        """Both ends close after their queued data; run until each saw the other's FIN.  With
        a capture, the four application digests (sent and received, each direction) are
        recorded in it, so ``vnic verify`` checks the streams on the wire against them."""
        conn.host.close()
        conn.peer.close()
        self.run_until(conn.finished, timeout)
        if conn.error is not None:
            raise conn.error
        if self.recorder is not None:
            self.record_digests(conn)

    def record_digests(self, conn: SimConnection) -> None:
        """Write what each application sent and received (bytes, SHA-256) into the capture."""
        if self.recorder is None:
            raise RuntimeError("this lab has no capture (build_sim_lab(capture=PATH))")
        rec, sock = self.recorder, conn.sock
        for direction, sender, receiver in (("host->peer", conn.host, conn.peer),
                                            ("peer->host", conn.peer, conn.host)):
            rec.record_digest(sock, direction, sender.queued, sender.queued_sha256, side="sent")
            rec.record_digest(sock, direction, len(receiver.received),
                              hashlib.sha256(receiver.received).hexdigest(), side="received")

    # -- handoffs -----------------------------------------------------------------------------
    @staticmethod
    def _sock(c: ConnLike) -> TcpSocket:
        return c.sock if isinstance(c, SimConnection) else c

    def offload(self, *conns: ConnLike, timeout: float = 5.0) -> None:
        """Offload the connections to the emulated NIC (one initiate tree) and run until the
        initiate completed; raises RuntimeError unless every one of them is now Offloaded."""
        socks = [self._sock(c) for c in conns]
        if not self.chimney.offload_many(socks):
            why = ("the C data path is not built (the target's capacity is 0)"
                   if not has_datapath() else
                   "the chimney refused (capacity, connection state or next hop not offloadable)")
            raise RuntimeError(f"nothing offloaded: {why}")
        self.run_until(lambda: all(s.offload_state is not OffloadState.OFFLOADING
                                   for s in socks), timeout)
        bad = [s for s in socks if s.offload_state is not OffloadState.OFFLOADED]
        if bad:
            raise RuntimeError(f"not offloaded: {[(s.name, str(s.offload_state)) for s in bad]}")

    def upload(self, *conns: ConnLike, timeout: float = 10.0) -> None:
        """Terminate the offload of the connections (host decision) and run until they are back
        in the host stack."""
        socks = [self._sock(c) for c in conns]
        for s in socks:
            if not self.chimney.terminate(s):
                raise RuntimeError(f"{s.name} is not offloaded ({s.offload_state})")
        self.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST for s in socks),
                       timeout)

    terminate = upload

    def settle(self, timeout: float = 5.0) -> None:
        """Run until no NDIS request and no chimney operation is outstanding."""
        self.run_until(lambda: not self.ndis.has_pending()
                       and not self.chimney.pending, timeout)

    # -- checks -------------------------------------------------------------------------------
    def assert_clean(self, *, rst: bool = True) -> None:
        """No NDIS rule broken (the conformance checker), no application error and (``rst``)
        no RST on the wire; raises AssertionError naming the first problem."""
        if self.checker is not None:
            self.checker.assert_clean()
        errors = [(c.sock.name, c.error) for c in self.connections if c.error is not None]
        assert not errors, f"application errors: {errors}"
        if rst:
            assert not self.watch.rst_frames, f"RST frames on the wire: {self.watch.rst_frames}"

    def close_capture(self) -> None:
        """Close the capture file, if any (idempotent)."""
        cap, self.capture = self.capture, None
        if cap is not None:
            cap.close()


def build_sim_lab(
    seed: int = 1,
    *,
    capacity: int = 1024,
    policy: ChimneyPolicy | None = None,
    tcp_config: TcpConfig | None = None,
    peer_config: TcpConfig | None = None,
    faults: WireFaults | None = None,
    latency: float = 0.0005,
    bandwidth: float | None = None,
    checker: bool = True,
    strict: bool = True,
    moderate: bool = True,
    clock: VirtualClock | None = None,
    capture: str | Path | None = None,
    max_steps: int = 5_000_000,
) -> SimLab:
    """Build a :class:`SimLab`: the host at 198.18.0.2 with the emulated NIC, the peer at
    198.18.0.1, on a wire with ``latency`` seconds each way.

    ``seed`` seeds both stacks (initial sequence numbers, ports); ``faults`` (seeded
    :class:`~vnic.faults.WireFaults`) act on the wire; ``bandwidth`` in bytes/s per direction
    (None: unlimited).  ``checker``/``strict``: the NDIS conformance checker, on and raising at
    the first broken rule by default, as in the project's own tests.  ``tcp_config`` defaults to
    ``TcpConfig(msl=1.0)`` (short TIME_WAIT) for both stacks.  ``capture``: write every frame to
    this pcapng file with the handoff annotations ``vnic verify`` reads (slower: each frame is
    its own event on the wire).
    """
    cfg = tcp_config or TcpConfig(msl=1.0)
    rng = random.Random(seed)
    oh = build_offload_host(mac_bytes(HOST_MAC), ip_bytes(HOST_IP), 24, capacity=capacity,
                            tcp_config=cfg, rng=random.Random(rng.getrandbits(64)), policy=policy,
                            checker=checker, strict=strict, moderate=moderate, name="host")
    peer = HostStack(mac_bytes(PEER_MAC), ip_bytes(PEER_IP), 24, tcp_config=peer_config or cfg,
                     rng=random.Random(rng.getrandbits(64)), name="peer")
    writer = recorder = None
    if capture is not None:
        from vnic.capture import HandoffRecorder
        from vnic.pcapng import PcapngWriter

        writer = PcapngWriter(capture, time_base=0.0)
        recorder = HandoffRecorder(writer, oh.chimney, oh.stack)
    wire = SimWire(oh.node, peer, clock=clock, latency=latency, bandwidth=bandwidth,
                   faults=faults, capture=writer, capture_point="send",
                   annotate=recorder.annotate if recorder is not None else None,
                   max_steps=max_steps)
    return SimLab(oh, peer, wire, capture=writer, recorder=recorder)
