"""The offloaded TCP data path of the C connection table (docs/internals.md, "The data path").

Frames are built and parsed with the project's own codecs (tcpip.ethernet / ipv4 /
tcp_segment); every test checks bytes on the wire: sequence and acknowledgment numbers,
windows, timestamps, flags, IPv4 identification/DF/TTL, VLAN tags.  ``Rig`` is one offloaded
connection (local 198.18.0.1:40000, remote 198.18.0.2:7) driven by hand as its peer.
"""

from __future__ import annotations

import pytest

from offload_target import table as table_mod
from tcpip.ethernet import VlanTag, build_ethernet, parse_ethernet
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

if table_mod.HAS_DATAPATH:
    from offload_target import _ctable as m
    ConnectionTable = m.ConnectionTable
    CONSUMED, NOT_OURS, PASS_UP = m.FRAME_CONSUMED, m.FRAME_NOT_OURS, m.FRAME_PASS_UP
    SEND_ACKED, DATA, FIN_EV, RST_EV, RETRIEVE, FIN_ACKED = (
        m.EVENT_SEND_ACKED, m.EVENT_DATA, m.EVENT_FIN, m.EVENT_RST, m.EVENT_RETRIEVE,
        m.EVENT_FIN_ACKED)
    PUSH = m.EVENT_PUSH

LOCAL_IP = bytes([198, 18, 0, 1])
REMOTE_IP = bytes([198, 18, 0, 2])
LPORT, RPORT = 40000, 7
LOCAL_MAC = bytes.fromhex("020000000001")
REMOTE_MAC = bytes.fromhex("020000000002")
RCV0 = 0xFFFFFF00          # the peer's sequence numbers wrap during the tests
SND0 = 5000
TS0 = 0xFFFFF000           # our TsTime at activate (T.6); wraps too
PTS0 = 777                 # the peer's timestamp clock
STOPPED = 0xFFFFFFFF
F = TcpFlags
ACK = F.ACK

# TCP_OFFLOAD_CONNECTION_STATE
CLOSED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT = (
    0, 4, 5, 6, 7, 8, 9, 10)
# TCP_UPLOAD_REASON
URGENT, TIMEOUT, UPLOAD_REQUESTED = 5, 8, 10
C_TS, C_WS = 0x01, 0x04            # ConstFlags
KA, NAGLE = 0x01, 0x02             # CachedFlags
MASK = 0xFFFFFFFF


def add(a: int, b: int) -> int:
    return (a + b) & MASK


def frame_of(seg: TcpSegment, *, src_ip: bytes = REMOTE_IP, dst_ip: bytes = LOCAL_IP,
             vlan: int | None = None, ip_options: bytes = b"") -> bytes:
    """A frame from the peer to the offloaded connection."""
    ip = build_ipv4(src_ip, dst_ip, 6, build_tcp(seg, src_ip, dst_ip), identification=1,
                    options=ip_options)
    tags = (VlanTag(0x8100, 0, False, vlan),) if vlan is not None else ()
    return build_ethernet(LOCAL_MAC, REMOTE_MAC, 0x0800, ip, tags)


class Out:
    """One output frame of the data path, parsed."""

    def __init__(self, frame: bytes):
        self.raw = frame
        self.eth = parse_ethernet(frame)
        assert self.eth.ethertype == 0x0800
        self.ip = parse_ipv4(self.eth.payload)               # verifies the header checksum
        self.seg = parse_tcp(self.ip.payload, self.ip.src, self.ip.dst)  # and the TCP one
        assert (self.ip.src, self.ip.dst) == (LOCAL_IP, REMOTE_IP)
        assert (self.seg.src_port, self.seg.dst_port) == (LPORT, RPORT)

    @property
    def flags(self) -> TcpFlags:
        return self.seg.flags

    def __repr__(self) -> str:
        s = self.seg
        return (f"<Out seq={s.seq} ack={s.ack} {s.flags!r} win={s.window} len={len(s.payload)} "
                f"ts={s.options.timestamp}>")


class Rig:
    """One activated connection and a hand-driven peer."""

    def __init__(self, *, ts: bool = True, ws: int = 0, mss: int = 1460, rcv_wnd: int = 65535,
                 snd_wnd: int = 65535, cfg: dict | None = None, fields: dict | None = None,
                 now: int = 10_000, vlan: int = 0, path_mtu: int = 1500, ttl: int | None = None,
                 activate: bool = True, capacity: int = 4):
        self.t = ConnectionTable(capacity)
        config = dict(receive_buffer=rcv_wnd, send_buffer=4096)
        config.update(cfg or {})
        self.t.configure(**config)
        self.now = now
        self.ts = ts
        self.h = self.t.insert(LOCAL_IP, LPORT, REMOTE_IP, RPORT)
        f = dict(State=ESTABLISHED, RcvNxt=RCV0, RcvWnd=rcv_wnd, SndUna=SND0, SndNxt=SND0,
                 SndMax=SND0, SndWnd=snd_wnd, MaxSndWnd=snd_wnd, SendWL1=RCV0, CWnd=10 * mss,
                 SsThresh=0xFFFFFFFF, TsTime=TS0, TsRecent=PTS0 if ts else 0,
                 ConstFlags=(C_TS if ts else 0) | (C_WS if ws else 0), RemoteMss=mss,
                 SndWindScale=ws, RcvWindScale=ws, InitialRcvWnd=rcv_wnd)
        f.update(fields or {})
        self.t.set_fields(self.h, **f)
        self.pseq = f["RcvNxt"]          # the peer's next sequence number
        self.pack = f["SndUna"]          # what the peer acknowledges
        self.pts = PTS0
        self.vlan = vlan
        if activate:
            kw = dict(local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, vlan_id=vlan, path_mtu=path_mtu,
                      now_ticks=now)
            if ttl is not None:
                kw["ttl"] = ttl
            self.t.activate(self.h, **kw)
            assert self.t.poll(now) == []         # nothing to send at activate
    # -- the peer -----------------------------------------------------------------------------
    def seg(self, payload: bytes = b"", flags: TcpFlags = ACK, *, seq: int | None = None,
            ack: int | None = None, win: int = 65535, ts: bool | None = None,
            tsval: int | None = None, urgent: int = 0, advance: bool = True) -> bytes:
        seq = self.pseq if seq is None else seq
        ack = self.pack if ack is None else ack
        opts = TcpOptions()
        if self.ts if ts is None else ts:
            self.pts += 1
            opts.timestamp = (self.pts if tsval is None else tsval, self.last_tsval)
        s = TcpSegment(RPORT, LPORT, seq, ack, flags, win, opts, payload, urgent)
        if advance and seq == self.pseq:
            self.pseq = add(self.pseq, s.seg_len)
        return frame_of(s, vlan=self.vlan or None)

    last_tsval = 0

    def rx(self, frame: bytes, dt: int = 0) -> int:
        self.now += dt
        r = self.t.process_frame(frame, self.now)
        self.t._validate()
        return r

    def poll(self, dt: int = 0) -> list[Out]:
        self.now += dt
        out = [Out(f) for f in self.t.poll(self.now)]
        for o in out:
            if o.seg.options.timestamp:
                self.last_tsval = o.seg.options.timestamp[0]
        self.t._validate()
        return out

    def events(self, *, pushes: bool = False) -> list[tuple[int, int]]:
        """This connection's events (EVENT_PUSH only with ``pushes``: test_datapath_push.py)."""
        return [(ev, v) for h, ev, v in self.t.events()
                if h == self.h and (pushes or ev != PUSH)]

    def field(self, name: str) -> int:
        return self.t.get_field(self.h, name)

    def tsval_now(self) -> int:
        """Our timestamp clock (T.6): NIC clock + (TsTime - NIC clock at activate)."""
        return add(self.now, TS0 - 10_000)


# ------------------------------------------------------------------------------ basics ----

def test_module_constants():
    assert table_mod.HAS_DATAPATH is True
    assert (CONSUMED, NOT_OURS, PASS_UP) == (0, 1, 2)
    assert len({SEND_ACKED, DATA, FIN_EV, RST_EV, RETRIEVE, FIN_ACKED}) == 6
    from offload_target import pytable
    assert not getattr(pytable, "HAS_DATAPATH", False)
    assert not hasattr(pytable.ConnectionTable, "process_frame")


def test_not_ours_and_pass_up_before_activate():
    r = Rig(activate=False)
    assert r.t.process_frame(b"", 1) == NOT_OURS
    assert r.t.process_frame(b"\x00" * 60, 1) == NOT_OURS
    other = frame_of(TcpSegment(RPORT, LPORT + 1, 1, 1, ACK, 100))
    assert r.t.process_frame(other, 1) == NOT_OURS
    assert r.t.process_frame(r.seg(b"x"), 1) == PASS_UP       # ours, data path not running
    assert r.t.is_active(r.h) is False
    with pytest.raises(ValueError):
        r.t.send_append(r.h, b"x")


def test_malformed_frames_pass_up():
    r = Rig()
    good = r.seg(b"hello", advance=False)
    bad = bytearray(good)
    bad[-1] ^= 0xFF                                               # TCP checksum now wrong
    assert r.rx(bytes(bad)) == PASS_UP
    opt = frame_of(TcpSegment(RPORT, LPORT, RCV0, SND0, ACK, 100), ip_options=b"\x01\x01\x01\x00")
    assert r.rx(opt) == PASS_UP                                   # IP options
    assert r.t.receive_available(r.h) == 0
    assert r.rx(good) == CONSUMED
    assert r.t.receive_take(r.h) == b"hello"
    c = r.t.datapath_counters()
    assert c["bad_checksum"] == 1 and c["ip_options"] == 1 and c["malformed"] == 0


def test_activate_rejects_unoffloadable_state_and_twice():
    r = Rig(activate=False, fields=dict(State=10))
    with pytest.raises(ValueError):
        r.t.activate(r.h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=1)
    r.t.set_fields(r.h, State=ESTABLISHED)
    r.t.activate(r.h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=1)
    with pytest.raises(ValueError):
        r.t.activate(r.h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=1)
    with pytest.raises(ValueError):
        r.t.activate(r.t.insert(LOCAL_IP, 1, REMOTE_IP, 2), local_mac=b"123",
                     remote_mac=REMOTE_MAC, now_ticks=1)


# ----------------------------------------------------------------------------- receive ----

def test_in_order_data_ack_frequency_window_and_timestamps():
    r = Rig()
    assert r.poll() == []                                    # nothing owed at activate
    assert r.rx(r.seg(b"a" * 100, F.ACK | F.PSH)) == CONSUMED
    assert r.poll() == []                                    # first segment: ACK delayed
    assert r.t.next_deadline() == r.now + 40
    assert r.events() == [(DATA, 100)]
    assert r.rx(r.seg(b"b" * 100)) == CONSUMED                # second: ack_frequency = 2
    [o] = r.poll()
    assert o.flags == ACK and o.seg.ack == add(RCV0, 200) and o.seg.seq == SND0
    assert o.seg.window == 65535 - 200
    assert o.seg.payload == b""
    # TSval by T.6; TSecr = TS.Recent = the TSval of the first segment after our last ACK
    # (RFC 7323 4.3: the delayed ACK echoes the older timestamp)
    assert o.seg.options.timestamp == (r.tsval_now(), r.pts - 1)
    assert r.t.receive_available(r.h) == 200
    assert r.t.receive_take(r.h, 150) == b"a" * 100 + b"b" * 50
    assert r.t.receive_take(r.h) == b"b" * 50
    assert r.field("RcvNxt") == add(RCV0, 200)
    assert r.field("TsRecent") == r.pts - 1
    # IPv4 header: identification from the upper half, DF, TTL 64 by default
    assert 0x8000 <= o.ip.identification <= 0xFFFF and o.ip.dont_fragment and o.ip.ttl == 64
    assert o.eth.dst == REMOTE_MAC and o.eth.src == LOCAL_MAC and not o.eth.vlan_tags


def test_delayed_ack_timer():
    r = Rig(cfg=dict(delayed_ack_ticks=25))
    r.rx(r.seg(b"x" * 10))
    assert r.poll(24) == []
    [o] = r.poll(1)
    assert o.seg.ack == add(RCV0, 10)
    assert r.t.next_deadline() is None


def test_window_update_after_take():
    r = Rig(rcv_wnd=4000, mss=1000)
    for _ in range(4):
        r.rx(r.seg(b"z" * 1000))
    outs = r.poll()
    assert outs[-1].seg.window == 0 and outs[-1].seg.ack == add(RCV0, 4000)
    assert r.rx(r.seg(b"late", advance=False)) == CONSUMED   # zero window: not accepted
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 4000) and r.t.receive_available(r.h) == 4000
    assert r.t.receive_take(r.h, 100) == b"z" * 100
    assert r.poll() == []                                    # less than min(rcap/2, MSS): wait
    r.t.receive_take(r.h, 2000)
    [o] = r.poll()                                           # window update
    assert o.seg.window == 2100 and o.seg.ack == add(RCV0, 4000)


def test_out_of_order_queued_and_filled():
    r = Rig()
    s1 = r.seg(b"1" * 100)
    s2 = r.seg(b"2" * 100)
    s3 = r.seg(b"3" * 100)
    assert r.rx(s3) == CONSUMED
    [o] = r.poll()
    assert o.seg.ack == RCV0                                 # duplicate ACK at once
    assert r.rx(s2) == CONSUMED
    [o] = r.poll()
    assert o.seg.ack == RCV0
    assert r.t.receive_available(r.h) == 0
    assert r.rx(s1) == CONSUMED                              # fills the hole
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 300)                       # ACKed at once
    assert r.t.receive_take(r.h) == b"1" * 100 + b"2" * 100 + b"3" * 100
    assert r.t.datapath_counters()["ooo_segments"] == 2


def test_out_of_order_bound_drops_and_counts():
    r = Rig(cfg=dict(ooo_segments=2))
    segs = [r.seg(bytes([i]) * 10) for i in range(5)]
    for s in segs[1::2]:                                     # 1 and 3: two ranges
        r.rx(s)
    r.rx(segs[4])                                            # adjacent to 3: merges, no range
    r.poll()
    assert r.t.datapath_counters()["ooo_dropped"] == 0
    far = r.seg(b"F" * 10, seq=add(RCV0, 200), advance=False)
    r.rx(far)                                                # a third range: dropped
    assert r.t.datapath_counters()["ooo_dropped"] == 1
    r.rx(segs[0])
    r.rx(segs[2])
    r.poll()
    assert r.t.receive_take(r.h) == b"".join(bytes([i]) * 10 for i in range(5))


def test_duplicate_data_not_delivered_twice():
    r = Rig()
    s1 = r.seg(b"once")
    r.rx(s1)
    r.rx(s1)                                                 # exact duplicate
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 4)
    overlap = r.seg(b"nce-more", seq=add(RCV0, 1))           # partly old
    r.rx(overlap)
    assert r.t.receive_take(r.h) == b"once-more"
    counters = r.t.datapath_counters()
    assert counters["unacceptable"] == 1                     # the old one: ACK, drop
    assert counters["dup_segments"] == 1                     # the partly old one: trimmed


def test_paws_drops_old_timestamp_and_missing_timestamp():
    r = Rig()
    r.rx(r.seg(b"new"))
    old = r.seg(b"old", tsval=PTS0 - 100)
    assert r.rx(old) == CONSUMED
    assert r.t.receive_take(r.h) == b"new"
    assert r.t.datapath_counters()["paws_drops"] == 1
    r.rx(r.seg(b"nots", ts=False, advance=False))           # TS negotiated, none sent: drop
    assert r.t.receive_available(r.h) == 0
    assert r.t.datapath_counters()["ts_missing"] == 1


def test_receive_buffered_before_and_after_activate():
    r = Rig(activate=False)
    r.t.receive_buffered(r.h, b"host-")
    r.t.activate(r.h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=r.now)
    r.t.receive_buffered(r.h, b"early-")                     # also ends at RcvNxt: goes first
    r.rx(r.seg(b"wire"))
    assert r.t.receive_take(r.h) == b"early-host-wire"


# -------------------------------------------------------------------------------- send ----

def test_send_in_mss_frames_with_psh_and_ack_frees():
    r = Rig(mss=1000)                                        # MSS 1000 - 12 (timestamps)
    assert r.t.send_append(r.h, bytes(range(256)) * 10) == 2560
    outs = r.poll()
    assert [len(o.seg.payload) for o in outs] == [988, 988, 584]
    assert [o.seg.seq for o in outs] == [SND0, SND0 + 988, SND0 + 1976]
    assert [bool(o.flags & F.PSH) for o in outs] == [False, False, True]
    assert b"".join(o.seg.payload for o in outs) == bytes(range(256)) * 10
    assert all(o.seg.ack == RCV0 for o in outs)
    assert r.t.send_unacked(r.h) == 2560
    r.pack = SND0 + 988
    r.rx(r.seg())
    assert r.t.send_unacked(r.h) == 2560 - 988 and r.t.acked_total(r.h) == 988
    assert (SEND_ACKED, 988) in r.events()
    r.pack = SND0 + 2560
    r.rx(r.seg())
    assert r.t.send_unacked(r.h) == 0 and r.t.acked_total(r.h) == 2560
    assert r.field("RetransmitTimeoutDelta") == STOPPED
    assert r.poll() == [] and r.t.next_deadline() is None


def test_mss_from_path_mtu_and_no_timestamps():
    r = Rig(ts=False, mss=1460, path_mtu=576)
    r.t.send_append(r.h, b"q" * 1000)
    outs = r.poll()
    assert [len(o.seg.payload) for o in outs] == [536, 464]
    assert outs[0].seg.options.timestamp is None


def test_rtt_from_timestamps_sets_srtt_x8_rttvar_x4():
    r = Rig()
    r.t.send_append(r.h, b"x" * 100)
    [o] = r.poll()
    r.pack = SND0 + 100
    r.last_tsval = o.seg.options.timestamp[0]
    r.rx(r.seg(), dt=50)                                     # RTT 50 ticks
    assert r.field("SRtt") == 50 * 8 and r.field("RttVar") == 25 * 4
    ex = r.t.export(r.h, r.now)
    assert ex["SRtt"] == 400 and ex["RttVar"] == 100


def test_rtt_without_timestamps_times_one_segment():
    r = Rig(ts=False)
    r.t.send_append(r.h, b"x" * 100)
    r.poll()
    r.pack = SND0 + 100
    r.rx(r.seg(), dt=30)
    assert r.field("SRtt") == 240 and r.field("RttVar") == 60


def test_rto_retransmit_with_backoff_then_retrieve():
    r = Rig(cfg=dict(max_retransmissions=3))
    r.t.send_append(r.h, b"data")
    [o] = r.poll()
    assert r.t.next_deadline() == r.now + 1000                # no RTT yet: RTO 1 s (RFC 6298)
    seen = []
    for k in range(1, 4):
        dl = r.t.next_deadline()
        outs = r.poll(dl - r.now)
        assert [(x.seg.seq, x.seg.payload) for x in outs] == [(SND0, b"data")]
        assert r.field("RetransmitCount") == k
        seen.append(r.t.next_deadline() - r.now)
    assert seen == [2000, 4000, 8000]                        # backoff
    ex = r.t.export(r.h, r.now)
    assert ex["RetransmitCount"] == 3 and ex["RetransmitTimeoutDelta"] == 8000
    assert ex["TotalRT"] == 6000
    assert r.poll(8000) == []                                # 4th timeout: over the limit
    assert r.events() == [(RETRIEVE, TIMEOUT)]
    assert r.t.next_deadline() is None


def test_rto_collapses_cwnd_and_goes_back_n():
    r = Rig(mss=1012)                                        # 1000-byte segments
    r.t.send_append(r.h, b"a" * 3000)
    assert len(r.poll()) == 3
    outs = r.poll(1000)
    assert [(o.seg.seq, len(o.seg.payload)) for o in outs] == [(SND0, 1000)]   # cwnd = 1 MSS
    assert r.field("CWnd") == 1000 and r.field("SsThresh") == 2000
    r.pack = SND0 + 1000
    r.rx(r.seg())
    outs = r.poll()
    assert [o.seg.seq for o in outs] == [SND0 + 1000, SND0 + 2000]   # slow start: 2 MSS


def test_fast_retransmit_on_three_dup_acks_and_newreno():
    r = Rig(mss=1012)
    r.t.send_append(r.h, bytes(range(250)) * 24)             # 6000 bytes, 6 segments
    assert len(r.poll()) == 6
    r.pack = SND0 + 1000
    r.rx(r.seg())                                            # ACK of segment 1
    r.poll()
    for _ in range(2):
        r.rx(r.seg())
        assert r.poll() == []
    r.rx(r.seg())                                            # third duplicate
    outs = r.poll()
    assert [(o.seg.seq, len(o.seg.payload)) for o in outs] == [(SND0 + 1000, 1000)]
    assert r.t.datapath_counters()["fast_retransmits"] == 1
    assert r.field("SsThresh") == 2500                       # flight 5000 / 2
    r.pack = SND0 + 3000                                     # partial ACK: NewReno resends
    r.rx(r.seg())
    outs = r.poll()
    assert outs and outs[0].seg.seq == SND0 + 3000
    r.pack = SND0 + 6000                                     # full ACK ends recovery
    r.rx(r.seg())
    assert r.field("CWnd") <= 2500 + 1000


def test_nagle_holds_small_segment_while_data_in_flight():
    r = Rig(fields=dict(CachedFlags=NAGLE))
    r.t.send_append(r.h, b"a" * 10)
    assert len(r.poll()) == 1
    r.t.send_append(r.h, b"b" * 10)
    assert r.poll() == []                                    # held: 10 bytes in flight
    r.pack = SND0 + 10
    r.rx(r.seg())
    [o] = r.poll()
    assert o.seg.payload == b"b" * 10
    r2 = Rig()                                               # no Nagle: goes at once
    r2.t.send_append(r2.h, b"a")
    r2.poll()
    r2.t.send_append(r2.h, b"b")
    assert len(r2.poll()) == 1


def test_window_scaling_both_ways():
    r = Rig(ws=3, rcv_wnd=80_000, snd_wnd=8)                 # peer's raw window 8 << 3 = 64
    r.rx(r.seg(b"", win=8))
    r.t.send_append(r.h, b"w" * 100)
    outs = r.poll()
    assert [len(o.seg.payload) for o in outs] == [64]
    assert outs[0].seg.window == 80_000 >> 3
    assert r.field("SndWnd") == 64


def test_zero_window_persist_probes():
    r = Rig(cfg=dict(max_retransmissions=3))
    r.rx(r.seg(win=0))
    assert r.field("SndWnd") == 0
    r.t.send_append(r.h, b"PROBE-ME")
    assert r.poll() == []
    dl = r.t.next_deadline()
    assert dl == r.now + 1000
    [o] = r.poll(dl - r.now)
    assert o.seg.seq == SND0 and o.seg.payload == b"P"      # one byte past the window
    assert r.field("SndWndProbeCount") == 1
    assert r.t.export(r.h, r.now)["RetransmitTimeoutDelta"] == 2000
    [o] = r.poll(2000)
    assert o.seg.payload == b"P"
    r.rx(r.seg(win=1000))                                     # window opens
    outs = r.poll()
    assert b"".join(o.seg.payload for o in outs) == b"PROBE-ME"
    assert r.field("SndWndProbeCount") == 0


def test_persist_limit_retrieve():
    r = Rig(cfg=dict(max_retransmissions=2))
    r.rx(r.seg(win=0))
    r.t.send_append(r.h, b"x")
    r.poll()
    for _ in range(2):
        assert len(r.poll(r.t.next_deadline() - r.now)) == 1
    r.poll(r.t.next_deadline() - r.now)
    assert r.events() == [(RETRIEVE, TIMEOUT)]


def test_keepalive_probes_then_retrieve_closed():
    r = Rig(fields=dict(CachedFlags=KA, KaTimeout=5000, KaInterval=1000, KaProbeCount=2))
    assert r.t.next_deadline() == r.now + 5000
    [o] = r.poll(5000)
    assert o.seg.seq == SND0 - 1 and o.seg.payload == b"" and o.seg.ack == RCV0
    assert r.field("KeepAliveProbeCount") == 1
    r.rx(r.seg())                                            # answered: idle timer again
    assert r.field("KeepAliveProbeCount") == 0 and r.t.next_deadline() == r.now + 5000
    assert len(r.poll(5000)) == 1
    assert len(r.poll(1000)) == 1
    assert r.poll(1000) == []
    assert r.events() == [(RETRIEVE, TIMEOUT)]
    assert r.field("State") == CLOSED


# ----------------------------------------------------------------------- FIN / RST / SYN ----

def test_peer_fin_then_our_close():
    r = Rig()
    r.rx(r.seg(b"bye", F.ACK | F.FIN))
    assert r.events() == [(DATA, 3), (FIN_EV, 0)]
    assert r.field("State") == CLOSE_WAIT
    [o] = r.poll()
    assert o.seg.ack == add(RCV0, 4)                         # data + FIN, ACKed at once
    r.t.send_append(r.h, b"last")
    r.t.disconnect(r.h, True, r.now)
    assert r.field("State") == LAST_ACK
    [o] = r.poll()
    assert o.seg.payload == b"last" and o.flags == F.ACK | F.PSH | F.FIN
    r.pack = SND0 + 5
    r.rx(r.seg())
    assert r.events() == [(SEND_ACKED, 4), (FIN_ACKED, 0)]
    assert r.field("State") == CLOSED
    assert r.rx(r.seg(b"more")) == PASS_UP                   # data while CLOSED: normal path


def test_active_close_fin_wait_2_time_wait():
    r = Rig(cfg=dict(fin_wait_2_ticks=3000))
    r.t.disconnect(r.h, True, r.now)
    assert r.field("State") == FIN_WAIT_1
    [o] = r.poll()
    assert o.flags == F.ACK | F.FIN and o.seg.seq == SND0
    r.pack = SND0 + 1
    r.rx(r.seg(b"still open"))                              # receive half still open
    assert r.field("State") == FIN_WAIT_2
    assert r.events() == [(FIN_ACKED, 0), (DATA, 10)]
    assert r.t.export(r.h, r.now)["RetransmitTimeoutDelta"] == 3000   # carries FIN_WAIT_2
    r.rx(r.seg(b"", F.ACK | F.FIN), dt=100)
    assert r.field("State") == TIME_WAIT
    assert r.events() == [(FIN_EV, 0), (RETRIEVE, UPLOAD_REQUESTED)]
    outs = r.poll()
    assert [o.seg.ack for o in outs] == [add(RCV0, 11)]      # the last ACK still goes out
    assert r.rx(r.seg(b"", F.SYN, advance=False)) == PASS_UP  # SYN in TIME_WAIT: normal path


def test_fin_wait_2_timeout():
    r = Rig(cfg=dict(fin_wait_2_ticks=3000))
    r.t.disconnect(r.h, True, r.now)
    r.poll()
    r.pack = SND0 + 1
    r.rx(r.seg())
    r.events()
    assert r.poll(2999) == []
    r.poll(1)
    assert r.events() == [(RETRIEVE, TIMEOUT)]
    assert r.field("State") == CLOSED


def test_simultaneous_close_closing():
    r = Rig()
    r.t.disconnect(r.h, True, r.now)
    r.poll()
    r.rx(r.seg(b"", F.ACK | F.FIN))                          # peer FIN before ACKing ours
    assert r.field("State") == CLOSING
    r.poll()
    r.pack = SND0 + 1
    r.rx(r.seg())
    assert r.field("State") == TIME_WAIT
    assert (RETRIEVE, UPLOAD_REQUESTED) in r.events()


def test_out_of_order_fin():
    r = Rig()
    a = r.seg(b"abc")
    b = r.seg(b"def", F.ACK | F.FIN)
    r.rx(b)
    assert r.field("State") == ESTABLISHED
    r.rx(a)
    assert r.field("State") == CLOSE_WAIT
    assert r.t.receive_take(r.h) == b"abcdef"
    assert r.poll()[-1].seg.ack == add(RCV0, 7)


def test_rst_rules_blind_reset_mitigation():
    r = Rig()
    # outside the window: dropped silently
    assert r.rx(r.seg(b"", F.RST, seq=add(RCV0, 100_000), advance=False)) == CONSUMED
    assert r.poll() == [] and r.events() == []
    # in the window but not RCV.NXT: challenge ACK, keepalive within 5 minutes (T.9)
    assert r.rx(r.seg(b"", F.RST, seq=add(RCV0, 10), advance=False)) == CONSUMED
    [o] = r.poll()
    assert o.flags == ACK and o.seg.ack == RCV0 and o.seg.seq == SND0
    assert r.events() == [] and r.field("State") == ESTABLISHED
    assert r.t.next_deadline() == r.now + 300_000
    # a second one within the validation period: no second challenge ACK
    r.rx(r.seg(b"", F.RST, seq=add(RCV0, 20), advance=False))
    assert r.poll() == []
    assert r.t.datapath_counters()["challenge_acks"] == 1
    # an acceptable segment stops the mitigation keepalive
    r.rx(r.seg())
    assert r.t.next_deadline() is None
    # exactly RCV.NXT: abort
    assert r.rx(r.seg(b"", F.RST, advance=False)) == CONSUMED
    assert r.events() == [(RST_EV, 0)]
    assert r.field("State") == CLOSED and r.poll() == []


def test_syn_rules():
    r = Rig()
    assert r.rx(r.seg(b"", F.SYN, seq=add(RCV0, 5), advance=False)) == CONSUMED
    [o] = r.poll()
    assert o.flags == ACK and o.seg.ack == RCV0              # challenge ACK
    assert r.rx(r.seg(b"", F.SYN, seq=add(RCV0, 6), advance=False)) == CONSUMED
    assert r.poll() == []                                    # at most once per 3 s
    assert r.rx(r.seg(b"", F.SYN, seq=add(RCV0, 7), advance=False), dt=3000) == CONSUMED
    assert len(r.poll()) == 1
    assert r.rx(r.seg(b"", F.SYN, advance=False)) == PASS_UP   # SYN at RCV.NXT: upload CLOSED
    assert r.events() == [(RETRIEVE, UPLOAD_REQUESTED)]
    assert r.field("State") == CLOSED


def test_urgent_data_pass_up_retrieve_and_stop_acking():
    r = Rig()
    r.rx(r.seg(b"x"))
    urg = r.seg(b"!", F.ACK | F.URG, urgent=1)
    assert r.rx(urg) == PASS_UP
    assert r.events() == [(DATA, 1), (RETRIEVE, URGENT)]
    assert r.rx(r.seg(b"later")) == PASS_UP                  # and everything after it
    assert r.poll(1000) == []                                # no ACK, not even the delayed one
    assert r.t.receive_take(r.h) == b"x"


def test_unacceptable_ack_is_answered_and_dropped():
    r = Rig()
    r.rx(r.seg(b"data", ack=SND0 + 10))                      # ACKs what we never sent
    [o] = r.poll()
    assert o.seg.ack == RCV0 and r.t.receive_available(r.h) == 0


def test_abortive_disconnect_sends_rst():
    r = Rig()
    r.t.send_append(r.h, b"never")
    r.t.disconnect(r.h, False, r.now)
    [o] = r.poll()
    assert o.flags == F.RST | F.ACK and o.seg.seq == SND0
    assert r.field("State") == CLOSED and r.poll(10_000) == []


# ------------------------------------------------------------------ terminate / export ----

def test_terminate_flush_acks_and_pass_up():
    r = Rig()
    r.rx(r.seg(b"owed"))
    [o] = r.t.flush_acks(r.h)
    assert Out(o).seg.ack == add(RCV0, 4)
    assert r.t.flush_acks(r.h) == []
    r.t.set_terminating(r.h)
    assert r.rx(r.seg(b"after")) == PASS_UP
    assert r.poll(100_000) == []


def test_export_values():
    r = Rig(fields=dict(CachedFlags=KA, KaTimeout=7000, KaInterval=1000, KaProbeCount=3))
    r.rx(r.seg(b"kept"))                                     # buffered (ACK owed, not taken)
    r.t.send_append(r.h, b"0123456789")
    [o] = r.poll()
    r.pack = SND0 + 4
    r.rx(r.seg(), dt=20)
    r.t.send_append(r.h, b"abc")
    ex = r.t.export(r.h, r.now + 5)
    assert ex["State"] == ESTABLISHED
    assert ex["RcvNxt"] == add(RCV0, 4) and ex["SndUna"] == SND0 + 4
    assert ex["SndNxt"] == SND0 + 10 and ex["SndMax"] == SND0 + 10
    assert ex["send_data"] == b"456789abc" and ex["buffered"] == b"kept"
    assert ex["SRtt"] == 20 * 8 and ex["RttVar"] == 10 * 4
    assert ex["TsTime"] == add(r.now + 5, TS0 - 10_000)      # T.6: NIC clock + NIC delta
    assert ex["TsRecent"] == r.pts and ex["TsRecentAge"] == 5
    assert ex["KeepAliveTimeoutDelta"] == 7000 - 5
    assert ex["RetransmitTimeoutDelta"] == 200 - 5           # RTO = max(20 + 40, min_rto 200)
    assert ex["RetransmitCount"] == 0 and ex["DupAckCount"] == 0
    idle = Rig()
    ex = idle.t.export(idle.h, idle.now)
    assert ex["RetransmitTimeoutDelta"] == STOPPED and ex["KeepAliveTimeoutDelta"] == STOPPED
    assert ex["send_data"] == b"" and ex["buffered"] == b""


def test_activate_starts_timers_from_deltas():
    r = Rig(fields=dict(SndNxt=SND0 + 5, SndMax=SND0 + 5, RetransmitTimeoutDelta=123,
                        KeepAliveTimeoutDelta=456, CachedFlags=KA, KaTimeout=9999))
    r.t.send_append(r.h, b"hello")
    assert r.t.next_deadline() in (r.now, r.now + 123)
    r.poll()
    assert r.t.next_deadline() == r.now + 123
    ex = r.t.export(r.h, r.now)
    assert ex["RetransmitTimeoutDelta"] == 123 and ex["KeepAliveTimeoutDelta"] == 456
    [o] = r.poll(123)
    assert o.seg.seq == SND0 and o.seg.payload == b"hello"   # [SndUna, SndMax) resent (T.3)


def test_activate_with_fin_already_sent_in_fin_wait_1():
    r = Rig(fields=dict(State=FIN_WAIT_1, SndNxt=SND0 + 4, SndMax=SND0 + 4))
    r.t.send_append(r.h, b"tai")                              # 3 bytes + FIN = SndMax
    r.pack = SND0 + 4
    r.rx(r.seg())
    assert r.field("State") == FIN_WAIT_2
    assert r.events() == [(SEND_ACKED, 3), (FIN_ACKED, 0)]


# ------------------------------------------------------------------------ VLAN / many ----

def test_vlan_tagging_and_filtering():
    r = Rig(vlan=5, ttl=33, fields=dict(UserPriority=3, TosOrTrafficClass=0x10))
    r.t.send_append(r.h, b"v")
    [o] = r.poll()
    assert o.eth.vlan_tags and o.eth.vlan_tags[0].vid == 5 and o.eth.vlan_tags[0].pcp == 3
    assert o.ip.ttl == 33 and o.ip.dscp == 4
    untagged = frame_of(TcpSegment(RPORT, LPORT, RCV0, SND0, ACK, 100,
                                   TcpOptions(timestamp=(PTS0 + 1, 0))))
    assert r.rx(untagged) == NOT_OURS
    r.pack = SND0 + 1
    assert r.rx(r.seg()) == CONSUMED


def test_next_deadline_many_connections_and_remove():
    t = ConnectionTable(1000)
    t.configure(delayed_ack_ticks=1_000_000)
    handles = []
    for i in range(1000):
        h = t.insert(LOCAL_IP, 1000 + i, REMOTE_IP, 80)
        t.set_fields(h, State=ESTABLISHED, RcvWnd=1000, SndWnd=1000, RemoteMss=1460,
                     CachedFlags=KA, KaTimeout=5000 + (i * 7919) % 1000)
        t.activate(h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=0)
        handles.append(h)
    t.poll(0)
    assert t.next_deadline() == 5000
    t._validate()
    for h in handles[::2]:
        t.remove(h)
    t._validate()
    expect = min(5000 + (i * 7919) % 1000 for i in range(1, 1000, 2))
    assert t.next_deadline() == expect
    frames = t.poll(5999)
    assert len(frames) == 500                                 # one keepalive probe each
    t._validate()
    t.clear()
    assert t.next_deadline() is None
    t._validate()


def test_memory_freed_with_table():
    import tracemalloc
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            r = Rig(cfg=dict(send_buffer=1 << 16, receive_buffer=1 << 16))
            r.t.send_append(r.h, b"x" * 200_000)              # grows the ring
            r.rx(r.seg(b"y" * 100))
            r.poll()
            assert r.t.memory_bytes() > 200_000
            del r
        assert tracemalloc.get_traced_memory()[0] - base < 64 * 1024
    finally:
        tracemalloc.stop()


def test_process_frame_allocates_no_python_objects():
    """The fast path: after warm-up, process_frame of data frames and ACKs allocates nothing
    (its result is a cached small int; event and pending arrays are C arrays)."""
    import sys
    r = Rig(cfg=dict(receive_buffer=1 << 22), rcv_wnd=1 << 22, ws=7)
    r.t.send_append(r.h, b"s" * 3000)
    r.poll()
    frames = [r.seg(b"d" * 1000) for _ in range(300)]
    acks = []
    for k in range(1, 4):
        r.pack = SND0 + k * 1000
        acks.append(r.seg())
    for f in frames[:100]:                                   # warm-up: arrays reach capacity
        r.t.process_frame(f, r.now)
    r.t.events()
    process, now = r.t.process_frame, r.now
    todo = frames[100:] + acks
    results = [None] * len(todo)
    before = sys.getallocatedblocks()
    for i in range(len(todo)):
        results[i] = process(todo[i], now)
    after = sys.getallocatedblocks()
    assert results == [CONSUMED] * len(todo)
    assert after - before <= 2                               # (the loop variable), not ~200
    assert r.t.receive_available(r.h) == 300_000
    assert r.t.acked_total(r.h) == 3000


def test_fin_clears_out_of_order_ranges_beyond_it():
    r = Rig()
    junk = r.seg(b"J" * 10, seq=add(RCV0, 20), advance=False)
    r.rx(junk)                                               # beyond where the FIN will be
    r.rx(r.seg(b"x" * 5, F.ACK | F.FIN))
    assert r.field("State") == CLOSE_WAIT
    r.t._validate()
    assert r.t.receive_take(r.h) == b"xxxxx"


def test_process_frames_equals_frame_by_frame():
    """process_frames (one C call per run of consumed frames) has exactly the effect of
    process_frame on each frame in order: stops at the first frame not consumed."""
    a, b = Rig(), Rig()
    frames = [a.seg(b"a" * 100), a.seg(b"b" * 100, ACK | F.PSH)]
    other = frame_of(TcpSegment(RPORT, LPORT + 1, RCV0, SND0, ACK, 100))   # not ours
    opt = frame_of(TcpSegment(RPORT, LPORT, RCV0, SND0, ACK, 100), ip_options=b"\x01\x01\x01\x00")
    frames += [other, a.seg(b"c" * 50), opt, a.seg(b"d" * 10)]
    one_by_one = [a.t.process_frame(f, a.now) for f in frames]
    assert one_by_one == [CONSUMED, CONSUMED, NOT_OURS, CONSUMED, PASS_UP, CONSUMED]
    got, i = [], 0
    while i < len(frames):
        j, verdict = b.t.process_frames(frames, i, b.now)
        got += [CONSUMED] * (j - i)
        if j >= len(frames):
            assert verdict == CONSUMED
            break
        got.append(verdict)
        i = j + 1
    assert got == one_by_one
    assert b.t.datapath_counters() == a.t.datapath_counters()
    assert b.events(pushes=True) == a.events(pushes=True)
    assert b.t.receive_take(b.h) == a.t.receive_take(a.h) == b"a" * 100 + b"b" * 100 + b"c" * 50 + b"d" * 10
    assert [o.raw for o in b.poll(100)] == [o.raw for o in a.poll(100)]
    b.t._validate()
    with pytest.raises(TypeError):
        b.t.process_frames(frames, 0)
    with pytest.raises(ValueError):
        b.t.process_frames(frames, -1, b.now)
    with pytest.raises(TypeError):
        b.t.process_frames([7], 0, b.now)
    assert b.t.process_frames([], 0, b.now) == (0, CONSUMED)
