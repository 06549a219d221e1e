"""b.17 / T.10 statistics OIDs of the offload target: OID_TCP4_OFFLOAD_STATS and
OID_IP4_OFFLOAD_STATS count offloaded traffic only, checked against the frames the target
really put on the wire (its frames carry IPv4 identifications from 0x8000, T.1) and the ones
it consumed; a set of an OID resets it; IPv6 ones are NOT_SUPPORTED; others INVALID_OID."""

from __future__ import annotations

import struct

import pytest

from ndis.state import (
    IP_OFFLOAD_STATS,
    OID_IP4_OFFLOAD_STATS,
    OID_IP6_OFFLOAD_STATS,
    OID_TCP4_OFFLOAD_STATS,
    OID_TCP6_OFFLOAD_STATS,
    OID_TCP_CONNECTION_OFFLOAD_PARAMETERS,
    TCP_OFFLOAD_STATS,
)
from ndis.status import NdisStatus
from offload_target import table as table_mod
from tests.offload_target.test_miniport_e2e import World, payload

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")


def test_structures_have_the_documented_sizes_and_wrap() -> None:
    t = TCP_OFFLOAD_STATS(InSegments=(1 << 64) + 3, OutSegments=5, CurrentlyEstablished=2,
                          ResetEstablished=1, RetransmittedSegments=(1 << 32) + 7, InErrors=4,
                          OutResets=9)
    raw = t.encode()
    assert len(raw) == TCP_OFFLOAD_STATS.SIZE == 40
    assert struct.unpack_from("<QQIIIII", raw) == (3, 5, 2, 1, 7, 4, 9)
    assert TCP_OFFLOAD_STATS.decode(raw) == t  # encode() wrapped the counters in place
    i = IP_OFFLOAD_STATS(InReceives=1, InOctets=2, InDelivers=3, OutRequests=4, OutOctets=5,
                         InHeaderErrors=6, InTruncatedPackets=7, InDiscards=8, OutDiscards=9,
                         OutNoRoutes=(1 << 32) + 10)
    raw = i.encode()
    assert len(raw) == IP_OFFLOAD_STATS.SIZE == 64
    assert IP_OFFLOAD_STATS.decode(raw).OutNoRoutes == 10


class Recorder:
    """The target's frames as the peer receives them (IPv4 identification >= 0x8000, T.1)."""

    def __init__(self, w: World) -> None:
        self.target_frames: list[bytes] = []
        self.host_frames: list[bytes] = []
        orig = w.peer.receive_frame

        def receive_frame(frame: bytes, now: float) -> None:
            if frame[12:14] == b"\x08\x00" and frame[23] == 6:
                ident = struct.unpack_from("!H", frame, 18)[0]
                (self.target_frames if ident >= 0x8000 else self.host_frames).append(frame)
            orig(frame, now)

        w.peer.receive_frame = receive_frame  # (per frame from now on: vnic.node.batch_receiver)

    def target_ip_octets(self) -> int:
        return sum(struct.unpack_from("!H", f, 16)[0] for f in self.target_frames)

    def target_rsts(self) -> int:
        return sum(1 for f in self.target_frames if f[14 + 20 + 13] & 0x04)


def _query(w: World, oid: int):
    status, stats = w.chimney.binding.NdisQueryOffloadStatistics(oid)
    assert status == NdisStatus.SUCCESS
    return stats


@needs_datapath
def test_counters_match_the_frames_on_the_wire_and_reset() -> None:
    w = World()
    hr, hw, pr, pw = w.connect()
    rec = Recorder(w)
    assert _query(w, OID_TCP4_OFFLOAD_STATS) == TCP_OFFLOAD_STATS()  # nothing offloaded yet
    assert _query(w, OID_IP4_OFFLOAD_STATS) == IP_OFFLOAD_STATS()
    w.offload(hw)
    data, back = payload(200_000, 1), payload(120_000, 2)
    hw.write(data)
    pw.write(back)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    assert bytes(w.read_exactly(w.host, hr, len(back))) == back
    w.wire.run_for(0.5)  # the last ACKs
    tcp = _query(w, OID_TCP4_OFFLOAD_STATS)
    ip = _query(w, OID_IP4_OFFLOAD_STATS)
    consumed = w.target.table.datapath_counters()["consumed"]
    assert consumed > 80  # 120 kB came in as MSS-sized segments
    # out: exactly the frames the peer received from the target (no loss on this wire)
    assert ip.OutRequests == len(rec.target_frames) > 130
    assert ip.OutOctets == rec.target_ip_octets()
    assert tcp.OutSegments == len(rec.target_frames)  # no TSO, no retransmission here
    assert tcp.RetransmittedSegments == 0 and tcp.OutResets == 0 and tcp.InErrors == 0
    # in: every segment of an offloaded connection the data path consumed, with IP headers
    assert tcp.InSegments == ip.InReceives == ip.InDelivers == consumed
    assert ip.InOctets >= len(back) + 40 * consumed
    assert tcp.CurrentlyEstablished == 1 and tcp.ResetEstablished == 0
    # a set resets the counters of that OID only
    assert w.chimney.binding.NdisResetOffloadStatistics(OID_TCP4_OFFLOAD_STATS) == NdisStatus.SUCCESS
    assert _query(w, OID_TCP4_OFFLOAD_STATS) == TCP_OFFLOAD_STATS(CurrentlyEstablished=1)
    assert _query(w, OID_IP4_OFFLOAD_STATS) == ip
    n_before = len(rec.target_frames)
    hw.write(b"x" * 3000)
    assert bytes(w.read_exactly(w.peer, pr, 3000)) == b"x" * 3000
    w.wire.run_for(0.5)
    assert _query(w, OID_TCP4_OFFLOAD_STATS).OutSegments == len(rec.target_frames) - n_before
    w.checker.assert_clean()


@needs_datapath
def test_resets_while_offloaded_are_counted() -> None:
    from tcpip.offload_socket import OffloadState

    w = World()
    pairs = [w.connect() for _ in range(2)]
    rec = Recorder(w)
    socks = [w.offload(hw) for _, hw, _, _ in pairs]
    assert _query(w, OID_TCP4_OFFLOAD_STATS).CurrentlyEstablished == 2
    # the host aborts the first (RST from the target), the peer resets the second
    pairs[0][1].abort()
    w.run_until(lambda: rec.target_rsts() == 1, 5.0)
    pairs[1][3].abort()
    w.run_until(lambda: socks[1].offload_state is OffloadState.IN_HOST or socks[1].reset_received,
                5.0)
    tcp = _query(w, OID_TCP4_OFFLOAD_STATS)
    assert tcp.OutResets == rec.target_rsts() == 1
    assert tcp.ResetEstablished == 2
    assert tcp.CurrentlyEstablished == 0


@needs_datapath
def test_retransmissions_are_counted_apart_from_new_segments() -> None:
    from vnic.faults import FaultSpec, WireFaults

    faults = WireFaults.from_specs(FaultSpec(loss=0.03), FaultSpec(), seed=5)
    w = World(5, faults=faults)
    hr, hw, pr, pw = w.connect()
    w.offload(hw)
    data = payload(300_000, 7)
    hw.write(data)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    w.wire.run_for(1.0)
    tcp = _query(w, OID_TCP4_OFFLOAD_STATS)
    c = w.target.table.datapath_counters()
    assert tcp.RetransmittedSegments == c["retransmits"] > 0  # (one MSS each: no TSO here)
    assert tcp.OutSegments == c["frames_out"] - c["retransmits"]


def test_other_oids_and_ip_version_6() -> None:
    w = World()
    b = w.chimney.binding
    assert b.NdisQueryOffloadStatistics(OID_TCP6_OFFLOAD_STATS) == (NdisStatus.NOT_SUPPORTED, None)
    assert b.NdisQueryOffloadStatistics(OID_IP6_OFFLOAD_STATS) == (NdisStatus.NOT_SUPPORTED, None)
    assert b.NdisResetOffloadStatistics(OID_IP6_OFFLOAD_STATS) == NdisStatus.NOT_SUPPORTED
    assert b.NdisQueryOffloadStatistics(OID_TCP_CONNECTION_OFFLOAD_PARAMETERS) == (
        NdisStatus.INVALID_OID, None)
    assert b.NdisResetOffloadStatistics(0x12345678) == NdisStatus.INVALID_OID
