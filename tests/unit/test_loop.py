"""RunLoop against a fake fd-backed port (a SOCK_SEQPACKET pair keeps frame boundaries)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BatchEcho, Echo
from vnic.clock import RealClock
from vnic.faults import FaultSpec, WireFaults
from vnic.loop import RunLoop
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter, read_pcapng


class SocketPort:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_frames(self, max_frames: int = 64) -> list[bytes]:
        out = []
        try:
            for _ in range(max_frames):
                out.append(self.sock.recv(65536))
        except BlockingIOError:
            pass
        return out

    def write(self, frame: bytes) -> bool:
        self.sock.send(frame)
        return True


class Timer(Echo):
    """Also emits b"tick" at each of its deadlines."""

    def __init__(self, times: list[float]) -> None:
        super().__init__()
        self.times = times

    def poll(self, now: float) -> list[bytes]:
        out = super().poll(now)
        while self.times and self.times[0] <= now:
            self.times.pop(0)
            out.append(b"tick")
        return out

    def next_deadline(self) -> float | None:
        return self.times[0] if self.times else None


@pytest.fixture
def wire() -> Iterator[tuple[SocketPort, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    yield SocketPort(a), b
    a.close()
    b.close()


def drain(sock: socket.socket) -> list[bytes]:
    return SocketPort(sock).read_frames()


def test_echo_round_trip(wire: tuple[SocketPort, socket.socket]) -> None:
    port, far = wire
    node = Echo()
    loop = RunLoop(port, node)
    for i in range(10):
        far.send(b"frame%d" % i)
    got: list[bytes] = []
    assert loop.run_until(lambda: bool(got.extend(drain(far))) or len(got) == 10, timeout=5)
    assert got == [b"re:frame%d" % i for i in range(10)]
    assert loop.stats.frames_in == 10 and loop.stats.frames_out == 10
    assert loop.stats.bytes_in == sum(len(b"frame%d" % i) for i in range(10))


def test_node_deadline_wakes_loop_without_input(wire: tuple[SocketPort, socket.socket]) -> None:
    port, far = wire
    now = RealClock().now()
    node = Timer([now + 0.05, now + 0.1])
    loop = RunLoop(port, node)
    got: list[bytes] = []
    assert loop.run_until(lambda: bool(got.extend(drain(far))) or len(got) == 2, timeout=5)
    assert got == [b"tick", b"tick"]
    assert RealClock().now() >= now + 0.1


def test_hooks_and_deadline_sources(wire: tuple[SocketPort, socket.socket]) -> None:
    port, _ = wire
    loop = RunLoop(port, Echo())
    start = RealClock().now()
    calls: list[float] = []
    loop.on_step.append(calls.append)
    loop.deadline_sources.append(lambda: start + 0.05 if len(calls) < 3 else None)
    assert loop.run_until(lambda: len(calls) >= 3, timeout=5)
    assert calls[-1] >= start + 0.05


def test_run_until_times_out(wire: tuple[SocketPort, socket.socket]) -> None:
    port, _ = wire
    loop = RunLoop(port, Echo(), max_wait=0.02)
    start = RealClock().now()
    assert not loop.run_until(lambda: False, timeout=0.1)
    assert 0.1 <= RealClock().now() - start < 2.0
    loop.run_for(0.01)


def test_faults_drop_outbound_and_delay_inbound(wire: tuple[SocketPort, socket.socket]) -> None:
    port, far = wire
    node = Echo()
    faults = WireFaults.from_specs(a_to_b=FaultSpec(loss=1.0), b_to_a=FaultSpec(delay=0.1))
    loop = RunLoop(port, node, faults=faults)
    start = RealClock().now()
    far.send(b"x")
    assert loop.run_until(lambda: bool(node.received), timeout=5)
    assert node.received[0][0] >= start + 0.1  # held back by the inbound delay
    loop.run_for(0.05)
    assert drain(far) == []  # the echo was lost outbound
    assert faults.a_to_b.counters.dropped == 1 and faults.b_to_a.counters.delayed == 1


def test_capture_directions_and_annotations(wire: tuple[SocketPort, socket.socket],
                                            tmp_path: Path) -> None:
    port, far = wire
    path = tmp_path / "loop.pcapng"
    with PcapngWriter(path) as cap:
        loop = RunLoop(port, Echo(), capture=cap, annotate=lambda d, f: "epoch=7")
        far.send(b"\x00" * 60)
        got: list[bytes] = []
        assert loop.run_until(lambda: bool(got.extend(drain(far))) or bool(got), timeout=5)
    frames = read_pcapng(path)
    assert [f.direction for f in frames] == [DIR_INBOUND, DIR_OUTBOUND]
    assert frames[0].comment == "dir=peer->host component=peer epoch=7"
    assert frames[1].comment == "dir=host->peer component=host epoch=7"


@pytest.mark.parametrize("capture", [False, True])
def test_a_read_burst_reaches_a_batch_node_in_one_call_unless_captured(
        wire: tuple[SocketPort, socket.socket], capture: bool, tmp_path: Path) -> None:
    port, far = wire
    node = BatchEcho()
    cap = PcapngWriter(tmp_path / "c.pcapng") if capture else None
    loop = RunLoop(port, node, capture=cap)
    for i in range(10):
        far.send(b"frame%d" % i)
    got: list[bytes] = []
    assert loop.run_until(lambda: bool(got.extend(drain(far))) or len(got) == 10, timeout=5)
    assert got == [b"re:frame%d" % i for i in range(10)]  # same order, same replies
    assert loop.stats.frames_in == 10
    assert loop.stats.bytes_in == sum(len(b"frame%d" % i) for i in range(10))
    if capture:
        assert set(node.calls) == {1}  # the capture writes each frame: per frame
        cap.close()  # type: ignore[union-attr]
    else:
        assert max(node.calls) > 1 and sum(node.calls) == 10
