"""``vnic verify`` on synthetic captures built with scapy: every rule has a passing and a failing
case, and each failure names its rule, the connection, the handoff and the frame."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from vnic import cli
from vnic.capture import conn_name, stream_digest, write_digest, write_event
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter
from vnic.verify import RULES, CaptureError, VerifyReport, render_verify, verify_capture

HOST, PEER = "198.18.0.2", "198.18.0.1"
HPORT, PPORT = 40000, 5001
HMAC, PMAC = "02:76:6e:00:00:02", "02:76:6e:00:00:01"
CONN = conn_name(HOST, HPORT, PEER, PPORT)
MOD = 1 << 32


def payload(tag: int, n: int = 100) -> bytes:
    return bytes((tag * 31 + i) & 0xFF for i in range(n))


class Synth:
    """Writes a capture: ``out`` = host->peer frames (host or target built, by IPv4 id),
    ``inn`` = peer->host; sequence offsets are relative to ISN+1 of each side."""

    def __init__(self, path: Path, *, hisn: int = 1000, pisn: int = 50_000) -> None:
        self.path = path
        self.cap = PcapngWriter(path, time_base=0.0)
        self.t = 0.0
        self.hisn, self.pisn = hisn, pisn
        self.host_id = 1
        self.target_id = 0x8000
        self.sent: dict[str, bytearray] = {"host->peer": bytearray(), "peer->host": bytearray()}
        write_event(self.cap, 0.0, "run-info", recorder="test", host_ip=HOST)

    def hseq(self, off: int) -> int:
        return (self.hisn + 1 + off) % MOD

    def pseq(self, off: int) -> int:
        return (self.pisn + 1 + off) % MOD

    def _write(self, pkt: Any, outbound: bool, component: str) -> None:
        self.t += 0.001
        d = "host->peer" if outbound else "peer->host"
        self.cap.write_frame(bytes(pkt), self.t, f"dir={d} component={component} conn={CONN}",
                             DIR_OUTBOUND if outbound else DIR_INBOUND)

    def out(self, off: int, data: bytes = b"", *, ack: int | None = 0, flags: str = "A",
            target: bool = False, ident: int | None = None, seq: int | None = None) -> None:
        if ident is None:
            if target:
                self.target_id = 0x8000 | ((self.target_id + 1) & 0x7FFF)  # T.1, wraps
                ident = self.target_id
            else:
                self.host_id += 1
                ident = self.host_id
        tcp = TCP(sport=HPORT, dport=PPORT, seq=self.hseq(off) if seq is None else seq,
                  ack=self.pseq(ack) if ack is not None else 0, flags=flags, window=65535)
        pkt = Ether(src=HMAC, dst=PMAC) / IP(src=HOST, dst=PEER, id=ident, flags="DF") / tcp
        if data:
            pkt = pkt / Raw(data)
        self._write(pkt, True, "target" if ident >= 0x8000 else "host")

    def inn(self, off: int, data: bytes = b"", *, ack: int | None = 0, flags: str = "A",
            seq: int | None = None) -> None:
        tcp = TCP(sport=PPORT, dport=HPORT, seq=self.pseq(off) if seq is None else seq,
                  ack=self.hseq(ack) if ack is not None else 0, flags=flags, window=65535)
        pkt = Ether(src=PMAC, dst=HMAC) / IP(src=PEER, dst=HOST, id=7) / tcp
        if data:
            pkt = pkt / Raw(data)
        self._write(pkt, False, "peer")

    def handshake(self) -> None:
        self.out(0, seq=self.hisn, ack=None, flags="S")
        self.inn(0, seq=self.pisn, ack=0, flags="SA")
        self.out(0, ack=0)

    def event(self, kind: str, **fields: Any) -> None:
        write_event(self.cap, self.t, kind, conn=CONN, **fields)

    def digest(self, direction: str, data: bytes, side: str = "sent") -> None:
        n, sha = stream_digest(data)
        write_digest(self.cap, self.t, CONN, direction, n, sha, side=side)

    def close(self) -> VerifyReport:
        self.cap.close()
        return verify_capture(self.path)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rules(report: VerifyReport) -> set[str]:
    return {f.rule for f in report.failures}


def plain(s: Synth, *, fin: bool = True) -> tuple[bytes, bytes]:
    """Data both ways in the host, then FINs: a clean connection."""
    s.handshake()
    h, p = payload(1, 300), payload(2, 200)
    s.out(0, h[:100], ack=0)
    s.out(100, h[100:200], ack=0)
    s.inn(0, p[:100], ack=200)
    s.out(200, h[200:], ack=100)
    s.inn(100, p[100:], ack=300)
    s.out(300, ack=200)
    if fin:
        s.out(300, flags="FA", ack=200)
        s.inn(200, flags="FA", ack=301)
        s.out(301, ack=201)
    return h, p


# ---- stream-level rules ---------------------------------------------------------------------------


def test_clean_connection_passes_every_rule(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    h, p = plain(s)
    s.digest("host->peer", h)
    s.digest("peer->host", p, side="received")
    report = s.close()
    assert report.ok, report.failures
    c = report.connections[CONN]
    assert c.directions["host->peer"].bytes == 300 and c.directions["peer->host"].bytes == 200
    assert c.directions["host->peer"].sha256 == sha(h)
    assert c.directions["host->peer"].fin and c.directions["host->peer"].syn
    assert "OK" in render_verify(report)
    assert set(report.as_dict()["rules"]) == set(RULES)


def test_hole_fails_stream_complete(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    s.handshake()
    h = payload(1, 300)
    s.out(0, h[:100])
    s.out(200, h[200:])  # bytes 100..200 never on the wire
    s.out(300, flags="FA")
    s.inn(0, flags="FA", ack=301)
    report = s.close()
    (f,) = [f for f in report.failures if f.rule == "stream-complete"]
    assert f.conn == CONN and f.frame_number == 5 and "100 bytes" in f.detail
    assert report.connections[CONN].directions["host->peer"].holes == [(100, 200)]


def test_retransmission_reordering_duplicates_and_wrap_pass(tmp_path: Path) -> None:
    # the host's sequence numbers wrap inside the stream; segments arrive out of order,
    # duplicated and retransmitted with the same bytes
    s = Synth(tmp_path / "c.pcapng", hisn=MOD - 150, pisn=MOD - 1)
    s.handshake()
    h = payload(3, 400)
    s.out(100, h[100:200])
    s.out(0, h[:100])
    s.out(0, h[:100])
    s.out(50, h[50:250])  # overlaps both, same bytes
    s.out(300, h[300:])
    s.out(250, h[250:300])
    s.out(400, flags="FA")
    s.inn(0, flags="FA", ack=401)
    s.out(401, ack=1)
    s.digest("host->peer", h)
    report = s.close()
    assert report.ok, report.failures
    d = report.connections[CONN].directions["host->peer"]
    assert d.bytes == 400 and d.sha256 == sha(h) and d.retransmitted_bytes == 250


def test_changed_retransmission_fails_no_inconsistent_overlap(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    s.handshake()
    h = payload(1, 200)
    s.out(0, h)
    bad = bytearray(h[100:])
    bad[10] ^= 0xFF
    s.out(100, bytes(bad))
    report = s.close()
    (f,) = [f for f in report.failures if f.rule == "no-inconsistent-overlap"]
    assert f.frame_number == 5 and f.conn == CONN and str(s.hseq(110)) in f.detail


def test_digest_mismatch_fails_digest_match(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    h, p = plain(s)
    s.digest("host->peer", h[:-1] + b"x")  # the application sent something else
    report = s.close()
    assert rules(report) == {"digest-match"}
    assert "host->peer" in report.failures[0].detail


def test_expected_digests_argument(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    h, p = plain(s)
    s.close()
    ok = verify_capture(s.path, expected_digests={CONN: {"host->peer": sha(h),
                                                          "peer->host": (len(p), sha(p))}})
    assert ok.ok
    bad = verify_capture(s.path, expected_digests={CONN: {"peer->host": {"bytes": 199,
                                                                          "sha256": sha(p)}}})
    assert rules(bad) == {"digest-match"} and "199" in bad.failures[0].detail


def test_rst_fails_no_rst(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    plain(s, fin=False)
    s.inn(200, flags="R", ack=None)
    report = s.close()
    (f,) = report.failures
    assert f.rule == "no-rst" and f.frame_number == 10 and "peer" in f.detail


def test_non_tcp_and_corrupt_frames_are_ignored(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    s.cap.write_frame(bytes(Ether(src=HMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=PEER)), 0.0,
                      "dir=host->peer component=host", DIR_OUTBOUND)
    plain(s)
    bad = bytearray(bytes(Ether(src=HMAC, dst=PMAC) / IP(src=HOST, dst=PEER, id=99)
                          / TCP(sport=HPORT, dport=PPORT, seq=s.hseq(0), flags="A") / Raw(b"Z" * 50)))
    bad[-3] ^= 0x55  # payload corrupted on the wire: the TCP checksum fails
    s.cap.write_frame(bytes(bad), 1.0, "dir=host->peer component=host", DIR_OUTBOUND)
    report = s.close()
    assert report.ok, report.failures
    assert report.ignored == {"bad-tcp-checksum": 1}


def test_fragmented_frames_are_reassembled_before_the_checks(tmp_path: Path) -> None:
    """Over TAP outbound frames are captured after wire faults: with the `fragment` fault the
    capture holds IPv4 fragments (in any order); the verifier reassembles them and checks the
    segments as if they had crossed whole.  A datagram that never completes leaves a hole."""
    from vnic.faults import fragment_frame

    s = Synth(tmp_path / "f.pcapng")
    write_frame = s.cap.write_frame
    split: dict[str, int] = {"n": 0}

    def fragmenting(frame: bytes, t: float, comment: str, direction: int | None) -> None:
        pieces = fragment_frame(frame, 16, reverse=split["n"] % 2 == 1)
        split["n"] += 1
        for p in pieces or [frame]:
            write_frame(p, t, comment, direction)

    s.cap.write_frame = fragmenting  # type: ignore[method-assign]
    h, p = plain(s)
    s.digest("host->peer", h)
    s.digest("peer->host", p)
    report = s.close()
    assert report.ok, report.failures
    assert report.fragments > 10 and report.ignored == {}
    d = report.connections[CONN].directions
    assert (d["host->peer"].bytes, d["peer->host"].bytes) == (300, 200)
    assert "IPv4 fragments" in render_verify(report)
    # the last fragment of one data segment missing: the stream has a hole
    s2 = Synth(tmp_path / "g.pcapng")
    write2 = s2.cap.write_frame

    def lossy(frame: bytes, t: float, comment: str, direction: int | None) -> None:
        pieces = fragment_frame(frame, 32) or [frame]
        if len(pieces) > 3 and "dropped" not in split:
            split["dropped"] = 1
            pieces = pieces[:-1]
        for p in pieces:
            write2(p, t, comment, direction)

    s2.cap.write_frame = lossy  # type: ignore[method-assign]
    plain(s2)
    assert "stream-complete" in rules(s2.close())


# ---- handoff rules --------------------------------------------------------------------------------


def handoff(s: Synth, **over: Any) -> dict[str, Any]:
    """In host -> offloaded (the target sends and ACKs) -> terminate -> back in the host.
    ``over`` changes the terminate-complete fields or the host's resume (``resume_off``,
    ``resume_ack``, ``late_target``: a target frame after the event (``"old"`` / ``"new"``))."""
    s.handshake()
    h, p = payload(1, 400), payload(2, 300)
    s.out(0, h[:100], ack=0)
    s.inn(0, p[:100], ack=100)
    s.out(100, ack=100)
    s.event("offload-start", epoch=1, snd_una=s.hseq(100), snd_nxt=s.hseq(100),
            snd_max=s.hseq(100), rcv_nxt=s.pseq(100), rcv_pos=s.pseq(100), buffered_bytes=0,
            host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    s.event("offload-complete", epoch=1)
    s.out(100, h[100:200], ack=100, target=True)
    s.inn(100, p[100:200], ack=200)
    s.inn(200, p[200:300], ack=200)
    s.out(200, h[200:300], ack=300, target=True)
    s.inn(300, ack=300)
    s.event("terminate-start", epoch=1)
    fields = dict(epoch=1, status="NDIS_STATUS_SUCCESS", outcome="resumed",
                  snd_una=s.hseq(300), snd_nxt=s.hseq(300), snd_max=s.hseq(300),
                  rcv_nxt=s.pseq(300), send_bytes=0, refused_bytes=0,
                  # the host application read 100 bytes during the epoch, 100 were buffered
                  delivered_bytes=100, delivered_sha256=sha(p[100:200]),
                  buffered_bytes=100, buffered_sha256=sha(p[200:300]),
                  rcv_pos=s.pseq(100), host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    late = over.pop("late_target", None)
    resume_drop = over.pop("resume_drop", None)
    resume_off = over.pop("resume_off", 300)
    resume_ack = over.pop("resume_ack", 300)
    fields.update(over)
    s.event("terminate-complete", **fields)
    if late == "old":  # built before the event, written after it (same poll / wire delay)
        s.out(200, h[200:300], ack=300, ident=s.target_id)
    elif late == "new":
        s.out(300, h[300:400], ack=300, target=True)
    if resume_drop is not None:  # h[300:resume_off] first, then the rest, then h[300:...] again
        if resume_drop:
            s.host_id += 1  # built from SndNxt, dropped on the wire before the capture
        s.out(resume_off, h[resume_off:400], ack=resume_ack)
        s.out(300, h[300:resume_off], ack=resume_ack)  # the retransmission
    else:
        s.out(resume_off, h[resume_off:400], ack=resume_ack)
    s.inn(300, ack=400)
    s.out(400, flags="FA", ack=300)
    s.inn(300, flags="FA", ack=401)
    s.out(401, ack=301)
    s.digest("host->peer", h)
    s.digest("peer->host", p)
    return fields


def handoff_failures(report: VerifyReport) -> dict[str, Any]:
    return {f.rule: f for f in report.failures}


def test_clean_handoff_passes(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s)
    report = s.close()
    assert report.ok, report.failures
    c = report.connections[CONN]
    assert c.epochs == 1 and c.directions["host->peer"].data_bytes_from_target == 200
    assert [h["event"] for h in c.handoffs][:4] == ["offload-start", "offload-complete",
                                                      "terminate-start", "terminate-complete"]


def test_old_target_frame_written_after_terminate_passes(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, late_target="old")
    assert s.close().ok


def test_target_frame_built_after_terminate_fails_resume_from_host(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, late_target="new")
    report = s.close()
    f = handoff_failures(report)["resume-from-host"]
    assert f.handoff == 1 and f.conn == CONN and f.frame_number == 12
    assert "after terminate-complete" in f.detail


def test_resume_at_sndnxt_retransmission_from_snduna_passes(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, snd_una=s.hseq(200), resume_off=200)  # the peer's ACK of 300 not yet processed
    assert s.close().ok


def test_resume_beyond_sndnxt_fails_resume_at_sndnxt(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, resume_off=350)  # skips 50 bytes
    report = s.close()
    f = handoff_failures(report)["resume-at-sndnxt"]
    assert f.handoff == 1 and f.frame_number == 12 and "skips" in f.detail
    assert "stream-complete" in rules(report)


def test_resume_at_the_peers_ack_beyond_sndnxt_passes(tmp_path: Path) -> None:
    """The target had sent up to 300, went back after a timeout (returned SndUna 200, SndNxt
    250, SndMax 300), and the peer's ACK of 300 arrived before the host sent anything: the host
    goes on at 300 (SND.UNA passed SND.NXT, RFC 9293 3.10.7.4) -- not a skip."""
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, snd_una=s.hseq(200), snd_nxt=s.hseq(250), resume_off=300)
    report = s.close()
    assert report.ok, report.failures


def test_resume_beyond_the_returned_sndmax_still_fails(tmp_path: Path) -> None:
    """The same, but the returned SndMax (260) says the target never sent up to 300: going on
    at 300 skips bytes whatever the peer acknowledged."""
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, snd_una=s.hseq(200), snd_nxt=s.hseq(250), snd_max=s.hseq(260), resume_off=300)
    f = handoff_failures(s.close())["resume-at-sndnxt"]
    assert "skips" in f.detail


def test_host_ack_below_rcvnxt_fails_resume_at_rcvnxt(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, resume_ack=250)
    f = handoff_failures(s.close())["resume-at-rcvnxt"]
    assert f.handoff == 1 and f.frame_number == 12 and "below" in f.detail


def test_returned_rcvnxt_beyond_peer_data_fails_resume_at_rcvnxt(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, rcv_nxt=s.pseq(340), resume_ack=340)
    report = s.close()
    fs = [f for f in report.failures if f.rule == "resume-at-rcvnxt"]
    assert any("never sent" in f.detail and f.handoff == 1 for f in fs)
    assert any("beyond the peer's contiguous data" in f.detail for f in fs)  # the host's ACK
    assert "buffered-once" not in rules(report)  # not judged against an inconsistent RcvNxt


def test_returned_rcvnxt_below_target_ack_fails_resume_at_rcvnxt(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, rcv_nxt=s.pseq(280), resume_ack=280)
    f = handoff_failures(s.close())["resume-at-rcvnxt"]
    assert "below the ACK" in f.detail and f.frame_number == 10  # the target's ACK of 300


def test_data_delivered_twice_fails_delivered_once(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    p = payload(2, 300)
    handoff(s, delivered_bytes=150, delivered_sha256=sha(p[100:200] + p[150:200]),
            buffered_bytes=100)
    report = s.close()
    f = handoff_failures(report)["delivered-once"]
    assert f.handoff == 1 and "duplicated" in f.detail
    assert "buffered-once" not in rules(report)


def test_more_delivered_than_acked_fails_delivered_once(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, delivered_bytes=250)
    f = handoff_failures(s.close())["delivered-once"]
    assert "50 bytes delivered twice" in f.detail and f.frame_number == 12


def test_wrong_delivered_bytes_fail_delivered_once(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, delivered_sha256=sha(b"x" * 100))
    assert "delivered-once" in rules(s.close())


def test_lost_buffered_data_fails_buffered_once(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, buffered_bytes=0, buffered_sha256=sha(b""))
    report = s.close()
    f = handoff_failures(report)["buffered-once"]
    assert f.handoff == 1 and "100 bytes lost" in f.detail and f.conn == CONN


def test_wrong_buffered_bytes_fail_buffered_once(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, buffered_sha256=sha(b"y" * 100))
    assert rules(s.close()) == {"buffered-once"}


def test_lost_connection_fails_terminate_returned_state(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    s.handshake()
    s.event("offload-start", epoch=1)
    s.event("terminate-complete", epoch=1, status="NDIS_STATUS_FAILURE", outcome="lost")
    s.out(0, ack=0)
    report = s.close()
    (f,) = report.failures
    assert f.rule == "terminate-returned-state" and f.handoff == 1 and f.frame_number == 4


# ---- files, the CLI, other readers ------------------------------------------------------------------


def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"this is not a capture at all")
    with pytest.raises(CaptureError):
        verify_capture(junk)
    assert cli.main(["verify", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "not a pcapng capture" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["verify", str(tmp_path / "missing.pcapng")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = Synth(tmp_path / "ok.pcapng")
    plain(s)
    s.close()
    assert cli.main(["verify", str(s.path)]) == 0
    bad = Synth(tmp_path / "bad.pcapng")
    handoff(bad, resume_ack=250)
    bad.close()
    capsys.readouterr()
    assert cli.main(["verify", str(bad.path)]) == 1
    out = capsys.readouterr().out
    assert "[resume-at-rcvnxt]" in out and CONN in out and "epoch 1" in out


def test_scapy_reads_the_comments(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s)
    s.close()
    pkts = rdpcap(str(s.path))
    comments = [b" ".join(p.comments or []).decode() for p in pkts]
    assert any("component=target" in c for c in comments)
    assert any("vnic-event" in c and "terminate-complete" in c for c in comments)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_the_comments(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    handoff(s)
    s.close()
    out = subprocess.run(["tshark", "-r", str(s.path), "-T", "fields", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert "component=target" in out and "terminate-complete" in out


def test_peer_fin_while_offloaded_passes(tmp_path: Path) -> None:
    """RcvNxt returned after the peer's FIN covers the FIN, not a byte of data."""
    s = Synth(tmp_path / "c.pcapng")
    s.handshake()
    h, p = payload(1, 100), payload(2, 100)
    s.event("offload-start", epoch=1, snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0),
            rcv_nxt=s.pseq(0), rcv_pos=s.pseq(0), buffered_bytes=0,
            host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    s.inn(0, p, flags="FPA", ack=0)
    s.out(0, ack=101, target=True)
    s.event("terminate-complete", epoch=1, status="NDIS_STATUS_SUCCESS", outcome="resumed",
            snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0), rcv_nxt=s.pseq(101),
            delivered_bytes=100, delivered_sha256=sha(p), buffered_bytes=0,
            buffered_sha256=sha(b""), rcv_pos=s.pseq(0), host_ip_id=s.host_id + 1,
            target_ip_id=s.target_id)
    s.out(0, h, ack=101)
    s.out(100, flags="FA", ack=101)
    s.inn(101, ack=101)
    report = s.close()
    assert report.ok, report.failures
    bad = Synth(tmp_path / "bad.pcapng")
    bad.handshake()
    bad.event("offload-start", epoch=1, rcv_pos=bad.pseq(0), host_ip_id=bad.host_id + 1,
              target_ip_id=bad.target_id)
    bad.inn(0, p, flags="FPA", ack=0)
    bad.out(0, ack=101, target=True)
    bad.event("terminate-complete", epoch=1, status="NDIS_STATUS_SUCCESS", outcome="resumed",
              snd_una=bad.hseq(0), snd_nxt=bad.hseq(0), snd_max=bad.hseq(0),
              rcv_nxt=bad.pseq(101), delivered_bytes=60, delivered_sha256=sha(p[:60]),
              buffered_bytes=0, buffered_sha256=sha(b""), rcv_pos=bad.pseq(0),
              host_ip_id=bad.host_id + 1, target_ip_id=bad.target_id)
    bad.out(0, ack=101)
    f = handoff_failures(bad.close())["buffered-once"]
    assert "40 bytes lost" in f.detail


# ---- false positives found on TAP runs (each once made a correct run fail) ------------------------


def test_first_segment_after_resume_dropped_on_the_wire_passes(tmp_path: Path) -> None:
    """Over TAP outbound frames are captured after wire faults: the host's first segment after
    the resume (from SndNxt) was dropped, the next one is the first in the capture, and the
    dropped bytes come later as a retransmission (by the host, or by the target after the next
    offload).  Not a skip."""
    s = Synth(tmp_path / "c.pcapng")
    h = payload(1, 400)
    handoff(s, resume_off=350, resume_drop=True)  # built h[300:350] (dropped), then h[350:]
    report = s.close()
    assert report.ok, report.failures
    assert report.connections[CONN].directions["host->peer"].sha256 == sha(h)


def test_skip_without_a_dropped_frame_still_fails_resume_at_sndnxt(tmp_path: Path) -> None:
    """The same capture, but no host frame is missing between the event's mark and the segment
    (the host really built the segment beyond SndNxt first): a skip, even if retransmitted."""
    s = Synth(tmp_path / "c.pcapng")
    handoff(s, resume_off=350, resume_drop=False)
    f = handoff_failures(s.close())["resume-at-sndnxt"]
    assert "skips" in f.detail and f.handoff == 1


def filler(s: Synth, ident: int, port: int = HPORT + 1) -> None:
    """A target pure ACK of another connection: moves the target's identification counter."""
    pkt = (Ether(src=HMAC, dst=PMAC) / IP(src=HOST, dst=PEER, id=ident, flags="DF")
           / TCP(sport=port, dport=PPORT, seq=1, ack=1, flags="A", window=1000))
    s.t += 0.001
    s.cap.write_frame(bytes(pkt), s.t, "dir=host->peer component=target", DIR_OUTBOUND)


def two_epochs_across_id_wrap(s: Synth, shift: int) -> None:
    """Epoch 1, back in the host, epoch 2 after the target's identification counter moved on
    by almost a full 15-bit turn (other connections), so that epoch 2's frames carry
    identifications ``shift`` away from epoch 1's terminate mark, modulo 0x8000."""
    s.handshake()
    p = payload(2, 300)
    mark0 = s.target_id
    s.event("offload-start", epoch=1, snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0),
            rcv_nxt=s.pseq(0), rcv_pos=s.pseq(0), buffered_bytes=0,
            host_ip_id=s.host_id + 1, target_ip_id=mark0)
    s.inn(0, p[:100], ack=0)
    s.out(0, ack=100, target=True)
    mark1 = s.target_id
    s.event("terminate-complete", epoch=1, status="NDIS_STATUS_SUCCESS", outcome="resumed",
            snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0), rcv_nxt=s.pseq(100),
            host_ip_id=s.host_id + 1, target_ip_id=mark1)
    s.out(0, ack=100)
    filler(s, 0x8000 | ((mark1 + 10) & 0x7FFF))  # the target works for other connections
    s.event("offload-start", epoch=2, snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0),
            rcv_nxt=s.pseq(100), rcv_pos=s.pseq(100), buffered_bytes=0,
            host_ip_id=s.host_id + 1, target_ip_id=0x8000 | ((mark1 + 10) & 0x7FFF))
    # 0x8000 + shift identifications later, in steps well below half the space
    target = mark1 + 0x8000 + shift
    ident = mark1 + 10
    while ident + 0x3000 < target:
        ident += 0x3000
        filler(s, 0x8000 | (ident & 0x7FFF))
    s.target_id = 0x8000 | ((target - 1) & 0x7FFF)
    s.inn(100, p[100:300], ack=0)
    s.out(0, ack=300, target=True)  # identification == mark1 + shift (mod 0x8000)
    s.out(0, ack=300, target=True)
    s.event("terminate-complete", epoch=2, status="NDIS_STATUS_SUCCESS", outcome="resumed",
            snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0), rcv_nxt=s.pseq(300),
            host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    s.out(0, ack=300)


@pytest.mark.parametrize("shift", [-3, 0, 5])
def test_target_identification_wrap_between_epochs_passes(tmp_path: Path, shift: int) -> None:
    """A later epoch's target frames whose 15-bit identification aliases the previous
    terminate's mark: not "built before the event" (their ACK, far ahead, is no evidence
    against the first RcvNxt) and not "built after it" (they belong to the next epoch)."""
    s = Synth(tmp_path / "c.pcapng")
    two_epochs_across_id_wrap(s, shift)
    report = s.close()
    assert report.ok, report.failures


def test_target_frame_after_terminate_across_wrap_still_fails(tmp_path: Path) -> None:
    """With the counter wrapping between the offload and the terminate, a target frame built
    right after the event is still caught."""
    s = Synth(tmp_path / "c.pcapng")
    s.target_id = 0xFFFE
    handoff(s, late_target="new")
    assert s.target_id < 0x8010  # (the counter wrapped inside the test)
    assert "resume-from-host" in rules(s.close())


def test_rst_after_both_fins_acked_is_late_not_a_failure(tmp_path: Path) -> None:
    """The kernel, CLOSED after LAST-ACK, answers a duplicate ACK with an RST: both streams were
    complete; the RST is counted (``late_rsts``) and is not a ``no-rst`` failure."""
    s = Synth(tmp_path / "c.pcapng")
    plain(s)
    s.out(301, ack=201)  # a duplicate of the last ACK
    s.inn(201, flags="R", ack=None)
    report = s.close()
    assert report.ok, report.failures
    d = report.connections[CONN].directions["peer->host"]
    assert d.rsts == 1 and d.late_rsts == 1


def test_rst_before_the_last_fin_is_acked_fails_no_rst(tmp_path: Path) -> None:
    s = Synth(tmp_path / "c.pcapng")
    plain(s, fin=False)
    s.out(300, flags="FA", ack=200)
    s.inn(200, flags="FA", ack=301)  # the host's FIN is ACKed, the peer's is not yet
    s.inn(201, flags="R", ack=None)
    (f,) = s.close().failures
    assert f.rule == "no-rst"


def zero_window_probe(s: Synth, *, accepted: bool, delivered: int) -> None:
    """Offloaded, the host application stops reading, the target's window closes; the peer
    probes it with one byte (and with a zero-length probe below RcvNxt, as Linux does); the
    target drops the byte (``accepted=False``) or takes it; terminate; the peer resends."""
    s.handshake()
    p = payload(2, 200)
    s.event("offload-start", epoch=1, snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0),
            rcv_nxt=s.pseq(0), rcv_pos=s.pseq(0), buffered_bytes=0,
            host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    s.inn(0, p[:100], ack=0)
    s.out(0, ack=100, target=True)  # window 0 (not modelled: the rule does not look at it)
    s.inn(99, ack=0)  # Linux: no data, seq RcvNxt - 1
    s.inn(100, p[100:101], ack=0)  # a one-byte probe
    rcv = 101 if accepted else 100
    s.out(0, ack=rcv, target=True)
    s.event("terminate-complete", epoch=1, status="NDIS_STATUS_SUCCESS", outcome="resumed",
            snd_una=s.hseq(0), snd_nxt=s.hseq(0), snd_max=s.hseq(0), rcv_nxt=s.pseq(rcv),
            delivered_bytes=delivered, delivered_sha256=sha(p[:delivered]),
            buffered_bytes=max(0, rcv - delivered), buffered_sha256=sha(p[delivered:rcv]),
            rcv_pos=s.pseq(0), host_ip_id=s.host_id + 1, target_ip_id=s.target_id)
    s.out(0, ack=rcv)
    s.inn(100, p[100:], ack=0)  # the window opened: the probe byte again, and the rest
    s.out(0, ack=200)
    s.digest("peer->host", p, side="received")


@pytest.mark.parametrize("accepted", [False, True])
def test_zero_window_probe_byte_is_accounted_once(tmp_path: Path, accepted: bool) -> None:
    s = Synth(tmp_path / "c.pcapng")
    zero_window_probe(s, accepted=accepted, delivered=60)
    report = s.close()
    assert report.ok, report.failures


def test_probe_byte_delivered_but_not_acked_fails_delivered_once(tmp_path: Path) -> None:
    """The target handed the host the probe byte it did not ACK (RcvNxt excludes it)."""
    s = Synth(tmp_path / "c.pcapng")
    zero_window_probe(s, accepted=False, delivered=101)
    f = handoff_failures(s.close())["delivered-once"]
    assert "1 bytes delivered twice" in f.detail and f.handoff == 1
