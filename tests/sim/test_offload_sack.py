"""SACK end to end: host and peer HostStacks both with ``TcpConfig.sack_permitted``, the
connection offloaded to the real OffloadTarget (C data path) under the strict conformance
checker, a lossy, duplicating, reordering wire.  The streams must be byte-exact, and the peer
must have received SACK blocks built by the target (IPv4 identification >= 0x8000, T.1),
well formed (parsed by tcpip's segment parser) and above the cumulative ACK.  Without SACK
negotiated the target sends none.
"""

from __future__ import annotations

import random

import pytest

from offload_target import table as table_mod
from tcpip.ethernet import parse_ethernet
from tcpip.ipv4 import parse_ipv4
from tcpip.seq import seq_diff
from tcpip.tcp import TcpConfig
from tcpip.tcp_segment import parse_tcp
from tests.sim.offload_rig import OffloadRig
from tests.sim.test_offload_handoff import assert_peer_clean, close_both, data
from vnic.offload_lab import TARGET_IP_ID_MIN

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")


class PeerTap:
    """Frames delivered to the peer (after the wire's faults), parsed: SACK options from the
    target and from the host stack are counted apart."""

    def __init__(self, rig: OffloadRig) -> None:
        self.target_frames = self.target_sack = self.target_blocks = self.host_sack = 0
        node = rig.peer_rec
        inner = node.receive_frame

        def receive_frame(frame: bytes, now: float) -> None:
            self.look(frame)
            inner(frame, now)

        node.receive_frame = receive_frame  # type: ignore[method-assign]

    def look(self, frame: bytes) -> None:
        eth = parse_ethernet(frame)
        if eth.ethertype != 0x0800:
            return
        ip = parse_ipv4(eth.payload)
        if ip.protocol != 6:
            return
        seg = parse_tcp(ip.payload, ip.src, ip.dst)      # checks lengths, options, checksum
        blocks = seg.options.sack_blocks
        if ip.identification < TARGET_IP_ID_MIN:
            self.host_sack += bool(blocks)
            return
        self.target_frames += 1
        if not blocks:
            return
        self.target_sack += 1
        self.target_blocks += len(blocks)
        assert len(blocks) <= (3 if seg.options.timestamp is not None else 4)
        for left, right in blocks:
            assert 0 < seq_diff(left, seg.ack) < seq_diff(right, seg.ack)


def run(seed: int, *, sack: bool, loss: float) -> tuple[OffloadRig, PeerTap]:
    cfg = TcpConfig(msl=1.0, sack_permitted=sack)
    rig = OffloadRig(seed, loss=loss, tcp_config=cfg)
    tap = PeerTap(rig)
    rng = random.Random(seed)
    hd = data(seed, 300_000)
    pd = data(seed + 1, 600_000)
    h, p = rig.pair(hd, pd, chunk=rng.choice([1460, 8192, 65536]))
    rig.run_until(lambda: len(h.got) > 10_000 and len(p.got) > 10_000, 30.0)
    sock = rig.sock(h)
    assert rig.engine(p).sack_enabled is sack
    rig.offload(sock)
    assert rig.target.tcp_count == 1
    # most of the peer's data arrives at the target while offloaded
    rig.run_until(lambda: len(h.got) >= len(pd) and len(p.got) >= len(hd), 120.0)
    assert rig.target.tcp_count == 1                   # still offloaded
    rig.upload(sock)
    close_both(rig, h, p)
    assert bytes(h.got) == pd
    assert bytes(p.got) == hd
    assert_peer_clean(rig, p, lossless=False)
    rig.assert_clean()
    assert rig.chimney.counters["lost"] == 0
    return rig, tap


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_target_sends_sack_blocks_to_a_sack_peer_on_a_lossy_wire(seed: int) -> None:
    rig, tap = run(seed, sack=True, loss=0.03)
    assert tap.target_frames > 0
    assert tap.target_sack > 0 and tap.target_blocks >= tap.target_sack, vars(tap)


def test_no_sack_blocks_from_the_target_without_sack() -> None:
    rig, tap = run(5, sack=False, loss=0.03)
    assert tap.target_frames > 0
    assert tap.target_sack == 0 and tap.host_sack == 0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_handoffs_mid_transfer_with_sack_stay_byte_exact(seed: int) -> None:
    """Offload / upload cycles while both directions run on a lossy wire with SACK: the data
    the target held out of order (and SACKed) is not handed over at the terminate (RFC 2018
    allows the receiver to discard it), the peer sends it again and the streams stay
    byte-exact.  (The target captures a connection's state at once when the terminate runs;
    segments arriving until its completion go up the ordinary path and the host holds them
    until the resume.)"""
    cfg = TcpConfig(msl=1.0, sack_permitted=True)
    rig = OffloadRig(seed, loss=0.03, tcp_config=cfg)
    hd = data(seed, 300_000)
    pd = data(seed + 1, 1_200_000)
    h, p = rig.pair(hd, pd, chunk=8192)
    sock = rig.sock(h)
    rig.target.faults.delay_completion("terminate", 0.05, count=-1)  # segments meanwhile
    ooo = 0
    for mark in (200_000, 400_000, 600_000, 800_000):
        rig.run_until(lambda m=mark: len(h.got) >= m // 2, 60.0)
        rig.offload(sock)
        rig.run_until(lambda m=mark: len(h.got) >= m, 60.0)
        ooo += rig.target.table.datapath_counters()["ooo_segments"]
        rig.upload(sock)
    rig.run_until(lambda: len(h.got) >= len(pd) and len(p.got) >= len(hd), 120.0)
    close_both(rig, h, p)
    assert bytes(h.got) == pd and bytes(p.got) == hd
    assert_peer_clean(rig, p, lossless=False)
    rig.assert_clean()
    c = rig.chimney.counters
    assert c["lost"] == 0 and c["uploads"] == 4
    assert ooo > 0  # the target did hold data out of order (and SACK it)
