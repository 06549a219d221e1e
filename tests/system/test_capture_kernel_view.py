"""A TAP run against the Linux kernel peer with the emulated NIC, seen twice: our annotated
capture checked by ``vnic verify``, and tcpdump in the peer namespace analysed by tshark (the
kernel's view: tcp.analysis flags, RSTs, bytes), both in one report dict.

The connection carries data both ways, is offloaded, runs on the target, is terminated and
finishes in the host.  Marked ``system`` (root, /dev/net/tun, namespaces); skipped with a reason
when tcpdump or tshark is missing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from offload_target import table as table_mod
from tcpip import streams
from tcpip.offload_socket import OffloadState, TcpSocket
from tests.system.kernel import LeakGuard
from vnic.capture import HandoffRecorder
from vnic.kernel_view import (
    PeerCapture,
    analyze_with_tshark,
    compare_with_capture,
    have_tcpdump,
    have_tshark,
)
from vnic.lab import Lab
from vnic.loop import RunLoop
from vnic.offload_lab import build_offload_host
from vnic.payload import PayloadStream, StreamDigest
from vnic.pcapng import PcapngWriter, read_pcapng
from vnic.peer import PeerAgent
from vnic.verify import verify_capture

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not have_tcpdump(), reason="tcpdump is not installed (scripts/setup.sh)"),
    pytest.mark.skipif(not have_tshark(), reason="tshark is not installed (scripts/setup.sh)"),
    pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                       reason="the C data path is not built"),
]

PORT = 5001
UP, DOWN = 1_500_000, 1_200_000
CHUNK = 16384


def test_offload_run_verified_and_seen_by_the_kernel(tmp_path: Path,
                                                     leak_guard: LeakGuard) -> None:
    ours = tmp_path / "host.pcapng"
    with Lab() as lab:
        leak_guard.register(lab.namespace, lab.tap_name)
        oh = build_offload_host(lab.host_mac_bytes, lab.host_ip_bytes, lab.prefix_len,
                                rng=random.Random(5), name="host")
        with PcapngWriter(ours) as cap:
            rec = HandoffRecorder(cap, oh.chimney, oh.stack)
            rec.record_info({"mode": "tap", "lab": lab.namespace})
            loop = RunLoop(lab.tap, oh.node, capture=cap, annotate=rec.annotate)
            with PeerCapture(lab, tmp_path / "peer.pcap") as pc:
                agent = PeerAgent.start(lab, "both", "--port", str(PORT), "--size", str(DOWN),
                                        "--seed", "61")
                try:
                    assert loop.run_until(lambda: agent.ready is not None or agent.poll_result()
                                          is not None or agent.proc.poll() is not None, 15.0)
                    assert agent.ready is not None, agent.stderr[-2000:]
                    state: dict[str, Any] = {"sent": StreamDigest(), "got": StreamDigest()}

                    async def sender(w: streams.StreamWriter) -> None:
                        src = PayloadStream(17, UP)
                        while chunk := src.read(CHUNK):
                            w.write(chunk)
                            state["sent"].update(chunk)
                            await w.drain()
                        state["sent_done"] = True

                    async def client() -> None:
                        r, w = await streams.open_connection(oh.stack, lab.peer_ip_bytes, PORT)
                        state["writer"] = w
                        oh.stack.scheduler.spawn(sender(w))
                        while data := await r.read(65536):
                            state["got"].update(data)
                        state["eof"] = True

                    oh.stack.scheduler.spawn(client())
                    assert loop.run_until(lambda: state["sent"].count > 200_000
                                          and state["got"].count > 200_000, 30.0)
                    sock = state["writer"].get_extra_info("connection")
                    assert isinstance(sock, TcpSocket)
                    assert oh.offload(sock, loop.run_until, 10.0), sock.offload_state
                    assert loop.run_until(lambda: state["sent"].count > 900_000
                                          and state["got"].count > 700_000, 30.0)
                    assert oh.upload(sock, loop.run_until, 10.0)
                    assert sock.offload_state is OffloadState.IN_HOST
                    assert loop.run_until(lambda: state.get("sent_done", False), 60.0)
                    state["writer"].close()
                    assert loop.run_until(lambda: state.get("eof", False)
                                          and agent.poll_result() is not None, 60.0)
                    result = agent.wait_result(10.0)
                finally:
                    agent.stop()
                peer_conn = result["connections"][0]
                name = rec.conn_name(sock)
                rec.record_digest(name, "host->peer", state["sent"].count,
                                  state["sent"].hexdigest(), side="sent")
                rec.record_digest(name, "host->peer", peer_conn["bytes_received"],
                                  peer_conn["sha256_received"], side="received")
                rec.record_digest(name, "peer->host", peer_conn["bytes_sent"],
                                  peer_conn["sha256_sent"], side="sent")
                rec.record_digest(name, "peer->host", state["got"].count,
                                  state["got"].hexdigest(), side="received")
                loop.run_for(0.05)  # the digests ride on the next frames (or the closing block)
                cap.flush()
                wanted = sum(1 for _f in read_pcapng(ours))
                # every frame that crossed the TAP also reaches tcpdump: wait for the file
                pc.wait_for_packets(wanted, loop.run_until, 10.0)
            peer_stats = pc.stop()
    report = verify_capture(ours)
    kernel = analyze_with_tshark(pc)  # the PeerCapture knows the lab's host address
    agree = compare_with_capture(kernel, report)
    combined = {"verify": report.as_dict(), "kernel_view": kernel, "tcpdump": peer_stats,
                "views_agree": agree}
    (tmp_path / "report.json").write_text(json.dumps(combined, indent=2))

    assert report.ok, "\n".join(map(str, report.failures))
    c = report.connections[name]
    assert c.epochs == 1
    assert c.directions["host->peer"].bytes == UP and c.directions["peer->host"].bytes == DOWN
    assert c.directions["host->peer"].data_bytes_from_target > 0
    assert c.directions["host->peer"].digests_checked == 2
    # the kernel's view agrees: no RST, every byte crossed, SYN and FIN each way
    kc = kernel["connections"][name]
    assert kernel["rsts"] == 0
    assert peer_stats["dropped"] in (0, None), peer_stats  # tcpdump saw every frame
    assert kc["host->peer"]["bytes"] >= UP and kc["peer->host"]["bytes"] >= DOWN
    assert kc["host->peer"]["syns"] == 1 and kc["peer->host"]["syns"] == 1
    assert kc["host->peer"]["fins"] >= 1 and kc["peer->host"]["fins"] >= 1
    assert set(kc["host->peer"]) >= {"retransmission", "duplicate_ack", "out_of_order",
                                     "lost_segment", "zero_window"}
    assert peer_stats["in_file"] >= wanted
    assert kernel["ok"] and agree == {"agrees": True, "disagreements": []}
