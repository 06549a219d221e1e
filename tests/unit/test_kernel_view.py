"""tshark's view of a capture (the second view of TAP runs) on a synthetic pcap."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from vnic.kernel_view import (
    PeerCaptureError,
    analyze_with_tshark,
    compare_with_capture,
    count_packets,
    have_tshark,
)
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, PcapngWriter
from vnic.verify import verify_capture

HOST, PEER = "198.18.0.2", "198.18.0.1"
NAME = f"{HOST}:40000-{PEER}:5001"


def frames() -> list[tuple[object, bool]]:
    def h(seq: int, ack: int, flags: str, data: bytes = b"", window: int = 65535) -> object:
        p = Ether() / IP(src=HOST, dst=PEER) / TCP(sport=40000, dport=5001, seq=seq, ack=ack,
                                                   flags=flags, window=window)
        return p / Raw(data) if data else p

    def p(seq: int, ack: int, flags: str, data: bytes = b"", window: int = 65535) -> object:
        q = Ether() / IP(src=PEER, dst=HOST) / TCP(sport=5001, dport=40000, seq=seq, ack=ack,
                                                   flags=flags, window=window)
        return q / Raw(data) if data else q

    return [
        (p(900, 0, "S"), False),  # the kernel opens (first frame from the peer side)
        (h(100, 901, "SA"), True),
        (p(901, 101, "A"), False),
        (h(101, 901, "A", b"a" * 100), True),
        (h(101, 901, "A", b"a" * 100), True),  # retransmission
        (p(901, 201, "A", window=0), False),  # zero window
        (h(201, 901, "R"), True),
    ]


def test_count_packets(tmp_path: Path) -> None:
    path = tmp_path / "k.pcap"
    wrpcap(str(path), [f for f, _ in frames()])
    assert count_packets(path) == 7
    assert count_packets(tmp_path / "none.pcap") == 0
    (tmp_path / "junk.pcap").write_bytes(b"\0" * 64)
    with pytest.raises(PeerCaptureError):
        count_packets(tmp_path / "junk.pcap")


@pytest.mark.skipif(not have_tshark(), reason="tshark is not installed")
def test_analyze_with_tshark_counts_flags_per_connection_and_direction(tmp_path: Path) -> None:
    path = tmp_path / "k.pcap"
    wrpcap(str(path), [f for f, _ in frames()])
    k = analyze_with_tshark(path, host_ip=HOST)
    assert k["tcp_frames"] == 7 and k["rsts"] == 1 and k["ok"] is False
    c = k["connections"][NAME]
    assert c["host->peer"]["bytes"] == 200 and c["host->peer"]["retransmission"] == 1
    assert c["host->peer"]["rsts"] == 1 and c["peer->host"]["zero_window"] == 1
    assert c["peer->host"]["syns"] == 1 and c["host->peer"]["syns"] == 1
    # without host_ip the side that sent the first frame is "host"
    assert f"{PEER}:5001-{HOST}:40000" in analyze_with_tshark(path)["connections"]

    # the host-side capture of the same frames: the views agree (bytes, RSTs)
    ours = tmp_path / "ours.pcapng"
    with PcapngWriter(ours, time_base=0.0) as cap:
        for i, (f, outbound) in enumerate(frames()):
            cap.write_frame(bytes(f), i * 0.001, None, DIR_OUTBOUND if outbound else DIR_INBOUND)
    report = verify_capture(ours)
    assert compare_with_capture(k, report) == {"agrees": True, "disagreements": []}
    # the kernel-side capture stops later: more late RSTs there (after both FINs were ACKed)
    # still agree, fewer do not, and RSTs while the streams ran must be equal
    kc = k["connections"][NAME]["host->peer"]
    res = report.connections[NAME].directions["host->peer"]
    assert res.rsts == 1 and res.late_rsts == 0
    kc["late_rsts"], kc["rsts"] = 3, 4
    assert compare_with_capture(k, report)["agrees"]
    kc["rsts"] = 3  # one RST missing before the FINs
    assert not compare_with_capture(k, report)["agrees"]
    kc["late_rsts"], kc["rsts"] = 0, 1
    res.late_rsts, res.rsts = 2, 3  # the host side saw late RSTs the kernel never sent
    assert not compare_with_capture(k, report)["agrees"]
    res.late_rsts, res.rsts = 0, 1
    assert compare_with_capture(k, report)["agrees"]
    k["connections"][NAME]["host->peer"]["bytes"] = 50
    assert not compare_with_capture(k, report)["agrees"]


@pytest.mark.skipif(not have_tshark(), reason="tshark is not installed")
def test_rst_after_both_fins_acked_is_late_in_the_tshark_view(tmp_path: Path) -> None:
    """The kernel, CLOSED after LAST-ACK, answers a duplicate ACK with an RST: counted in
    ``rsts`` and ``late_rsts``, ``ok`` (as vnic run and vnic verify count it)."""
    def h(seq: int, ack: int, flags: str) -> object:
        return Ether() / IP(src=HOST, dst=PEER) / TCP(sport=40000, dport=5001, seq=seq, ack=ack,
                                                      flags=flags)

    def p(seq: int, ack: int, flags: str) -> object:
        return Ether() / IP(src=PEER, dst=HOST) / TCP(sport=5001, dport=40000, seq=seq, ack=ack,
                                                      flags=flags)

    close = [h(100, 0, "S"), p(900, 101, "SA"), h(101, 901, "A"),
             h(101, 901, "FA"), p(901, 102, "A")]
    early = tmp_path / "early.pcap"
    wrpcap(str(early), [*close, p(901, 102, "R")])  # the peer's FIN was never sent
    k = analyze_with_tshark(early, host_ip=HOST)
    assert k["rsts"] == 1 and k["late_rsts"] == 0 and k["ok"] is False
    late = tmp_path / "late.pcap"
    wrpcap(str(late), [*close, p(901, 102, "FA"), h(102, 902, "A"), h(102, 902, "A"),
                       p(902, 0, "R")])
    k = analyze_with_tshark(late, host_ip=HOST)
    assert k["rsts"] == 1 and k["late_rsts"] == 1 and k["ok"] is True
    assert k["connections"][NAME]["peer->host"]["late_rsts"] == 1
