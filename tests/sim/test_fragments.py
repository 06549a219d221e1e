"""IPv4 fragments on the simulated wire: the peer's segments arrive fragmented (the ``fragment``
wire fault, peer -> host) and the host stack reassembles them (RFC 1122 section 3.3.2).

(a) a connection in the host stack: both streams byte-exact, also with fragments reversed,
    duplicated, reordered and lost (reassembly timeouts then; TCP retransmits);
(b) an offloaded connection (the real OffloadTarget with its C data path): the NIC passes the
    fragments up the ordinary receive path, the host reassembles them and forwards the
    segments to the target (MiniportTcpOffloadForward, reference T.9), streams byte-exact,
    no RST;
(c) fragments arriving across offloads and uploads (handoffs) of several connections.

Every case runs under the strict NDIS conformance checker (``OffloadRig``) on the virtual
clock and is a pure function of its seed.
"""

from __future__ import annotations

import random

import pytest

from offload_target import table as table_mod
from tcpip.addr import ip_bytes, mac_bytes
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig
from tests.helpers import FrameRecorder
from tests.sim.offload_rig import App, OffloadRig
from vnic.faults import FaultInjector, FaultSpec, WireFaults
from vnic.simwire import SimWire

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
HOST_MAC, PEER_MAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class LoseFragments:
    """Two injectors in a row: the fragmenting one, then loss of single fragments (the
    ``fragment`` fault's own ``loss`` would drop a frame before it is fragmented)."""

    def __init__(self, first: FaultInjector, loss: float, seed: int) -> None:
        self.first = first
        self.second = FaultInjector(FaultSpec(loss=loss), seed=seed)
        self.counters = first.counters

    def _through(self, frames: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        return [x for t, f in frames for x in self.second.apply(f, t)]

    def apply(self, frame: bytes, now: float) -> list[tuple[float, bytes]]:
        return self._through(self.first.apply(frame, now))

    def poll(self, now: float) -> list[tuple[float, bytes]]:
        return self._through(self.first.poll(now))

    def next_deadline(self) -> float | None:
        return self.first.next_deadline()


def down_fragments(seed: int, fragment_loss: float = 0.0, **kw: object) -> WireFaults:
    """Faults on peer -> host only (the wire's b_to_a): fragmentation plus ``kw``;
    ``fragment_loss``: then lose single fragments."""
    spec = FaultSpec(**{"fragment": 1.0, "fragment_size": 512, **kw})  # type: ignore[arg-type]
    faults = WireFaults.from_specs(FaultSpec(), spec, seed=seed)
    if fragment_loss:
        faults.b_to_a = LoseFragments(faults.b_to_a, fragment_loss, seed)  # type: ignore[assignment]
    return faults


def reassembly_drops(stack: HostStack) -> dict[str, int]:
    return {k: v for k, v in stack.counters.drops.items() if k.startswith("ip-frag")}


# ---- (a) the host stack alone ------------------------------------------------------------------


class TwoStacks:
    """Host and peer HostStacks on a SimWire with the given faults."""

    def __init__(self, seed: int, faults: WireFaults) -> None:
        cfg = TcpConfig(msl=1.0)
        self.host = HostStack(mac_bytes(HOST_MAC), ip_bytes(HOST_IP), 24, tcp_config=cfg,
                              rng=random.Random(seed), name="host")
        self.peer = HostStack(mac_bytes(PEER_MAC), ip_bytes(PEER_IP), 24, tcp_config=cfg,
                              rng=random.Random(seed + 1), name="peer")
        self.host_rec, self.peer_rec = FrameRecorder(self.host), FrameRecorder(self.peer)
        self.faults = faults
        self.wire = SimWire(self.host_rec, self.peer_rec, faults=faults, bandwidth=10e6,
                            latency=0.0005, max_steps=5_000_000)
        self.accepted: list[tuple[StreamReader, StreamWriter]] = []

        async def handler(r: StreamReader, w: StreamWriter) -> None:
            self.accepted.append((r, w))

        start_server(self.peer, handler, 5001)

    def pair(self, host_data: bytes, peer_data: bytes) -> tuple[App, App]:
        got: list[tuple[StreamReader, StreamWriter]] = []

        async def client() -> None:
            got.append(await open_connection(self.host, PEER_IP, 5001))

        self.host.scheduler.spawn(client())
        assert self.wire.run_until(lambda: bool(got) and bool(self.accepted), 5.0)
        (hr, hw), (pr, pw) = got[0], self.accepted[-1]
        h = App(self.host, hr, hw, host_data, 8192).start()
        p = App(self.peer, pr, pw, peer_data, 8192).start()
        return h, p

    def finish(self, h: App, p: App, timeout: float = 300.0) -> None:
        assert self.wire.run_until(lambda: all(a.write_done and a.eof for a in (h, p))
                                   or any(a.error for a in (h, p)), timeout)
        assert h.error is None and p.error is None, (h.error, p.error)


@pytest.mark.parametrize("seed,extra", [
    (1, {}),
    (2, {"fragment_reorder": True}),
    (3, {"fragment": 0.5, "fragment_size": 1024, "duplicate": 0.05, "reorder": 0.05}),
    (4, {"fragment_size": 8, "fragment_reorder": True}),
    (5, {"fragment_loss": 0.03, "fragment_reorder": True}),
    (6, {"fragment_loss": 0.05, "loss": 0.01, "duplicate": 0.02}),
])
def test_host_stack_receives_fragmented_segments_byte_exact(seed: int,
                                                            extra: dict[str, object]) -> None:
    ts = TwoStacks(seed, down_fragments(seed, **extra))
    hd, pd = data(seed, 150_000), data(seed + 100, 300_000)
    h, p = ts.pair(hd, pd)
    ts.finish(h, p)
    assert bytes(h.got) == pd and bytes(p.got) == hd
    inj = ts.faults.b_to_a.counters
    c = ts.host.counters
    assert inj.fragmented > 50 and c.ip_fragments_in == ts.host.reassembly.counters.fragments_in
    assert c.ip_reassembled > 50
    assert ts.host_rec.rst_frames == [] and ts.peer_rec.rst_frames == []
    if not extra.get("fragment_loss"):
        # every fragmented frame came back whole (a duplicated one may complete twice)
        assert c.ip_reassembled >= inj.fragmented
        assert not reassembly_drops(ts.host) and len(ts.host.reassembly) == 0
        return
    # datagrams that lost a fragment wait for their timer (30 s), then go; the peer hears of
    # those whose fragment zero arrived (ICMP Time Exceeded, RFC 1122 3.3.2)
    waiting = len(ts.host.reassembly)
    ts.wire.run_for(31.0)
    r = ts.host.reassembly.counters
    assert len(ts.host.reassembly) == 0 and r.timeouts >= waiting > 0
    assert reassembly_drops(ts.host) == {"ip-frag-timeout": r.timeouts}
    assert 0 < r.time_exceeded == c.icmp_time_exceeded_out <= r.timeouts
    assert ts.peer.counters.drops["icmp-unhandled"] == r.time_exceeded


# ---- (b) an offloaded connection ----------------------------------------------------------------


@needs_datapath
@pytest.mark.parametrize("seed,extra", [
    (11, {}),
    (12, {"fragment_reorder": True}),
    (13, {"fragment": 0.7, "fragment_size": 256, "duplicate": 0.02}),
])
def test_offloaded_connection_gets_reassembled_segments_forwarded(
        seed: int, extra: dict[str, object]) -> None:
    rig = OffloadRig(seed, faults=down_fragments(seed, **extra))
    hd, pd = data(seed, 200_000), data(seed + 100, 600_000)
    h, p = rig.pair(hd, pd)
    rig.run_until(lambda: len(h.got) > 20_000 and len(p.got) > 20_000, 30.0)
    sock = rig.sock(h)
    before = rig.chimney.counters["forwarded"]
    passed_up = rig.oh.nic.counters["passed_up"]
    reassembled = rig.host.counters.ip_reassembled
    rig.offload(sock)
    rig.run_until(lambda: len(h.got) > 400_000, 60.0)
    # the NIC's data path does not take fragments (reference T.9): up the ordinary path,
    # reassembled by the host and forwarded back to the target, one segment each
    forwarded = rig.chimney.counters["forwarded"] - before
    assert forwarded > 100
    assert rig.oh.nic.counters["passed_up"] - passed_up >= forwarded
    assert rig.host.counters.ip_reassembled - reassembled >= forwarded * 0.9
    rig.run_until(lambda: h.write_done and p.write_done, 60.0)
    h.writer.close()
    p.writer.close()
    rig.run_until(lambda: h.eof and p.eof or h.error is not None or p.error is not None, 60.0)
    assert h.error is None and p.error is None
    assert bytes(h.got) == pd and bytes(p.got) == hd
    assert sock.offload_state.name == "OFFLOADED"  # the whole rest ran on the target
    assert not reassembly_drops(rig.host)
    rig.assert_no_rst()
    rig.assert_clean()


# ---- (c) across handoffs -------------------------------------------------------------------------


@needs_datapath
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_fragments_across_offloads_and_uploads(seed: int) -> None:
    rng = random.Random(seed)
    faults = down_fragments(seed, fragment=0.6, fragment_size=rng.choice([256, 512, 1024]),
                            fragment_reorder=seed % 2 == 0, reorder=0.02)
    rig = OffloadRig(seed, faults=faults, moderate=seed % 2 == 1)
    pairs = [rig.pair(data(seed * 10 + i, 250_000), data(seed * 10 + 5 + i, 400_000),
                      chunk=4096) for i in range(3)]
    socks = [rig.sock(h) for h, _p in pairs]
    rig.run_until(lambda: all(len(h.got) > 10_000 for h, _p in pairs), 30.0)
    for _cycle in range(3):
        for s in socks:
            rig.offload(s)
        rig.run_for(rng.uniform(0.005, 0.03))
        for s in socks:
            assert rig.chimney.terminate(s)
        rig.run_until(lambda: all(s.offload_state.name == "IN_HOST" for s in socks), 10.0)
        rig.run_for(rng.uniform(0.002, 0.01))
    for h, p in pairs:
        rig.run_until(lambda h=h, p=p: h.write_done and p.write_done, 120.0)
        h.writer.close()
        p.writer.close()
    rig.run_until(lambda: all(h.eof and p.eof for h, p in pairs), 120.0)
    for i, (h, p) in enumerate(pairs):
        assert h.error is None and p.error is None
        assert bytes(p.got) == data(seed * 10 + i, 250_000)
        assert bytes(h.got) == data(seed * 10 + 5 + i, 400_000)
    assert rig.chimney.counters["offloads"] == 9 and rig.chimney.counters["uploads"] == 9
    assert rig.chimney.counters["forwarded"] > 0 and rig.host.counters.ip_reassembled > 100
    assert rig.wire.faults is not None and rig.wire.faults.b_to_a.counters.fragmented > 100
    assert not reassembly_drops(rig.host)
    rig.assert_no_rst()
    rig.assert_clean()
