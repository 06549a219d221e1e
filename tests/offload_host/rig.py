"""Test rig: a host stack with a ChimneyHost bound (through 0..N pass-through IMs) to a
``ScriptedTarget`` under a strict ConformanceChecker, and a peer stack on a SimWire."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ndis import ConformanceChecker, Ndis, stack_intermediates
from ndis.fakes import ScriptedTarget
from ndis.state import NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
from ndis.status import NdisStatus
from tcpip.addr import ip_bytes, mac_bytes
from tcpip.ethernet import ETH_P_IPV4, parse_ethernet
from tcpip.ipv4 import IPPROTO_TCP, parse_ipv4
from tcpip.offload import ChimneyHost, ChimneyPolicy
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig
from tcpip.tcp_segment import parse_tcp
from tests.helpers import is_rst
from vnic.faults import WireFaults
from vnic.simwire import SimWire

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
HOST_MAC, PEER_MAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"
PORT = 5001


class ChimneyNode:
    """The host as a FrameNode: the run loop also delivers NDIS completions (docs/ndis.md).
    Records the TCP timestamp values of every segment the host sends (per local port)."""

    def __init__(self, stack: HostStack, ndis: Ndis) -> None:
        self.stack = stack
        self.ndis = ndis
        self.rst_out = 0
        self.tsvals: dict[int, list[int]] = {}

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.stack.receive_frame(frame, now)

    def poll(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(64):
            if self.ndis.has_pending():
                self.ndis.deliver_pending()
            out += self.stack.poll(now)
            if not self.ndis.has_pending():
                break
        self.rst_out += sum(1 for f in out if is_rst(f))
        for f in out:
            self._record_ts(f)
        return out

    def _record_ts(self, frame: bytes) -> None:
        eth = parse_ethernet(frame)
        if eth.ethertype != ETH_P_IPV4:
            return
        ip = parse_ipv4(eth.payload)
        if ip.protocol != IPPROTO_TCP:
            return
        seg = parse_tcp(ip.payload, ip.src, ip.dst)
        if seg.options.timestamp is not None:
            self.tsvals.setdefault(seg.src_port, []).append(seg.options.timestamp[0])

    def next_deadline(self) -> float | None:
        if self.ndis.has_pending():
            return self.stack.now
        return self.stack.next_deadline()


class RstCounter:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.rst_out = 0

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.node.receive_frame(frame, now)

    def poll(self, now: float) -> list[bytes]:
        out = self.node.poll(now)
        self.rst_out += sum(1 for f in out if is_rst(f))
        return out  # type: ignore[no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[no-any-return]


class Rig:
    def __init__(
        self,
        seed: int = 1,
        *,
        target: Any = None,
        ims: int = 0,
        policy: ChimneyPolicy | None = None,
        faults: WireFaults | None = None,
        tcp_config: TcpConfig | None = None,
        strict: bool = True,
        bandwidth: float | None = None,
        latency: float = 50e-6,
        params: NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS | None = None,
    ) -> None:
        cfg = tcp_config or TcpConfig(msl=1.0)
        self.host = HostStack(mac_bytes(HOST_MAC), ip_bytes(HOST_IP), 24, tcp_config=cfg,
                              rng=random.Random(seed), name="host")
        self.peer = HostStack(mac_bytes(PEER_MAC), ip_bytes(PEER_IP), 24, tcp_config=cfg,
                              rng=random.Random(seed + 10_000), name="peer")
        self.checker = ConformanceChecker(strict=strict)
        self.ndis = Ndis(checker=self.checker)
        self.target = target if target is not None else ScriptedTarget(auto_ack=False)
        mp = self.ndis.register_miniport(self.target, capabilities=self.target.capabilities,
                                         name="target")
        top, self.ims = stack_intermediates(self.ndis, mp, ims)
        self.chimney = ChimneyHost(self.host, policy=policy, params=params)
        self.binding = self.chimney.bind(self.ndis, top)
        self.node = ChimneyNode(self.host, self.ndis)
        self.peer_node = RstCounter(self.peer)
        self.wire = SimWire(self.node, self.peer_node, faults=faults, bandwidth=bandwidth,
                            latency=latency)

    @property
    def now(self) -> float:
        return self.wire.now

    def run_until(self, pred: Callable[[], bool], timeout: float = 60.0) -> None:
        assert self.wire.run_until(pred, timeout), f"timed out at t={self.now:.3f}"

    def settle(self, timeout: float = 5.0) -> None:
        self.run_until(lambda: not self.ndis.has_pending() and not self.chimney.pending, timeout)

    def run_for(self, seconds: float) -> None:
        self.wire.run_for(seconds)

    # -- connections -----------------------------------------------------------------------------

    def connect(self) -> tuple[StreamReader, StreamWriter, StreamReader, StreamWriter]:
        """An established stream pair: (host reader, host writer, peer reader, peer writer)."""
        if not hasattr(self, "_accepted"):
            self._accepted: list[tuple[StreamReader, StreamWriter]] = []

            async def handler(r: StreamReader, w: StreamWriter) -> None:
                self._accepted.append((r, w))

            start_server(self.peer, handler, PORT)
        accepted = self._accepted
        got: list[tuple[StreamReader, StreamWriter]] = []

        async def client() -> None:
            got.append(await open_connection(self.host, PEER_IP, PORT))

        n = len(accepted)
        self.host.scheduler.spawn(client())
        self.run_until(lambda: bool(got) and len(accepted) > n, 5.0)
        hr, hw = got[0]
        pr, pw = accepted[-1]
        return hr, hw, pr, pw

    def sock(self, writer: StreamWriter) -> TcpSocket:
        s = writer.get_extra_info("connection")
        assert isinstance(s, TcpSocket)
        return s

    def offload_and_wait(self, sock: TcpSocket) -> None:
        info = self.chimney.offload(sock)
        assert info is not None
        self.run_until(lambda: sock.offload_state is not OffloadState.OFFLOADING, 5.0)

    def upload_and_wait(self, sock: TcpSocket) -> None:
        assert self.chimney.terminate(sock)
        self.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 5.0)

    def tcp_label(self, sock: TcpSocket) -> str:
        rec = self.chimney.records[sock.key]
        return rec.handle.label


def failing_target(prefixes: tuple[str, ...], status: int = NdisStatus.OFFLOAD_TCP_ENTRIES,
                   **kw: Any) -> ScriptedTarget:
    """A ScriptedTarget failing every new block whose label starts with one of ``prefixes``."""

    class Failing(ScriptedTarget):
        def InitiateOffload(self, OffloadBlockList: Any) -> None:  # noqa: N802,N803
            from ndis.blocks import iter_blocks

            for b in iter_blocks(OffloadBlockList):
                if b.label.startswith(prefixes):
                    self.initiate_script[b.label] = status
            super().InitiateOffload(OffloadBlockList)

    return Failing(auto_ack=kw.pop("auto_ack", False), **kw)
