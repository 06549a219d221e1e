"""Pair test: the host's Python TCP engine (``tcpip.tcp.TcpConnection``) as the remote peer of
a connection offloaded to the C data path, over an in-memory wire on a virtual clock.

The connection is opened by two engines (A = the local host, B = the peer); A is then exported
(``export_state``) and offloaded -- its CONST/CACHED/DELEGATED values into the table, its send
data with ``send_append`` and its undelivered receive data with ``receive_buffered`` -- exactly
the chimney hand-over.  From then on B talks to the table through Ethernet frames built and
parsed with the tcpip codecs.  A seeded rng drops, duplicates and delays (reorders) frames in
both directions.  Bulk data flows both ways and must arrive byte-exact; then the connection is
closed gracefully, in both orders.
"""

from __future__ import annotations

import random

import pytest

from offload_target import table as table_mod
from tcpip.ethernet import build_ethernet, parse_ethernet
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.tcb import TcpState
from tcpip.tcp import TcpConfig, TcpConnection
from tcpip.tcp_segment import build_tcp, parse_tcp

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

A_IP, B_IP = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
A_PORT, B_PORT = 40000, 7
A_MAC, B_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
STOPPED = 0xFFFFFFFF
MASK = 0xFFFFFFFF
NDIS_STATE = {TcpState.ESTABLISHED: 4, TcpState.FIN_WAIT_1: 5, TcpState.FIN_WAIT_2: 6,
              TcpState.CLOSE_WAIT: 7, TcpState.CLOSING: 8, TcpState.LAST_ACK: 9}


def snapshot_fields(snap, tps: int = 1000) -> dict[str, int]:
    """A TcbSnapshot (engine units) as the table's CONST/CACHED/DELEGATED fields (ticks)."""
    def ticks(sec):
        return STOPPED if sec is None else min(MASK - 1, int(round(sec * tps)))

    rdelta = snap.retransmit_timeout_delta
    if rdelta is None:
        rdelta = snap.persist_timeout_delta
    if rdelta is None:
        rdelta = snap.fin_wait_2_timeout_delta
    return dict(
        State=NDIS_STATE[snap.state], RcvNxt=snap.rcv_nxt, RcvWnd=snap.rcv_wnd,
        SndUna=snap.snd_una, SndNxt=snap.snd_nxt, SndMax=snap.snd_max, SndWnd=snap.snd_wnd,
        MaxSndWnd=snap.max_snd_wnd, SendWL1=snap.snd_wl1, CWnd=min(snap.cwnd, MASK),
        SsThresh=min(snap.ssthresh, MASK),
        SRtt=0 if snap.srtt is None else min(0xFFFF, int(snap.srtt * tps * 8)),
        RttVar=0 if snap.rttvar is None else min(0xFFFF, int(snap.rttvar * tps * 4)),
        TsRecent=snap.ts_recent,
        TsRecentAge=0 if snap.ts_recent_age is None else ticks(snap.ts_recent_age),
        TsTime=snap.ts_time, TotalRT=ticks(snap.total_rt), DupAckCount=min(255, snap.dup_ack_count),
        SndWndProbeCount=snap.snd_wnd_probe_count, KeepAliveProbeCount=snap.keepalive_probe_count,
        KeepAliveTimeoutDelta=ticks(snap.keepalive_timeout_delta),
        RetransmitCount=snap.retransmit_count, RetransmitTimeoutDelta=ticks(rdelta),
        ConstFlags=(0x01 if snap.timestamps_enabled else 0) | 0x04
        | (0x02 if snap.sack_enabled else 0),
        RemoteMss=snap.remote_mss, SndWindScale=snap.snd_wscale, RcvWindScale=snap.rcv_wscale,
        CachedFlags=(0 if snap.nodelay else 0x02) | (0x01 if snap.keepalive else 0),
        InitialRcvWnd=snap.initial_rcv_wnd, TtlOrHopLimit=64,
    )


def to_frame(seg, src_ip, dst_ip, src_mac, dst_mac) -> bytes:
    ip = build_ipv4(src_ip, dst_ip, 6, build_tcp(seg, src_ip, dst_ip))
    return build_ethernet(dst_mac, src_mac, 0x0800, ip)


def from_frame(frame):
    ip = parse_ipv4(parse_ethernet(frame).payload)
    return parse_tcp(ip.payload, ip.src, ip.dst)


class Wire:
    """Frames in flight with their delivery times (ms); seeded loss / duplication / delay."""

    def __init__(self, rng: random.Random, loss=0.0, dup=0.0, reorder=0.0, latency=5):
        self.rng, self.loss, self.dup, self.reorder, self.latency = rng, loss, dup, reorder, latency
        self.q: list[tuple[int, int, str, bytes]] = []
        self.n = 0

    def send(self, now: int, to: str, frame: bytes) -> None:
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.latency
            if self.rng.random() < self.reorder:
                delay += self.rng.randint(1, 30)
            self.n += 1
            self.q.append((now + delay, self.n, to, frame))

    def due(self, now: int) -> list[tuple[str, bytes]]:
        self.q.sort()
        out = [(to, f) for t, _, to, f in self.q if t <= now]
        self.q = [x for x in self.q if x[0] > now]
        return out

    def next_time(self) -> int | None:
        return min((t for t, _, _, _ in self.q), default=None)


class Pair:
    def __init__(self, seed: int, *, loss=0.02, dup=0.01, reorder=0.05, cfg: TcpConfig | None = None,
                 table_cfg: dict | None = None):
        self.rng = random.Random(seed)
        self.wire = Wire(self.rng, loss, dup, reorder)
        self.now = 1000                                   # ms = ticks (TicksPerSecond 1000)
        cfg = cfg or TcpConfig(send_buffer=1 << 18, receive_buffer=1 << 18)
        a = TcpConnection.connect(cfg, A_IP, A_PORT, B_IP, B_PORT, iss=self.rng.getrandbits(32),
                                  now=self.sec)
        [syn] = a.poll(self.sec)
        b = TcpConnection.accept(cfg, B_IP, B_PORT, A_IP, A_PORT, self.rng.getrandbits(32), syn,
                                 self.sec)
        for _ in range(10):                              # a clean handshake
            for seg in b.poll(self.sec):
                a.on_segment(seg, self.sec)
            for seg in a.poll(self.sec):
                b.on_segment(seg, self.sec)
            if a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED:
                break
        assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED
        for seg in a.flush_ack(self.sec):
            b.on_segment(seg, self.sec)
        snap = a.export_state(self.sec)
        self.t = table_mod.ConnectionTable(8)
        tc = dict(ticks_per_second=1000, receive_buffer=1 << 18, send_buffer=1 << 16,
                  max_retransmissions=15)
        tc.update(table_cfg or {})
        self.t.configure(**tc)
        self.h = self.t.insert(A_IP, A_PORT, B_IP, B_PORT)
        self.t.set_fields(self.h, **snapshot_fields(snap))
        if snap.buffered_receive:
            self.t.receive_buffered(self.h, snap.buffered_receive)
        self.t.activate(self.h, local_mac=A_MAC, remote_mac=B_MAC, now_ticks=self.now)
        if snap.send_data:
            self.t.send_append(self.h, snap.send_data)
        self.b = b
        self.events: list[tuple[int, int]] = []
        self.a_rx = bytearray()
        self.b_rx = bytearray()
        self.pass_up = 0
        self.reading = True                               # the applications take their data

    @property
    def sec(self) -> float:
        return self.now / 1000

    def step(self) -> None:
        for to, frame in self.wire.due(self.now):
            if to == "a":
                r = self.t.process_frame(frame, self.now)
                assert r in (0, 2)
                self.pass_up += r == 2
            else:
                self.b.on_segment(from_frame(frame), self.sec)
        self.t._validate()
        for f in self.t.poll(self.now):
            self.wire.send(self.now, "b", f)
        for seg in self.b.poll(self.sec):
            self.wire.send(self.now, "a", to_frame(seg, B_IP, A_IP, B_MAC, A_MAC))
        self.events += [(ev, v) for h, ev, v in self.t.events() if h == self.h]
        if self.reading:
            self.a_rx += self.t.receive_take(self.h)
            self.b_rx += self.b.receive()

    def advance(self) -> None:
        cands = [self.wire.next_time(), self.t.next_deadline()]
        bd = self.b.next_deadline()
        if bd is not None:
            cands.append(int(bd * 1000 + 0.999999))
        nxt = min((c for c in cands if c is not None), default=self.now + 1000)
        self.now = max(self.now + 1, min(nxt, self.now + 1000))

    def run(self, until, limit_ms: int = 600_000) -> None:
        end = self.now + limit_ms
        while not until():
            assert self.now < end, "timed out"
            self.step()
            if until():
                break
            self.advance()


def payload(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def exchange(p: Pair, a_data: bytes, b_data: bytes) -> None:
    """Both ways at once in random-sized chunks (the data path keeps < 100 kB unacked) until
    everything arrived and was ACKed; then both sides got exactly what the other sent."""
    a_off = b_off = 0

    def feed() -> bool:
        nonlocal a_off, b_off
        if a_off < len(a_data) and p.t.send_unacked(p.h) < 100_000:
            n = min(len(a_data) - a_off, p.rng.randint(1, 40_000))
            a_off += p.t.send_append(p.h, a_data[a_off:a_off + n])
        if b_off < len(b_data):
            b_off += p.b.send(b_data[b_off:b_off + p.rng.randint(1, 40_000)])
        return len(p.b_rx) == len(a_data) and len(p.a_rx) == len(b_data) \
            and p.t.send_unacked(p.h) == 0

    p.run(feed)
    assert bytes(p.b_rx) == a_data
    assert bytes(p.a_rx) == b_data


@pytest.mark.parametrize("seed", range(40))
def test_bulk_both_ways_with_faults_then_close_local_first(seed):
    p = Pair(seed)
    a_data = payload(p.rng, 300_000 + seed * 1000)
    b_data = payload(p.rng, 200_000 + seed * 777)
    exchange(p, a_data, b_data)
    assert p.t.acked_total(p.h) == len(a_data)
    # graceful close, local side first, on a clean wire
    p.wire.loss = p.wire.dup = p.wire.reorder = 0.0
    p.t.disconnect(p.h, True, p.now)
    p.run(lambda: p.b.eof_received)
    p.b.close()
    p.run(lambda: p.t.get_field(p.h, "State") == 10 and p.b.state in (TcpState.CLOSED,
                                                                        TcpState.TIME_WAIT)
          and not p.wire.q)
    kinds = [ev for ev, _ in p.events]
    assert table_mod.EVENT_FIN_ACKED in kinds and table_mod.EVENT_FIN in kinds
    assert (table_mod.EVENT_RETRIEVE, 10) in p.events
    assert p.b.closed or p.b.state is TcpState.CLOSED


@pytest.mark.parametrize("seed", range(100, 124))
def test_bulk_then_close_remote_first(seed):
    p = Pair(seed, loss=0.03, dup=0.02, reorder=0.1)
    b_data = payload(p.rng, 150_000)
    a_data = payload(p.rng, 120_000)
    p.t.send_append(p.h, a_data)
    off = 0

    def feed() -> bool:
        nonlocal off
        if off < len(b_data):
            off += p.b.send(b_data[off:])
        elif p.b.state is TcpState.ESTABLISHED:
            p.b.close()                                  # FIN after the data
        return (table_mod.EVENT_FIN, 0) in p.events and p.t.send_unacked(p.h) == 0

    p.run(feed)
    assert bytes(p.a_rx) == b_data
    assert p.t.get_field(p.h, "State") == 7               # CLOSE_WAIT
    p.run(lambda: len(p.b_rx) == len(a_data))
    assert bytes(p.b_rx) == a_data
    p.t.disconnect(p.h, True, p.now)
    p.run(lambda: p.t.get_field(p.h, "State") == 0)       # LAST_ACK -> CLOSED
    assert (table_mod.EVENT_FIN_ACKED, 0) in p.events
    p.run(lambda: p.b.state in (TcpState.TIME_WAIT, TcpState.CLOSED))
    assert not [e for e in p.events if e[0] in (table_mod.EVENT_RST, table_mod.EVENT_RETRIEVE)]


def test_clean_wire_bulk_is_fast_and_has_no_retransmissions():
    p = Pair(7, loss=0.0, dup=0.0, reorder=0.0)
    data = payload(p.rng, 2_000_000)
    p.t.send_append(p.h, data)
    p.run(lambda: len(p.b_rx) == len(data))
    assert bytes(p.b_rx) == data
    c = p.t.datapath_counters()
    assert c["retransmits"] == 0 and c["timeouts"] == 0
    assert p.now - 1000 < 20_000                          # 2 MB at 10 ms RTT: well under 20 s


CONFIGS = {
    "no-timestamps": dict(timestamps=False),
    "no-wscale": dict(window_scaling=False, receive_buffer=60_000, send_buffer=60_000),
    "nagle-small-mss": dict(mss=536, nodelay=False),
    "small-buffers": dict(receive_buffer=6000, send_buffer=8000),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bulk_configurations(name, seed):
    cfg = TcpConfig(**CONFIGS[name])
    p = Pair(1000 + seed, cfg=cfg)
    a_data = payload(p.rng, 120_000)
    b_data = payload(p.rng, 90_000)
    a_off = b_off = 0

    def feed() -> bool:
        nonlocal a_off, b_off
        if a_off < len(a_data) and p.t.send_unacked(p.h) < 50_000:
            n = p.rng.randint(1, 5000)
            a_off += p.t.send_append(p.h, a_data[a_off:a_off + n])
        if b_off < len(b_data):
            b_off += p.b.send(b_data[b_off:b_off + p.rng.randint(1, 5000)])
        # the application on B reads slowly: its window closes now and then (persist)
        return len(p.b_rx) == len(a_data) and len(p.a_rx) == len(b_data) \
            and p.t.send_unacked(p.h) == 0

    p.run(feed)
    assert bytes(p.b_rx) == a_data and bytes(p.a_rx) == b_data


def test_zero_window_both_ways_slow_readers():
    """Neither side reads for a while: both windows close, both sides probe, then drain."""
    cfg = TcpConfig(receive_buffer=8000, send_buffer=8000)
    p = Pair(5, cfg=cfg, loss=0.02, dup=0.0, reorder=0.0, table_cfg=dict(receive_buffer=8000))
    a_data = payload(p.rng, 40_000)
    b_data = payload(p.rng, 40_000)
    p.t.send_append(p.h, a_data)
    off = 0
    stalled_until = p.now + 20_000

    def step_slow() -> bool:
        nonlocal off
        if off < len(b_data):
            off += p.b.send(b_data[off:])
        p.reading = p.now >= stalled_until                # nobody reads for 20 s
        return len(p.b_rx) == len(a_data) and len(p.a_rx) == len(b_data)

    p.run(step_slow)
    assert bytes(p.b_rx) == a_data and bytes(p.a_rx) == b_data
    assert p.t.datapath_counters()["window_probes"] > 0
