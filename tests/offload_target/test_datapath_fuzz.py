"""Fuzz the C frame parser and TCP input of the data path.

Random bytes and mutated valid frames (with and without repaired checksums, so mutations reach
the TCP state machine) go into ``process_frame`` on a table with live connections in several
configurations, interleaved with ``poll`` at advancing times and with the application calls.
Nothing may crash (these tests also run under ASan/UBSan, scripts/asan-tests.sh), every verdict
is 0, 1 or 2, the table's invariants hold (``_validate()``, which includes the data path's:
rings, sequence-space order, out-of-order ranges inside the window, the timer heap) and every
frame the data path emits is a well-formed frame with correct checksums.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_target import table as table_mod
from tcpip.ethernet import parse_ethernet
from tcpip.ipv4 import parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, parse_tcp

from .frames import checksum
from .test_datapath import LOCAL_IP, LOCAL_MAC, REMOTE_IP, REMOTE_MAC, frame_of

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

RCV0, SND0 = 0xFFFFF000, 0x7FFFFF00
# (local port, vlan, ConstFlags, window scale, CachedFlags); ConstFlags 0x02 = SACK (the data
# path sends SACK blocks while it holds out-of-order data)
CONNS = [(1000, 0, 0x07, 0, 0x03), (1001, 0, 0x02, 0, 0x00), (1002, 7, 0x05, 7, 0x01),
         (1003, 0, 0x04, 14, 0x02), (1004, 0, 0x00, 0, 0x00)]
RPORT = 80
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def make_table():
    t = table_mod.ConnectionTable(8)
    t.configure(receive_buffer=1 << 16, send_buffer=512, ooo_segments=4, max_retransmissions=3,
                delayed_ack_ticks=10, fin_wait_2_ticks=500)
    for lport, vlan, cflags, ws, kflags in CONNS:
        h = t.insert(LOCAL_IP, lport, REMOTE_IP, RPORT)
        t.set_fields(h, State=4, RcvNxt=RCV0, RcvWnd=30000, SndUna=SND0, SndNxt=SND0,
                     SndMax=SND0, SndWnd=20000, MaxSndWnd=20000, SendWL1=RCV0, CWnd=3000,
                     SsThresh=6000, ConstFlags=cflags, RemoteMss=536, SndWindScale=ws,
                     RcvWindScale=ws, CachedFlags=kflags, KaTimeout=300, KaInterval=50,
                     KaProbeCount=2, TsRecent=5, TsTime=1)
        t.activate(h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, vlan_id=vlan, now_ticks=0)
        t.send_append(h, bytes(range(256)) * 3)
    t.insert(LOCAL_IP, 2000, REMOTE_IP, RPORT)               # inserted, never activated
    return t


def check_output(frames) -> None:
    for f in frames:
        eth = parse_ethernet(f)
        ip = parse_ipv4(eth.payload)
        assert ip.dont_fragment and 0x8000 <= ip.identification <= 0xFFFF
        seg = parse_tcp(ip.payload, ip.src, ip.dst)            # checksum verified
        # options + data within the peer's MSS (RemoteMss 536; RFC 6691)
        assert len(ip.payload) - 20 <= 536 or not seg.payload
        blocks = seg.options.sack_blocks
        assert len(blocks) <= (3 if seg.options.timestamp is not None else 4)
        if blocks:
            lport = seg.src_port
            assert [c for c in CONNS if c[0] == lport][0][2] & 0x02   # negotiated only
            for left, right in blocks:
                assert 0 < (left - seg.ack) % 2**32 < (right - seg.ack) % 2**32 < 2**31


def fix_checksums(frame: bytes) -> bytes:
    """Repair the IPv4 header and TCP checksums of a (mutated) frame when its layout allows."""
    b = bytearray(frame)
    off = 18 if len(b) >= 18 and b[12:14] == b"\x81\x00" else 14
    if len(b) < off + 20:
        return bytes(b)
    ihl = (b[off] & 0x0F) * 4
    if ihl < 20 or len(b) < off + ihl:
        return bytes(b)
    b[off + 10:off + 12] = b"\x00\x00"
    b[off + 10:off + 12] = struct.pack("!H", checksum(bytes(b[off:off + ihl])))
    total = struct.unpack("!H", b[off + 2:off + 4])[0]
    tcp_end = off + total
    if total < ihl + 20 or tcp_end > len(b):
        return bytes(b)
    t0 = off + ihl
    b[t0 + 16:t0 + 18] = b"\x00\x00"
    pseudo = bytes(b[off + 12:off + 20]) + struct.pack("!BBH", 0, 6, total - ihl)
    b[t0 + 16:t0 + 18] = struct.pack("!H", checksum(pseudo + bytes(b[t0:tcp_end])))
    return bytes(b)


flags_st = st.integers(0, 0xFF)
valid_seg = st.builds(
    lambda conn, dseq, dack, fl, win, payload, ts, urg: (conn, TcpSegment(
        RPORT, CONNS[conn][0] if conn < len(CONNS) else 2000, (RCV0 + dseq) & 0xFFFFFFFF,
        (SND0 + dack) & 0xFFFFFFFF, TcpFlags(fl), win,
        TcpOptions(timestamp=ts), payload, urg)),
    st.integers(0, len(CONNS)),
    st.one_of(st.integers(-100, 3000), st.integers(-2**31, 2**31)),
    st.one_of(st.integers(-10, 800), st.integers(-2**31, 2**31)),
    st.one_of(st.sampled_from([0x10, 0x18, 0x11, 0x14, 0x04, 0x12, 0x02, 0x30, 0x19]), flags_st),
    st.integers(0, 0xFFFF),
    st.binary(max_size=700),
    st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
              st.tuples(st.integers(0, 40), st.integers(0, 40))),
    st.integers(0, 0xFFFF),
)


def build(conn: int, seg: TcpSegment) -> bytes:
    vlan = CONNS[conn][1] if conn < len(CONNS) else 0
    return frame_of(seg, vlan=vlan or None)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2000), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
    st.tuples(st.just("set"), st.integers(0, 80), st.integers(0, 255)),
)


def mutate(frame: bytes, muts, repair: bool) -> bytes:
    b = bytearray(frame)
    for kind, a, v in muts:
        if kind == "flip" and b:
            b[a % len(b)] ^= v
        elif kind == "truncate":
            del b[a % (len(b) + 1):]
        elif kind == "extend":
            b += bytes([v]) * a
        elif kind == "set" and a < len(b):
            b[a] = v
    return fix_checksums(bytes(b)) if repair else bytes(b)


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=20))
def test_random_bytes(frames):
    t = make_table()
    for i, f in enumerate(frames):
        assert t.process_frame(f, i) in (0, 1, 2)
        assert t.process_frame(bytearray(f), i) in (0, 1, 2)
        assert t.process_frame(memoryview(f), i) in (0, 1, 2)
    t._validate()
    check_output(t.poll(len(frames)))
    t._validate()


@FUZZ
@given(st.lists(st.tuples(valid_seg, st.lists(mutation, max_size=3), st.booleans(),
                          st.integers(0, 400)), max_size=25))
def test_mutated_valid_frames(steps):
    t = make_table()
    now = 0
    handles = list(t.handles())
    for (conn, seg), muts, repair, dt in steps:
        frame = mutate(build(conn, seg), muts, repair)
        assert t.process_frame(frame, now) in (0, 1, 2)
        t._validate()
        now += dt
        check_output(t.poll(now))
        t._validate()
        for h, ev, _v in t.events():
            assert h in handles and 1 <= ev <= 7  # EVENT_SEND_ACKED .. EVENT_PUSH
    for h in handles[:len(CONNS)]:
        t.export(h, now)
        t.receive_take(h)
    check_output(t.poll(now + 100_000))
    t._validate()


@FUZZ
@given(st.lists(st.one_of(
    st.tuples(st.just("frame"), valid_seg, st.booleans()),
    st.tuples(st.just("poll"), st.integers(0, 2000), st.just(None)),
    st.tuples(st.just("send"), st.integers(0, len(CONNS) - 1), st.binary(max_size=3000)),
    st.tuples(st.just("take"), st.integers(0, len(CONNS) - 1), st.integers(-1, 5000)),
    st.tuples(st.just("disconnect"), st.integers(0, len(CONNS) - 1), st.booleans()),
    st.tuples(st.just("terminate"), st.integers(0, len(CONNS) - 1), st.none()),
    st.tuples(st.just("remove"), st.integers(0, len(CONNS) - 1), st.none()),
), max_size=40))
def test_operations_interleaved(ops):
    t = make_table()
    handles = list(t.handles())[:len(CONNS)]
    now = 0
    for op, a, b in ops:
        if op == "frame":
            conn, seg = a
            assert t.process_frame(build(conn, seg), now) in (0, 1, 2)
        elif op == "poll":
            now += a
            check_output(t.poll(now))
            dl = t.next_deadline()
            assert dl is None or dl >= 0
        else:
            h = handles[a]
            if not t.is_valid(h) or not t.is_active(h):
                continue
            if op == "send":
                try:
                    t.send_append(h, b)
                except ValueError:
                    pass                                    # after the FIN was ACKed
            elif op == "take":
                t.receive_take(h, b)
            elif op == "disconnect":
                try:
                    t.disconnect(h, b, now)
                except ValueError:
                    pass                                    # graceful in a closing state
            elif op == "terminate":
                t.flush_acks(h)
                t.set_terminating(h)
            elif op == "remove":
                t.export(h, now)
                t.remove(h)
        t._validate()
    t.events()
    check_output(t.poll(now + 10**6))
    t._validate()
