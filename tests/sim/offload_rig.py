"""Sim rig for the offload target end to end: the host built by :func:`vnic.offload_lab.
build_offload_host` (HostStack + ChimneyHost + Ndis with a strict ConformanceChecker + the real
OffloadTarget and its C data path behind a NicNode, wrapped in a WireWatch) on one side of a
SimWire (virtual clock), a second HostStack as the peer on the other side.

:class:`App` is a seeded application on one end of a connection (writer and reader
coroutines); the scenario code steers it (pause reading, close, abort) and checks what it got.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ndis.state import NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
from tcpip.addr import ip_bytes, mac_bytes
from tcpip.offload import ChimneyPolicy
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig
from tests.helpers import FrameRecorder, tcp_connection
from vnic.faults import FaultSpec, WireFaults
from vnic.offload_lab import OffloadHost, WireWatch, build_offload_host
from vnic.simwire import SimWire

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
HOST_MAC, PEER_MAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"
PORT = 5001


@dataclass(eq=False)
class App:
    """One end's application: writes ``data`` (then closes unless ``keep_open``), reads until
    EOF.  ``paused`` stops the reader (its receive window closes); errors are recorded."""

    stack: Any
    reader: StreamReader
    writer: StreamWriter
    data: bytes = b""
    chunk: int = 8192
    keep_open: bool = False
    got: bytearray = field(default_factory=bytearray)
    sent: int = 0
    write_done: bool = False
    eof: bool = False
    paused: bool = False
    read_error: BaseException | None = None
    write_error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        return self.read_error or self.write_error

    def start(self, *, read: bool = True, write: bool = True) -> App:
        sched = self.stack.scheduler

        async def writer() -> None:
            try:
                for i in range(0, len(self.data), self.chunk):
                    piece = self.data[i:i + self.chunk]
                    self.writer.write(piece)
                    await self.writer.drain()
                    self.sent += len(piece)
                if not self.keep_open:
                    self.writer.close()
                self.write_done = True
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                self.write_error = exc

        async def reader() -> None:
            try:
                while True:
                    if self.paused:
                        await sched.wait_until(lambda: not self.paused)
                    d = await self.reader.read(65536)
                    if not d:
                        self.eof = True
                        return
                    self.got += d
            except BaseException as exc:  # noqa: BLE001
                self.read_error = exc

        if write:
            sched.spawn(writer())
        if read:
            sched.spawn(reader())
        return self

    def write_more(self, data: bytes, *, close: bool = False) -> None:
        """Queue more data after the first writer finished (drained by a new coroutine)."""
        sched = self.stack.scheduler
        self.write_done = False
        self.data += data

        async def writer() -> None:
            try:
                self.writer.write(data)
                await self.writer.drain()
                self.sent += len(data)
                if close:
                    self.writer.close()
                self.write_done = True
            except BaseException as exc:  # noqa: BLE001
                self.write_error = exc

        sched.spawn(writer())


class OffloadRig:
    """Host with the emulated NIC <-> SimWire <-> peer HostStack (see the module docstring)."""

    def __init__(
        self,
        seed: int = 1,
        *,
        loss: float = 0.0,
        faults: WireFaults | None = None,
        capacity: int = 1024,
        policy: ChimneyPolicy | None = None,
        tcp_config: TcpConfig | None = None,
        peer_config: TcpConfig | None = None,
        bandwidth: float | None = 10e6,
        latency: float = 0.0005,
        strict: bool = True,
        moderate: bool = True,
        params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS | None = None,
    ) -> None:
        cfg = tcp_config or TcpConfig(msl=1.0)
        self.seed = seed
        if loss and faults is None:
            spec = FaultSpec(loss=loss, duplicate=loss / 2, reorder=loss / 2)
            faults = WireFaults.from_specs(spec, spec, seed=seed)
        self.oh: OffloadHost = build_offload_host(
            mac_bytes(HOST_MAC), ip_bytes(HOST_IP), 24, capacity=capacity, tcp_config=cfg,
            rng=random.Random(seed), policy=policy, strict=strict, moderate=moderate,
            params=params)
        self.host: HostStack = self.oh.stack
        self.chimney = self.oh.chimney
        self.target = self.oh.target
        self.checker = self.oh.checker
        self.ndis = self.oh.ndis
        assert isinstance(self.oh.node, WireWatch)
        self.watch: WireWatch = self.oh.node
        self.peer = HostStack(mac_bytes(PEER_MAC), ip_bytes(PEER_IP), 24,
                              tcp_config=peer_config or cfg, rng=random.Random(seed + 10_000),
                              name="peer")
        self.peer_rec = FrameRecorder(self.peer)
        self.wire = SimWire(self.watch, self.peer_rec, faults=faults, bandwidth=bandwidth,
                            latency=latency, max_steps=5_000_000)
        self._accepted: list[tuple[StreamReader, StreamWriter]] = []

        async def handler(r: StreamReader, w: StreamWriter) -> None:
            self._accepted.append((r, w))

        start_server(self.peer, handler, PORT)

    # -- running -----------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.wire.now

    def run_until(self, pred: Callable[[], bool], timeout: float = 60.0) -> bool:
        ok = self.wire.run_until(pred, timeout)
        assert ok, f"timed out at t={self.now:.3f}: {self.chimney.status()} {self.target.describe()}"
        return ok

    def try_run_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        return self.wire.run_until(pred, timeout)

    def run_for(self, seconds: float) -> None:
        self.wire.run_for(seconds)

    # -- connections ----------------------------------------------------------------------------
    def connect(self) -> tuple[StreamReader, StreamWriter, StreamReader, StreamWriter]:
        """(host reader, host writer, peer reader, peer writer) of a new connection."""
        got: list[tuple[StreamReader, StreamWriter]] = []
        n = len(self._accepted)

        async def client() -> None:
            got.append(await open_connection(self.host, PEER_IP, PORT))

        self.host.scheduler.spawn(client())
        self.run_until(lambda: bool(got) and len(self._accepted) > n, 5.0)
        hr, hw = got[0]
        pr, pw = self._accepted[-1]
        return hr, hw, pr, pw

    def pair(self, host_data: bytes = b"", peer_data: bytes = b"", *, chunk: int = 8192,
             keep_open: bool = True, start: bool = True) -> tuple[App, App]:
        """A connection with an App on each end (host, peer)."""
        hr, hw, pr, pw = self.connect()
        h = App(self.host, hr, hw, host_data, chunk, keep_open)
        p = App(self.peer, pr, pw, peer_data, chunk, keep_open)
        if start:
            h.start()
            p.start()
        return h, p

    @staticmethod
    def sock(app_or_writer: Any) -> TcpSocket:
        w = app_or_writer.writer if isinstance(app_or_writer, App) else app_or_writer
        s = w.get_extra_info("connection")
        assert isinstance(s, TcpSocket)
        return s

    @staticmethod
    def engine(app: App) -> Any:
        """The TcpConnection behind an App (the peer's is always in its stack)."""
        return tcp_connection(app.writer.get_extra_info("connection"))

    def offload(self, sock: TcpSocket, timeout: float = 5.0) -> None:
        assert self.oh.offload(sock, self.try_run_until, timeout), sock.offload_state
        assert sock.offload_state is OffloadState.OFFLOADED

    def upload(self, sock: TcpSocket, timeout: float = 10.0) -> None:
        assert self.oh.upload(sock, self.try_run_until, timeout), sock.offload_state

    def tcp_obj(self, sock: TcpSocket) -> Any:
        """The target's TcpObject of an offloaded socket."""
        return self.target.find(self.chimney.records[sock.key].handle)

    def settle(self, timeout: float = 5.0) -> None:
        self.run_until(lambda: not self.ndis.has_pending() and not self.chimney.pending, timeout)

    # -- checks -----------------------------------------------------------------------------------
    def assert_no_rst(self) -> None:
        assert self.watch.rst_frames == [], self.watch.rst_frames
        assert self.peer_rec.rst_frames == []
        assert self.host.counters.rst_out == 0 and self.peer.counters.rst_out == 0

    def assert_clean(self) -> None:
        if self.checker is not None:
            self.checker.assert_clean()


class HandoffLog:
    """What crossed the NDIS boundary in the TCP blocks of initiates and terminates: per
    operation a list of ``(label, send_bytes, buffered_bytes, status)``.  Hooks the target's
    work-item entry (initiate, before it consumes anything) and its completion (terminate)."""

    def __init__(self, target: Any) -> None:
        from ndis.blocks import iter_blocks, iter_nbls
        from ndis.state import TcpOffloadState
        from ndis.status import Operation

        self.initiates: list[tuple[str, int, int, int]] = []
        self.terminates: list[tuple[str, int, int, int]] = []

        def tcp_rows(root: Any) -> list[tuple[str, int, int, int]]:
            rows = []
            for b in iter_blocks(root):
                st = b.state
                deleg = st.Delegated if isinstance(st, TcpOffloadState) else st
                if not hasattr(deleg, "BufferedData"):
                    continue
                send = sum(n.DataLength for n in iter_nbls(b.NetBufferListChain))
                buf = sum(n.DataLength for n in iter_nbls(deleg.BufferedData))
                rows.append((b.label, send, buf, int(b.Status)))
            return rows

        do_initiate = target._do_initiate
        complete_state = target._complete_state

        def _do_initiate(root: Any) -> None:
            self.initiates += tcp_rows(root)
            do_initiate(root)

        def _complete_state(op: Any, root: Any) -> None:
            if op is Operation.TERMINATE:
                self.terminates += tcp_rows(root)
            complete_state(op, root)

        target._do_initiate = _do_initiate
        target._complete_state = _complete_state
