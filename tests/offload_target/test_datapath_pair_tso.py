"""Pair test with TSO on both ends: the host's Python TCP engine (``TcpConfig.tso_max``) as the
peer of a connection offloaded to the C data path (``configure(tso_max=)``), over the
in-memory wire of test_datapath_pair with seeded loss, duplication and reordering.

Super-segments cross the wire either whole (as GRO / a kernel peer's local delivery does) or
cut at the MSS first (as the segmenting device does, ``gso``), chosen per frame by the seeded
rng, so a lost piece of a super-segment makes the sender resend MSS-sized data into the middle
of what it sent as one frame.  Bulk data flows both ways and must arrive byte-exact; the data
path's resends must all be MSS-sized.
"""

from __future__ import annotations

import dataclasses

import pytest

from tcpip.tcp import TcpConfig
from tcpip.tcp_segment import TcpFlags
from tests.offload_target.test_datapath_pair import (
    A_IP,
    A_MAC,
    B_IP,
    B_MAC,
    Pair,
    from_frame,
    payload,
    to_frame,
)

MTU = 1500
TSO_MAX = 65535 - 20 - 60
MSS = 1448                                  # 1460 - 12 with timestamps


def gso(frame: bytes, to: str) -> list[bytes]:
    """The frame cut into MSS-sized segments as a segmenting device does (FIN/PSH on the last
    piece only), or as is when it fits the MTU."""
    if len(frame) <= 14 + MTU:
        return [frame]
    seg = from_frame(frame)
    size = MTU - 20 - 20 - (12 if seg.options.timestamp else 0)
    src, dst = (A_IP, B_IP) if to == "b" else (B_IP, A_IP)
    smac, dmac = (A_MAC, B_MAC) if to == "b" else (B_MAC, A_MAC)
    out = []
    data = seg.payload
    for off in range(0, len(data), size):
        last = off + size >= len(data)
        flags = seg.flags if last else seg.flags & ~(TcpFlags.FIN | TcpFlags.PSH)
        piece = dataclasses.replace(seg, seq=(seg.seq + off) & 0xFFFFFFFF, flags=flags,
                                    payload=data[off:off + size])
        out.append(to_frame(piece, src, dst, smac, dmac))
    return out


class TsoPair(Pair):
    def __init__(self, seed: int, **kw) -> None:
        cfg = TcpConfig(send_buffer=1 << 18, receive_buffer=1 << 18, tso_max=TSO_MAX)
        super().__init__(seed, cfg=cfg, table_cfg=dict(tso_max=TSO_MAX), **kw)
        self.max_super = {"a": 0, "b": 0}       # largest frame towards each side
        self.resent_sizes: list[int] = []       # payload sizes of the data path's resends
        self._a_snd_max = None
        send = self.wire.send

        def send_gso(now: int, to: str, frame: bytes) -> None:
            self.max_super[to] = max(self.max_super[to], len(frame))
            if to == "b":
                self._watch_table_output(frame)
            pieces = gso(frame, to) if self.rng.random() < 0.5 else [frame]
            for piece in pieces:
                send(now, to, piece)

        self.wire.send = send_gso              # type: ignore[method-assign]

    def _watch_table_output(self, frame: bytes) -> None:
        seg = from_frame(frame)
        n = len(seg.payload)
        if not n:
            return
        end = (seg.seq + n) & 0xFFFFFFFF
        top = self._a_snd_max
        if top is not None and ((top - seg.seq) & 0xFFFFFFFF) < 1 << 31 and seg.seq != top:
            self.resent_sizes.append(n)        # starts below the highest sequence sent
        if top is None or ((end - top) & 0xFFFFFFFF) < 1 << 31:
            self._a_snd_max = end


@pytest.mark.parametrize("seed", range(12))
def test_bulk_both_ways_with_tso_and_faults(seed):
    p = TsoPair(seed, loss=0.01, dup=0.01, reorder=0.03)
    a_data = payload(p.rng, 1_500_000 + seed * 1000)
    b_data = payload(p.rng, 1_000_000 + seed * 777)
    a_off = b_off = 0

    def feed() -> bool:
        nonlocal a_off, b_off
        if a_off < len(a_data) and p.t.send_unacked(p.h) < 200_000:
            a_off += p.t.send_append(p.h, a_data[a_off:a_off + 100_000])
        if b_off < len(b_data):
            b_off += p.b.send(b_data[b_off:b_off + 100_000])
        return len(p.b_rx) == len(a_data) and len(p.a_rx) == len(b_data) \
            and p.t.send_unacked(p.h) == 0

    p.run(feed)
    assert bytes(p.b_rx) == a_data
    assert bytes(p.a_rx) == b_data
    assert p.t.acked_total(p.h) == len(a_data)
    c = p.t.datapath_counters()
    assert c["tso_frames_out"] > 0
    assert p.max_super["b"] > 14 + MTU and p.max_super["a"] > 14 + MTU   # both sent TSO
    assert max(p.resent_sizes, default=0) <= MSS
    # graceful close on a clean wire
    p.wire.loss = p.wire.dup = p.wire.reorder = 0.0
    p.t.disconnect(p.h, True, p.now)
    p.run(lambda: p.b.eof_received)


def test_clean_wire_tso_bulk_has_no_retransmissions_and_few_frames():
    p = TsoPair(3, loss=0.0, dup=0.0, reorder=0.0)
    data = payload(p.rng, 4_000_000)
    p.t.send_append(p.h, data)
    p.run(lambda: len(p.b_rx) == len(data))
    assert bytes(p.b_rx) == data
    c = p.t.datapath_counters()
    assert c["retransmits"] == 0 and c["timeouts"] == 0
    assert c["tso_frames_out"] > 0
    # far fewer frames than MSS-sized segments would take
    assert c["data_frames_out"] < len(data) // MSS // 4
