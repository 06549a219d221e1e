from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader, rdpcap

from vnic.pcapng import (
    DIR_INBOUND,
    DIR_OUTBOUND,
    PcapngWriter,
    parse_comment,
    read_annotations,
    read_pcapng,
)


def _frames() -> list[bytes]:
    out = []
    for i in range(5):
        pkt = (
            Ether(src="02:76:6e:00:01:02", dst="02:00:00:00:00:01")
            / IP(src="198.18.1.2", dst="198.18.1.1")
            / TCP(sport=40000, dport=5001, seq=1000 + i, flags="PA")
            / (b"x" * i)  # odd lengths exercise padding
        )
        out.append(raw(pkt))
    out.append(b"\xff" * 61)
    return out


def test_round_trip_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    frames = _frames()
    with PcapngWriter(path, time_base=1_700_000_000.0) as w:
        for i, f in enumerate(frames):
            w.write_frame(f, 0.25 * i, f"dir=host->peer component=host epoch={i}",
                          DIR_OUTBOUND if i % 2 else DIR_INBOUND)
        w.annotate("offload initiated conn=1", 0.3)
    got = read_pcapng(path)
    assert [g.frame for g in got] == frames
    assert [round(g.timestamp - 1_700_000_000.0, 6) for g in got] == [0.25 * i for i in range(6)]
    assert [parse_comment(g.comment)["epoch"] for g in got] == [str(i) for i in range(6)]
    assert [g.direction for g in got] == [DIR_OUTBOUND if i % 2 else DIR_INBOUND for i in range(6)]
    assert read_annotations(path) == [(1_700_000_000.3, "offload initiated conn=1")]


def test_scapy_reads_comments_and_layers(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    frames = _frames()
    with PcapngWriter(path, time_base=0.0) as w:
        for i, f in enumerate(frames):
            w.write_frame(f, 1.0 + i, f"dir=peer->host component=peer n={i}")
        w.annotate("custom blocks are skipped by readers", 2.5)
    pkts = rdpcap(str(path))
    assert len(pkts) == len(frames)
    assert pkts[0].haslayer(TCP) and pkts[0][IP].src == "198.18.1.2"
    assert pkts[3].comments == [b"dir=peer->host component=peer n=3"]
    assert float(pkts[2].time) == 3.0
    with PcapNgReader(str(path)) as r:
        assert sum(1 for _ in r) == len(frames)


def test_annotations_ride_on_the_next_frame(tmp_path: Path) -> None:
    path = tmp_path / "n.pcapng"
    frames = _frames()
    with PcapngWriter(path, time_base=0.0) as w:
        w.write_frame(frames[0], 1.0, "dir=host->peer component=host")
        w.annotate("offload initiated conn=1", 1.5)
        w.annotate("offload done", 1.6)
        w.write_frame(frames[1], 2.0, "dir=peer->host component=peer")
        w.write_frame(frames[2], 3.0)
        w.annotate("trailing", 3.5)  # no frame after it: a custom block
    got = read_pcapng(path)
    assert len(got) == 3
    assert got[1].comment == "dir=peer->host component=peer"
    assert got[1].notes == ("t=1.500000 offload initiated conn=1", "t=1.600000 offload done")
    assert got[0].notes == () and got[2].notes == ()
    assert read_annotations(path) == [(1.5, "offload initiated conn=1"), (1.6, "offload done"),
                                      (3.5, "trailing")]
    pkts = rdpcap(str(path))
    assert len(pkts) == 3
    assert pkts[1].comments[0] == b"dir=peer->host component=peer"
    assert pkts[1].comments[1] == b"note t=1.500000 offload initiated conn=1"


def test_writer_to_file_object_and_snaplen() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf, time_base=0.0, snaplen=64)
    w.write_frame(b"\x01" * 100, 0.0)
    w.close()
    assert buf.getvalue()[:4] == b"\x0a\x0d\x0d\x0a"
    assert w.frames == 1


def test_truncated_capture_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "e.pcapng"
    PcapngWriter(path).close()
    assert read_pcapng(path) == []
    assert read_annotations(path) == []


def test_parse_comment() -> None:
    assert parse_comment("dir=a->b component=x epoch=3 free") == {
        "dir": "a->b", "component": "x", "epoch": "3"}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Wireshark) not installed")
def test_wireshark_reads_frames_comments_and_directions(tmp_path: Path) -> None:
    path = tmp_path / "w.pcapng"
    frames = _frames()[:3]
    with PcapngWriter(path, time_base=1_700_000_000.0) as w:
        w.write_frame(frames[0], 0.0, "dir=host->peer component=host epoch=0", DIR_OUTBOUND)
        w.annotate("offload initiated", 0.1)
        w.write_frame(frames[1], 0.2, "dir=peer->host component=peer epoch=1", DIR_INBOUND)
        w.write_frame(frames[2], 0.4, "dir=host->peer component=host epoch=1", DIR_OUTBOUND)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-e", "frame.number",
         "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.seq_raw", "-e", "frame.comment"],
        capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    rows = [line.split("|") for line in out]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [round(float(r[1]) - 1_700_000_000.0, 6) for r in rows] == [0.0, 0.2, 0.4]
    assert [r[3] for r in rows] == ["1000", "1001", "1002"]
    assert rows[0][4] == "dir=host->peer component=host epoch=0"
    assert rows[1][4].split(",") == ["dir=peer->host component=peer epoch=1",
                                     "note t=1700000000.100000 offload initiated"]
