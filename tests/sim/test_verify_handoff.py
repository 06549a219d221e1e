"""``vnic verify`` on captures of simulated offload / terminate runs.

The host is :func:`vnic.offload_lab.build_offload_host` (HostStack + ChimneyHost + NDIS with a
strict ConformanceChecker + the OffloadTarget with its C data path), the peer a second HostStack
on a :class:`vnic.simwire.SimWire`; a :class:`vnic.capture.HandoffRecorder` annotates the capture.
A clean run (data in flight both ways, undelivered data at terminate, repeated cycles, a lossy
wire) verifies clean; then the oracle tests: each target fault hook that breaks the handoff
(wrong RcvNxt, dropped BufferedData, a delivery made twice) makes ``vnic verify`` fail naming
its rule.  Everything runs on the virtual clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from offload_target import table as table_mod
from tcpip.addr import ip_bytes, mac_bytes
from tcpip.offload import ChimneyPolicy
from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.stack import HostStack
from tcpip.streams import StreamReader, StreamWriter, open_connection, start_server
from tcpip.tcp import TcpConfig
from tests.sim.offload_rig import App  # one application end: write, read until EOF, pausable
from vnic import cli
from vnic.capture import HandoffRecorder, parse_event, stream_digest
from vnic.faults import FaultSpec, WireFaults
from vnic.offload_lab import OffloadHost, build_offload_host
from vnic.pcapng import PcapngWriter, parse_comment, read_pcapng
from vnic.simwire import SimWire
from vnic.verify import VerifyReport, verify_capture

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

HOST_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
PORT = 5001


class Run:
    """Host with the emulated NIC <-> SimWire <-> peer stack, captured and annotated."""

    def __init__(self, tmp: Path, seed: int, *, loss: float = 0.0,
                 policy: ChimneyPolicy | None = None,
                 capture_point: Literal["send", "receive"] = "receive") -> None:
        cfg = TcpConfig(msl=1.0)
        self.path = tmp / f"run{seed}.pcapng"
        self.oh: OffloadHost = build_offload_host(
            mac_bytes("02:76:6e:00:00:02"), ip_bytes(HOST_IP), 24, tcp_config=cfg,
            rng=random.Random(seed), policy=policy)
        self.peer = HostStack(mac_bytes("02:76:6e:00:00:01"), ip_bytes(PEER_IP), 24,
                              tcp_config=cfg, rng=random.Random(seed + 1000), name="peer")
        faults = None
        if loss:
            spec = FaultSpec(loss=loss, duplicate=loss / 2, reorder=loss / 2)
            faults = WireFaults.from_specs(spec, spec, seed=seed)
        self.cap = PcapngWriter(self.path, time_base=0.0)
        self.rec = HandoffRecorder(self.cap, self.oh.chimney, self.oh.stack)
        self.rec.record_info({"mode": "sim", "seed": seed, "capture_point": capture_point})
        self.wire = SimWire(self.oh.node, self.peer, faults=faults, capture=self.cap,
                            capture_point=capture_point, annotate=self.rec.annotate,
                            bandwidth=10e6, latency=0.0005, max_steps=5_000_000)
        self.accepted: list[tuple[StreamReader, StreamWriter]] = []

        async def handler(r: StreamReader, w: StreamWriter) -> None:
            self.accepted.append((r, w))

        start_server(self.peer, handler, PORT)

    def run_until(self, pred: Callable[[], bool], timeout: float = 60.0) -> bool:
        return self.wire.run_until(pred, timeout)

    def pair(self, host_data: bytes, peer_data: bytes) -> tuple[App, App, TcpSocket]:
        got: list[tuple[StreamReader, StreamWriter]] = []

        async def client() -> None:
            got.append(await open_connection(self.oh.stack, PEER_IP, PORT))

        self.oh.stack.scheduler.spawn(client())
        assert self.run_until(lambda: bool(got) and bool(self.accepted), 5.0)
        h = App(self.oh.stack, *got[0], host_data, keep_open=True).start()
        p = App(self.peer, *self.accepted[-1], peer_data, keep_open=True).start()
        sock = h.writer.get_extra_info("connection")
        assert isinstance(sock, TcpSocket)
        return h, p, sock

    def offload(self, sock: TcpSocket) -> None:
        assert self.oh.offload(sock, self.run_until, 5.0), sock.offload_state

    def upload(self, sock: TcpSocket) -> None:
        assert self.oh.upload(sock, self.run_until, 10.0), sock.offload_state

    def target_conn(self, sock: TcpSocket) -> Any:
        return self.oh.chimney.records[sock.key].handle

    def finish(self, h: App, p: App, sock: TcpSocket, *, timeout: float = 60.0) -> bool:
        """Close both ends once written, run to the double EOF (or ``timeout``), record the
        four application digests, close the capture.  True if both saw EOF."""
        self.run_until(lambda: h.write_done and p.write_done, timeout)
        h.writer.close()
        p.writer.close()
        done = self.run_until(lambda: h.eof and p.eof, timeout)
        rec = self.rec
        rec.record_digest(sock, "host->peer", *stream_digest(h.data), side="sent")
        rec.record_digest(sock, "host->peer", *stream_digest(p.got), side="received")
        rec.record_digest(sock, "peer->host", *stream_digest(p.data), side="sent")
        rec.record_digest(sock, "peer->host", *stream_digest(h.got), side="received")
        self.run_until(lambda: False, 0.01)  # the notes ride on the last frames
        self.cap.close()
        return done


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def handoff_rules(report: VerifyReport) -> set[str]:
    return {f.rule for f in report.failures if f.handoff}


# ---- clean runs verify clean ---------------------------------------------------------------------


def run_cycles(tmp: Path, seed: int, *, cycles: int, loss: float = 0.0,
               capture_point: Literal["send", "receive"] = "receive") -> tuple[Run, VerifyReport]:
    rng = random.Random(seed)
    policy = ChimneyPolicy(receive_limit=rng.choice([None, 8192, 32768]),
                           post_receive_size=rng.choice([0, 0, 16384]))
    run = Run(tmp, seed, loss=loss, policy=policy, capture_point=capture_point)
    h, p, sock = run.pair(data(seed, 300_000), data(seed + 1, 300_000))
    assert run.run_until(lambda: len(h.got) > 10_000 and len(p.got) > 10_000, 30.0)
    for _ in range(cycles):
        h.paused = True
        run.wire.run_for(rng.uniform(0.001, 0.004))
        run.offload(sock)
        run.wire.run_for(rng.uniform(0.005, 0.02))
        h.paused = rng.random() < 0.5  # sometimes the target holds undelivered data
        run.wire.run_for(rng.uniform(0.0, 0.01))
        run.upload(sock)
        h.paused = False
        run.wire.run_for(rng.uniform(0.002, 0.01))
    assert run.finish(h, p, sock, timeout=120.0)
    assert bytes(h.got) == p.data and bytes(p.got) == h.data
    return run, verify_capture(run.path)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_clean_handoffs_verify(tmp_path: Path, seed: int) -> None:
    run, report = run_cycles(tmp_path, seed, cycles=2)
    assert report.ok, "\n".join(map(str, report.failures))
    (name, conn), = report.connections.items()
    assert name.startswith(f"{HOST_IP}:") and name.endswith(f"-{PEER_IP}:{PORT}")
    assert conn.epochs == 2
    assert conn.directions["host->peer"].bytes == 300_000
    assert conn.directions["peer->host"].bytes == 300_000
    assert conn.directions["host->peer"].data_bytes_from_target > 0
    assert conn.directions["host->peer"].digests_checked == 2
    terminates = [x for x in conn.handoffs if x["event"] == "terminate-complete"]
    assert len(terminates) == 2 and all(t["outcome"] == "resumed" for t in terminates)
    checked = [x for x in conn.handoffs if x["event"] == "resume-checked"]
    assert len(checked) == 2 and all(c["host_ack_frame"] for c in checked)


@pytest.mark.parametrize("seed,capture_point", [(11, "receive"), (12, "receive"), (13, "send"),
                                                (14, "send")])
def test_clean_handoffs_on_a_lossy_wire_verify(tmp_path: Path, seed: int,
                                               capture_point: Literal["send", "receive"]) -> None:
    """Wire loss, duplicates and reordering (captured after the faults at ``receive``, before
    them at ``send``) are not handoff failures."""
    run, report = run_cycles(tmp_path, seed, cycles=3, loss=0.02, capture_point=capture_point)
    assert report.ok, "\n".join(map(str, report.failures))
    d = report.connections[next(iter(report.connections))].directions
    assert d["host->peer"].retransmitted_bytes > 0 or d["peer->host"].retransmitted_bytes > 0


def test_frames_carry_component_epoch_phase_and_events(tmp_path: Path) -> None:
    run, report = run_cycles(tmp_path, 5, cycles=1)
    frames = read_pcapng(run.path)
    words = [parse_comment(f.comment) for f in frames]
    tcp = [w for w in words if "conn" in w]
    assert {w["component"] for w in tcp} == {"host", "target", "peer"}
    assert {w["phase"] for w in tcp} >= {"InHost", "Offloaded"}
    assert {w["epoch"] for w in tcp} == {"0", "1"}
    assert all(w["epoch"] == "1" for w in tcp if w["component"] == "target")
    events = [ev for f in frames for n in f.notes
              if (ev := parse_event(n.partition(" ")[2])) is not None]
    kinds = [e["event"] for e in events]
    for k in ("run-info", "offload-start", "offload-complete", "terminate-start",
              "terminate-complete", "stream-digest"):
        assert k in kinds, kinds
    term = next(e for e in events if e["event"] == "terminate-complete")
    for k in ("snd_una", "snd_nxt", "snd_max", "rcv_nxt", "send_bytes", "buffered_bytes",
              "delivered_bytes", "host_ip_id", "target_ip_id"):
        assert k in term, term
    assert report.ok


def test_cli_verify_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _report = run_cycles(tmp_path, 6, cycles=1)
    assert cli.main(["verify", str(run.path)]) == 0
    assert "OK: every rule holds" in capsys.readouterr().out
    assert cli.main(["verify", "--json", str(run.path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["failures"] == []


# ---- the oracle can fail ------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-100, 100])
def test_wrong_rcv_nxt_fails_resume_at_rcvnxt(tmp_path: Path, delta: int) -> None:
    run = Run(tmp_path, 21)
    h, p, sock = run.pair(data(21, 200_000), data(22, 50_000))
    # the peer's data is all in (and ACKed) before the terminate
    assert run.run_until(lambda: len(h.got) > 5000, 30.0)
    run.offload(sock)
    assert run.run_until(lambda: len(h.got) == 50_000, 30.0)
    run.wire.run_for(0.01)
    run.oh.target.faults.wrong_rcv_nxt(run.target_conn(sock), delta)
    run.upload(sock)
    run.finish(h, p, sock, timeout=5.0)  # the connection may well stall: that is the point
    report = verify_capture(run.path)
    assert not report.ok
    assert "resume-at-rcvnxt" in handoff_rules(report), "\n".join(map(str, report.failures))
    f = next(f for f in report.failures if f.rule == "resume-at-rcvnxt")
    assert f.handoff == 1 and f.frame_number and f.conn == next(iter(report.connections))
    assert cli.main(["verify", str(run.path)]) == 1


def test_dropped_buffered_data_fails_buffered_once(tmp_path: Path) -> None:
    run = Run(tmp_path, 31, policy=ChimneyPolicy(receive_limit=8192))
    h, p, sock = run.pair(data(31, 100_000), data(32, 300_000))
    assert run.run_until(lambda: len(h.got) > 5000, 30.0)
    run.offload(sock)
    h.paused = True  # the host application stops reading: the target holds the peer's data
    run.wire.run_for(0.05)
    tcp = run.oh.target.find(run.target_conn(sock))
    assert run.oh.target.table.receive_available(tcp.handle) > 0
    run.oh.target.faults.drop_buffered_data(run.target_conn(sock))
    run.upload(sock)
    h.paused = False
    run.finish(h, p, sock, timeout=30.0)
    assert bytes(h.got) != p.data  # the application lost the buffered bytes
    report = verify_capture(run.path)
    rules = handoff_rules(report)
    assert "buffered-once" in rules, "\n".join(map(str, report.failures))
    assert "resume-at-rcvnxt" not in rules and "delivered-once" not in rules
    f = next(f for f in report.failures if f.rule == "buffered-once")
    assert f.handoff == 1 and "lost" in f.detail


def test_duplicate_delivery_fails_delivered_once(tmp_path: Path) -> None:
    run = Run(tmp_path, 41)
    h, p, sock = run.pair(data(41, 100_000), data(42, 300_000))
    assert run.run_until(lambda: len(h.got) > 5000, 30.0)
    run.offload(sock)
    run.oh.target.faults.duplicate_delivery(run.target_conn(sock))
    run.wire.run_for(0.05)
    run.upload(sock)
    run.finish(h, p, sock, timeout=30.0)
    assert len(h.got) > len(p.data)  # one piece arrived twice
    report = verify_capture(run.path)
    rules = handoff_rules(report)
    assert "delivered-once" in rules, "\n".join(map(str, report.failures))
    assert "resume-at-rcvnxt" not in rules
    assert "digest-match" in report.rules_failed()  # the application's digest differs too


def test_offloaded_state_is_visible_while_running(tmp_path: Path) -> None:
    run = Run(tmp_path, 51)
    h, p, sock = run.pair(data(51, 50_000), data(52, 50_000))
    run.offload(sock)
    assert sock.offload_state is OffloadState.OFFLOADED
    assert run.rec.conns[sock.key].phase == "Offloaded" and run.rec.conns[sock.key].epoch == 1
    run.upload(sock)
    assert run.rec.conns[sock.key].phase == "InHost"
    assert run.finish(h, p, sock)
    assert verify_capture(run.path).ok


@pytest.mark.parametrize("seed,capture_point", [(213, "receive"), (216, "send")])
def test_delayed_and_reordered_frames_around_the_handoff_verify(
        tmp_path: Path, seed: int, capture_point: Literal["send", "receive"]) -> None:
    """Wire delay and jitter hold frames the target built before a terminate until after it,
    and write the host's first frames after the resume in another order: the verifier goes by
    the IPv4-identification marks of the events (build order), not by file order."""
    rng = random.Random(seed)
    run = Run(tmp_path, seed, capture_point=capture_point)
    run.wire.faults = WireFaults.from_specs(FaultSpec(delay=0.002, jitter=0.004, loss=0.01),
                                            FaultSpec(jitter=0.003), seed=seed)
    h, p, sock = run.pair(data(seed, 300_000), data(seed + 1, 300_000))
    assert run.run_until(lambda: len(h.got) > 10_000 and len(p.got) > 10_000, 30.0)
    for _ in range(3):
        run.offload(sock)
        run.wire.run_for(rng.uniform(0.002, 0.02))
        h.paused = rng.random() < 0.5
        run.upload(sock)
        h.paused = False
        run.wire.run_for(rng.uniform(0.0, 0.005))
    assert run.finish(h, p, sock, timeout=120.0)
    report = verify_capture(run.path)
    assert report.ok, "\n".join(map(str, report.failures))
    assert report.connections[run.rec.conn_name(sock)].epochs == 3
