"""An offloaded connection over a TAP with virtio-net offload, against the Linux kernel peer.

The lab's TAP segments and checksums TCP (``Lab(tap_offload=True)``, vnic/vnet.py), so the
host is built with ``tso_max``: the host stack (``TcpConfig.tso_max``) and the NIC's data path
(``configure(tso_max=)``) send super-segments that the kernel cuts at the MSS, and the kernel's
frames arrive GRO'd, up to 64 KiB.  The connection is offloaded as soon as it is open, moves
several MiB each way on the NIC, is terminated and closes in the host.  Both streams must be
byte-exact (SHA-256 at both ends); the target's own frames (IPv4 identification >= 0x8000, T.1)
must include super-segments, the inbound super-segments must have been taken by the data path,
no RST may appear and no lab may be left behind.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload_target import table as table_mod
from tcpip import streams
from tcpip.offload_socket import OffloadState
from tests.system.kernel import KernelLab, LeakGuard, capture_rst_frames
from vnic.lab import Lab
from vnic.loop import RunLoop
from vnic.offload_lab import OffloadHost, WireWatch, build_offload_host
from vnic.payload import PayloadStream, StreamDigest, payload_digest
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter, read_pcapng
from vnic.transfer import TSO_MAX

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                       reason="the C data path is not built"),
]

PORT = 5001
CHUNK = 64 * 1024
MTU_FRAME = 14 + 1500


class TsoKernelLab(KernelLab):
    def __init__(self, lab: Lab, oh: OffloadHost, loop: RunLoop, capture: PcapngWriter,
                 path: Path) -> None:
        super().__init__(lab, oh.stack, loop, capture, path)
        self.oh = oh
        assert isinstance(oh.node, WireWatch)
        self.watch: WireWatch = oh.node

    def run_fn(self, pred: Any, timeout: float) -> bool:
        return self.loop.run_until(pred, timeout)


@pytest.fixture(params=["capture", "burst-writes"])
def tso_lab(request: pytest.FixtureRequest, tmp_path: Path,
            leak_guard: LeakGuard) -> Iterator[TsoKernelLab]:
    """``capture``: every frame into a pcapng (the loop writes frame by frame);
    ``burst-writes``: no capture, so the loop writes each burst with TapDevice.write_frames."""
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Lab(tap_offload=True))
        leak_guard.register(lab.namespace, lab.tap_name)
        path = tmp_path / "tso.pcapng"
        capture = PcapngWriter(path)
        stack.callback(capture.close)
        oh = build_offload_host(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                                rng=random.Random(11), strict=True, tso_max=TSO_MAX)
        loop = RunLoop(lab.tap, oh.node, capture=capture if request.param == "capture" else None)
        kl = TsoKernelLab(lab, oh, loop, capture, path)

        def stop_agents() -> None:
            for agent in kl.agents:
                agent.stop()

        stack.callback(stop_agents)
        yield kl


def _ip_id(frame: bytes) -> int:
    return int.from_bytes(frame[18:20], "big")


def test_offloaded_connection_with_tso_both_ways_to_the_kernel_peer(tso_lab: TsoKernelLab) -> None:
    kl = tso_lab
    assert kl.oh.target.tso_max == TSO_MAX
    assert kl.oh.stack.tcp_config.tso_max == TSO_MAX
    up, down = 12_000_000, 10_000_000
    agent = kl.agent("both", "--port", str(PORT), "--size", str(down), "--seed", "73")
    state: dict[str, Any] = {"sent": StreamDigest(), "got": StreamDigest(), "offloaded": False,
                             "write_done": False, "eof": False, "error": None}

    async def client() -> None:
        try:
            reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
            state["sock"] = writer.get_extra_info("connection")
            state["writer"] = writer
            sched = kl.stack.scheduler
            await sched.wait_until(lambda: state["offloaded"])

            async def write() -> None:
                stream = PayloadStream(37, up)
                while chunk := stream.read(CHUNK):
                    writer.write(chunk)
                    state["sent"].update(chunk)
                    await writer.drain()
                state["write_done"] = True

            sched.spawn(write(), name="writer")
            while data := await reader.read(CHUNK):
                state["got"].update(data)
            state["eof"] = True
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            state["error"] = exc

    kl.spawn(client(), name="client")
    kl.run_until(lambda: "sock" in state or state["error"] is not None, 15, "connection open")
    assert state["error"] is None, state["error"]
    sock = state["sock"]
    kl.watch.phase = "offloading"
    assert kl.oh.offload(sock, kl.run_fn, 10.0), sock.offload_state
    kl.watch.phase = "offloaded"
    state["offloaded"] = True
    # everything moves while the connection is on the NIC: all our data written and ACKed,
    # all of the kernel's data received
    kl.run_until(lambda: (state["write_done"] and state["got"].count >= down
                          and kl.oh.target.table.send_unacked(sock_handle(kl)) == 0)
                 or state["error"] is not None, 120, "transfer offloaded")
    assert state["error"] is None, state["error"]
    assert sock.offload_state is OffloadState.OFFLOADED
    counters = kl.oh.target.table.datapath_counters()
    kl.watch.phase = "uploading"
    assert kl.oh.upload(sock, kl.run_fn, 10.0), sock.offload_state
    kl.watch.phase = "host"
    state["writer"].close()  # FIN from the host stack
    kl.run_until(lambda: state["eof"] or state["error"] is not None, 60, "peer FIN")
    assert state["error"] is None, state["error"]
    res = kl.agent_result(agent, timeout=60)
    assert res["event"] == "result" and len(res["connections"]) == 1, res
    c = res["connections"][0]
    assert c["error"] is None and c["eof"], c
    assert c["bytes_received"] == up and c["sha256_received"] == state["sent"].hexdigest()
    assert c["sha256_received"] == payload_digest(37, up)
    assert state["got"].count == down and state["got"].hexdigest() == c["sha256_sent"]
    # the NIC ran the connection, with super-segments both ways
    w = kl.watch.phase_conn("offloaded", sock.local_port)
    assert w.out_from_host == 0 and w.out_from_target > 0, w
    # the kernel sends from the moment it accepts: its first window may arrive while the
    # initiate is still in flight (watch phase "offloading"), the rest while offloaded
    w_init = kl.watch.phase_conn("offloading", sock.local_port)
    assert w.out_data_bytes_from_target >= up, w
    assert w.in_data_bytes > 0 and w.in_data_bytes + w_init.in_data_bytes >= down, (w, w_init)
    assert counters["tso_frames_out"] > 0, counters
    assert counters["pass_up"] == 0, counters
    assert kl.oh.chimney.counters["offloads"] == 1 and kl.oh.chimney.counters["lost"] == 0
    assert kl.watch.rst_frames == []
    assert kl.oh.checker is not None
    kl.oh.checker.assert_clean()
    assert kl.loop.stats.write_drops == 0 and lab_tap_drops(kl) == 0
    tap = kl.lab.tap
    assert tap.frames_written == kl.loop.stats.frames_out > 0
    assert tap.bytes_written == kl.loop.stats.bytes_out > up
    if kl.loop.capture is None:
        return
    path = kl.close_capture()
    frames = read_pcapng(path)
    target_out = [f.frame for f in frames if f.direction == DIR_OUTBOUND
                  and f.frame[12:14] == b"\x08\x00" and _ip_id(f.frame) >= 0x8000]
    inbound = [f.frame for f in frames if f.direction == DIR_INBOUND]
    assert max(map(len, target_out)) > 4 * MTU_FRAME   # the target's TSO super-segments
    assert max(map(len, inbound)) > 4 * MTU_FRAME      # the kernel's, GRO'd
    rsts = capture_rst_frames(path, dissect=False)
    assert rsts == [], f"RST frames in {path}: {rsts}"


def lab_tap_drops(kl: TsoKernelLab) -> int:
    return int(kl.lab.tap.write_drops)


def sock_handle(kl: TsoKernelLab) -> int:
    """The table handle of the (single) offloaded connection."""
    [handle] = list(kl.oh.target.tcps)
    return handle
