"""Pair test with SACK negotiated (TcpConfig.sack_permitted on both engines): the C data path
sends SACK blocks (RFC 2018) to the Python engine over a lossy, reordering wire.  Streams must
arrive byte-exact; every SACK block the NIC sends must be a range of data the peer really sent
above the cumulative ACK, the blocks of one option disjoint; and blocks must have been seen.
Without SACK negotiated the NIC sends none.
"""

from __future__ import annotations

import pytest

from offload_target import table as table_mod
from tcpip.seq import seq_diff
from tcpip.tcp import TcpConfig
from tests.offload_target.test_datapath_pair import Pair, exchange, from_frame, payload

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")


class Tap:
    """Counts the SACK blocks in the NIC's frames to B and checks them as they are sent."""

    def __init__(self, p: Pair):
        self.p = p
        self.frames = self.with_sack = self.blocks = 0
        self.max_blocks = 0
        send = p.wire.send

        def tapped(now: int, to: str, frame: bytes) -> None:
            if to == "b":
                self.check(from_frame(frame))
            send(now, to, frame)

        p.wire.send = tapped

    def check(self, seg) -> None:
        self.frames += 1
        blocks = seg.options.sack_blocks
        if not blocks:
            return
        self.with_sack += 1
        self.blocks += len(blocks)
        self.max_blocks = max(self.max_blocks, len(blocks))
        b = self.p.b
        limit = 3 if seg.options.timestamp is not None else 4
        assert len(blocks) <= limit
        spans = []
        for left, right in blocks:
            lo, hi = seq_diff(left, seg.ack), seq_diff(right, seg.ack)
            assert 0 < lo < hi                             # data held beyond the ACK
            assert seq_diff(right, b.snd_max) <= 0          # that B has sent
            spans.append((lo, hi))
        spans.sort()
        for (_, e), (s, _) in zip(spans, spans[1:], strict=False):
            assert e < s                                   # disjoint, not adjacent


def run_bulk(p: Pair, n_a: int, n_b: int) -> None:
    exchange(p, payload(p.rng, n_a), payload(p.rng, n_b))


@pytest.mark.parametrize("timestamps", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_sack_blocks_to_the_python_engine_with_loss_and_reorder(seed, timestamps):
    cfg = TcpConfig(send_buffer=1 << 18, receive_buffer=1 << 18, sack_permitted=True,
                    timestamps=timestamps)
    p = Pair(500 + seed, loss=0.03, dup=0.01, reorder=0.1, cfg=cfg)
    assert p.b.sack_enabled
    assert p.t.get_field(p.h, "ConstFlags") & 0x02
    tap = Tap(p)
    run_bulk(p, 200_000, 250_000)
    assert tap.with_sack > 0 and tap.blocks >= tap.with_sack
    assert p.t.datapath_counters()["sack_frames_out"] == tap.with_sack


@pytest.mark.parametrize("seed", range(3))
def test_no_sack_blocks_without_sack_negotiated(seed):
    cfg = TcpConfig(send_buffer=1 << 18, receive_buffer=1 << 18, sack_permitted=False)
    p = Pair(600 + seed, loss=0.03, dup=0.01, reorder=0.1, cfg=cfg)
    assert not p.b.sack_enabled
    tap = Tap(p)
    run_bulk(p, 100_000, 200_000)
    assert p.t.datapath_counters()["ooo_segments"] > 0     # there was something to SACK
    assert tap.with_sack == 0
    assert p.t.datapath_counters()["sack_frames_out"] == 0
