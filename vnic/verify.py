"""``vnic verify``: check a vnic capture against the handoff rules (docs/capture-format.md).

The capture is read with scapy (:func:`vnic.pcapng.read_pcapng`, scapy's pcapng reader, plus
the custom blocks of notes left at close); headers are decoded with ``struct`` and checksums
verified, so multi-megabyte captures verify in seconds.  Per connection (local side = the
emulated host) and direction the TCP byte stream is reassembled with sequence unwrapping;
retransmitted, duplicated and reordered segments are compared byte for byte with what was seen
first.  ``vnic-event`` notes (:mod:`vnic.capture`) give the handoffs: each
``terminate-complete`` opens a watch over that connection's next frames until its next
``offload-start``; frames are attributed to "built before / after the event" with the IPv4
identification marks the event carries (file order when they are missing), compared after
unwrapping each side's 15-bit identification counter in file order (:class:`_Serial`).  An RST
after both FINs were acknowledged is *late*: counted, not a ``no-rst`` failure.  IPv4 fragments
(the ``fragment`` wire fault; over TAP outbound frames are captured after the faults) are
reassembled with the host stack's :class:`tcpip.reassembly.Reassembler` and the segment is
checked where its datagram completes (``fragments`` counts them).

Rules (each :class:`Failure` names rule, connection, handoff epoch, frame number, detail):
``stream-complete``, ``no-inconsistent-overlap``, ``digest-match``, ``no-rst``,
``resume-from-host``, ``resume-at-sndnxt``, ``resume-at-rcvnxt``, ``delivered-once``,
``buffered-once``, ``terminate-returned-state``.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
import struct
from typing import Any

from tcpip.addr import ip_str
from tcpip.checksum import ones_sum, verify_checksum
from tcpip.errors import DecodeError
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.reassembly import Reassembler
from vnic.capture import parse_event
from vnic.pcapng import DIR_INBOUND, DIR_OUTBOUND, parse_comment

__all__ = [
    "CaptureError",
    "ConnectionResult",
    "DirectionResult",
    "Failure",
    "RULES",
    "VerifyReport",
    "render_verify",
    "verify_capture",
]

RULES = (
    "stream-complete",
    "no-inconsistent-overlap",
    "digest-match",
    "no-rst",
    "resume-from-host",
    "resume-at-sndnxt",
    "resume-at-rcvnxt",
    "delivered-once",
    "buffered-once",
    "terminate-returned-state",
)

OUT = "host->peer"
IN = "peer->host"
MOD = 1 << 32
HALF = 1 << 31
MAX_STREAM = 1 << 33  # offsets beyond this are treated as garbage, not data
MAX_JUMP = 1 << 27  # data further than this beyond the highest byte seen is not this stream's
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


class CaptureError(Exception):
    """The file is not a readable pcapng capture."""


def _sdiff(a: int, b: int) -> int:
    d = (a - b) % MOD
    return d - MOD if d >= HALF else d


class _Serial:
    """Unwraps one side's 15-bit IPv4 identifications (the host's 0x0000-0x7FFF, the target's
    0x8000-0xFFFF, T.1; each numbered by one global counter) into a monotonic count, relative
    to the newest value seen in file order.  Frames are written at most a few thousand
    identifications out of build order (one poll, wire delay / reorder), far below half the
    space, so comparisons of unwrapped values are exact however often the counter wrapped
    (a serial comparison of the raw 15-bit values aliases once 32768 frames were built)."""

    def __init__(self) -> None:
        self.hw: int | None = None

    def unwrap(self, ident: int, *, update: bool = True) -> int:
        v = ident & 0x7FFF
        if self.hw is None:
            if update:
                self.hw = v
            return v
        d = (v - self.hw) & 0x7FFF
        if d >= 0x4000:
            d -= 0x8000
        u = self.hw + d
        if update and u > self.hw:
            self.hw = u
        return u


# ---- results ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    rule: str
    conn: str | None
    handoff: int | None  # the connection's epoch (offloads started so far), None = not tied
    frame_number: int | None  # 1-based, as Wireshark numbers frames
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f"frame {self.frame_number}" if self.frame_number else "no frame"
        ho = f"epoch {self.handoff}" if self.handoff is not None else "-"
        return f"[{self.rule}] {self.conn or '-'} {ho} {where}: {self.detail}"


@dataclasses.dataclass
class DirectionResult:
    direction: str
    frames: int = 0
    data_frames: int = 0
    bytes: int = 0  # contiguous stream length from the start
    sha256: str = ""
    syn: bool = False
    fin: bool = False
    holes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # stream offsets
    retransmitted_bytes: int = 0
    data_bytes_from_target: int = 0
    data_bytes_from_host: int = 0
    rsts: int = 0  # every RST, late ones included
    late_rsts: int = 0  # RSTs after both FINs were acknowledged (reported, not a failure)
    digests_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["holes"] = [list(h) for h in self.holes]
        return d


@dataclasses.dataclass
class ConnectionResult:
    conn: str
    directions: dict[str, DirectionResult]
    handoffs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epochs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"conn": self.conn, "epochs": self.epochs,
                "directions": {k: v.as_dict() for k, v in self.directions.items()},
                "handoffs": self.handoffs}


@dataclasses.dataclass
class VerifyReport:
    path: str
    frames: int = 0
    tcp_frames: int = 0
    events: int = 0
    fragments: int = 0  # IPv4 fragments of TCP datagrams, reassembled before the checks
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)
    connections: dict[str, ConnectionResult] = dataclasses.field(default_factory=dict)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    rules_checked: tuple[str, ...] = RULES

    @property
    def ok(self) -> bool:
        return not self.failures

    def rules_failed(self) -> set[str]:
        return {f.rule for f in self.failures}

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "frames": self.frames,
            "tcp_frames": self.tcp_frames,
            "events": self.events,
            "fragments": self.fragments,
            "ignored": dict(self.ignored),
            "rules": list(self.rules_checked),
            "connections": {k: v.as_dict() for k, v in self.connections.items()},
            "failures": [f.as_dict() for f in self.failures],
        }


# ---- stream reassembly --------------------------------------------------------------------------


class _Stream:
    """One direction's byte stream, offsets relative to ISN+1 (or the first sequence seen)."""

    def __init__(self) -> None:
        self.base: int | None = None  # sequence number of offset 0
        self.hw = 0  # highest offset seen (unwrap reference)
        self.buf = bytearray()
        self.iv: list[list[int]] = []  # merged covered intervals [start, end), sorted
        self.fin_off: int | None = None
        self.fin_frame: int | None = None
        self.ack_off: int | None = None  # highest offset ACKed by the receiver
        self.overlap_failure: tuple[int, int, int] | None = None  # (frame, offset, count)
        self.frames_by_start: list[tuple[int, int]] = []  # (offset, frame) of data segments

    def set_base(self, seq: int) -> None:
        if self.base is None:
            self.base = seq % MOD
            self.hw = 0

    def off(self, seq: int) -> int:
        assert self.base is not None
        hw_seq = (self.base + self.hw) % MOD
        return self.hw + _sdiff(seq, hw_seq)

    def seq(self, off: int) -> int:
        assert self.base is not None
        return (self.base + off) % MOD

    def contig_end(self) -> int:
        if self.iv and self.iv[0][0] <= 0:
            return self.iv[0][1]
        return 0

    def add(self, off: int, data: bytes, frame: int) -> int:
        """Store a segment; returns the number of bytes already seen (retransmitted)."""
        n = len(data)
        if off < 0:  # bytes before the stream start (e.g. a capture that began mid-stream)
            data = data[-off:]
            n = len(data)
            off = 0
            if n <= 0:
                return 0
        if off > MAX_STREAM:
            return 0
        end = off + n
        if end > self.hw:
            self.hw = end
        iv = self.iv
        # fast path: in-order append to the single interval
        if iv and len(iv) == 1 and iv[0][0] == 0 and iv[0][1] == off:
            self.buf[off:end] = data
            iv[0][1] = end
            self.frames_by_start.append((off, frame))
            return 0
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        seen = 0
        i = bisect.bisect_right(iv, [off, MAX_STREAM * 2]) - 1
        if i < 0:
            i = 0
        j = i
        while j < len(iv) and iv[j][0] < end:
            a, b = max(iv[j][0], off), min(iv[j][1], end)
            if a < b:
                seen += b - a
                old = self.buf[a:b]
                new = data[a - off:b - off]
                if old != new and self.overlap_failure is None:
                    k = next(x for x in range(b - a) if old[x] != new[x])
                    self.overlap_failure = (frame, a + k, sum(1 for x, y in zip(old, new, strict=True) if x != y))
            j += 1
        # write only the bytes not seen before (the first copy is the reference)
        pos = off
        for s, e in [(max(s, off), min(e, end)) for s, e in iv[i:j]] + [(end, end)]:
            if s > pos:
                self.buf[pos:s] = data[pos - off:s - off]
            pos = max(pos, e)
        # merge [off, end) into the intervals
        lo = i
        if lo < len(iv) and iv[lo][1] < off:
            lo += 1  # ends before this segment (not even adjacent)
        while lo > 0 and iv[lo - 1][1] >= off:
            lo -= 1
        hi = lo
        start, stop = off, end
        while hi < len(iv) and iv[hi][0] <= end:
            start = min(start, iv[hi][0])
            stop = max(stop, iv[hi][1])
            hi += 1
        iv[lo:hi] = [[start, stop]]
        self.frames_by_start.append((off, frame))
        return seen

    def bytes_at(self, off: int, n: int) -> bytes | None:
        """Stream bytes [off, off+n) if all covered."""
        if n == 0:
            return b""
        for s, e in self.iv:
            if s <= off and off + n <= e:
                return bytes(self.buf[off:off + n])
        return None

    def holes(self) -> list[tuple[int, int]]:
        end = self.iv[-1][1] if self.iv else 0
        if self.ack_off is not None:
            acked = self.ack_off - (1 if self.fin_off is not None and self.ack_off > self.fin_off else 0)
            end = max(end, acked)
        if self.fin_off is not None:
            end = max(end, self.fin_off)
        out = []
        pos = 0
        for s, e in self.iv:
            if s > pos:
                out.append((pos, min(s, end)))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
        return [h for h in out if h[1] > h[0]]

    def frame_after(self, off: int) -> int | None:
        """The first data frame (by offset) that starts at or after ``off``."""
        best = None
        for o, f in self.frames_by_start:
            if o >= off and (best is None or (o, f) < best):
                best = (o, f)
        return best[1] if best else None


@dataclasses.dataclass
class _Watch:
    """One terminate-complete of a connection, checked against the frames around it."""

    ev: dict[str, Any]
    frame: int  # frame the event note is attached to (first frame written after it)
    epoch: int
    in_upper: int | None  # inbound contiguous end (sequence, + FIN) when the event was written
    max_target_ack: int | None  # highest ACK of target frames built before the event
    max_target_ack_frame: int | None = None
    host_ack: tuple[int, int, int | None] | None = None  # (ack, frame, inbound upper then)
    host_data: tuple[int, int] | None = None  # (seq, frame)
    host_ack_dist: int = 0
    host_data_dist: int = 0
    host_data_id: int | None = None  # unwrapped identification of host_data's frame
    # the peer's highest ACK (offset in the outbound stream) seen before host_data's frame
    host_data_peer_ack: int | None = None
    active: bool = True  # file-order fallback (no marks): until the next offload-start
    # the event's IPv4-identification marks and the next offload-start's (the watch window's
    # end), unwrapped (:class:`_Serial`); None = unknown
    host_mark: int | None = None
    target_mark: int | None = None
    host_end: int | None = None
    target_end: int | None = None
    ended: bool = False


@dataclasses.dataclass
class _Conn:
    name: str
    streams: dict[str, _Stream]
    results: dict[str, DirectionResult]
    epoch: int = 0
    watches: list[_Watch] = dataclasses.field(default_factory=list)
    max_target_ack: int | None = None
    max_target_ack_frame: int | None = None
    digests: list[tuple[dict[str, Any], int]] = dataclasses.field(default_factory=list)
    handoffs: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _fins_acked(st: _Stream) -> bool:
    """This direction's FIN was sent and the other side acknowledged it."""
    return st.fin_off is not None and st.ack_off is not None and st.ack_off > st.fin_off


# ---- reading ------------------------------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> tuple[list[Any], list[tuple[float, str]]]:
    from vnic import pcapng

    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise CaptureError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(head) < 12 or head[:4] != b"\x0a\x0d\x0d\x0a":
        raise CaptureError(f"{path} is not a pcapng capture (no Section Header Block)")
    try:
        frames = pcapng.read_pcapng(path)
        tail = pcapng._read_custom_notes(path)
    except Exception as exc:  # noqa: BLE001 - any reader error means "unreadable"
        raise CaptureError(f"{path} is not a readable pcapng capture: {exc}") from exc
    return frames, tail


def _decode(frame: bytes) -> tuple[Any, ...] | str:
    """(src, dst, ident, sport, dport, seq, ack, flags, payload) of an IPv4/TCP frame, or the
    reason it is ignored."""
    n = len(frame)
    if n < 14:
        return "short"
    off = 14
    et = frame[12:14]
    if et == b"\x81\x00":
        off = 18
        et = frame[16:18]
    if et != b"\x08\x00":
        return "not-ipv4"
    if n < off + 20:
        return "truncated"
    vihl = frame[off]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or n < off + ihl:
        return "bad-ip-header"
    if frame[off + 9] != 6:
        return "not-tcp"
    total = (frame[off + 2] << 8) | frame[off + 3]
    if total < ihl or n < off + total:
        return "truncated"
    if not verify_checksum(frame[off:off + ihl]):
        return "bad-ip-checksum"
    frag = ((frame[off + 6] << 8) | frame[off + 7]) & 0x3FFF
    if frag:
        return "fragment"
    if total < ihl + 20:
        return "truncated"
    ident = (frame[off + 4] << 8) | frame[off + 5]
    src = bytes(frame[off + 12:off + 16])
    dst = bytes(frame[off + 16:off + 20])
    t = off + ihl
    seg = frame[t:off + total]
    if not verify_checksum(seg, ones_sum(src + dst) + 6 + len(seg)):
        return "bad-tcp-checksum"
    sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", seg, 0)
    hlen = (doff >> 4) * 4
    if hlen < 20 or hlen > len(seg):
        return "bad-tcp-header"
    return src, dst, ident, sport, dport, seq, ack, flags, bytes(seg[hlen:])


# ---- the verifier -------------------------------------------------------------------------------


class _Verifier:
    def __init__(self, path: str, expected: dict[str, Any] | None) -> None:
        self.report = VerifyReport(path=str(path))
        self.expected = expected or {}
        self.conns: dict[str, _Conn] = {}
        self.host_ip: bytes | None = None
        self.host_ids = _Serial()  # the host stack's identifications (one counter)
        self.target_ids = _Serial()  # the offload target's (one counter, T.1)
        self.host_ids_seen: set[int] = set()  # unwrapped, of the host's outbound TCP frames
        self.fragments = Reassembler(name="verify")

    # -- helpers ---------------------------------------------------------------------------------
    def fail(self, rule: str, conn: str | None, handoff: int | None, frame: int | None,
             detail: str) -> None:
        self.report.failures.append(Failure(rule, conn, handoff, frame, detail))

    def conn(self, name: str) -> _Conn:
        c = self.conns.get(name)
        if c is None:
            c = _Conn(name, {OUT: _Stream(), IN: _Stream()},
                      {OUT: DirectionResult(OUT), IN: DirectionResult(IN)})
            self.conns[name] = c
        return c

    def ignore(self, reason: str) -> None:
        self.report.ignored[reason] = self.report.ignored.get(reason, 0) + 1

    # -- events ----------------------------------------------------------------------------------
    def on_event(self, ev: dict[str, Any], frame: int) -> None:
        self.report.events += 1
        kind = ev.get("event")
        if kind == "run-info":
            hip = ev.get("host_ip")
            if isinstance(hip, str) and self.host_ip is None:
                try:
                    self.host_ip = bytes(int(x) for x in hip.split("."))
                except ValueError:
                    pass
            return
        name = ev.get("conn")
        if not isinstance(name, str):
            return
        c = self.conn(name)
        if kind == "offload-start":
            c.epoch = int(ev.get("epoch", c.epoch + 1))
            host_end, target_end = self._marks(ev)
            for w in c.watches:
                if not w.ended:
                    w.ended = True
                    w.host_end, w.target_end = host_end, target_end
                    if w.host_end is None or w.target_mark is None:
                        w.active = False
        elif kind == "terminate-complete":
            self.open_watch(c, ev, frame)
        elif kind == "stream-digest":
            c.digests.append((ev, frame))
        if kind in ("offload-start", "offload-complete", "offload-failed", "upload-requested",
                    "terminate-start", "terminate-complete"):
            c.handoffs.append({k: v for k, v in ev.items()
                               if k not in ("buffered_sha256", "delivered_sha256")} | {"frame": frame})

    def open_watch(self, c: _Conn, ev: dict[str, Any], frame: int) -> None:
        epoch = int(ev.get("epoch", c.epoch))
        if ev.get("outcome") == "lost":
            self.fail("terminate-returned-state", c.name, epoch, frame,
                      f"terminate completed with {ev.get('status')}: the connection's state was "
                      "not returned (connection lost)")
        ins = c.streams[IN]
        upper = None
        if ins.base is not None:
            end = ins.contig_end()
            upper = ins.seq(end + (1 if ins.fin_off is not None and ins.fin_off == end else 0))
        host_mark, target_mark = self._marks(ev)
        for w in c.watches:
            if not w.ended:
                w.ended = True
                w.host_end, w.target_end = host_mark, target_mark
            w.active = False
        c.watches.append(_Watch(ev, frame, epoch, upper, c.max_target_ack, c.max_target_ack_frame,
                                host_mark=host_mark, target_mark=target_mark))

    def _marks(self, ev: dict[str, Any]) -> tuple[int | None, int | None]:
        """The event's (host, target) identification marks, unwrapped."""
        h, t = ev.get("host_ip_id"), ev.get("target_ip_id")
        return (None if h is None else self.host_ids.unwrap(int(h), update=False),
                None if t is None else self.target_ids.unwrap(int(t), update=False))

    # -- frames ----------------------------------------------------------------------------------
    def _defragment(self, cf: Any) -> bytes | None:
        """Feed an IPv4 fragment to the reassembler (capture time as its clock); the whole
        datagram, rebuilt as a frame behind the same link header, once it completes."""
        frame = cf.frame
        off = 18 if frame[12:14] == b"\x81\x00" else 14
        try:
            ip = parse_ipv4(memoryview(frame)[off:])
        except DecodeError:
            return None
        whole = self.fragments.add(ip, float(cf.timestamp))
        if whole is None:
            return None
        return bytes(frame[:off]) + build_ipv4(
            whole.src, whole.dst, whole.protocol, whole.payload,
            identification=whole.identification, ttl=whole.ttl,
            dont_fragment=whole.dont_fragment, dscp=whole.dscp, ecn=whole.ecn,
            options=whole.options)

    def on_frame(self, number: int, cf: Any) -> None:
        dec = _decode(cf.frame)
        if dec == "fragment":
            self.report.fragments += 1
            frame = self._defragment(cf)
            if frame is None:
                return
            dec = _decode(frame)
        if isinstance(dec, str):
            if dec not in ("not-ipv4", "not-tcp"):
                self.ignore(dec)
            return
        src, dst, ident, sport, dport, seq, ack, flags, payload = dec
        outbound = self._outbound(cf, src, dst)
        if outbound is None:
            self.ignore("unknown-direction")
            return
        self.report.tcp_frames += 1
        if outbound:
            name = f"{ip_str(src)}:{sport}-{ip_str(dst)}:{dport}"
        else:
            name = f"{ip_str(dst)}:{dport}-{ip_str(src)}:{sport}"
        c = self.conn(name)
        d = OUT if outbound else IN
        st, rev = c.streams[d], c.streams[IN if outbound else OUT]
        res = c.results[d]
        res.frames += 1
        from_target = outbound and ident >= 0x8000
        if flags & _RST:
            res.rsts += 1
            if _fins_acked(st) and _fins_acked(rev):
                # both FINs were sent and acknowledged: the streams were complete; e.g. the
                # kernel, CLOSED after LAST-ACK, answering a duplicate ACK (vnic run's late_rsts)
                res.late_rsts += 1
            else:
                who = "target" if from_target else ("host" if outbound else "peer")
                self.fail("no-rst", name, c.epoch, number, f"RST from the {who} ({d}, seq {seq})")
        if flags & _SYN:
            st.set_base((seq + 1) % MOD)
            res.syn = True
        elif st.base is None and (payload or flags & _FIN):
            st.set_base(seq)
        if flags & _ACK and rev.base is not None:
            aoff = rev.off(ack)
            if rev.ack_off is None or aoff > rev.ack_off:
                rev.ack_off = aoff
        if st.base is not None:
            start = st.off((seq + 1) % MOD) if flags & _SYN else st.off(seq)
            if payload and start > st.hw + MAX_JUMP:
                self.ignore("out-of-window")  # e.g. an old incarnation of the 4-tuple
                payload = b""
            if payload:
                res.data_frames += 1
                if from_target:
                    res.data_bytes_from_target += len(payload)
                elif outbound:
                    res.data_bytes_from_host += len(payload)
                seen = st.add(start, payload, number)
                if seen:
                    res.retransmitted_bytes += seen
                    if st.overlap_failure is not None and st.overlap_failure[0] == number:
                        _, at, nbad = st.overlap_failure
                        self.fail("no-inconsistent-overlap", name, c.epoch, number,
                                  f"{d}: retransmitted bytes differ from the first copy at "
                                  f"seq {st.seq(at)} ({nbad} bytes differ)")
            if flags & _FIN:
                fin_off = start + len(payload)
                if st.fin_off is None:
                    st.fin_off, st.fin_frame = fin_off, number
                    res.fin = True
                elif st.fin_off != fin_off:
                    self.fail("stream-complete", name, c.epoch, number,
                              f"{d}: FIN at seq {st.seq(fin_off)} but an earlier FIN was at "
                              f"seq {st.seq(st.fin_off)}")
        if outbound:
            self._outbound_checks(c, number, ident, from_target, seq, ack, flags, payload)

    def _outbound(self, cf: Any, src: bytes, dst: bytes) -> bool | None:
        if self.host_ip is not None:
            if src == self.host_ip:
                return True
            if dst == self.host_ip:
                return False
        direction = cf.direction
        if direction is None:
            dword = parse_comment(cf.comment).get("dir", "")
            if dword:
                direction = DIR_OUTBOUND if dword.split("->")[0] in ("host", "a") else DIR_INBOUND
        if direction == DIR_OUTBOUND:
            if self.host_ip is None:
                self.host_ip = src
            return True
        if direction == DIR_INBOUND:
            if self.host_ip is None:
                self.host_ip = dst
            return False
        return None

    def _outbound_checks(self, c: _Conn, number: int, ident: int, from_target: bool, seq: int,
                         ack: int, flags: int, payload: bytes) -> None:
        """Attribute an outbound frame to the terminate-complete watches around it: by the
        IPv4-identification marks (build order), or by file order when the marks are missing."""
        uid = (self.target_ids if from_target else self.host_ids).unwrap(ident)
        if not from_target:
            self.host_ids_seen.add(uid)
        if from_target:
            if flags & _ACK and (c.max_target_ack is None or _sdiff(ack, c.max_target_ack) > 0):
                c.max_target_ack, c.max_target_ack_frame = ack, number
            for w in c.watches[-3:]:
                if w.target_mark is None:
                    if w.active:
                        self._target_after_fallback(c, w, number, ident, seq, ack, flags, payload)
                    continue
                if uid <= w.target_mark:
                    # built before the terminate-complete (written later: same poll, wire delay)
                    if flags & _ACK and (w.max_target_ack is None or _sdiff(ack, w.max_target_ack) > 0):
                        w.max_target_ack, w.max_target_ack_frame = ack, number
                elif w.target_end is None or uid <= w.target_end:
                    self.fail("resume-from-host", c.name, w.epoch, number,
                              f"the offload target built this frame (IPv4 id {ident:#06x}, seq {seq}, "
                              f"{len(payload)} bytes) after terminate-complete (target mark "
                              f"{0x8000 | (w.target_mark & 0x7FFF):#06x}, "
                              f"{uid - w.target_mark} frames later)")
            return
        for w in reversed(c.watches[-3:]):
            if w.host_mark is None:
                if not w.active:
                    continue
            elif uid < w.host_mark or (w.host_end is not None and uid >= w.host_end):
                continue
            # the host's *first built* ACK / data segment after the event: the smallest distance
            # from the mark (frames of one poll, or reordered on the wire, are written in
            # another order); in file order without marks
            dist = number if w.host_mark is None else uid - w.host_mark
            if flags & _ACK and not flags & _RST and (w.host_ack is None or dist < w.host_ack_dist):
                ins = c.streams[IN]
                upper = None
                if ins.base is not None:
                    end = ins.contig_end()
                    upper = ins.seq(end + (1 if ins.fin_off is not None and ins.fin_off == end else 0))
                w.host_ack, w.host_ack_dist = (ack, number, upper), dist
            if payload and (w.host_data is None or dist < w.host_data_dist):
                w.host_data, w.host_data_dist = (seq, number), dist
                w.host_data_id = uid
                w.host_data_peer_ack = c.streams[OUT].ack_off
            return

    def _target_after_fallback(self, c: _Conn, w: _Watch, number: int, ident: int, seq: int,
                               ack: int, flags: int, payload: bytes) -> None:
        """Without marks: a target frame written after terminate-complete may be an old one
        written late; only data beyond SndMax or an ACK beyond RcvNxt proves it is new."""
        sndmax, rcvnxt = w.ev.get("snd_max"), w.ev.get("rcv_nxt")
        if payload and sndmax is not None and _sdiff((seq + len(payload)) % MOD, sndmax) > 0:
            self.fail("resume-from-host", c.name, w.epoch, number,
                      f"target data up to {(seq + len(payload)) % MOD} after terminate-complete, "
                      f"beyond the returned SndMax {sndmax}")
        elif flags & _ACK and rcvnxt is not None and _sdiff(ack, rcvnxt) > 0:
            self.fail("resume-from-host", c.name, w.epoch, number,
                      f"target ACK {ack} after terminate-complete, beyond the returned "
                      f"RcvNxt {rcvnxt}")
        elif flags & _ACK and (w.max_target_ack is None or _sdiff(ack, w.max_target_ack) > 0):
            w.max_target_ack, w.max_target_ack_frame = ack, number

    # -- end of capture --------------------------------------------------------------------------
    def finish(self) -> None:
        for c in self.conns.values():
            for w in c.watches:
                self._check_watch(c, w)
            for d in (OUT, IN):
                self._check_stream(c, d)
            self._check_digests(c)
            cr = ConnectionResult(c.name, c.results, c.handoffs, c.epoch)
            self.report.connections[c.name] = cr

    def _check_watch(self, c: _Conn, w: _Watch) -> None:
        ev = w.ev
        e = w.epoch
        una, nxt, smax, rcv = (ev.get(k) for k in ("snd_una", "snd_nxt", "snd_max", "rcv_nxt"))
        if rcv is None or una is None or ev.get("outcome") == "lost":
            # no state returned (lost; a failed terminate's delegated state is not the
            # connection's): terminate-returned-state already failed
            return
        # resume-at-sndnxt
        if not (_sdiff(nxt, una) >= 0 and _sdiff(smax, nxt) >= 0):
            self.fail("resume-at-sndnxt", c.name, e, w.frame,
                      f"returned SndUna {una} <= SndNxt {nxt} <= SndMax {smax} does not hold")
        if w.host_data is not None:
            seq, fr = w.host_data
            if _sdiff(seq, nxt) > 0 and self._host_frame_missing(w.host_mark, w.host_data_id):
                # a frame the host built before the first data segment seen is not in the
                # capture (outbound frames are captured after wire faults: dropped): the first
                # segment cannot be judged; whether the bytes from SndNxt reached the peer in
                # the end (retransmitted by the host or, after a re-offload, by the target) is
                # stream-complete's question
                pass
            elif (_sdiff(seq, nxt) > 0 and smax is not None and _sdiff(seq, smax) <= 0
                  and w.host_data_peer_ack is not None
                  and _sdiff(seq, c.streams[OUT].seq(w.host_data_peer_ack)) <= 0):
                # the peer acknowledged beyond the returned SndNxt before the host sent (data
                # the target had sent up to SndMax, then went back to SndUna after a timeout,
                # with the peer's ACKs lost): SND.UNA passed SND.NXT and the host rightly goes
                # on from the ACK (RFC 9293 3.10.7.4), within SndMax
                pass
            elif seq != nxt and not (_sdiff(seq, una) >= 0 and _sdiff(seq, nxt) < 0):
                rel = _sdiff(seq, nxt)
                what = "skips" if rel > 0 else "starts before SndUna"
                self.fail("resume-at-sndnxt", c.name, e, fr,
                          f"the host's first data after terminate starts at seq {seq}: {what} "
                          f"(returned SndUna {una}, SndNxt {nxt}; {rel:+d} bytes from SndNxt)")
        # resume-at-rcvnxt
        rcv_ok = True
        if w.max_target_ack is not None and _sdiff(rcv, w.max_target_ack) < 0:
            rcv_ok = False
            self.fail("resume-at-rcvnxt", c.name, e, w.max_target_ack_frame or w.frame,
                      f"returned RcvNxt {rcv} is below the ACK {w.max_target_ack} the target "
                      f"already sent ({_sdiff(rcv, w.max_target_ack):+d} bytes)")
        if w.in_upper is not None and _sdiff(rcv, w.in_upper) > 0:
            rcv_ok = False
            self.fail("resume-at-rcvnxt", c.name, e, w.frame,
                      f"returned RcvNxt {rcv} acknowledges {_sdiff(rcv, w.in_upper)} bytes the peer "
                      f"never sent (its contiguous data ends at {w.in_upper})")
        if w.host_ack is not None:
            ack, fr, upper = w.host_ack
            if _sdiff(ack, rcv) < 0:
                rcv_ok = False
                self.fail("resume-at-rcvnxt", c.name, e, fr,
                          f"the host's first ACK after terminate acks {ack}, below the returned "
                          f"RcvNxt {rcv}")
            elif upper is not None and _sdiff(ack, upper) > 0:
                rcv_ok = False
                self.fail("resume-at-rcvnxt", c.name, e, fr,
                          f"the host's first ACK after terminate acks {ack}, beyond the peer's "
                          f"contiguous data ({upper}; returned RcvNxt {rcv})")
        handoff = {"epoch": e, "frame": w.frame, "host_data_frame": w.host_data[1] if w.host_data else None,
                   "host_ack_frame": w.host_ack[1] if w.host_ack else None}
        c.handoffs.append({"event": "resume-checked", **handoff})
        if not rcv_ok:
            return
        # delivered-once / buffered-once: the host got every byte the target ACKed, once
        pos = ev.get("rcv_pos")
        dn, dsha = ev.get("delivered_bytes"), ev.get("delivered_sha256")
        bn, bsha = ev.get("buffered_bytes"), ev.get("buffered_sha256")
        ins = c.streams[IN]
        if pos is None or dn is None or bn is None or ins.base is None:
            return
        span = _sdiff(rcv, pos)  # bytes the target took responsibility for this epoch
        if (ins.fin_off is not None and ins.seq(ins.fin_off + 1) == rcv
                and _sdiff(ins.seq(ins.fin_off), pos) >= 0):
            span -= 1  # RcvNxt covers the peer's FIN, received during this epoch
        start = ins.off(pos)
        if dn > span:
            self.fail("delivered-once", c.name, e, w.frame,
                      f"the target delivered {dn} bytes to the host during the epoch, but only "
                      f"{span} bytes lie between the offload position {pos} and RcvNxt {rcv} "
                      f"({dn - span} bytes delivered twice)")
            return
        wire = ins.bytes_at(start, dn)
        if wire is not None and hashlib.sha256(wire).hexdigest() != dsha:
            self.fail("delivered-once", c.name, e, w.frame,
                      f"the {dn} bytes the target delivered during the epoch differ from the "
                      f"peer's bytes from seq {pos} (duplicated, lost or reordered data)")
            return
        if dn + bn != span:
            lost = span - dn - bn
            self.fail("buffered-once", c.name, e, w.frame,
                      f"the host got {dn} bytes delivered + {bn} returned in BufferedData, but the "
                      f"target ACKed {span} bytes up to RcvNxt {rcv}: "
                      + (f"{lost} bytes lost" if lost > 0 else f"{-lost} bytes twice"))
            return
        bwire = ins.bytes_at(start + dn, bn)
        if bwire is not None and hashlib.sha256(bwire).hexdigest() != bsha:
            self.fail("buffered-once", c.name, e, w.frame,
                      f"the {bn} bytes returned in BufferedData differ from the peer's bytes "
                      f"before RcvNxt {rcv}")

    def _host_frame_missing(self, lo: int | None, hi: int | None) -> bool:
        """A host frame numbered in [lo, hi) is not in the capture (dropped before capture)."""
        if lo is None or hi is None:
            return False
        seen = self.host_ids_seen
        return any(i not in seen for i in range(lo, hi))

    def _check_stream(self, c: _Conn, d: str) -> None:
        st, res = c.streams[d], c.results[d]
        if st.base is None:
            res.sha256 = hashlib.sha256(b"").hexdigest()
            return
        res.holes = st.holes()
        for s, e in res.holes:
            fr = st.frame_after(e) or st.fin_frame
            self.fail("stream-complete", c.name, self._epoch_at(c, fr), fr,
                      f"{d}: bytes {st.seq(s)}..{st.seq(e)} ({e - s} bytes) never seen on the wire"
                      + (" before the FIN" if st.fin_off is not None and e <= st.fin_off else ""))
        end = st.contig_end()
        res.bytes = end
        res.sha256 = hashlib.sha256(st.buf[:end]).hexdigest()

    def _epoch_at(self, c: _Conn, frame: int | None) -> int | None:
        if frame is None:
            return c.epoch
        epoch = 0
        for h in c.handoffs:
            if h.get("event") == "offload-start" and h.get("frame", 0) <= frame:
                epoch = max(epoch, int(h.get("epoch", 0)))
        return epoch

    def _check_digests(self, c: _Conn) -> None:
        checks: list[tuple[str, str, int | None, str | None, int | None]] = []
        for ev, fr in c.digests:
            checks.append((str(ev.get("direction")), f"recorded ({ev.get('side', 'sent')})",
                           ev.get("bytes"), ev.get("sha256"), fr))
        exp = self.expected.get(c.name, {})
        for direction, want in exp.items():
            if isinstance(want, str):
                checks.append((direction, "expected", None, want, None))
            elif isinstance(want, (tuple, list)):
                checks.append((direction, "expected", int(want[0]), str(want[1]), None))
            elif isinstance(want, dict):
                checks.append((direction, "expected", want.get("bytes"), want.get("sha256"), None))
        for direction, label, nbytes, sha, fr in checks:
            if direction not in c.results:
                self.fail("digest-match", c.name, c.epoch, fr, f"unknown direction {direction!r}")
                continue
            res = c.results[direction]
            res.digests_checked += 1
            if nbytes is not None and int(nbytes) != res.bytes:
                self.fail("digest-match", c.name, c.epoch, fr,
                          f"{direction}: {label} digest covers {nbytes} bytes, the wire stream has "
                          f"{res.bytes} contiguous bytes")
            elif sha is not None and sha != res.sha256:
                self.fail("digest-match", c.name, c.epoch, fr,
                          f"{direction}: {label} SHA-256 {str(sha)[:16]}… differs from the wire "
                          f"stream's {res.sha256[:16]}… ({res.bytes} bytes)")


def verify_capture(path: str | os.PathLike[str], *,
                   expected_digests: dict[str, Any] | None = None) -> VerifyReport:
    """Check a capture (see the module docstring).  ``expected_digests``:
    ``{conn: {direction: sha256 | (bytes, sha256) | {"bytes": n, "sha256": hex}}}`` in addition
    to the ``stream-digest`` events recorded in the capture.  Raises :class:`CaptureError` when
    the file is not a readable pcapng capture."""
    frames, tail = _read(path)
    v = _Verifier(str(path), expected_digests)
    v.report.frames = len(frames)
    for number, cf in enumerate(frames, 1):
        for note in cf.notes:
            _ts, _, text = note.partition(" ")
            ev = parse_event(text)
            if ev is not None:
                v.on_event(ev, number)
        v.on_frame(number, cf)
    for _ts, text in tail:
        ev = parse_event(text)
        if ev is not None:
            v.on_event(ev, len(frames))
    v.finish()
    v.report.failures.sort(key=lambda f: (f.frame_number or 0, RULES.index(f.rule)
                                          if f.rule in RULES else 99))
    return v.report


def render_verify(report: VerifyReport) -> str:
    """A human-readable report: per connection and direction, the handoffs, the failures."""
    lines = [f"capture {report.path}: {report.frames} frames ({report.tcp_frames} TCP), "
             f"{report.events} events"]
    if report.fragments:
        lines.append(f"  IPv4 fragments: {report.fragments} (reassembled before the checks)")
    if report.ignored:
        lines.append("  ignored: " + ", ".join(f"{k}={v}" for k, v in sorted(report.ignored.items())))
    for name, cr in sorted(report.connections.items()):
        n_term = sum(1 for h in cr.handoffs if h.get("event") == "terminate-complete")
        lines.append(f"  {name}  offloads={cr.epochs} terminates={n_term}")
        for d, r in cr.directions.items():
            if not r.frames:
                continue
            lines.append(
                f"    {d:10s} {r.bytes:>12,d} B  frames={r.frames} data={r.data_frames} "
                f"retrans={r.retransmitted_bytes} B target={r.data_bytes_from_target} B "
                f"rst={r.rsts} (late {r.late_rsts}) holes={len(r.holes)} digests={r.digests_checked} "
                f"sha256={r.sha256[:16]}")
    if report.failures:
        lines.append(f"FAIL: {len(report.failures)} rule violation(s):")
        lines += [f"  {f}" for f in report.failures]
    else:
        lines.append("OK: every rule holds (" + ", ".join(report.rules_checked) + ")")
    return "\n".join(lines)
