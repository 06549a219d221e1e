"""Test support for the miniport tests (no tests here).

``FakeDataPathTable`` implements the data-path contract of docs/internals.md ("The data path")
in Python, in the simplest way that is faithful at the interface: the table API comes from the
pure-Python twin, frames are parsed and built with the tcpip codecs, in-order data and
cumulative ACKs are processed, nothing is retransmitted and there are no timers.  It lets the
miniport's NDIS logic be tested before (and independently of) the C data path; the same tests
run against the real table when ``offload_target.table.HAS_DATAPATH`` is true.

``Rig`` wires host (``ndis.fakes.ScriptedHost``) -> NDIS with a strict conformance checker ->
``OffloadTarget`` and offers a peer that builds frames with the tcpip codecs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ndis import ConformanceChecker, Ndis
from ndis.fakes import ScriptedHost, sample_states
from offload_target import pytable
from offload_target import table as table_mod
from offload_target.miniport import (
    EVENT_DATA,
    EVENT_FIN,
    EVENT_FIN_ACKED,
    EVENT_PUSH,
    EVENT_RETRIEVE,
    EVENT_RST,
    EVENT_SEND_ACKED,
    FRAME_CONSUMED,
    FRAME_NOT_OURS,
    FRAME_PASS_UP,
    OffloadTarget,
)
from tcpip.errors import DecodeError
from tcpip.ethernet import build_ethernet, parse_ethernet
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

NIC_MAC = bytes.fromhex("02000000aa01")
PEER_MAC = bytes.fromhex("020000000001")  # sample_states' DlDestinationAddress
LOCAL_IP = bytes([198, 18, 0, 2])
REMOTE_IP = bytes([198, 18, 0, 1])
REMOTE_PORT = 7
SEQ = 1 << 32


@dataclass
class _Conn:
    activated: bool = False
    terminating: bool = False
    closed: bool = False
    send_buf: bytearray = field(default_factory=bytearray)  # from SndUna: unacked, then unsent
    acked: int = 0
    snd_una: int = 0
    snd_nxt: int = 0
    snd_max: int = 0
    rcv_nxt: int = 0
    rcv_buf: bytearray = field(default_factory=bytearray)
    fin_requested: bool = False
    fin_sent: bool = False
    fin_seq: int = 0
    fin_acked: bool = False
    owe_ack: bool = False
    local_mac: bytes = b""
    remote_mac: bytes = b""
    state: int = 4
    route: dict[str, Any] = field(default_factory=dict)


class FakeDataPathTable:
    """The data-path contract in Python (see module docstring)."""

    def __init__(self, capacity: int, *, send_buffer: int = 1 << 20, receive_buffer: int = 1 << 20,
                 mss: int = 1460) -> None:
        self.t = pytable.ConnectionTable(capacity)
        self.conns: dict[int, _Conn] = {}
        self.config: dict[str, Any] = {}
        self.send_buffer = send_buffer
        self.receive_buffer = receive_buffer
        self.mss = mss
        self._events: list[tuple[int, int, int]] = []
        self.calls: list[tuple[Any, ...]] = []

    # -- the table API (delegated to the twin) ------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.t.capacity

    def __len__(self) -> int:
        return len(self.t)

    def insert(self, *key: Any) -> int:
        h = self.t.insert(*key)
        self.conns[h] = _Conn()
        return h

    def lookup(self, *key: Any) -> int | None:
        return self.t.lookup(*key)

    def remove(self, handle: int) -> None:
        self.calls.append(("remove", handle))
        self.t.remove(handle)
        self.conns.pop(handle, None)

    def set_fields(self, handle: int, **fields: int) -> None:
        self.t.set_fields(handle, **{k: v for k, v in fields.items() if k in pytable.FIELDS})

    def get_field(self, handle: int, name: str) -> int:
        c = self.conns.get(handle)
        if name == "RcvNxt" and c is not None and c.activated:
            return c.rcv_nxt  # (the fake keeps the live value)
        return self.t.get_field(handle, name)

    def get_state(self, handle: int) -> dict[str, int]:
        return self.t.get_state(handle)

    def handles(self) -> Any:
        return self.t.handles()

    # -- the data path ------------------------------------------------------------------------
    def configure(self, **kw: Any) -> None:
        self.config.update(kw)

    def activate(self, handle: int, *, local_mac: bytes, remote_mac: bytes, vlan_id: int = 0,
                 ttl: int = 64, tos: int = 0, path_mtu: int = 1500, now_ticks: int) -> None:
        c = self.conns[handle]
        c.activated = True
        c.local_mac, c.remote_mac = local_mac, remote_mac
        c.snd_una = self.t.get_field(handle, "SndUna")
        c.snd_nxt = self.t.get_field(handle, "SndNxt")
        c.snd_max = self.t.get_field(handle, "SndMax")
        c.rcv_nxt = self.t.get_field(handle, "RcvNxt")
        c.state = self.t.get_field(handle, "State")
        self.calls.append(("activate", handle, local_mac, remote_mac, vlan_id, path_mtu))

    def set_route(self, handle: int, **kw: Any) -> None:
        self.conns[handle].route = kw
        self.calls.append(("set_route", handle, kw))

    def is_active(self, handle: int) -> bool:
        c = self.conns.get(handle)
        return bool(c is not None and c.activated)

    def set_receive_held(self, handle: int, nbytes: int) -> None:
        self.conns[handle].held = nbytes
        self.calls.append(("set_receive_held", handle, nbytes))

    def stop_sending(self, handle: int) -> None:
        self.conns[handle].stopped = True
        self.calls.append(("stop_sending", handle))

    def send_append(self, handle: int, data: bytes) -> int:
        c = self.conns[handle]
        n = max(0, min(len(data), self.send_buffer - len(c.send_buf)))
        c.send_buf += bytes(data[:n])
        return n

    def send_unacked(self, handle: int) -> int:
        return len(self.conns[handle].send_buf)

    def acked_total(self, handle: int) -> int:
        return self.conns[handle].acked

    def receive_take(self, handle: int, max_bytes: int = -1) -> bytes:
        c = self.conns[handle]
        n = len(c.rcv_buf) if max_bytes < 0 else min(max_bytes, len(c.rcv_buf))
        out = bytes(c.rcv_buf[:n])
        del c.rcv_buf[:n]
        return out

    def receive_available(self, handle: int) -> int:
        return len(self.conns[handle].rcv_buf)

    def receive_buffered(self, handle: int, data: bytes) -> None:
        c = self.conns[handle]
        if len(c.rcv_buf) + len(data) > self.receive_buffer:
            raise BufferError("receive buffer too small for BufferedData")
        c.rcv_buf += data

    def events(self) -> list[tuple[int, int, int]]:
        ev, self._events = self._events, []
        return ev

    def next_deadline(self) -> int | None:
        return None

    def process_frame(self, frame: bytes, now_ticks: int) -> int:
        try:
            eth = parse_ethernet(frame)
            if eth.ethertype != 0x0800:
                return FRAME_NOT_OURS
            ip = parse_ipv4(eth.payload)
            if ip.protocol != 6:
                return FRAME_NOT_OURS
            h = self.t.lookup(ip.dst, int.from_bytes(bytes(ip.payload[2:4]), "big"), ip.src,
                              int.from_bytes(bytes(ip.payload[0:2]), "big"))
            if h is None:
                return FRAME_NOT_OURS
            if ip.is_fragment or ip.has_options:
                return FRAME_PASS_UP
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
        except DecodeError:
            return FRAME_NOT_OURS
        c = self.conns[h]
        if c.terminating or c.closed:
            return FRAME_PASS_UP
        if seg.flags & TcpFlags.RST:
            if seg.seq == c.rcv_nxt:
                c.closed = True
                self._events.append((h, EVENT_RST, 0))
            return FRAME_CONSUMED
        if seg.flags & TcpFlags.ACK:
            adv = (seg.ack - c.snd_una) % SEQ
            limit = (c.snd_max - c.snd_una) % SEQ + (1 if c.fin_sent else 0)
            if 0 < adv <= limit:
                data_acked = min(adv, len(c.send_buf))
                del c.send_buf[:data_acked]
                c.acked += data_acked
                c.snd_una = seg.ack
                if (c.snd_nxt - c.snd_una) % SEQ > (c.snd_max - c.snd_una) % SEQ:
                    c.snd_nxt = c.snd_una
                if data_acked:
                    self._events.append((h, EVENT_SEND_ACKED, c.acked))
                if c.fin_sent and not c.fin_acked and seg.ack == (c.fin_seq + 1) % SEQ:
                    c.fin_acked = True
                    self._events.append((h, EVENT_FIN_ACKED, 0))
        if seg.payload and seg.seq == c.rcv_nxt:
            room = self.receive_buffer - len(c.rcv_buf)
            take = seg.payload[:room]
            c.rcv_buf += take
            c.rcv_nxt = (c.rcv_nxt + len(take)) % SEQ
            c.owe_ack = True
            self._events.append((h, EVENT_DATA, len(c.rcv_buf)))
            if seg.flags & TcpFlags.PSH and len(take) == len(seg.payload):
                self._events.append((h, EVENT_PUSH, c.rcv_nxt))
        if seg.flags & TcpFlags.FIN and (seg.seq + len(seg.payload)) % SEQ == c.rcv_nxt:
            c.rcv_nxt = (c.rcv_nxt + 1) % SEQ
            c.owe_ack = True
            self._events.append((h, EVENT_FIN, 0))
        return FRAME_CONSUMED

    def _frame(self, h: int, c: _Conn, seq: int, flags: TcpFlags, payload: bytes = b"") -> bytes:
        local_ip, lport, remote_ip, rport = self.t.get_key(h)
        seg = TcpSegment(lport, rport, seq, c.rcv_nxt, flags | TcpFlags.ACK, 65535, TcpOptions(),
                         payload)
        pkt = build_ipv4(local_ip, remote_ip, 6, build_tcp(seg, local_ip, remote_ip),
                         identification=0x8000)
        return build_ethernet(c.remote_mac, c.local_mac, 0x0800, pkt)

    def poll(self, now_ticks: int) -> list[bytes]:
        out: list[bytes] = []
        for h, c in self.conns.items():
            if not c.activated or c.closed:
                continue
            sent = (c.snd_max - c.snd_una) % SEQ
            while sent < len(c.send_buf):
                chunk = bytes(c.send_buf[sent:sent + self.mss])
                out.append(self._frame(h, c, (c.snd_una + sent) % SEQ, TcpFlags.PSH, chunk))
                sent += len(chunk)
                c.snd_max = c.snd_nxt = (c.snd_una + sent) % SEQ
                c.owe_ack = False
            if c.fin_requested and not c.fin_sent and sent == len(c.send_buf):
                c.fin_sent = True
                c.fin_seq = c.snd_max
                out.append(self._frame(h, c, c.fin_seq, TcpFlags.FIN))
                c.owe_ack = False
            if c.owe_ack:
                out += self.flush_acks(h)
        return out

    def disconnect(self, handle: int, graceful: bool, now_ticks: int) -> None:
        c = self.conns[handle]
        self.calls.append(("disconnect", handle, graceful))
        if graceful:
            c.fin_requested = True
        else:
            c.closed = True
            c.state = 0

    def set_terminating(self, handle: int) -> None:
        self.calls.append(("set_terminating", handle))
        self.conns[handle].terminating = True

    def flush_acks(self, handle: int) -> list[bytes]:
        c = self.conns[handle]
        self.calls.append(("flush_acks", handle))
        if not c.owe_ack:
            return []
        c.owe_ack = False
        return [self._frame(handle, c, c.snd_max if not c.fin_sent else (c.fin_seq + 1) % SEQ,
                            TcpFlags(0))]

    def export(self, handle: int, now_ticks: int) -> dict[str, Any]:
        c = self.conns[handle]
        self.calls.append(("export", handle))
        d: dict[str, Any] = {k: v for k, v in self.t.get_state(handle).items()
                             if k in ("State", "DelegatedFlags", "RcvWnd", "SndWnd", "MaxSndWnd",
                                      "SendWL1", "CWnd", "SsThresh", "SRtt", "RttVar", "TsRecent",
                                      "TsRecentAge", "TsTime", "TotalRT", "DupAckCount",
                                      "SndWndProbeCount", "KeepAliveProbeCount",
                                      "KeepAliveTimeoutDelta", "RetransmitCount",
                                      "RetransmitTimeoutDelta", "DWnd")}
        d.update(SndUna=c.snd_una, SndNxt=c.snd_nxt, SndMax=c.snd_max, RcvNxt=c.rcv_nxt,
                 send_data=bytes(c.send_buf), buffered=bytes(c.rcv_buf))
        return d

    # -- test hooks ----------------------------------------------------------------------------
    def raise_event(self, handle: int, event: int, value: int = 0) -> None:
        self._events.append((handle, event, value))

    def retrieve(self, handle: int, reason: int) -> None:
        self.raise_event(handle, EVENT_RETRIEVE, reason)


def real_table_available() -> bool:
    return bool(getattr(table_mod, "HAS_DATAPATH", False))


class Peer:
    """The remote end: builds frames to the NIC with the tcpip codecs."""

    def __init__(self, port: int, *, seq: int = 1000, ack: int = 5000) -> None:
        self.port = port
        self.seq = seq  # next byte we send (= the target's RcvNxt)
        self.ack = ack  # what we acknowledge (= the target's SndUna)

    def frame(self, flags: TcpFlags = TcpFlags.ACK, payload: bytes = b"", *, seq: int | None = None,
              ack: int | None = None) -> bytes:
        seg = TcpSegment(REMOTE_PORT, self.port, self.seq if seq is None else seq,
                         self.ack if ack is None else ack, flags, 65535, TcpOptions(), payload)
        pkt = build_ipv4(REMOTE_IP, LOCAL_IP, 6, build_tcp(seg, REMOTE_IP, LOCAL_IP))
        return build_ethernet(NIC_MAC, PEER_MAC, 0x0800, pkt)

    def data(self, payload: bytes, *, push: bool = True) -> bytes:
        f = self.frame(TcpFlags.ACK | (TcpFlags.PSH if push else TcpFlags(0)), payload)
        self.seq = (self.seq + len(payload)) % SEQ
        return f

    def ack_bytes(self, n: int) -> bytes:
        self.ack = (self.ack + n) % SEQ
        return self.frame()

    def fin(self) -> bytes:
        f = self.frame(TcpFlags.ACK | TcpFlags.FIN)
        self.seq = (self.seq + 1) % SEQ
        return f

    def rst(self) -> bytes:
        return self.frame(TcpFlags.RST | TcpFlags.ACK)


class Rig:
    """host (ScriptedHost) -> Ndis (strict checker) -> OffloadTarget(table)."""

    def __init__(self, capacity: int = 8, *, table: Any = None, accept: str | int = "all",
                 real: bool = False, strict: bool = True, **target_kw: Any) -> None:
        if table is None and not real:
            table = FakeDataPathTable(capacity)
        self.table = table
        self.checker = ConformanceChecker(strict=strict)
        self.ndis = Ndis(checker=self.checker)
        self.target = OffloadTarget(capacity, mac=NIC_MAC, table=table, **target_kw)
        self.handle = self.ndis.register_miniport(self.target, capabilities=self.target.capabilities)
        self.host = ScriptedHost(accept=accept)
        self.host.auto_upload = False
        self.binding = self.ndis.open_adapter(self.host, self.handle)
        self.now = 0.0
        self.wire: list[bytes] = []

    def run(self, rounds: int = 50, *, host_poll: bool = True) -> None:
        for _ in range(rounds):
            did = self.ndis.deliver_pending() > 0
            if host_poll and self.host.poll():
                did = True
            self.wire += self.target.poll(self.now)
            if not did and not self.ndis.has_pending():
                return
        raise RuntimeError("rig did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.run()

    def frame_in(self, frame: bytes) -> int:
        verdict = self.target.receive_frame(frame, self.now)
        self.run()
        return verdict

    def offload(self, port: int = 40000, *, send: list[bytes] | None = None,
                buffered: bytes = b"", labels: tuple[str, str, str] = ("N", "P", "T"),
                neighbor: Any = "new", path: Any = "new", snd_una: int = 5000,
                rcv_nxt: int = 1000) -> Any:
        from ndis.blocks import NET_BUFFER_LIST, link_nbls

        n, p, t = sample_states(port, rcv_nxt=rcv_nxt, snd_una=snd_una)
        chain = None
        if send:
            chain = link_nbls(NET_BUFFER_LIST(d, label=f"{labels[2]}-init{i}") for i, d in enumerate(send))
        if buffered:
            t.Delegated.BufferedData = NET_BUFFER_LIST(buffered, label=f"{labels[2]}-bufd")
        nb = n if neighbor == "new" else neighbor
        pa = p if path == "new" else path
        root = self.host.offload_connection(nb, pa, t, send_data=chain, labels=labels)
        self.run()
        return root

    def tcp(self, label: str = "T") -> Any:
        return self.target.find(label)

    def events(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.host.events if e[0] == name]
