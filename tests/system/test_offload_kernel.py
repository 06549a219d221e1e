"""The offload target against the real Linux kernel TCP peer (lab namespace, TAP, RunLoop).

The host side is :func:`vnic.offload_lab.build_offload_host` (HostStack + ChimneyHost + NDIS
with a strict ConformanceChecker + OffloadTarget with the C data path behind a NicNode, wrapped
in a WireWatch) driven by the run loop on the lab's TAP.  A connection to the kernel's traffic
agent carries data both ways; mid-transfer it is offloaded, runs on the target (its frames carry
IPv4 identifications from the target's half, T.1), is terminated and resumes in the host.  Both
streams must arrive byte-exact (SHA-256 at both ends), no RST may appear in the pcapng capture,
and no lab is left behind.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
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
from vnic.pcapng import PcapngWriter

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                       reason="the C data path is not built"),
]

PORT = 5001
CHUNK = 64 * 1024


class OffloadKernelLab(KernelLab):
    def __init__(self, lab: Lab, oh: OffloadHost, loop: RunLoop, capture: PcapngWriter,
                 path: Path) -> None:
        super().__init__(lab, oh.stack, loop, capture, path)
        self.oh = oh
        assert isinstance(oh.node, WireWatch)
        self.watch: WireWatch = oh.node

    def run_fn(self, pred: Callable[[], bool], timeout: float) -> bool:
        return self.loop.run_until(pred, timeout)


@pytest.fixture
def offload_lab(tmp_path: Path, leak_guard: LeakGuard) -> Iterator[OffloadKernelLab]:
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Lab())
        leak_guard.register(lab.namespace, lab.tap_name)
        path = tmp_path / "offload.pcapng"
        capture = PcapngWriter(path)
        stack.callback(capture.close)
        oh = build_offload_host(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                                rng=random.Random(5), strict=True)
        loop = RunLoop(lab.tap, oh.node, capture=capture)
        kl = OffloadKernelLab(lab, oh, loop, capture, path)

        def stop_agents() -> None:
            for agent in kl.agents:
                agent.stop()

        stack.callback(stop_agents)
        yield kl


@pytest.mark.parametrize("cycles", [1, 3])
def test_offload_mid_transfer_to_the_kernel_peer(offload_lab: OffloadKernelLab, cycles: int) -> None:
    kl = offload_lab
    up, down = 16_000_000, 12_000_000
    agent = kl.agent("both", "--port", str(PORT), "--size", str(down), "--seed", "61")
    state: dict[str, Any] = {"sent": StreamDigest(), "got": StreamDigest(), "write_done": False,
                             "eof": False, "error": None}

    async def client() -> None:
        try:
            reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
            state["sock"] = writer.get_extra_info("connection")

            async def write() -> None:
                stream = PayloadStream(29, up)
                sched = kl.stack.scheduler
                while chunk := stream.read(CHUNK):
                    # keep the two directions in step (within ~1 MB), so that every offload
                    # window falls in the middle of both streams whatever the speeds
                    await sched.wait_until(lambda: state["sent"].count * down
                                           <= (state["got"].count + 1_000_000) * up
                                           or state["eof"])
                    writer.write(chunk)
                    state["sent"].update(chunk)
                    await writer.drain()
                writer.close()  # FIN after our data; the kernel's data keeps coming
                state["write_done"] = True

            kl.stack.scheduler.spawn(write(), name="writer")
            sched = kl.stack.scheduler
            while True:
                # the reader keeps in step too: otherwise the download can run ahead and the
                # kernel finish (FIN, CLOSE_WAIT) inside an offload window meant to be
                # mid-transfer
                await sched.wait_until(lambda: state["got"].count * up
                                       <= (state["sent"].count + 1_000_000) * down
                                       or state["write_done"])
                data = await reader.read(CHUNK)
                if not data:
                    break
                state["got"].update(data)
            state["eof"] = True
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            state["error"] = exc

    kl.spawn(client(), name="client")
    kl.run_until(lambda: "sock" in state, 15, "connection open")
    sock = state["sock"]
    # every offload window lies in the first half of both streams: the connection is offloaded
    # and terminated with data flowing both ways, and closes in the host
    step_up, step_down = up // (8 * cycles), down // (8 * cycles)
    for i in range(cycles):
        # mid-transfer: data flowing both ways
        kl.run_until(lambda i=i: state["sent"].count >= (2 * i + 1) * step_up
                     and state["got"].count >= (2 * i + 1) * step_down, 60, "data flowing")
        kl.watch.phase = f"offloading{i}"  # the host's T.4 flush goes out first
        assert kl.oh.offload(sock, kl.run_fn, 10.0), sock.offload_state
        kl.watch.phase = f"offloaded{i}"
        sent0, got0 = state["sent"].count, state["got"].count
        kl.run_until(lambda s=sent0, g=got0: state["sent"].count >= s + step_up
                     or state["got"].count >= g + step_down, 60, "data flowing offloaded")
        kl.watch.phase = f"uploading{i}"
        assert kl.oh.upload(sock, kl.run_fn, 10.0), sock.offload_state
        kl.watch.phase = f"host{i}"
        w = kl.watch.phase_conn(f"offloaded{i}", sock.local_port)
        assert w.out_from_target > 0 and w.out_from_host == 0, w  # the target ran it
        assert sock.state.name == "ESTABLISHED", (i, state["sent"].count, state["got"].count)
        assert w.out_data_bytes_from_target > 0 and w.in_data_bytes > 0
        assert kl.oh.target.tcp_count == 0 and sock.offload_state is OffloadState.IN_HOST
    kl.run_until(lambda: (state["eof"] and state["write_done"]) or state["error"] is not None,
                 120, "transfer done")
    assert state["error"] is None, state["error"]
    res = kl.agent_result(agent, timeout=60)
    assert res["event"] == "result" and len(res["connections"]) == 1, res
    c = res["connections"][0]
    assert c["error"] is None and c["eof"], c
    assert c["bytes_received"] == up and c["sha256_received"] == state["sent"].hexdigest()
    assert c["sha256_received"] == payload_digest(29, up)
    assert state["got"].count == down and state["got"].hexdigest() == c["sha256_sent"]
    last = kl.watch.phase_conn(f"host{cycles - 1}", sock.local_port)
    assert last.out_from_target == 0 and last.out_from_host > 0  # resumed in the host
    assert kl.oh.chimney.counters["offloads"] == cycles
    assert kl.oh.chimney.counters["uploads"] == cycles
    assert kl.oh.chimney.counters["lost"] == 0
    assert kl.watch.rst_frames == []
    assert kl.oh.checker is not None
    kl.oh.checker.assert_clean()
    rsts = capture_rst_frames(kl.close_capture(), dissect=False)
    assert rsts == [], f"RST frames in {kl.capture_path}: {rsts}"
