"""End to end: HostStack + ChimneyHost (tcpip/offload.py) bound to OffloadTarget with the real
C data path, the NIC as a NicNode on a SimWire, a peer HostStack on the other end, a strict
ConformanceChecker.  Skipped until the data path is built."""

from __future__ import annotations

import random

import pytest

from ndis import ConformanceChecker, Ndis
from offload_target import table as table_mod
from offload_target.miniport import OffloadTarget
from offload_target.nic import NicNode

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
PORT = 5001


class World:
    def __init__(self, seed: int = 1, *, capacity: int = 16, faults=None) -> None:
        from tcpip.addr import ip_bytes, mac_bytes
        from tcpip.offload import ChimneyHost
        from tcpip.stack import HostStack
        from tcpip.streams import start_server
        from tcpip.tcp import TcpConfig
        from vnic.simwire import SimWire

        cfg = TcpConfig(msl=1.0)
        self.host = HostStack(mac_bytes("02:76:6e:00:00:02"), ip_bytes(HOST_IP), 24,
                              tcp_config=cfg, rng=random.Random(seed), name="host")
        self.peer = HostStack(mac_bytes("02:76:6e:00:00:01"), ip_bytes(PEER_IP), 24,
                              tcp_config=cfg, rng=random.Random(seed + 1), name="peer")
        self.checker = ConformanceChecker(strict=True)
        self.ndis = Ndis(checker=self.checker)
        self.target = OffloadTarget(capacity, mac=self.host.mac)
        mp = self.ndis.register_miniport(self.target, capabilities=self.target.capabilities,
                                         name="target")
        self.chimney = ChimneyHost(self.host)
        self.chimney.bind(self.ndis, mp)
        self.node = NicNode(self.host, self.target, self.ndis, mac=self.host.mac)
        self.wire = SimWire(self.node, self.peer, faults=faults)
        self.accepted: list = []

        async def handler(r, w) -> None:
            self.accepted.append((r, w))

        start_server(self.peer, handler, PORT)

    def run_until(self, pred, timeout: float = 10.0) -> None:
        assert self.wire.run_until(pred, timeout), f"timed out at t={self.wire.now:.3f}"

    def connect(self):
        from tcpip.streams import open_connection

        got: list = []
        n = len(self.accepted)

        async def client() -> None:
            got.append(await open_connection(self.host, PEER_IP, PORT))

        self.host.scheduler.spawn(client())
        self.run_until(lambda: bool(got) and len(self.accepted) > n, 5.0)
        hr, hw = got[0]
        pr, pw = self.accepted[-1]
        return hr, hw, pr, pw

    def offload(self, writer) -> object:
        from tcpip.offload_socket import OffloadState

        sock = writer.get_extra_info("connection")
        assert self.chimney.offload(sock) is not None
        self.run_until(lambda: sock.offload_state is not OffloadState.OFFLOADING, 5.0)
        assert sock.offload_state is OffloadState.OFFLOADED
        return sock

    def read_exactly(self, stack, reader, n: int) -> bytearray:
        buf = bytearray()

        async def read() -> None:
            while len(buf) < n:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf.extend(chunk)

        stack.scheduler.spawn(read())
        self.run_until(lambda: len(buf) >= n, 60.0)
        return buf


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_offload_transfer_both_ways_upload_and_continue_in_host() -> None:
    from tcpip.offload_socket import OffloadState

    w = World()
    hr, hw, pr, pw = w.connect()
    sock = w.offload(hw)
    assert w.target.tcp_count == 1
    data = payload(300_000, 1)
    hw.write(data)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    back = payload(80_000, 2)
    pw.write(back)
    assert bytes(w.read_exactly(w.host, hr, len(back))) == back
    assert w.node.counters["consumed"] > 0
    assert w.chimney.terminate(sock)
    w.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 5.0)
    assert w.target.tcp_count == 0 and len(w.target.table) == 0
    hw.write(b"after the upload")
    assert bytes(w.read_exactly(w.peer, pr, 16)) == b"after the upload"
    pw.write(b"and back")
    assert bytes(w.read_exactly(w.host, hr, 8)) == b"and back"
    w.checker.assert_clean()


def test_upload_all_with_several_live_connections() -> None:
    from tcpip.offload_socket import OffloadState

    w = World()
    pairs = [w.connect() for _ in range(5)]
    socks = [w.offload(hw) for _, hw, _, _ in pairs]
    assert w.target.tcp_count == 5
    for i, (_, hw, _, _) in enumerate(pairs):
        hw.write(payload(20_000, 10 + i))
    w.target.faults.upload_all()
    w.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST for s in socks), 10.0)
    assert w.target.tcp_count == 0 and w.target.neighbors == {} and w.target.paths == {}
    for i, (_, _, pr, _) in enumerate(pairs):
        assert bytes(w.read_exactly(w.peer, pr, 20_000)) == payload(20_000, 10 + i)
    w.checker.assert_clean()


def test_target_requested_upload_mid_transfer_keeps_the_stream_intact() -> None:
    from ndis.state import TCP_UPLOAD_REASON
    from tcpip.offload_socket import OffloadState

    w = World()
    hr, hw, pr, pw = w.connect()
    sock = w.offload(hw)
    data = payload(200_000, 5)
    hw.write(data)
    w.wire.run_for(0.0005)
    w.target.faults.request_upload(w.target.find(next(iter(w.target.tcps.values()))),
                                   TCP_UPLOAD_REASON.UploadRequested)
    w.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 10.0)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    w.checker.assert_clean()


def test_peer_close_while_offloaded() -> None:
    w = World()
    hr, hw, pr, pw = w.connect()
    w.offload(hw)
    pw.write(b"last words")
    pw.close()
    got = bytearray()
    eof: list[bool] = []

    async def read_all() -> None:
        while True:
            chunk = await hr.read(4096)
            if not chunk:
                eof.append(True)
                return
            got.extend(chunk)

    w.host.scheduler.spawn(read_all())
    w.run_until(lambda: bool(eof), 10.0)
    assert bytes(got) == b"last words"
    w.checker.assert_clean()


@pytest.mark.parametrize("seed", [1, 3])
def test_lossy_wire_query_and_upload(seed: int) -> None:
    """2 % loss both ways (+ reordering): the data path retransmits, a query in the middle
    does not disturb it, the upload resumes the stream in the host exactly."""
    from tcpip.offload_socket import OffloadState
    from vnic.faults import FaultSpec, WireFaults

    faults = WireFaults.from_specs(FaultSpec(loss=0.02), FaultSpec(loss=0.02, reorder=0.02),
                                   seed=seed)
    w = World(seed, faults=faults)
    hr, hw, pr, pw = w.connect()
    sock = w.offload(hw)
    data = payload(150_000, seed)
    hw.write(data)
    pw.write(data[:60_000])
    w.wire.run_for(0.001)
    results: list = []
    assert w.chimney.query(sock, results.append)
    w.run_until(lambda: bool(results), 5.0)
    assert results[0] is not None and results[0].State == 4  # Established
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    assert bytes(w.read_exactly(w.host, hr, 60_000)) == data[:60_000]
    assert w.chimney.terminate(sock)
    w.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 10.0)
    hw.write(b"tail")
    assert bytes(w.read_exactly(w.peer, pr, 4)) == b"tail"
    w.checker.assert_clean()
