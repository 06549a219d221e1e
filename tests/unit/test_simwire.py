from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import BatchEcho, Echo
from vnic.clock import VirtualClock
from vnic.faults import FaultSpec, WireFaults
from vnic.pcapng import PcapngWriter, read_pcapng
from vnic.simwire import SimulationLivelock, SimWire


class Ticker:
    """Sends frame i at times start + i*interval, records what comes back."""

    def __init__(self, count: int, interval: float, start: float = 0.0, size: int = 100) -> None:
        self.count = count
        self.interval = interval
        self.start = start
        self.size = size
        self.sent = 0
        self.received: list[tuple[float, bytes]] = []

    def _due(self) -> float:
        return self.start + self.sent * self.interval

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.received.append((now, frame))

    def poll(self, now: float) -> list[bytes]:
        out = []
        while self.sent < self.count and self._due() <= now:
            out.append(b"%06d" % self.sent + b"." * (self.size - 6))
            self.sent += 1
        return out

    def next_deadline(self) -> float | None:
        return self._due() if self.sent < self.count else None


class Spinner(Echo):
    """A broken node: always wants to run again right now."""

    def next_deadline(self) -> float | None:
        return 0.0


def test_latency_and_round_trip() -> None:
    t, e = Ticker(3, 0.01), Echo()
    wire = SimWire(t, e, latency=(0.002, 0.003))
    assert wire.run_until(lambda: len(t.received) == 3, timeout=1.0)
    assert [round(now, 9) for now, _ in e.received] == [0.002, 0.012, 0.022]
    assert [round(now, 9) for now, _ in t.received] == [0.005, 0.015, 0.025]
    assert t.received[0][1].startswith(b"re:000000")
    assert wire.stats.frames_a_to_b == 3 and wire.stats.delivered_to_a == 3


def test_bandwidth_serializes() -> None:
    t, e = Ticker(4, 0.0, size=1000), Echo()  # all four at t=0
    wire = SimWire(t, e, latency=0.0, bandwidth=(1e6, 1e9))
    wire.run_until(lambda: len(e.received) == 4, timeout=1.0)
    assert [round(now, 9) for now, _ in e.received] == [0.001, 0.002, 0.003, 0.004]


def test_timeout_returns_false_and_advances_clock() -> None:
    clock = VirtualClock(10.0)
    t, e = Ticker(1, 0.0), Echo()
    wire = SimWire(t, e, clock=clock)
    assert not wire.run_until(lambda: False, timeout=5.0)
    assert clock.now() == 15.0


def _trace(seed: int) -> list[tuple[float, bytes]]:
    t, e = Ticker(300, 0.001), Echo()
    faults = WireFaults.from_specs(
        FaultSpec(loss=0.1, reorder=0.1, duplicate=0.05, jitter=0.002),
        FaultSpec(loss=0.1, delay=0.001, jitter=0.003),
        seed=seed,
    )
    wire = SimWire(t, e, latency=0.0005, faults=faults)
    wire.run_until(lambda: False, timeout=2.0)
    return t.received


def test_deterministic_ordering_per_seed() -> None:
    a, b, c = _trace(1), _trace(1), _trace(2)
    assert a == b
    assert a != c
    assert 150 < len(a) < 300


def test_same_time_events_keep_fifo_order() -> None:
    t, e = Ticker(50, 0.0), Echo()
    wire = SimWire(t, e, latency=0.001)
    wire.run_until(lambda: len(e.received) == 50, timeout=1.0)
    assert [f[:6] for _, f in e.received] == [b"%06d" % i for i in range(50)]
    assert len({now for now, _ in e.received}) == 1


def test_step_limit_raises_clear_error() -> None:
    wire = SimWire(Spinner(), Echo(), max_steps=1000)
    with pytest.raises(SimulationLivelock, match="did not settle within 1000 steps"):
        wire.run_until(lambda: False, timeout=1.0)


def test_capture_and_hooks(tmp_path: Path) -> None:
    path = tmp_path / "sim.pcapng"
    t, e = Ticker(5, 0.01), Echo()
    steps: list[float] = []
    with PcapngWriter(path, time_base=0.0) as cap:
        wire = SimWire(t, e, latency=0.001, capture=cap, names=("host", "peer"))
        wire.on_step.append(steps.append)
        wire.deadline_sources.append(lambda: 0.5 if not steps or steps[-1] < 0.5 else None)
        wire.run_until(lambda: False, timeout=1.0)
    frames = read_pcapng(path)
    assert len(frames) == 10
    assert frames[0].comment == "dir=host->peer component=host"
    assert frames[1].comment == "dir=peer->host component=peer"
    assert frames[0].timestamp == pytest.approx(0.001)
    assert 0.5 in steps  # the hook's deadline woke the wire


def test_inject_and_idle() -> None:
    t, e = Ticker(0, 1.0), Echo()
    wire = SimWire(t, e, latency=0.0)
    wire.inject(1, b"hello", at=2.0)
    wire.run_idle()
    assert e.received == [(2.0, b"hello")]
    assert t.received == [(2.0, b"re:hello")]
    assert not wire.step()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    loss=st.sampled_from([0.0, 0.1, 0.5]),
    duplicate=st.sampled_from([0.0, 0.1]),
    reorder=st.sampled_from([0.0, 0.2]),
    latency=st.sampled_from([0.0, 1e-4, 0.01]),
    bandwidth=st.sampled_from([None, 1e6]),
)
def test_wire_conserves_frames_and_replays(seed: int, loss: float, duplicate: float,
                                           reorder: float, latency: float,
                                           bandwidth: float | None) -> None:
    def run() -> tuple[list[tuple[float, bytes]], SimWire]:
        t, e = Ticker(100, 0.001), Echo()
        spec = FaultSpec(loss=loss, duplicate=duplicate, reorder=reorder, reorder_delay=0.01)
        faults = WireFaults.from_specs(spec, spec, seed=seed)
        wire = SimWire(t, e, latency=latency, bandwidth=bandwidth, faults=faults)
        wire.run_idle(timeout=60)
        return t.received, wire

    got, wire = run()
    again, _ = run()
    assert got == again  # a seed replays exactly
    assert wire.next_time() is None  # idle: nothing pending, nothing held
    assert wire.faults is not None
    for inj, delivered in ((wire.faults.a_to_b, wire.stats.delivered_to_b),
                           (wire.faults.b_to_a, wire.stats.delivered_to_a)):
        c = inj.counters
        assert delivered == c.frames_in - c.dropped + c.duplicated
    times = [now for now, _ in got]
    assert times == sorted(times)


# -- batched delivery (FrameNode.receive_frames) ----------------------------------------------------


class Burst:
    """Sends ``size`` frames at once at each of ``times`` (in its poll), records replies."""

    def __init__(self, times: list[float], size: int) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.times = list(times)
        self.size = size
        self.burst = 0

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.received.append((now, frame))

    def poll(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        while self.times and self.times[0] <= now:
            self.times.pop(0)
            out += [b"b%03d-%03d" % (self.burst, i) for i in range(self.size)]
            self.burst += 1
        return out

    def next_deadline(self) -> float | None:
        return self.times[0] if self.times else None


def _burst_run(receiver: Echo, **kw: object) -> tuple[Burst, Echo, SimWire]:
    a = Burst([0.0, 0.001, 0.001, 0.0025], 7)
    wire = SimWire(a, receiver, latency=(0.0003, 0.0002), **kw)  # type: ignore[arg-type]
    wire.inject(1, b"injected", at=0.0003)  # same instant as the first burst, queued first
    wire.run_idle(timeout=1.0)
    return a, receiver, wire


def test_batched_delivery_is_per_frame_delivery() -> None:
    a1, e1, w1 = _burst_run(Echo())
    a2, e2, w2 = _burst_run(BatchEcho())
    assert e2.received == e1.received and len(e1.received) == 4 * 7 + 1
    assert a2.received == a1.received  # the replies (one poll's worth each, batched) too
    assert w2.stats == w1.stats
    assert w2.stats.delivered_to_b == w2.stats.frames_a_to_b + 1 == 4 * 7 + 1
    assert w2.stats.bytes_a_to_b == 4 * 7 * 8
    assert e2.received[0] == (0.0003, b"injected")  # (queued before the burst at that time)
    assert len(a2.received) == len(e2.received) and a2.received[0][0] == 0.0003 + 0.0002
    # the frames of one poll came as one call, the injected frame on its own
    assert isinstance(e2, BatchEcho) and e2.calls == [1, 7, 14, 7]


@pytest.mark.parametrize("kind", ["bandwidth", "faults", "capture"])
def test_per_frame_hooks_keep_per_frame_delivery(kind: str, tmp_path: Path) -> None:
    def kw() -> dict[str, object]:
        if kind == "bandwidth":
            return {"bandwidth": 1e6}
        if kind == "faults":
            spec = FaultSpec(jitter=0.0001)
            return {"faults": WireFaults.from_specs(spec, spec, seed=3)}
        return {"capture": PcapngWriter(tmp_path / f"{len(list(tmp_path.iterdir()))}.pcapng",
                                        time_base=0.0)}

    a1, e1, w1 = _burst_run(Echo(), **kw())
    a2, e2, w2 = _burst_run(BatchEcho(), **kw())
    assert e2.received == e1.received and a2.received == a1.received
    assert w2.stats == w1.stats
    assert isinstance(e2, BatchEcho) and set(e2.calls) == {1}
    for w in (w1, w2):
        if w.capture is not None:
            w.capture.close()
            assert len(read_pcapng(w.capture.path)) == 2 * (4 * 7 + 1)  # and the echoes


class Forwarding:
    """A recorder wrapping a node and forwarding unknown attributes to it (like WireWatch)."""

    def __init__(self, node: object) -> None:
        self.node = node
        self.seen: list[bytes] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.node, name)

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.seen.append(frame)
        self.node.receive_frame(frame, now)  # type: ignore[attr-defined]

    def poll(self, now: float) -> list[bytes]:
        return self.node.poll(now)  # type: ignore[attr-defined, no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[attr-defined, no-any-return]


def test_batches_never_bypass_a_wrapper_or_a_patched_receive_frame() -> None:
    """The batch form is used only when it is the node's own: a wrapper whose __getattr__
    would find the wrapped node's receive_frames, or an instance whose receive_frame was
    replaced (a test intercepting frames), gets every frame through receive_frame."""
    from vnic.node import batch_receiver

    inner = BatchEcho()
    wrapped = Forwarding(inner)
    assert batch_receiver(inner) is not None and batch_receiver(wrapped) is None
    _a, _e, _w = _burst_run(wrapped)  # type: ignore[arg-type]
    assert len(wrapped.seen) == 4 * 7 + 1 and set(inner.calls) == {1}

    patched = BatchEcho()
    got: list[bytes] = []
    patched.receive_frame = lambda f, now: got.append(f)  # type: ignore[method-assign]
    assert batch_receiver(patched) is None
    _burst_run(patched)
    assert len(got) == 4 * 7 + 1 and patched.calls == []
