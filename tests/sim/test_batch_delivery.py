"""Batched delivery on the simulated wire changes nothing but the number of calls.

Two identical worlds (two offload hosts, each connection offloaded to its emulated NIC, strict
NDIS conformance checker on both) move the same bulk data both ways, hand the connection back
and close it.  In one the nodes offer ``receive_frames`` (the wire delivers a poll's frames in
one call: ``NicNode.receive_frames`` -> ``OffloadTarget.receive_frames``); in the other a
wrapper hides it, so every frame is one ``receive_frame`` call.  Every frame, its arrival time
and its destination, the wire's statistics, the NICs' and targets' counters and the data the
applications got must be identical -- and the batch world must really have used batches.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from offload_target import table as table_mod
from tcpip import streams
from tcpip.offload_socket import OffloadState, TcpSocket
from vnic.offload_lab import OffloadHost, build_offload_host
from vnic.simwire import SimWire

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

PORT = 5001
SIZE = 384 * 1024  # bytes each way while offloaded (several windows, many batches)


class Recorder:
    """Records (time, frame) of everything delivered to the wrapped node.  ``batch``: offer
    ``receive_frames`` (forwarding batches as they come), else per-frame calls only."""

    def __init__(self, node: Any, *, batch: bool) -> None:
        self.node = node
        self.seen: list[tuple[float, bytes]] = []
        self.batch_calls = 0
        self.largest_batch = 0
        if batch:
            self.receive_frames = self._receive_frames

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.seen.append((now, bytes(frame)))
        self.node.receive_frame(frame, now)

    def _receive_frames(self, frames: list[bytes], now: float) -> None:
        self.batch_calls += 1
        self.largest_batch = max(self.largest_batch, len(frames))
        self.seen.extend((now, bytes(f)) for f in frames)
        self.node.receive_frames(frames, now)

    def poll(self, now: float) -> list[bytes]:
        return self.node.poll(now)  # type: ignore[no-any-return]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()  # type: ignore[no-any-return]


def _host(i: int) -> OffloadHost:
    return build_offload_host(bytes([2, 0x76, 0x6E, 0, 0, i]), bytes([198, 18, 0, i]), 24,
                              rng=random.Random(i), checker=True, strict=True, watch=False,
                              name=f"h{i}")


def _payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _run(batch: bool) -> dict[str, Any]:
    a, b = _host(2), _host(1)
    ra, rb = Recorder(a.node, batch=batch), Recorder(b.node, batch=batch)
    wire = SimWire(ra, rb, latency=50e-6, max_steps=5_000_000)
    accepted: list[tuple[streams.StreamReader, streams.StreamWriter]] = []

    async def handler(r: streams.StreamReader, w: streams.StreamWriter) -> None:
        accepted.append((r, w))

    streams.start_server(b.stack, handler, PORT)
    got: list[tuple[streams.StreamReader, streams.StreamWriter]] = []

    async def client() -> None:
        got.append(await streams.open_connection(a.stack, b.stack.ip, PORT))

    a.stack.scheduler.spawn(client())
    assert wire.run_until(lambda: bool(got) and bool(accepted), 10.0)
    (ar, aw), (br, bw) = got[0], accepted[0]
    sa, sb = aw.get_extra_info("connection"), bw.get_extra_info("connection")
    assert isinstance(sa, TcpSocket) and isinstance(sb, TcpSocket)
    assert a.offload(sa, wire.run_until, 10.0) and b.offload(sb, wire.run_until, 10.0)
    assert sa.offload_state is OffloadState.OFFLOADED and sb.offload_state is OffloadState.OFFLOADED
    received = {"a": bytearray(), "b": bytearray()}

    def app(stack: Any, r: streams.StreamReader, w: streams.StreamWriter, data: bytes,
            key: str) -> None:
        async def writer() -> None:
            for i in range(0, len(data), 64 * 1024):
                w.write(data[i:i + 64 * 1024])
                await w.drain()

        async def reader() -> None:
            while chunk := await r.read(1 << 20):
                received[key] += chunk

        stack.scheduler.spawn(writer())
        stack.scheduler.spawn(reader())

    app(a.stack, ar, aw, _payload(1, SIZE), "a")
    app(b.stack, br, bw, _payload(2, SIZE), "b")
    assert wire.run_until(lambda: len(received["a"]) == SIZE and len(received["b"]) == SIZE, 60.0)
    assert a.upload(sa, wire.run_until, 10.0)
    aw.close()
    bw.close()
    wire.run_until(lambda: False, 2.0)
    for h in (a, b):
        assert h.checker is not None
        h.checker.assert_clean()
    return {
        "to_a": ra.seen, "to_b": rb.seen, "stats": wire.stats.as_dict(), "now": wire.now,
        "nic": (a.node.counters, b.node.counters),
        "target": (a.target.counters, b.target.counters),
        "datapath": (a.target.table.datapath_counters(), b.target.table.datapath_counters()),
        "data": {k: hashlib.sha256(v).hexdigest() for k, v in received.items()},
        "batch_calls": ra.batch_calls + rb.batch_calls,
        "largest_batch": max(ra.largest_batch, rb.largest_batch),
    }


def test_batched_and_per_frame_delivery_are_the_same_run() -> None:
    per_frame = _run(batch=False)
    batched = _run(batch=True)
    assert per_frame["batch_calls"] == 0
    assert batched["batch_calls"] > 0 and batched["largest_batch"] > 8  # batches were used
    assert batched["data"] == per_frame["data"] == {
        "a": hashlib.sha256(_payload(2, SIZE)).hexdigest(),
        "b": hashlib.sha256(_payload(1, SIZE)).hexdigest()}
    # same frames, same order, same arrival times, both directions
    assert batched["to_a"] == per_frame["to_a"]
    assert batched["to_b"] == per_frame["to_b"]
    assert batched["stats"] == per_frame["stats"]
    assert batched["now"] == per_frame["now"]
    assert batched["nic"] == per_frame["nic"]
    assert batched["target"] == per_frame["target"]
    assert batched["datapath"] == per_frame["datapath"]  # (in-order segments, same ACKs ...)
    nic_a = batched["nic"][0]
    assert nic_a["frames_in"] == nic_a["consumed"] + nic_a["passed_up"] > 0
    assert nic_a["passed_up"] > 0  # the handshake and the host-stack epoch went up the NDIS path
