"""End to end on the simulated wire: a host stack and a peer stack exchange seeded byte
streams both ways; mid-transfer the host's connection is offloaded to a ScriptedTarget that
holds the state without running TCP, app writes pile up at the target, segments from the peer
are forwarded (and lost), then the connection is terminated with unacked send data and
undelivered receive data in flight.  After the resume both applications must see their byte
streams exactly (no gap, no duplicate) and no RST may cross the wire.  Every case is a pure
function of its seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from ndis.fakes import ScriptedTarget
from ndis.state import NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS
from tcpip.offload_socket import OffloadState
from tcpip.seq import seq_ge
from tcpip.streams import StreamReader, StreamWriter
from tests.offload_host.rig import Rig
from vnic.faults import FaultSpec, WireFaults


@dataclass
class App:
    got: bytearray = field(default_factory=bytearray)
    eof: bool = False
    sent: bool = False
    error: BaseException | None = None


def _spawn(rig: Rig, stack: object, r: StreamReader, w: StreamWriter, data: bytes,
           chunk: int, delay: float, app: App, write_delay: float = 0.0) -> None:
    sched = stack.scheduler  # type: ignore[attr-defined]

    async def write() -> None:
        try:
            for i in range(0, len(data), chunk):
                w.write(data[i : i + chunk])
                await w.drain()
                if write_delay:
                    await sched.sleep(write_delay)
            w.close()
            app.sent = True
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            app.error = exc

    async def read() -> None:
        try:
            while True:
                d = await r.read(4096)
                if not d:
                    app.eof = True
                    return
                app.got += d
                if delay:
                    await sched.sleep(delay)
        except BaseException as exc:  # noqa: BLE001
            app.error = exc

    sched.spawn(write())
    sched.spawn(read())


def run_case(seed: int, loss: float = 0.0, tps: int = 1000) -> Rig:
    rng = random.Random(seed)
    faults = None
    if loss:
        spec = FaultSpec(loss=loss, duplicate=loss / 2, reorder=loss / 2)
        faults = WireFaults.from_specs(spec, spec, seed=seed)
    # 10 MB/s and 0.5 ms each way: a transfer lasts tens of milliseconds, so the handoff lands
    # in the middle of it with data in flight in both directions
    # d.3 step 6: the target either hands unsent/unacked data back in NetBufferListChain or
    # completes it first (with UPLOAD_IN_PROGRESS): both must resume byte-exact
    target = ScriptedTarget(auto_ack=False, return_sends_on_terminate=rng.random() < 0.7)
    rig = Rig(seed, faults=faults, bandwidth=10e6, latency=0.0005, ims=rng.choice([0, 0, 1, 2]),
              target=target, params=NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS(TicksPerSecond=tps))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    host_data = rng.randbytes(rng.randrange(50_000, 300_000))
    peer_data = rng.randbytes(rng.randrange(50_000, 300_000))
    host_app, peer_app = App(), App()
    _spawn(rig, rig.host, hr, hw, host_data, rng.choice([512, 1460, 8192, 65536]),
           rng.choice([0.0, 0.0005, 0.002]), host_app, rng.choice([0.0, 0.0002, 0.001]))
    _spawn(rig, rig.peer, pr, pw, peer_data, rng.choice([512, 1460, 8192, 65536]),
           rng.choice([0.0, 0.0005]), peer_app, rng.choice([0.0, 0.0002]))
    rig.run_until(lambda: len(host_app.got) > 1000 and len(peer_app.got) > 1000, 30.0)
    rig.run_for(rng.uniform(0.0, 0.003))
    offloaded = sock.offload_state is OffloadState.IN_HOST and rig.chimney.offload(sock) is not None
    if offloaded:
        if rng.random() < 0.3:
            rig.chimney.terminate(sock)  # terminate while the initiate is in flight
        else:
            rig.run_until(lambda: sock.offload_state is not OffloadState.OFFLOADING, 5.0)
            rig.run_for(rng.uniform(0.0, 0.05))
            slow = rng.random() < 0.5
            rig.target.hold = slow  # a slow terminate: segments arrive meanwhile (c.3)
            rig.chimney.terminate(sock)
            if slow:
                rig.run_for(rng.uniform(0.0, 0.05))
                rig.target.hold = False
                rig.target.release()
        rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 5.0)
    rig.run_until(
        lambda: (host_app.eof and peer_app.eof and host_app.sent and peer_app.sent)
        or host_app.error is not None or peer_app.error is not None,
        300.0,
    )
    assert host_app.error is None and peer_app.error is None, (host_app.error, peer_app.error)
    assert bytes(host_app.got) == peer_data
    assert bytes(peer_app.got) == host_data
    assert rig.node.rst_out == 0 and rig.peer_node.rst_out == 0
    # T.6: the host's timestamps stay monotonic across the handoff
    ts = rig.node.tsvals.get(sock.local_port, [])
    assert ts and all(seq_ge(b, a) for a, b in zip(ts, ts[1:], strict=False))
    rig.checker.assert_clean()
    rig.offloaded = offloaded  # type: ignore[attr-defined]
    return rig


@pytest.mark.parametrize("seed", range(1, 101))
def test_handoff_byte_exact(seed: int) -> None:
    rig = run_case(seed)
    c = rig.chimney.counters
    assert rig.offloaded  # type: ignore[attr-defined]
    assert c["offloads"] == 1 and c["uploads"] == 1


@pytest.mark.parametrize("seed", range(2000, 2010))
@pytest.mark.parametrize("tps", [10, 100])
def test_handoff_byte_exact_other_tick_rates(seed: int, tps: int) -> None:
    rig = run_case(seed, tps=tps)
    assert rig.target.parameters.TicksPerSecond == tps


@pytest.mark.parametrize("seed", range(1000, 1030))
def test_handoff_byte_exact_lossy(seed: int) -> None:
    run_case(seed, loss=0.02)


def test_handoff_carries_unacked_and_undelivered_data() -> None:
    """The seeds do exercise what they claim: send data and buffered receive data handed
    back, app writes while offloaded, forwarded segments and segments held during a
    terminate."""
    sends = buffered = nbls = forwarded = held = refused = 0
    for seed in range(1, 21):
        rig = run_case(seed)
        c = rig.chimney.counters
        nbls += c["send_nbls"]
        forwarded += c["forwarded"]
        held += c["held_segments"]
        refused += c["refused_send_bytes"]
        for op, root in rig.target.requests:
            if op.value == "Terminate":
                from ndis.blocks import iter_blocks

                for b in iter_blocks(root):
                    if b.NetBufferListChain is not None:
                        sends += 1
                    d = getattr(b.state, "BufferedData", None)
                    if d is not None:
                        buffered += 1
    assert sends > 5 and buffered > 5 and nbls > 0 and forwarded > 0 and held > 0 and refused > 0
