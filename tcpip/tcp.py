"""Sans-IO TCP engine: one ``TcpConnection`` per connection (RFC 9293).

The engine knows nothing about IP, Ethernet, sockets or clocks.  The host stack feeds it parsed
segments with ``on_segment(seg, now)`` and calls ``poll(now)`` to collect everything it wants to
transmit (data, ACKs, retransmissions, probes, RSTs); ``next_deadline()`` says when ``poll`` has
timer work.  ``now`` is monotonic seconds with an arbitrary origin.

What is implemented (and where):

* RFC 9293 state machine incl. simultaneous open, both close orders, TIME-WAIT (2*MSL),
  segment acceptability (3.10.7.4) and trimming; every transition goes through ``_set_state``.
* RFC 6298 RTO (``tcp_rtt.RttEstimator``), Karn's algorithm, backoff, give-up.
* RFC 5681 / RFC 6582 NewReno (``tcp_congestion.NewReno``), RFC 3042 limited transmit.
* RFC 7323 window scale, timestamps (RTT from TSecr, TS.Recent rule, PAWS).
* Reassembly (``tcp_buffers.OutOfOrderQueue``), SACK blocks on our ACKs when negotiated; the
  peer's SACK blocks only serve to recognise duplicate ACKs (RFC 6675 section 2), recovery
  itself is NewReno.  RFC 8985 tail loss probes.
* Delayed ACK (with Linux-style quick-ACK at the start), Nagle (Minshall's variant, as Linux),
  receiver and sender SWS avoidance, persist/zero-window probes, keepalive, FIN-WAIT-2
  timeout, RFC 5961 challenge ACKs with a rate limit, rate-limited out-of-window ACKs.
* ``export_state`` / ``from_snapshot`` for handing the TCB to an offload target (``tcpip.tcb``).

Linux-compatible choices where the RFCs leave room: min RTO 200 ms, IW10, segments without a
timestamp are accepted after timestamps were negotiated, RST in TIME-WAIT closes
(tcp_rfc1337 = 0), zero-window probes are one octet of new data, keepalive probes carry no data,
pure ACKs use SND.MAX as SEG.SEQ (tcp_acceptable_seq), window updates on read only when the
offered window at least doubles.

Not implemented: urgent data (URG is ignored, the pointer is not delivered), ECN, SACK-based
loss recovery, PMTU changes after setup, TCP Fast Open, RFC 6191 TIME-WAIT assassination,
a SYN with data (the data is not acknowledged; the peer resends it).

Usage contract:

* ``on_segment`` never emits; call ``poll(now)`` after a batch of input, after ``send``,
  ``receive``, ``close`` or ``abort``, and at ``next_deadline()``.  ``next_deadline`` returns the
  last ``now`` seen while output is pending.  An idle ``poll`` is O(1).
* Export: delayed ACKs are not carried across a handoff (NDIS reference T.4).  Call
  ``poll(now)`` (so a pending fast retransmit or probe goes out), then ``flush_ack(now)`` and
  transmit its segments, then ``export_state(now)``; ``export_state`` raises ``ValueError``
  while an ACK is owed or outside ESTABLISHED / FIN-WAIT-1/2 / CLOSE-WAIT / CLOSING / LAST-ACK.
  After export the connection object must no longer be used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .addr import ip_str
from .seq import MASK, seq_add, seq_diff, seq_ge, seq_gt, seq_le, seq_lt
from .tcb import EXPORTABLE_STATES, TcbSnapshot, TcpState
from .tcp_buffers import NO_OUT_OF_ORDER, OutOfOrderQueue
from .tcp_congestion import NewReno
from .tcp_rtt import RttEstimator
from .tcp_segment import TcpFlags, TcpOptions, TcpSegment

__all__ = [
    "TcpState",
    "TcpConfig",
    "TcpCounters",
    "TcpConnection",
    "TcbSnapshot",
    "reset_for_segment",
    "is_listen_syn",
]

logger = logging.getLogger(__name__)

# ---- constants ---------------------------------------------------------------------------------

# RFC 9293 section 3.7.1 / RFC 1122 4.2.2.6: the default send MSS when the peer sends no MSS
# option (IPv4).
DEFAULT_REMOTE_MSS = 536
# Our interface MTU is 1500: 1500 - 20 (IPv4) - 20 (TCP) = 1460 (RFC 9293 3.7.1, MSS option).
MAX_MSS = 1460
# RFC 7323 section 3.2: the timestamp option takes 10 bytes, 12 with the usual 2 NOPs;
# RFC 9293 3.7.1: the effective send MSS is reduced by the option bytes on every segment.
TS_OPTION_LEN = 12
# RFC 7323 section 2.3: the shift count is at most 14.
MAX_WSCALE = 14
# RFC 7323 section 5.5: TS.Recent is invalid after 24 days of idleness (PAWS).
PAWS_IDLE_LIMIT = 24 * 24 * 3600.0
# Timestamp clock: 1 ms ticks (RFC 7323 section 5.4 allows 1 ms .. 1 s; Linux uses 1 ms).
TS_HZ = 1000
# RFC 9293 3.10.7.4 / RFC 7323 5.3: an unacceptable segment is answered with an ACK.  Linux
# (tcp_invalid_ratelimit, 500 ms) rate-limits those ACKs for pure ACKs to break ACK wars.
OOW_ACK_INTERVAL = 0.5
# RFC 8985 7.2: PTO = 2*SRTT, plus WCDelAckT (worst-case delayed ACK, 200 ms) when only one
# segment is in flight; Linux adds 2 ms (TCP_TIMEOUT_MIN) otherwise and we floor it at 10 ms.
TLP_WC_DELACK = 0.2
TLP_MIN_PTO = 0.01
# RFC 2018 section 3: with timestamps in every segment there is room for 3 SACK blocks.
SACK_BLOCKS_WITH_TS = 3
SACK_BLOCKS_NO_TS = 4

_FIN = int(TcpFlags.FIN)
_SYN = int(TcpFlags.SYN)
_RST = int(TcpFlags.RST)
_ACK = int(TcpFlags.ACK)

# Pre-built flag values (IntFlag construction is slow on the per-segment path).
F_ACK = TcpFlags.ACK
F_PSH_ACK = TcpFlags.PSH | TcpFlags.ACK
F_FIN_ACK = TcpFlags.FIN | TcpFlags.ACK
F_FIN_PSH_ACK = TcpFlags.FIN | TcpFlags.PSH | TcpFlags.ACK
F_SYN = TcpFlags.SYN
F_SYN_ACK = TcpFlags.SYN | TcpFlags.ACK
F_RST = TcpFlags.RST
F_RST_ACK = TcpFlags.RST | TcpFlags.ACK

S = TcpState
CLOSED = S.CLOSED
LISTEN = S.LISTEN
SYN_SENT = S.SYN_SENT
SYN_RECEIVED = S.SYN_RECEIVED
ESTABLISHED = S.ESTABLISHED
FIN_WAIT_1 = S.FIN_WAIT_1
FIN_WAIT_2 = S.FIN_WAIT_2
CLOSE_WAIT = S.CLOSE_WAIT
CLOSING = S.CLOSING
LAST_ACK = S.LAST_ACK
TIME_WAIT = S.TIME_WAIT

# ---- transition tables (RFC 9293 section 3.3.2 figure 5) ------------------------------------

# CLOSE call (RFC 9293 3.10.4): state -> next state.  States absent from the table: no-op.
CLOSE_TRANSITIONS: dict[TcpState, TcpState] = {
    ESTABLISHED: FIN_WAIT_1,
    CLOSE_WAIT: LAST_ACK,
}
# Our FIN acknowledged (3.10.7.4 "fifth, check the ACK field").
FIN_ACKED_TRANSITIONS: dict[TcpState, TcpState] = {
    FIN_WAIT_1: FIN_WAIT_2,
    CLOSING: TIME_WAIT,
    LAST_ACK: CLOSED,
}
# Peer's FIN consumed in sequence (3.10.7.4 "eighth, check the FIN bit").
FIN_RECEIVED_TRANSITIONS: dict[TcpState, TcpState] = {
    SYN_RECEIVED: CLOSE_WAIT,
    ESTABLISHED: CLOSE_WAIT,
    FIN_WAIT_1: CLOSING,
    FIN_WAIT_2: TIME_WAIT,
}
# ABORT call (3.10.5): states in which a RST is sent.
ABORT_SENDS_RST = frozenset({SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT})
# States in which received segment text is delivered (3.10.7.4 "seventh").
RECEIVE_TEXT_STATES = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
# States in which the application may queue data (3.10.2 SEND).
SEND_STATES = frozenset({SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT})
# States in which we transmit data / our FIN.
OUTPUT_STATES = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK})
# States whose timers include keepalive (Linux: established-like states).
KEEPALIVE_STATES = frozenset({ESTABLISHED, CLOSE_WAIT})
SYNCHRONIZED_STATES = frozenset(
    {ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT}
)


# ---- configuration and counters --------------------------------------------------------------


@dataclass(slots=True)
class TcpConfig:
    mss: int = MAX_MSS  # MSS we advertise (clamped to MAX_MSS)
    send_buffer: int = 1 << 20
    receive_buffer: int = 1 << 20
    window_scaling: bool = True  # RFC 7323 section 2
    wscale: int | None = None  # our shift; None = smallest that covers receive_buffer
    timestamps: bool = True  # RFC 7323 section 3
    sack_permitted: bool = False  # RFC 2018: advertise SACK-permitted
    nodelay: bool = False  # disable Nagle (RFC 9293 3.7.4)
    delayed_ack: float = 0.04  # RFC 9293 3.8.6.3 / RFC 1122: < 0.5 s; Linux 40 ms min
    ack_frequency: int = 2  # RFC 9293 3.8.6.3: ACK at least every 2nd full-sized segment
    initial_rto: float = 1.0  # RFC 6298 (2.1)
    min_rto: float = 0.2  # RFC 6298 (2.4) says 1 s; Linux uses 200 ms
    max_rto: float = 60.0  # RFC 6298 (2.5): at least 60 s
    max_retransmissions: int = 15  # RFC 9293 3.8.3 R2 (Linux tcp_retries2 = 15)
    max_syn_retransmissions: int = 6  # RFC 9293 3.8.3 R2 for SYN (Linux tcp_syn_retries = 6)
    initial_window: int = 10  # segments, RFC 6928 (Linux IW10)
    limited_transmit: bool = True  # RFC 3042
    tail_loss_probe: bool = True  # RFC 8985 section 7 (TLP; Linux tcp_early_retrans = 3)
    msl: float = 30.0  # RFC 9293 3.4.2 (TIME-WAIT = 2*MSL); Linux uses 60 s TIME-WAIT
    # Linux TCP_MAX_QUICKACKS: the first data segments of a connection are ACKed at once
    # (bounded by RCV.WND / (2 * MSS)) so the sender's slow start is not slowed by delayed ACKs.
    quickack: int = 16
    keepalive: bool = False  # RFC 9293 3.8.4 / RFC 1122 4.2.3.6: off by default
    keepalive_idle: float = 7200.0  # RFC 1122 4.2.3.6: >= 2 hours
    keepalive_interval: float = 75.0  # Linux tcp_keepalive_intvl
    keepalive_probes: int = 9  # Linux tcp_keepalive_probes
    fin_wait_2_timeout: float = 60.0  # Linux tcp_fin_timeout
    persist_min: float = 0.2  # lower bound of the persist interval (Linux TCP_RTO_MIN)
    challenge_ack_limit: int = 100  # RFC 5961 section 7: per challenge_ack_interval
    challenge_ack_interval: float = 1.0
    # Segmentation offload (TSO): when the device below cuts segments at the MSS itself
    # (vnic.vnet on a TAP), new data may leave in segments of up to this many bytes, a whole
    # multiple of the MSS.  0 = every segment is at most one MSS (no offload).  Retransmissions
    # are always MSS-sized.
    tso_max: int = 0
    # At most this many segments of new or resent data per ``poll()`` (0 = no limit).  The run
    # loop writes a poll's frames only when it returns, so building a long burst (about 15 us
    # per segment here) delays the burst's first frame on the wire by the time the rest takes;
    # with a limit the rest follows on the next pass, after the loop has written these and
    # read what arrived meanwhile (the same idea as Linux's TCP small queues).
    burst_segments: int = 16


@dataclass(slots=True)
class TcpCounters:
    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0  # payload bytes received (all segments)
    bytes_out: int = 0  # payload bytes sent (incl. retransmissions)
    retransmissions: int = 0  # segments sent again (timeout, fast retransmit, go-back-N)
    fast_retransmits: int = 0
    timeouts: int = 0  # retransmission timer expiries
    rsts_in: int = 0  # RSTs that reset the connection
    rsts_out: int = 0
    dup_acks: int = 0
    challenge_acks: int = 0
    zero_window_probes: int = 0
    keepalive_probes: int = 0
    ooo_segments: int = 0
    paws_drops: int = 0
    unacceptable_segments: int = 0
    tail_loss_probes: int = 0


# ---- helpers for segments that belong to no connection ---------------------------------------


def reset_for_segment(seg: TcpSegment) -> TcpSegment | None:
    """The RST answering ``seg`` when no connection exists (RFC 9293 3.10.7.1, CLOSED state).

    Returns ``None`` for an incoming RST (never answer a RST).  Ports are swapped; the stack
    swaps the addresses.
    """
    flags = int(seg.flags)
    if flags & _RST:
        return None
    if flags & _ACK:
        return TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, F_RST, 0, TcpOptions())
    return TcpSegment(
        seg.dst_port,
        seg.src_port,
        0,
        seq_add(seg.seq, seg.seg_len),
        F_RST_ACK,
        0,
        TcpOptions(),
    )


def is_listen_syn(seg: TcpSegment) -> bool:
    """True if a LISTEN socket should accept ``seg`` (RFC 9293 3.10.7.2: SYN, no RST, no ACK).

    For other segments in LISTEN: RST -> ignore; ACK -> ``reset_for_segment``; else drop.
    """
    flags = int(seg.flags)
    return bool(flags & _SYN) and not flags & (_RST | _ACK)


def _check_snapshot(snap: TcbSnapshot) -> None:
    """Reject a TCB that cannot be continued (e.g. corrupt state handed back by a target)."""
    if snap.state not in EXPORTABLE_STATES:
        raise ValueError(f"cannot import a connection in state {snap.state}")
    una, nxt, mx = snap.snd_una, snap.snd_nxt, snap.snd_max
    if not (seq_le(una, nxt) and seq_le(nxt, mx)):
        raise ValueError("need SndUna <= SndNxt <= SndMax")
    span = seq_diff(mx, una)
    fin_sent = snap.fin_queued and snap.fin_seq is not None and seq_gt(mx, snap.fin_seq)
    # T.3: [SndUna, SndMax) must lie inside the handed-over send data (+1 for a sent FIN, +1
    # for a zero-window probe byte that may lie beyond the data).
    if span > len(snap.send_data) + (1 if fin_sent else 0) + 1:
        raise ValueError("SndMax lies beyond the send data")
    if snap.fin_queued:
        if snap.fin_seq is None:
            raise ValueError("fin_queued without fin_seq")
        if seq_gt(una, snap.fin_seq):  # our FIN is acknowledged: no data may remain
            if snap.send_data:
                raise ValueError("send data after an acknowledged FIN")
        elif seq_diff(snap.fin_seq, una) != len(snap.send_data):
            raise ValueError("the FIN must directly follow the send data")
    if not 0 <= snap.snd_wscale <= MAX_WSCALE or not 0 <= snap.rcv_wscale <= MAX_WSCALE:
        raise ValueError("window scale out of range")
    if snap.remote_mss <= 0 or snap.cwnd < 0 or snap.snd_wnd < 0 or snap.rcv_wnd < 0:
        raise ValueError("negative or zero size in the TCB")


_IP_NAMES: dict[bytes, str] = {}


def _conn_name(local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int) -> str:
    """``four_tuple`` with the address strings cached (a host talks to few addresses; building
    them with ``ipaddress`` cost more than the rest of a connection's construction)."""
    names = _IP_NAMES
    lip = names.get(local_ip)
    rip = names.get(remote_ip)
    if lip is None or rip is None:
        if len(names) >= 4096:  # bounded: many peers just means more misses
            names.clear()
        lip = names[bytes(local_ip)] = ip_str(local_ip)
        rip = names[bytes(remote_ip)] = ip_str(remote_ip)
    return f"{lip}:{local_port} -> {rip}:{remote_port}"


def _auto_wscale(buffer: int) -> int:
    shift = 0
    while shift < MAX_WSCALE and (0xFFFF << shift) < buffer:
        shift += 1
    return shift


# ---- the connection ----------------------------------------------------------------------------


class TcpConnection:
    """One TCP connection (a TCB plus its buffers and timers).  Build with ``connect``,
    ``accept`` or ``from_snapshot``."""

    # Slots, not an instance dict: a connection has ~90 attributes, past what a key-sharing
    # instance dict holds, so each connection carried a dict of its own (re-sized twice while
    # being filled) and every attribute access hashed into it.  With slots an access is a fixed
    # offset, and from_snapshot (run once per connection of a terminate tree, d.3) writes ~90
    # of them.  "__weakref__": observers may hold connections weakly.
    __slots__ = (
        "cc", "config", "counters", "eof_received", "error", "irs", "iss", "keepalive",
        "keepalive_idle", "keepalive_interval", "keepalive_probe_count", "keepalive_probes",
        "local_ip", "local_port", "max_snd_wnd", "name", "nodelay", "on_state_change",
        "persist_backoff", "rcv_nxt", "rcv_wscale", "remote_ip", "remote_mss", "remote_port",
        "reset_received", "retransmit_count", "rtt", "sack_enabled", "snd_max", "snd_nxt",
        "snd_una", "snd_wl1", "snd_wl2", "snd_wnd", "snd_wscale", "state", "ts_enabled",
        "ts_recent",
        "_ack_now", "_adv_mss", "_challenge_count", "_challenge_start", "_close_deadline",
        "_close_pending", "_ctl", "_delack_deadline", "_dirty", "_fin_queued", "_fin_seq",
        "_force_send", "_ka_deadline", "_last_ack_sent", "_now", "_ooo", "_ooo_fin", "_oow_last",
        "_our_wscale", "_peer_sent_wscale", "_persist_deadline", "_persist_unanswered", "_pto",
        "_pto_backstop", "_quickacks", "_rbuf", "_rbuf_limit", "_rcv_adv", "_rcv_adv_wire",
        "_rcv_mss", "_rcv_mss_est", "_retransmit_head", "_rt_start", "_rto_deadline", "_rtt_seq",
        "_rtt_time", "_sack_high", "_sbuf", "_sbuf_limit", "_sbuf_seq", "_smss", "_snd_sml",
        "_syn_pending", "_tlp_high", "_tlp_pending", "_ts_offset", "_ts_recent_time",
        "_unacked_bytes",
        "__weakref__",
    )

    def __init__(
        self,
        config: TcpConfig,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        now: float,
        ts_offset: int | None = None,
    ) -> None:
        self.config = config
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.name = _conn_name(local_ip, local_port, remote_ip, remote_port)
        self.counters = TcpCounters()
        self.state = CLOSED
        self.eof_received = False
        self.reset_received = False
        self.error: str | None = None
        # Called with (connection, old, new) after each state change (the stack may hook it).
        self.on_state_change: Callable[[TcpConnection, TcpState, TcpState], None] | None = None
        self._now = now

        iss &= MASK
        self.iss = iss
        self.irs = 0
        # send sequence space (RFC 9293 3.3.1) + SND.MAX (highest sent, BSD/NDIS)
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        # receive sequence space.  _rcv_adv: right edge we mean to offer (RCV.NXT + RCV.WND,
        # exact); _rcv_adv_wire: the furthest edge the peer was told, after rounding to the
        # window scale (what it may fill; at most 2**rcv_wscale - 1 beyond _rcv_adv).
        self.rcv_nxt = 0
        self._rcv_adv = 0
        self._rcv_adv_wire = 0
        self._last_ack_sent = 0

        # buffers
        self._sbuf = bytearray()  # data from _sbuf_seq (== SND.UNA once the SYN is acked)
        self._sbuf_seq = seq_add(iss, 1)
        self._sbuf_limit = max(1, config.send_buffer)
        self._rbuf = bytearray()  # in-order data not yet taken by the application
        self._rbuf_limit = max(1, config.receive_buffer)
        self._ooo = NO_OUT_OF_ORDER  # (a queue of its own with the first segment held)
        self._ooo_fin: int | None = None  # sequence number of a FIN seen out of order

        # FIN bookkeeping
        self._fin_queued = False
        self._fin_seq = 0
        self._close_pending = False  # close() in SYN-RECEIVED: FIN after the handshake

        # negotiated options
        self._adv_mss = min(config.mss, MAX_MSS)
        self.remote_mss = DEFAULT_REMOTE_MSS
        if config.window_scaling:
            ws = config.wscale if config.wscale is not None else _auto_wscale(self._rbuf_limit)
            self._our_wscale = max(0, min(ws, MAX_WSCALE))
        else:
            self._our_wscale = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self._peer_sent_wscale = False
        self.ts_enabled = False
        self.sack_enabled = False
        self._ts_offset = (iss if ts_offset is None else ts_offset) & MASK
        self.ts_recent = 0
        self._ts_recent_time: float | None = None
        self._smss = DEFAULT_REMOTE_MSS
        self._rcv_mss = self._adv_mss
        self._rcv_mss_est = DEFAULT_REMOTE_MSS
        self.nodelay = config.nodelay
        self.keepalive = config.keepalive
        self.keepalive_idle = config.keepalive_idle
        self.keepalive_interval = config.keepalive_interval
        self.keepalive_probes = config.keepalive_probes

        # RTT, RTO and congestion control
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.cc = NewReno(self._smss, config.initial_window, iss)
        self._rtt_seq: int | None = None  # Karn timing (no timestamps): seq being timed
        self._rtt_time = 0.0
        self.retransmit_count = 0  # consecutive RTO expiries for the current SND.UNA
        self._rt_start: float | None = None  # first retransmission of the current segment
        self._retransmit_head = False  # fast retransmit / partial ACK: resend at SND.UNA
        self._snd_sml = iss  # end of the last small segment sent (Minshall's Nagle)

        # timers (absolute deadlines; None = stopped)
        self._rto_deadline: float | None = None
        self._pto = False  # _rto_deadline is a tail loss probe timeout (RFC 8985 7.2)
        self._pto_backstop = 0.0  # when the real RTO would expire while a PTO is armed
        self._tlp_high: int | None = None  # SND.MAX when the last probe was sent (one per tail)
        self._sack_high: int | None = None  # highest right edge of a peer SACK block (RFC 6675)
        self._tlp_pending = False
        self._persist_deadline: float | None = None
        self._delack_deadline: float | None = None
        self._ka_deadline: float | None = None
        self._close_deadline: float | None = None  # FIN-WAIT-2 timeout or TIME-WAIT 2*MSL
        self.persist_backoff = 0
        self._persist_unanswered = 0
        self._force_send = False  # persist expiry with an open window: SWS override
        self.keepalive_probe_count = 0

        # output state
        # segments built outside poll (RST, probes); the empty tuple until the first one
        # (_queue_control: most connections never have one)
        self._ctl: list[TcpSegment] | tuple[()] = ()
        self._dirty = False  # something may be sendable: run the output routine
        self._ack_now = False
        self._syn_pending = False
        self._unacked_bytes = 0  # in-order bytes received since our last ACK
        self._quickacks = 0  # Linux quick-ACK mode: ACK the next N data segments at once
        self._challenge_start = -1e18
        self._challenge_count = 0
        self._oow_last = -1e18

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        config: TcpConfig,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        now: float,
        *,
        ts_offset: int | None = None,
    ) -> TcpConnection:
        """Active open (RFC 9293 3.10.1): the SYN is returned by the next ``poll``."""
        c = cls(config, local_ip, local_port, remote_ip, remote_port, iss, now, ts_offset)
        c._set_state(SYN_SENT)
        c._syn_pending = True
        return c

    @classmethod
    def accept(
        cls,
        config: TcpConfig,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        syn: TcpSegment,
        now: float,
        *,
        ts_offset: int | None = None,
    ) -> TcpConnection:
        """Passive open: a listener got ``syn`` (see ``is_listen_syn``).  The connection starts
        in SYN-RECEIVED (RFC 9293 3.10.7.2) and the next ``poll`` returns the SYN-ACK.
        Data on the SYN is not accepted (the peer retransmits it after the handshake)."""
        c = cls(config, local_ip, local_port, remote_ip, remote_port, iss, now, ts_offset)
        c.counters.segments_in += 1
        c._set_state(LISTEN)
        c._negotiate(syn, now, passive=True)
        c.irs = syn.seq
        c.rcv_nxt = seq_add(syn.seq, 1)
        c._last_ack_sent = c.rcv_nxt
        c._rcv_adv = c._rcv_adv_wire = seq_add(c.rcv_nxt, c._syn_window())
        c.snd_wnd = syn.window  # RFC 7323 2.2: the window in a SYN is never scaled
        c.max_snd_wnd = c.snd_wnd
        c.snd_wl1 = syn.seq
        c.snd_wl2 = 0
        c._set_state(SYN_RECEIVED)
        c._syn_pending = True
        return c

    @classmethod
    def from_snapshot(
        cls, snap: TcbSnapshot, config: TcpConfig, now: float, *, name: str | None = None,
        take_buffers: bool = False, log_info: bool | None = None,
    ) -> TcpConnection:
        """Rebuild a live connection from an exported TCB (upload from an offload target).

        The next segment continues at ``snap.snd_nxt``; the retransmission, persist, keepalive
        and FIN-WAIT-2 timers restart from their deltas; the timestamp clock continues at
        ``snap.ts_time`` (NDIS reference T.6).  ``name`` is the connection's 4-tuple string
        when the caller has it already (it must equal ``four_tuple`` of the snapshot's
        addresses).

        The snapshot is checked (``_check_snapshot``), then every attribute ``__init__`` sets is
        written exactly once with its imported value (``__init__`` is not run: a connection
        resumed in bulk, e.g. 10,000 in one terminate tree, pays for one construction, not
        for a default one and then the import).  tests/unit/tcp_engine/test_export_import.py
        checks that this sets the same attributes as ``__init__`` and the same values as
        constructing and then overwriting.

        ``log_info``: whether this module's logger has INFO enabled, when the caller checked
        it once for a batch (None: checked here); it decides the state-change log line."""
        _check_snapshot(snap)  # the target's values are checked before anything is built
        state = snap.state
        una = snap.snd_una
        snd_nxt = snap.snd_nxt
        snd_max = snap.snd_max
        sd = snap.send_data
        n_sd = len(sd)
        fin_queued = snap.fin_queued
        fin_seq = snap.fin_seq
        snd_wscale = snap.snd_wscale
        rcv_wscale = snap.rcv_wscale
        remote_mss = snap.remote_mss
        snd_wnd = snap.snd_wnd
        rcv_wnd = snap.rcv_wnd
        c = cls.__new__(cls)
        iss = snap.iss & MASK
        # ---- as __init__, in its order
        c.config = config
        c.local_ip = snap.local_ip
        c.local_port = snap.local_port
        c.remote_ip = snap.remote_ip
        c.remote_port = snap.remote_port
        c.name = name if name is not None else _conn_name(
            snap.local_ip, snap.local_port, snap.remote_ip, snap.remote_port)
        c.counters = TcpCounters()
        c.state = CLOSED  # -> snap.state at the end (as _set_state: its log line)
        c.eof_received = snap.fin_received
        c.reset_received = False
        c.error = None
        c.on_state_change = None
        c._now = now
        c.iss = iss
        c.irs = snap.irs
        c.snd_una = una
        c.snd_nxt = snd_nxt
        c.snd_max = snd_max
        c.snd_wnd = snd_wnd
        max_snd_wnd = snap.max_snd_wnd
        c.max_snd_wnd = max_snd_wnd if max_snd_wnd > snd_wnd else snd_wnd
        c.snd_wl1 = snap.snd_wl1
        c.snd_wl2 = snap.snd_wl2
        c.rcv_nxt = rcv_nxt = snap.rcv_nxt
        c._rcv_adv = c._rcv_adv_wire = (rcv_nxt + rcv_wnd) & MASK  # (rcv_wnd >= 0: checked)
        c._last_ack_sent = rcv_nxt
        # take_buffers: the caller hands over bytearrays nobody else holds (the upload path,
        # where the send data can be megabytes): used as the buffers, not copied
        rd = snap.buffered_receive
        c._sbuf = sd if take_buffers and type(sd) is bytearray else bytearray(sd)
        c._sbuf_seq = una
        send_buffer = config.send_buffer
        lim = send_buffer if send_buffer > n_sd else n_sd
        c._sbuf_limit = lim if lim > 1 else 1
        c._rbuf = rd if take_buffers and type(rd) is bytearray else bytearray(rd)
        lim = snap.initial_rcv_wnd
        c._rbuf_limit = lim if lim > 1 else 1
        c._ooo = NO_OUT_OF_ORDER
        c._ooo_fin = None
        c._fin_queued = fin_queued
        c._fin_seq = fin_seq if fin_queued else 0  # type: ignore[assignment]  # checked
        c._close_pending = False
        adv_mss = config.mss
        c._adv_mss = adv_mss = adv_mss if adv_mss < MAX_MSS else MAX_MSS
        c.remote_mss = remote_mss
        c._our_wscale = rcv_wscale
        c.snd_wscale = snd_wscale
        c.rcv_wscale = rcv_wscale
        c._peer_sent_wscale = False
        c.ts_enabled = ts = snap.timestamps_enabled
        c.sack_enabled = snap.sack_enabled
        c._ts_offset = (snap.ts_time - int(now * TS_HZ)) & MASK
        c.ts_recent = snap.ts_recent
        c._ts_recent_time = None if snap.ts_recent_age is None else now - snap.ts_recent_age
        # as _update_mss
        opt = TS_OPTION_LEN if ts else 0
        smss = (remote_mss if remote_mss < adv_mss else adv_mss) - opt
        c._smss = smss = smss if smss > 1 else 1
        rcv_mss = adv_mss - opt
        c._rcv_mss = rcv_mss = rcv_mss if rcv_mss > 1 else 1
        c._rcv_mss_est = smss if smss < rcv_mss else rcv_mss
        c.nodelay = snap.nodelay
        c.keepalive = snap.keepalive
        c.keepalive_idle = snap.keepalive_idle
        c.keepalive_interval = snap.keepalive_interval
        c.keepalive_probes = snap.keepalive_probes
        c.rtt = rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        if snap.srtt is not None:
            rtt.srtt = snap.srtt
            rtt.rttvar = snap.rttvar if snap.rttvar is not None else snap.srtt / 2
        rtt.rto = min(max(snap.rto, rtt.min_rto), rtt.max_rto)
        rtt.backoff = snap.retransmit_count
        c.cc = cc = NewReno(smss, config.initial_window, iss)
        cc.cwnd = max(snap.cwnd, smss)
        cc.ssthresh = snap.ssthresh
        cc.dup_acks = snap.dup_ack_count
        cc.in_recovery = snap.in_recovery
        cc.recover = snap.recover
        c._rtt_seq = None
        c._rtt_time = 0.0
        c.retransmit_count = snap.retransmit_count
        c._rt_start = now - snap.total_rt if snap.retransmit_count else None
        c._retransmit_head = False
        c._snd_sml = una
        # timers: restart from the deltas
        d = snap.retransmit_timeout_delta
        if d is not None:
            c._rto_deadline = now + (d if d > 0.0 else 0.0)
        elif snd_nxt != una:
            # A connection with data in flight always has a retransmission timer (RFC 6298 5.1).
            c._rto_deadline = now + rtt.current_rto()
        else:
            c._rto_deadline = None
        c._pto = False
        c._pto_backstop = 0.0
        c._tlp_high = None
        c._sack_high = None
        c._tlp_pending = False
        d = snap.persist_timeout_delta
        c._persist_deadline = None if d is None else now + (d if d > 0.0 else 0.0)
        c._delack_deadline = None
        d = snap.keepalive_timeout_delta
        if d is not None:
            c._ka_deadline = now + (d if d > 0.0 else 0.0)
        elif snap.keepalive and state in KEEPALIVE_STATES:
            c._ka_deadline = now + snap.keepalive_idle
        else:
            c._ka_deadline = None
        d = snap.fin_wait_2_timeout_delta
        c._close_deadline = None if d is None else now + (d if d > 0.0 else 0.0)
        c.persist_backoff = snap.snd_wnd_probe_count
        c._persist_unanswered = 0
        c._force_send = False
        c.keepalive_probe_count = snap.keepalive_probe_count
        c._ctl = ()
        # unsent data (or a FIN not sent yet) is sent as soon as the connection is polled, if
        # the windows allow, rather than when the next ACK or timer comes
        c._dirty = n_sd > ((snd_nxt - una) & MASK) or (fin_queued and snd_max == fin_seq)
        c._ack_now = False
        c._syn_pending = False
        c._unacked_bytes = 0
        c._quickacks = 0
        c._challenge_start = -1e18
        c._challenge_count = 0
        c._oow_last = -1e18
        # ---- as _set_state(state) from CLOSED (state is exportable, never CLOSED; no
        # on_state_change hook yet): its one INFO line, only when that level is on (the call
        # itself costs, in a resume of 10,000 connections)
        if log_info is None:
            log_info = logger.isEnabledFor(logging.INFO)
        if log_info:
            logger.debug("%s: imported (TCB handed back)", c.name)
            logger.info("%s: %s -> %s", c.name, CLOSED, state)
        c.state = state
        return c

    # ---- public API --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    def send_space(self) -> int:
        st = self.state
        if not (st is ESTABLISHED or st in SEND_STATES) or self._fin_queued or self._close_pending:
            return 0
        return max(0, self._sbuf_limit - len(self._sbuf))

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue ``data``; returns the number of bytes accepted (0 when the buffer is full or
        the connection can no longer send: after close(), in closing states, after a reset)."""
        space = self.send_space()
        if space <= 0 or not data:
            return 0
        n = len(data)
        if n > space:
            self._sbuf += memoryview(data)[:space]
            n = space
        else:
            self._sbuf += data
        self._dirty = True
        return n

    def receive_available(self) -> int:
        return len(self._rbuf)

    def receive(self, max_bytes: int = -1) -> bytes:
        """Take up to ``max_bytes`` (all if negative) in-order bytes.  May schedule a window
        update (RFC 9293 3.8.6.2.2 receiver SWS avoidance)."""
        rbuf = self._rbuf
        n = len(rbuf)
        if n == 0 or max_bytes == 0:
            return b""
        if 0 <= max_bytes < n:
            with memoryview(rbuf) as mv:
                data = bytes(mv[:max_bytes])
            del rbuf[:max_bytes]
        else:
            data = bytes(rbuf)
            rbuf.clear()
        st = self.state
        if (st is ESTABLISHED or st in RECEIVE_TEXT_STATES) and not self._ooo:
            # Window update only if the read freed "lots" of space: the new window passes the
            # receiver SWS test and at least doubles the current offer (Linux tcp_cleanup_rbuf);
            # otherwise the next ACK carries the larger window.
            cur = seq_diff(self._rcv_adv, self.rcv_nxt)
            if cur < 0:
                cur = 0
            space = self._rbuf_limit - len(rbuf)
            if space - cur >= min(self._rbuf_limit // 2, self._rcv_mss) and space >= 2 * cur:
                self._ack_now = True
        return data

    def close(self) -> None:
        """Graceful close: FIN after all queued data (RFC 9293 3.10.4)."""
        st = self.state
        if st is SYN_SENT or st is LISTEN:
            # 3.10.4: SYN-SENT -> delete the TCB.
            self._set_state(CLOSED)
            return
        if st is SYN_RECEIVED:
            # 3.10.4: queue the close until ESTABLISHED (the FIN follows the handshake ACK).
            self._close_pending = True
            return
        nxt = CLOSE_TRANSITIONS.get(st)
        if nxt is None:
            return  # already closing or closed: nothing to do
        self._queue_fin()
        self._set_state(nxt)
        self._dirty = True

    def abort(self) -> None:
        """Send a RST now (if the state calls for one, 3.10.5) and go to CLOSED."""
        if self.state in ABORT_SENDS_RST:
            self._queue_rst(self.snd_max, with_ack=True)
        if self.error is None:
            self.error = "aborted"
        self._set_state(CLOSED)

    def flush_ack(self, now: float) -> list[TcpSegment]:
        """Return the owed (delayed) ACK now, if any.  Call before ``export_state``."""
        self._now = now
        if not (self._ack_now or self._delack_deadline is not None):
            return []
        if self.state not in SYNCHRONIZED_STATES:
            return []
        seg = self._make(self._ack_seq(), F_ACK, b"", now)
        self._count_out(seg)
        return [seg]

    @property
    def ack_owed(self) -> bool:
        return self._ack_now or self._delack_deadline is not None

    def export_state(self, now: float) -> TcbSnapshot:
        """The TCB as a ``TcbSnapshot`` (only in ESTABLISHED, FIN-WAIT-1/2, CLOSE-WAIT, CLOSING,
        LAST-ACK).  Raises ``ValueError`` in other states or while an ACK is owed."""
        if self.state not in EXPORTABLE_STATES:
            raise ValueError(f"cannot export a connection in state {self.state}")
        if self.ack_owed:
            raise ValueError("an ACK is owed: call flush_ack(now) and send its result first")

        def delta(deadline: float | None) -> float | None:
            return None if deadline is None else max(0.0, deadline - now)

        rtt = self.rtt
        return TcbSnapshot(
            local_ip=self.local_ip,
            local_port=self.local_port,
            remote_ip=self.remote_ip,
            remote_port=self.remote_port,
            remote_mss=self.remote_mss,
            snd_wscale=self.snd_wscale,
            rcv_wscale=self.rcv_wscale,
            timestamps_enabled=self.ts_enabled,
            sack_enabled=self.sack_enabled,
            nodelay=self.nodelay,
            keepalive=self.keepalive,
            keepalive_idle=self.keepalive_idle,
            keepalive_interval=self.keepalive_interval,
            keepalive_probes=self.keepalive_probes,
            initial_rcv_wnd=self._rbuf_limit,
            state=self.state,
            rcv_nxt=self.rcv_nxt,
            rcv_wnd=max(0, seq_diff(self._rcv_adv_wire, self.rcv_nxt)),
            snd_una=self.snd_una,
            snd_nxt=self.snd_nxt,
            snd_max=self.snd_max,
            snd_wnd=self.snd_wnd,
            max_snd_wnd=self.max_snd_wnd,
            snd_wl1=self.snd_wl1,
            snd_wl2=self.snd_wl2,
            cwnd=self.cc.cwnd,
            ssthresh=self.cc.ssthresh,
            srtt=rtt.srtt,
            rttvar=rtt.rttvar,
            rto=rtt.rto,
            ts_recent=self.ts_recent,
            ts_recent_age=None if self._ts_recent_time is None else now - self._ts_recent_time,
            ts_time=self._ts_clock(now),
            total_rt=0.0 if self._rt_start is None else now - self._rt_start,
            dup_ack_count=self.cc.dup_acks,
            snd_wnd_probe_count=self.persist_backoff,
            keepalive_probe_count=self.keepalive_probe_count,
            keepalive_timeout_delta=delta(self._ka_deadline),
            retransmit_count=self.retransmit_count,
            retransmit_timeout_delta=delta(self._pto_backstop if self._pto else self._rto_deadline),
            persist_timeout_delta=delta(self._persist_deadline),
            fin_wait_2_timeout_delta=delta(self._close_deadline)
            if self.state is FIN_WAIT_2
            else None,
            fin_queued=self._fin_queued,
            fin_seq=self._fin_seq if self._fin_queued else None,
            fin_sent=self._fin_queued and seq_gt(self.snd_max, self._fin_seq),
            fin_received=self.eof_received,
            in_recovery=self.cc.in_recovery,
            recover=self.cc.recover,
            iss=self.iss,
            irs=self.irs,
            send_data=bytes(self._sbuf),
            buffered_receive=bytes(self._rbuf),
        )

    def _queue_control(self, seg: TcpSegment) -> None:
        """Queue a segment built outside ``poll`` (RST, probe, challenge ACK) for the next one."""
        if self._ctl:
            self._ctl.append(seg)  # type: ignore[union-attr]
        else:
            self._ctl = [seg]

    def next_deadline(self) -> float | None:
        """Earliest time ``poll`` has work; the last ``now`` seen if output is pending."""
        if self._ctl or self._dirty or self._ack_now or self._syn_pending:
            return self._now
        best = self._rto_deadline
        for d in (
            self._persist_deadline,
            self._delack_deadline,
            self._ka_deadline,
            self._close_deadline,
        ):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def poll(self, now: float) -> list[TcpSegment]:
        """Fire the timers due at ``now`` and return every segment ready to be sent."""
        self._now = now
        out: list[TcpSegment] = []
        if self._ctl:
            out.extend(self._ctl)
            self._ctl = ()
        d = self._rto_deadline
        if d is not None and d <= now:
            self._on_rto(now)
        d = self._persist_deadline
        if d is not None and d <= now:
            self._on_persist(now)
        d = self._delack_deadline
        if d is not None and d <= now:
            self._delack_deadline = None
            self._ack_now = True
        d = self._ka_deadline
        if d is not None and d <= now:
            self._on_keepalive(now)
        d = self._close_deadline
        if d is not None and d <= now:
            self._on_close_timer(now)
        if self._ctl:
            out.extend(self._ctl)
            self._ctl = ()
        if self._dirty or self._ack_now or self._syn_pending:
            self._output(now, out)
        return out

    # ---- input -------------------------------------------------------------------------------

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one segment addressed to this connection (RFC 9293 3.10.7)."""
        self._now = now
        counters = self.counters
        counters.segments_in += 1
        plen = len(seg.payload)
        counters.bytes_in += plen
        flags = int(seg.flags)
        st = self.state
        if st is CLOSED:
            # 3.10.7.1: everything but a RST is answered with a RST.
            rst = reset_for_segment(seg)
            if rst is not None:
                rst.src_port, rst.dst_port = self.local_port, self.remote_port
                self._queue_control(rst)
                counters.rsts_out += 1
            return
        if st is SYN_SENT:
            self._on_segment_syn_sent(seg, flags, now)
            return
        self._dirty = True
        seq = seg.seq

        # SYN-RECEIVED: the peer's SYN again (retransmission or, after a simultaneous open, its
        # SYN-ACK).  Linux answers a duplicate SYN with the SYN-ACK again.
        if st is SYN_RECEIVED and flags & _SYN and seq == self.irs and not flags & _RST:
            if flags & _ACK and seq_gt(seg.ack, self.snd_una) and seq_le(seg.ack, self.snd_max):
                self._ack_now = True  # simultaneous open: acknowledge its SYN
                flags &= ~_SYN
                seq = seq_add(seq, 1)
            else:
                self._syn_pending = True
                return

        # RFC 7323 5.3: PAWS, before the acceptability test.
        ts = seg.options.timestamp if self.ts_enabled else None
        if ts is not None and not flags & _RST and self._ts_recent_time is not None:
            if seq_lt(ts[0], self.ts_recent):
                if now - self._ts_recent_time > PAWS_IDLE_LIMIT:
                    self._ts_recent_time = None  # R3: TS.Recent is stale, accept
                else:
                    counters.paws_drops += 1
                    self._ack_unacceptable(plen + (flags & _FIN), now)
                    return

        # 3.10.7.4 first: sequence number acceptability.
        rcv_nxt = self.rcv_nxt
        wnd = seq_diff(self._rcv_adv_wire, rcv_nxt)
        if wnd < 0:
            wnd = 0
        seg_len = plen + (1 if flags & _FIN else 0) + (1 if flags & _SYN else 0)
        off = seq_diff(seq, rcv_nxt)
        if seg_len == 0:
            # RFC 9293: RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND (= RCV.NXT for a zero window).
            # Like Linux tcp_sequence() we also take SEG.SEQ = RCV.NXT+RCV.WND and anything
            # from Last.ACK.sent on: a peer whose pure ACKs sit exactly at our right edge (its
            # SND.NXT after filling the window) must not be ignored, or both ends can end up
            # discarding each other's ACKs.
            acceptable = off <= wnd and (off >= 0 or seq_ge(seq, self._last_ack_sent))
        elif wnd == 0:
            acceptable = False
        else:
            acceptable = (0 <= off < wnd) or (0 <= off + seg_len - 1 < wnd)
        if not acceptable:
            if flags & _RST:
                return
            counters.unacceptable_segments += 1
            if (
                ts is not None
                and seq_le(seq, self._last_ack_sent)
                and seq_ge(seq_add(seq, seg_len), self._last_ack_sent)
                and seq_ge(ts[0], self.ts_recent)
            ):
                # A retransmission of data we have (our ACK was lost) or a zero-window probe:
                # echo its TSval in the duplicate ACK, or the sender measures an RTT that
                # includes its whole backoff.  Linux accepts such segments for TS.Recent
                # (tcp_sequence() tests against rcv_wup = Last.ACK.sent).
                self.ts_recent = ts[0]
                self._ts_recent_time = now
            if st is TIME_WAIT and flags & _FIN:
                # 3.10.7.4 eighth (TIME-WAIT): a retransmitted FIN restarts the 2 MSL timeout.
                self._close_deadline = now + 2 * self.config.msl
            # RFC 9293 3.10.7.4: zero receive window -> still process valid ACKs (and send
            # our ACK).  Only the ACK field of such a segment is used.
            if wnd == 0 and off == 0 and flags & _ACK and not flags & _SYN:
                self._ack_unacceptable(seg_len, now)
                self._process_ack(seg, seq, flags & ~_FIN, plen, now)
                return
            self._ack_unacceptable(seg_len, now)
            return

        # second: RST (RFC 5961 section 3.2).
        if flags & _RST:
            if off == 0:
                self._on_reset(now)
            else:
                self._challenge_ack(now)
            return

        # fourth: SYN in a synchronized state -> challenge ACK (RFC 5961 section 4.2).
        if flags & _SYN:
            self._challenge_ack(now)
            return

        # fifth: the ACK field.
        if not flags & _ACK:
            return

        # RFC 7323 4.3: TS.Recent update (SEG.SEQ <= Last.ACK.sent, TSval >= TS.Recent).
        if ts is not None and seq_le(seq, self._last_ack_sent):
            if self._ts_recent_time is None or seq_ge(ts[0], self.ts_recent):
                self.ts_recent = ts[0]
                self._ts_recent_time = now

        if st is SYN_RECEIVED:
            ack = seg.ack
            if not (seq_gt(ack, self.snd_una) and seq_le(ack, self.snd_max)):
                # 3.10.7.4 fifth, SYN-RECEIVED: unacceptable ACK -> <SEQ=SEG.ACK><CTL=RST>.
                self._queue_rst(ack, with_ack=False)
                return
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            self._syn_pending = False
            self._established(now)
            st = self.state

        if not self._process_ack(seg, seq, flags, plen, now):
            return
        st = self.state
        if st is CLOSED:
            return

        # Keepalive: any acceptable segment proves the peer alive.
        if self._ka_deadline is not None:
            self.keepalive_probe_count = 0
            self._ka_deadline = now + self.keepalive_idle
        if st is FIN_WAIT_2 and self._close_deadline is not None:
            self._close_deadline = now + self.config.fin_wait_2_timeout

        # seventh: segment text; eighth: FIN.
        if st is ESTABLISHED or st in RECEIVE_TEXT_STATES:  # (`is` first: Enum hashing is slow)
            if plen or flags & _FIN:
                self._receive_text(seg, seq, off, flags, plen, wnd, now)
        elif st is TIME_WAIT and flags & _FIN:
            self._ack_now = True
            self._close_deadline = now + 2 * self.config.msl

    def _on_segment_syn_sent(self, seg: TcpSegment, flags: int, now: float) -> None:
        """RFC 9293 3.10.7.3."""
        ack = seg.ack
        if flags & _ACK:
            # first: an ACK outside (ISS, SND.MAX] gets a RST (unless it is a RST).
            if seq_le(ack, self.iss) or seq_gt(ack, self.snd_max):
                if not flags & _RST:
                    self._queue_rst(ack, with_ack=False)
                return
        if flags & _RST:
            # second: RST acceptable only with an acceptable ACK (RFC 5961 section 3.2 agrees).
            if flags & _ACK:
                self.counters.rsts_in += 1
                self.reset_received = True
                self.error = "connection refused"
                self._set_state(CLOSED)
            return
        if not flags & _SYN:
            return  # fifth: neither SYN nor RST -> drop
        self._dirty = True
        self._negotiate(seg, now, passive=False)
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self._last_ack_sent = self.rcv_nxt
        self._rcv_adv = self._rcv_adv_wire = seq_add(self.rcv_nxt, self._syn_window())
        ts = seg.options.timestamp if self.ts_enabled else None
        if ts is not None:
            self.ts_recent = ts[0]
            self._ts_recent_time = now
        self.snd_wnd = seg.window  # RFC 7323 2.2: not scaled in a SYN
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = ack
        if flags & _ACK:
            # Our SYN is acknowledged: RTT sample (timestamps, or Karn timing of the SYN).
            if ts is not None and ts[1]:
                self.rtt.sample(((self._ts_clock(now) - ts[1]) & MASK) / TS_HZ)
            elif self._rtt_seq is not None:
                self.rtt.sample(now - self._rtt_time)
            self._rtt_seq = None
            self.rtt.reset_backoff()
            self.retransmit_count = 0
            self._rt_start = None
            self.snd_una = ack
            if seq_lt(self.snd_nxt, ack):
                self.snd_nxt = ack
            self._rto_deadline = None
            self._syn_pending = False
            self._ack_now = True
            self._established(now)
            if seg.payload or flags & _FIN:
                seq = seq_add(seg.seq, 1)
                self._receive_text(seg, seq, 0, flags, len(seg.payload), self._syn_window(), now)
        else:
            # Simultaneous open: SYN-RECEIVED, answer with SYN-ACK (same ISS).
            self._set_state(SYN_RECEIVED)
            self._syn_pending = True
            self._rtt_seq = None

    def _negotiate(self, syn: TcpSegment, now: float, passive: bool) -> None:
        """Options from the peer's SYN / SYN-ACK (RFC 9293 3.7.1, RFC 7323, RFC 2018)."""
        o = syn.options
        cfg = self.config
        self.remote_mss = o.mss if o.mss else DEFAULT_REMOTE_MSS
        self._peer_sent_wscale = cfg.window_scaling and o.wscale is not None
        if self._peer_sent_wscale:
            if o.wscale > MAX_WSCALE:
                logger.debug("%s: peer wscale %d clamped to 14", self.name, o.wscale)
            self.snd_wscale = min(o.wscale, MAX_WSCALE)
            self.rcv_wscale = self._our_wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self.ts_enabled = cfg.timestamps and o.timestamp is not None
        if self.ts_enabled and passive:
            self.ts_recent = o.timestamp[0]  # type: ignore[index]
            self._ts_recent_time = now
        self.sack_enabled = cfg.sack_permitted and o.sack_permitted
        self._update_mss()

    def _update_mss(self) -> None:
        opt = TS_OPTION_LEN if self.ts_enabled else 0
        self._smss = max(1, min(self.remote_mss, self._adv_mss) - opt)
        self._rcv_mss = max(1, self._adv_mss - opt)
        self._rcv_mss_est = min(self._smss, self._rcv_mss)
        self.cc.set_smss(self._smss)
        self.cc.cwnd = min(self.config.initial_window * self._smss, max(2 * self._smss, 14600))

    def _established(self, now: float) -> None:
        self._quickacks = min(
            self.config.quickack, (self._rbuf_limit // (2 * self._rcv_mss)) if self._rcv_mss else 0
        )
        self._set_state(ESTABLISHED)
        if self.keepalive:
            self._ka_deadline = now + self.keepalive_idle
        if self._close_pending:
            self._close_pending = False
            self._queue_fin()
            self._set_state(FIN_WAIT_1)

    def _process_ack(self, seg: TcpSegment, seq: int, flags: int, plen: int, now: float) -> bool:
        """3.10.7.4 fifth step for synchronized states.  Returns False to drop the segment."""
        ack = seg.ack
        snd_una = self.snd_una
        if seq_gt(ack, self.snd_max):
            # "acks something not yet sent": send an ACK, drop the segment.
            self._ack_now = True
            return False
        if seq_lt(ack, seq_add(snd_una, -self.max_snd_wnd)):
            # RFC 5961 section 5.2: too old -> challenge ACK, drop.
            self._challenge_ack(now)
            return False
        cc = self.cc
        wnd = seg.window << self.snd_wscale
        st = self.state
        if seq_gt(ack, snd_una):
            acked = seq_diff(ack, snd_una)
            data_acked = seq_diff(ack, self._sbuf_seq)
            nbuf = len(self._sbuf)
            if data_acked > nbuf:
                data_acked = nbuf
            if data_acked > 0:
                del self._sbuf[:data_acked]
                self._sbuf_seq = seq_add(self._sbuf_seq, data_acked)
            self.snd_una = ack
            if seq_lt(self.snd_nxt, ack):
                self.snd_nxt = ack
            # RTT (RFC 7323 section 4 with timestamps, else RFC 6298 with Karn's rule).
            ts = seg.options.timestamp if self.ts_enabled else None
            if ts is not None and ts[1]:
                r = (self._ts_clock(now) - ts[1]) & MASK
                if r < 0x7FFFFFFF:
                    self.rtt.sample(r / TS_HZ)
            elif self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
                self.rtt.sample(now - self._rtt_time)
                self._rtt_seq = None
            self.rtt.reset_backoff()
            self.retransmit_count = 0
            self._rt_start = None
            self._persist_unanswered = 0
            flight = seq_diff(self.snd_max, ack)
            rexmit, restart = cc.on_new_ack(ack, acked, flight)
            if rexmit and flight > 0:
                self._retransmit_head = True
            if self._tlp_high is not None and seq_ge(ack, self._tlp_high):
                self._tlp_high = None
            if self._sack_high is not None and seq_ge(ack, self._sack_high):
                self._sack_high = None
            if flight <= 0:
                self._rto_deadline = None  # RFC 6298 (5.2)
                self._pto = False
            elif restart or not cc.in_recovery:
                self._arm_rto(now)  # RFC 6298 (5.3) / RFC 8985 7.2
            # Our FIN acknowledged?
            if self._fin_queued and seq_gt(ack, self._fin_seq):
                nxt = FIN_ACKED_TRANSITIONS.get(st)
                if nxt is not None:
                    self._set_state(nxt)
                    if nxt is FIN_WAIT_2:
                        self._close_deadline = now + self.config.fin_wait_2_timeout
                    elif nxt is TIME_WAIT:
                        self._enter_time_wait(now)
                    elif nxt is CLOSED:
                        return False
        elif ack == snd_una:
            # RFC 5681 section 2: duplicate ACK (same window; zero-window probe answers are
            # not duplicates).  With SACK, RFC 6675 section 2: an ACK with new SACK information
            # counts whatever its window (Linux changes the window in its duplicate ACKs).
            if (
                plen == 0
                and not flags & (_SYN | _FIN)
                and self.snd_nxt != snd_una
                and (
                    (wnd == self.snd_wnd and wnd != 0)
                    or (self.sack_enabled and self._new_sack_info(seg, snd_una))
                )
            ):
                self.counters.dup_acks += 1
                flight = seq_diff(self.snd_max, snd_una)
                if cc.on_dup_ack(snd_una, self.snd_max, flight):
                    self.counters.fast_retransmits += 1
                    self._retransmit_head = True
                    self._rtt_seq = None  # Karn
        # Any ACK answers our probes (Linux resets icsk_probes_out on every ACK).
        self._persist_unanswered = 0
        # Window update (3.10.7.4 fifth, ESTABLISHED): SND.UNA <= SEG.ACK <= SND.MAX.
        if seq_ge(ack, snd_una):
            wl1 = self.snd_wl1
            if seq_lt(wl1, seq) or (wl1 == seq and seq_le(self.snd_wl2, ack)):
                if wnd != self.snd_wnd:
                    self.snd_wnd = wnd
                    if wnd > self.max_snd_wnd:
                        self.max_snd_wnd = wnd
                    if wnd and self._persist_deadline is not None:
                        # The window opened: leave persist (the output routine sends).
                        self._persist_deadline = None
                        self.persist_backoff = 0
                self.snd_wl1 = seq
                self.snd_wl2 = ack
        return True

    def _new_sack_info(self, seg: TcpSegment, snd_una: int) -> bool:
        """True if ``seg`` SACKs data above the highest SACKed sequence seen so far (RFC 6675
        section 2 duplicate ACK).  The blocks are otherwise not used (recovery is NewReno)."""
        new = False
        high = self._sack_high
        for _left, right in seg.options.sack_blocks:
            if seq_gt(right, snd_una) and seq_le(right, self.snd_max):
                if high is None or seq_gt(right, high):
                    high = right
                    new = True
        self._sack_high = high
        return new

    def _receive_text(
        self, seg: TcpSegment, seq: int, off: int, flags: int, plen: int, wnd: int, now: float
    ) -> None:
        """3.10.7.4 seventh (text) and eighth (FIN) for ESTABLISHED / FIN-WAIT-1 / FIN-WAIT-2."""
        payload = seg.payload
        fin = flags & _FIN
        if off < 0:
            # Trim the part we already have (acceptability guarantees something is new).
            cut = -off
            payload = payload[cut:] if cut < plen else b""
            plen = len(payload)
            seq = self.rcv_nxt
            off = 0
        if off + plen > wnd:
            payload = payload[: max(0, wnd - off)]
            plen = len(payload)
            fin = 0  # the FIN lies beyond the window
        if off == 0:
            if plen:
                self._rbuf += payload
                self.rcv_nxt = seq_add(self.rcv_nxt, plen)
                if plen > self._rcv_mss_est and plen <= self._rcv_mss:
                    self._rcv_mss_est = plen
            ooo = self._ooo
            if ooo:
                for chunk in ooo.pop_ready(self.rcv_nxt):
                    self._rbuf += chunk
                    self.rcv_nxt = seq_add(self.rcv_nxt, len(chunk))
                self._ack_now = True  # filled (part of) a hole: ACK at once (RFC 5681 4.2)
            if self._ooo_fin is not None and not ooo and self._ooo_fin == self.rcv_nxt:
                fin = _FIN  # a FIN that arrived early is now in sequence
            if fin:
                self._receive_fin(now)
                return
            if plen:
                # Delayed ACK (RFC 9293 3.8.6.3 / RFC 5681 4.2).
                self._unacked_bytes += plen
                cfg = self.config
                if self._quickacks:
                    self._quickacks -= 1
                    self._ack_now = True
                elif cfg.delayed_ack <= 0 or self._unacked_bytes >= (
                    cfg.ack_frequency * self._rcv_mss_est
                ):
                    self._ack_now = True
                elif self._delack_deadline is None:
                    self._delack_deadline = now + cfg.delayed_ack
        else:
            # Out of order: queue it, ACK at once (duplicate ACK, RFC 5681 4.2).
            self.counters.ooo_segments += 1
            self._dupack(now)
            if plen:
                ooo = self._ooo
                if ooo is NO_OUT_OF_ORDER:
                    ooo = self._ooo = OutOfOrderQueue()
                ooo.add(self.rcv_nxt, seq, payload)
            if fin:
                self._ooo_fin = seq_add(seq, plen)

    def _receive_fin(self, now: float) -> None:
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self.eof_received = True
        self._ooo_fin = None
        self._ack_now = True
        nxt = FIN_RECEIVED_TRANSITIONS.get(self.state)
        if nxt is not None:
            self._set_state(nxt)
            if nxt is TIME_WAIT:
                self._enter_time_wait(now)

    def _on_reset(self, now: float) -> None:
        self.counters.rsts_in += 1
        self.reset_received = True
        st = self.state
        if st in (CLOSING, LAST_ACK, TIME_WAIT):
            pass  # 3.10.7.4 second: just close
        elif self.error is None:
            self.error = "connection reset"
        self._sbuf.clear()
        self._ooo.clear()
        self._set_state(CLOSED)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 section 7: challenge ACKs, at most ``challenge_ack_limit`` per interval."""
        cfg = self.config
        if now - self._challenge_start >= cfg.challenge_ack_interval:
            self._challenge_start = now
            self._challenge_count = 0
        if self._challenge_count < cfg.challenge_ack_limit:
            self._challenge_count += 1
            self.counters.challenge_acks += 1
            self._ack_now = True

    def _ack_unacceptable(self, seg_len: int, now: float) -> None:
        """ACK an unacceptable segment (3.10.7.4 first); pure ACKs are rate limited."""
        if seg_len == 0:
            if now - self._oow_last < OOW_ACK_INTERVAL:
                return
            self._oow_last = now
            self._ack_now = True
        else:
            self._dupack(now)

    def _dupack(self, now: float) -> None:
        """Owe an immediate ACK for this segment.  If one is already owed (several out-of-order
        or duplicate segments in one batch of input), that one is built now: the sender counts
        one duplicate ACK per segment (RFC 5681 4.2), poll() only runs after the batch."""
        if self._ack_now and self.state in SYNCHRONIZED_STATES:
            seg = self._make(self._ack_seq(), F_ACK, b"", now)
            self._count_out(seg)
            self._queue_control(seg)
        self._ack_now = True

    # ---- timers ------------------------------------------------------------------------------

    def _on_rto(self, now: float) -> None:
        self._rto_deadline = None
        st = self.state
        cfg = self.config
        rtt = self.rtt
        if st is SYN_SENT or st is SYN_RECEIVED:
            self.retransmit_count += 1
            self.counters.timeouts += 1
            if self.retransmit_count > cfg.max_syn_retransmissions:
                self.error = "connection timed out"
                if st is SYN_RECEIVED:
                    self._queue_rst(self.snd_max, with_ack=True)
                self._set_state(CLOSED)
                return
            rtt.on_timeout()
            self._rtt_seq = None
            self._syn_pending = True
            return
        if st not in OUTPUT_STATES or self.snd_una == self.snd_max:
            self._pto = False
            return
        if self._pto:
            # RFC 8985 7.3: the probe timeout fired: send one probe, then the RTO is armed.
            self._pto = False
            self._tlp_pending = True
            self._tlp_high = self.snd_max
            self.counters.tail_loss_probes += 1
            self._rto_deadline = max(self._pto_backstop, now + rtt.current_rto())
            self._dirty = True
            return
        self._tlp_high = None
        self.retransmit_count += 1
        self.counters.timeouts += 1
        if self._rt_start is None:
            self._rt_start = now
        if self.retransmit_count > cfg.max_retransmissions:
            self._give_up("connection timed out")
            return
        if self.snd_wnd == 0:
            # The peer closed its window with data in flight: hand over to the persist timer
            # (the output routine arms it) instead of retransmitting into a zero window.
            self.retransmit_count -= 1
            self.snd_nxt = self.snd_una
            self._rtt_seq = None
            self._dirty = True
            return
        flight = seq_diff(self.snd_max, self.snd_una)
        self.cc.on_timeout(flight, self.snd_max, self.retransmit_count == 1)
        rtt.on_timeout()
        self._rtt_seq = None  # Karn
        self._retransmit_head = False
        # Go back N: resend from SND.UNA as the (now 1 SMSS) window allows.
        self.snd_nxt = self.snd_una
        self._rto_deadline = now + rtt.current_rto()
        self._dirty = True

    def _persist_interval(self) -> float:
        cfg = self.config
        base = max(self.rtt.rto, cfg.persist_min)
        iv = base * (1 << min(self.persist_backoff, 30))
        return min(iv, cfg.max_rto)

    def _on_persist(self, now: float) -> None:
        self._persist_deadline = None
        if self.state not in OUTPUT_STATES or self.snd_nxt != self.snd_una:
            return
        unsent = len(self._sbuf) - seq_diff(self.snd_nxt, self._sbuf_seq)
        fin_unsent = self._fin_queued and self.snd_nxt == self._fin_seq
        if unsent <= 0 and not fin_unsent:
            return
        if self.snd_wnd > 0:
            # Sender SWS override timeout (RFC 9293 3.8.6.2.1 (d)).
            self._force_send = True
            self._dirty = True
            return
        # Zero-window probe (RFC 9293 3.8.6.1): one octet of new data (or the FIN) at SND.UNA.
        self._persist_unanswered += 1
        if self._persist_unanswered > self.config.max_retransmissions:
            self._give_up("connection timed out (zero window probes unanswered)")
            return
        seq = self.snd_una
        if unsent > 0:
            off = seq_diff(seq, self._sbuf_seq)
            seg = self._make(seq, F_ACK, bytes(self._sbuf[off : off + 1]), now)
        else:
            seg = self._make(seq, F_FIN_ACK, b"", now)
        self._count_out(seg)
        self._queue_control(seg)
        end = seq_add(seq, 1)
        if seq_gt(end, self.snd_max):
            self.snd_max = end
        self.counters.zero_window_probes += 1
        self.persist_backoff += 1
        self._persist_deadline = now + self._persist_interval()

    def _on_keepalive(self, now: float) -> None:
        self._ka_deadline = None
        if not self.keepalive or self.state not in KEEPALIVE_STATES:
            return
        unsent = len(self._sbuf) - seq_diff(self.snd_nxt, self._sbuf_seq)
        if self.snd_max != self.snd_una or unsent > 0:
            # Data outstanding: the retransmission / persist timers watch the peer.
            self._ka_deadline = now + self.keepalive_idle
            return
        if self.keepalive_probe_count >= self.keepalive_probes:
            self._give_up("connection timed out (keepalive)")
            return
        # RFC 9293 3.8.4 / RFC 1122 4.2.3.6: SEG.SEQ = SND.NXT-1, no data (like Linux).
        seg = self._make(seq_add(self.snd_una, -1), F_ACK, b"", now)
        self._count_out(seg)
        self._queue_control(seg)
        self.keepalive_probe_count += 1
        self.counters.keepalive_probes += 1
        self._ka_deadline = now + self.keepalive_interval

    def _on_close_timer(self, now: float) -> None:
        self._close_deadline = None
        st = self.state
        if st is TIME_WAIT:
            self._set_state(CLOSED)
        elif st is FIN_WAIT_2:
            self.error = "FIN-WAIT-2 timeout"
            self._set_state(CLOSED)

    def _enter_time_wait(self, now: float) -> None:
        self._rto_deadline = None
        self._persist_deadline = None
        self._ka_deadline = None
        self._close_deadline = now + 2 * self.config.msl

    def _give_up(self, why: str) -> None:
        logger.info("%s: giving up: %s", self.name, why)
        self.error = why
        self._queue_rst(self.snd_max, with_ack=True)
        self._set_state(CLOSED)

    # ---- output ------------------------------------------------------------------------------

    def _ts_clock(self, now: float) -> int:
        return (int(now * TS_HZ) + self._ts_offset) & MASK

    def _syn_window(self) -> int:
        return min(0xFFFF, self._rbuf_limit)

    def _window_field(self) -> int:
        """The window to advertise (the raw field).

        Receiver SWS avoidance (RFC 9293 3.8.6.2.2): the right edge only moves right when the
        free space exceeds the current offer by min(RCV.BUFF/2, MSS).  With window scaling the
        field is rounded up so that the edge the peer saw does not move left (RFC 7323 2.4
        prefers not to shrink, like Linux), but never beyond the free space plus one scale
        unit: memory stays bounded by the buffer + 2**rcv_wscale - 1.
        """
        rcv_nxt = self.rcv_nxt
        cur = seq_diff(self._rcv_adv, rcv_nxt)
        if cur < 0:
            cur = 0
        space = self._rbuf_limit - len(self._rbuf)
        if space < 0:
            space = 0
        if self._ooo or space - cur < min(self._rbuf_limit >> 1, self._rcv_mss):
            # Keep the right edge.  While segments are missing the window must not change
            # either: an ACK that updates the window is not a duplicate ACK for the sender
            # (RFC 5681 section 2 (e)), which would defeat its fast retransmit.
            wnd = cur
        else:
            wnd = space
        ws = self.rcv_wscale
        if ws:
            fld = wnd >> ws
            told = seq_diff(self._rcv_adv_wire, rcv_nxt)
            if (fld << ws) < told:
                unit = (1 << ws) - 1
                fld = (told + unit) >> ws
                cap = (space + unit) >> ws
                if fld > cap:
                    fld = cap
        else:
            fld = wnd
        if fld > 0xFFFF:
            fld = 0xFFFF
        scaled = fld << ws
        edge = seq_add(rcv_nxt, scaled if scaled < wnd else wnd)
        if seq_gt(edge, self._rcv_adv):
            self._rcv_adv = edge
        wire = seq_add(rcv_nxt, scaled)
        if seq_gt(wire, self._rcv_adv_wire):
            self._rcv_adv_wire = wire
        return fld

    def _ack_seq(self) -> int:
        """SEG.SEQ for a segment without data: the highest sequence sent (SND.MAX), so that it is
        acceptable to the peer even while we resend older data after a timeout (go-back-N moves
        SND.NXT back; the peer's RCV.NXT may be far ahead).  Kept inside the peer's window like
        Linux tcp_acceptable_seq() (a zero-window probe byte lies beyond it)."""
        snd_max = self.snd_max
        right = seq_add(self.snd_una, self.snd_wnd)
        if seq_le(snd_max, right):
            return snd_max
        return right if seq_ge(right, self.snd_nxt) else self.snd_nxt

    def _burst_header(
        self, now: float
    ) -> tuple[int, int, tuple[int, int] | None, tuple[tuple[int, int], ...]]:
        """(ACK, window field, timestamp option, SACK blocks) for segments sent now; sending
        them satisfies any owed ACK."""
        tsopt = (self._ts_clock(now), self.ts_recent) if self.ts_enabled else None
        sack: tuple[tuple[int, int], ...] = ()
        if self.sack_enabled and self._ooo:
            sack = self._ooo.sack_blocks(SACK_BLOCKS_WITH_TS if tsopt else SACK_BLOCKS_NO_TS)
        rcv_nxt = self.rcv_nxt
        self._last_ack_sent = rcv_nxt
        self._ack_now = False
        self._delack_deadline = None
        self._unacked_bytes = 0
        return rcv_nxt, self._window_field(), tsopt, sack

    def _make(self, seq: int, flags: TcpFlags, payload: bytes, now: float) -> TcpSegment:
        """Build one ACK-carrying segment; sending it satisfies any owed ACK."""
        rcv_nxt, wnd_field, tsopt, sack = self._burst_header(now)
        return TcpSegment(
            self.local_port,
            self.remote_port,
            seq,
            rcv_nxt,
            flags,
            wnd_field,
            TcpOptions(None, None, False, sack, tsopt),
            payload,
        )

    def _count_out(self, seg: TcpSegment) -> None:
        c = self.counters
        c.segments_out += 1
        c.bytes_out += len(seg.payload)

    def _queue_rst(self, seq: int, with_ack: bool) -> None:
        opts = TcpOptions()
        if with_ack:
            seg = TcpSegment(
                self.local_port, self.remote_port, seq, self.rcv_nxt, F_RST_ACK, 0, opts
            )
        else:
            seg = TcpSegment(self.local_port, self.remote_port, seq, 0, F_RST, 0, opts)
        self._count_out(seg)
        self.counters.rsts_out += 1
        self._queue_control(seg)

    def _queue_fin(self) -> None:
        self._fin_queued = True
        self._fin_seq = seq_add(self._sbuf_seq, len(self._sbuf))

    def _send_syn(self, now: float, out: list[TcpSegment]) -> None:
        self._syn_pending = False
        cfg = self.config
        st = self.state
        opts = TcpOptions(mss=self._adv_mss)
        if st is SYN_SENT:
            if cfg.window_scaling:
                opts.wscale = self._our_wscale
            if cfg.timestamps:
                opts.timestamp = (self._ts_clock(now), 0)
            opts.sack_permitted = cfg.sack_permitted
            flags = F_SYN
            ack = 0
        else:
            # SYN-ACK: answer only the options the peer offered (RFC 7323 2.2 / 3.2).
            if self._peer_sent_wscale:
                opts.wscale = self.rcv_wscale
            if self.ts_enabled:
                opts.timestamp = (self._ts_clock(now), self.ts_recent)
            opts.sack_permitted = self.sack_enabled
            flags = F_SYN_ACK
            ack = self.rcv_nxt
            self._last_ack_sent = ack
        if self.snd_max != self.iss:
            self.counters.retransmissions += 1
            self._rtt_seq = None  # Karn: never time a retransmitted SYN
        else:
            self._rtt_seq = self.iss
            self._rtt_time = now
        seg = TcpSegment(
            self.local_port, self.remote_port, self.iss, ack, flags, self._syn_window(), opts
        )
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        self._ack_now = False
        self._rto_deadline = now + self.rtt.current_rto()
        self._count_out(seg)
        out.append(seg)

    def _output(self, now: float, out: list[TcpSegment]) -> None:
        """Send what the windows, Nagle and SWS rules allow, then any owed ACK."""
        self._dirty = False
        st = self.state
        if st is SYN_SENT or st is SYN_RECEIVED:
            # An ACK owed in SYN-RECEIVED (unacceptable segment, RFC 9293 3.10.7.4) is the
            # SYN-ACK again, as Linux answers from its request socket.
            if self._syn_pending or (self._ack_now and st is SYN_RECEIVED):
                self._send_syn(now, out)
            self._ack_now = False
            return
        if st is CLOSED or st is LISTEN:
            self._ack_now = False
            return
        if st is ESTABLISHED or st in OUTPUT_STATES:
            if self._tlp_pending:
                self._tlp_pending = False
                self._send_tlp(now, out)
            if self._retransmit_head:
                self._retransmit_head = False
                self._send_head(now, out)
            self._send_data(now, out)
        if self._ack_now:
            seg = self._make(self._ack_seq(), F_ACK, b"", now)
            self._count_out(seg)
            out.append(seg)

    def _arm_rto(self, now: float) -> None:
        """Start the retransmission timer (RFC 6298 5.1 / 5.3), or a tail loss probe timeout
        (RFC 8985 7.2) when one is allowed: open state, RTT known, not in recovery, no timeout
        yet, no probe outstanding."""
        rto_at = now + self.rtt.current_rto()
        srtt = self.rtt.srtt
        if (
            self.config.tail_loss_probe
            and srtt is not None
            and self._tlp_high is None
            and self.retransmit_count == 0
            and not self.cc.in_recovery
        ):
            pto = 2 * srtt
            if seq_diff(self.snd_max, self.snd_una) <= self._smss:
                pto += TLP_WC_DELACK
            if pto < TLP_MIN_PTO:
                pto = TLP_MIN_PTO
            if now + pto < rto_at:
                self._rto_deadline = now + pto
                self._pto = True
                self._pto_backstop = rto_at
                return
        self._rto_deadline = rto_at
        self._pto = False

    def _send_tlp(self, now: float, out: list[TcpSegment]) -> None:
        """RFC 8985 7.3: one new segment if the peer's window allows (cwnd is ignored), else
        the most recently sent segment again."""
        if self.snd_nxt == self.snd_max:
            off = seq_diff(self.snd_nxt, self._sbuf_seq)
            avail = len(self._sbuf) - off
            room = self.snd_wnd - seq_diff(self.snd_nxt, self.snd_una)
            if avail > 0 and room > 0:
                self._force_send = True  # _send_data sends it (up to SMSS)
                saved = self.cc.cwnd
                self.cc.cwnd = seq_diff(self.snd_nxt, self.snd_una) + min(avail, room, self._smss)
                self._send_data(now, out)
                self.cc.cwnd = saved
                return
        end = self.snd_max
        fin_sent = self._fin_queued and seq_gt(end, self._fin_seq)
        data_end = self._fin_seq if fin_sent else end
        start = seq_add(data_end, -min(self._smss, seq_diff(data_end, self.snd_una)))
        off = seq_diff(start, self._sbuf_seq)
        n = seq_diff(data_end, start)
        if n < 0 or off < 0:
            return
        payload = bytes(self._sbuf[off : off + n]) if n else b""
        if not payload and not fin_sent:
            return
        seg = self._make(start, F_FIN_ACK if fin_sent else F_ACK, payload, now)
        self.counters.retransmissions += 1
        self._rtt_seq = None  # Karn
        self._count_out(seg)
        out.append(seg)

    def _send_head(self, now: float, out: list[TcpSegment]) -> None:
        """Retransmit one segment at SND.UNA (fast retransmit / NewReno partial ACK)."""
        seq = self.snd_una
        end = self.snd_max
        n = seq_diff(end, seq)
        if n <= 0:
            return
        off = seq_diff(seq, self._sbuf_seq)
        avail = len(self._sbuf) - off
        size = min(n, self._smss, max(avail, 0))
        fin = 0
        if size == avail and self._fin_queued and seq_add(seq, size) == self._fin_seq and n > size:
            fin = 1
        if size <= 0 and not fin:
            return
        payload = bytes(self._sbuf[off : off + size]) if size > 0 else b""
        seg = self._make(seq, F_FIN_ACK if fin else F_ACK, payload, now)
        self.counters.retransmissions += 1
        if self._rt_start is None:
            self._rt_start = now
        self._count_out(seg)
        out.append(seg)
        if self._rto_deadline is None or self._pto:
            self._arm_rto(now)

    def _send_data(self, now: float, out: list[TcpSegment]) -> None:
        sbuf = self._sbuf
        smss = self._smss
        cc = self.cc
        fin_queued = self._fin_queued
        fin_seq = self._fin_seq
        force = self._force_send
        self._force_send = False
        counters = self.counters
        sent_any = False
        tso_max = self.config.tso_max
        chunk = tso_max - tso_max % smss if tso_max > smss else smss
        budget = self.config.burst_segments or -1
        # Header fields shared by every segment of this burst (computed on the first one).
        hdr: tuple | None = None
        while True:
            seq = self.snd_nxt
            snd_una = self.snd_una
            off = seq_diff(seq, self._sbuf_seq)
            avail = len(sbuf) - off
            fin_here = fin_queued and seq_add(seq, avail if avail > 0 else 0) == fin_seq
            if avail <= 0:
                avail = 0
                if not (fin_queued and seq == fin_seq):
                    break
            in_flight = seq_diff(seq, snd_una)
            peer_room = self.snd_wnd - in_flight
            cwnd = cc.cwnd
            if self.config.limited_transmit:
                cwnd += cc.limited_transmit_allowance()
            room = min(peer_room, cwnd - in_flight)
            n = avail if avail < chunk else chunk
            if n > room:
                n = room if room > 0 else 0
            if seq_lt(seq, self.snd_max):
                # Resending (go-back-N after a timeout): the data was sent before, SWS and
                # Nagle do not apply; send what the windows allow.
                if n <= 0 and not (fin_here and avail == 0):
                    break
            elif n < avail and n < smss:
                # Window- or cwnd-limited to a partial segment.  Sender SWS avoidance
                # (RFC 9293 3.8.6.2.1): only (c) half the max window, or (d) the override.
                if n <= 0:
                    break
                if not (force or (in_flight == 0 and n >= self.max_snd_wnd >> 1)):
                    break
            elif n == avail and n < smss and not force:
                # Everything queued fits in a small segment: Nagle (RFC 9293 3.7.4) with
                # Minshall's variant (as Linux): hold it only while an earlier *small*
                # segment is unacknowledged; never with nodelay or when the FIN follows.
                if (
                    in_flight > 0
                    and n > 0
                    and not self.nodelay
                    and not fin_here
                    and seq_gt(self._snd_sml, snd_una)
                ):
                    break
            fin = fin_here and n == avail and peer_room > n
            if n == 0 and not fin:
                break
            payload = bytes(sbuf[off : off + n]) if n else b""
            if fin:
                flags = F_FIN_PSH_ACK if n else F_FIN_ACK
            else:
                flags = F_PSH_ACK if n == avail else F_ACK
            if hdr is None:
                hdr = self._burst_header(now)
            rcv_nxt, wnd_field, tsopt, sack = hdr
            seg = TcpSegment(
                self.local_port,
                self.remote_port,
                seq,
                rcv_nxt,
                flags,
                wnd_field,
                TcpOptions(None, None, False, sack, tsopt),
                payload,
            )
            end = seq_add(seq, n + (1 if fin else 0))
            if seq_lt(seq, self.snd_max):
                counters.retransmissions += 1
                self._rtt_seq = None  # Karn
            elif self._rtt_seq is None and not self.ts_enabled:
                self._rtt_seq = seq
                self._rtt_time = now
            self.snd_nxt = end
            if n < smss:
                self._snd_sml = end
            if seq_gt(end, self.snd_max):
                self.snd_max = end
            counters.segments_out += 1
            counters.bytes_out += n
            out.append(seg)
            sent_any = True
            force = False
            if fin:
                break
            budget -= 1
            if budget == 0:
                self._dirty = True  # more may be sendable: the next poll() goes on
                break
        if sent_any:
            self._persist_deadline = None
            self.persist_backoff = 0
            if self._rto_deadline is None or self._pto:
                self._arm_rto(now)  # RFC 6298 (5.1); RFC 8985 7.2 restarts the PTO
        elif (
            self.snd_nxt == self.snd_una
            and self._rto_deadline is None
            and self._persist_deadline is None
            and (len(sbuf) > 0 or (fin_queued and self.snd_nxt == fin_seq))
        ):
            # Blocked by the peer's window with nothing in flight: persist (RFC 9293 3.8.6.1).
            self._persist_deadline = now + self._persist_interval()

    # ---- state -------------------------------------------------------------------------------

    def _set_state(self, new: TcpState) -> None:
        old = self.state
        if old is new:
            return
        # One INFO line per state change with the 4-tuple (docs/internals.md; `vnic -v`).
        logger.info("%s: %s -> %s", self.name, old, new)
        self.state = new
        if new is CLOSED:
            self._rto_deadline = None
            self._pto = False
            self._persist_deadline = None
            self._delack_deadline = None
            self._ka_deadline = None
            self._close_deadline = None
            self._syn_pending = False
            self._ack_now = False
            self._dirty = False
        cb = self.on_state_change
        if cb is not None:
            cb(self, old, new)

    def __repr__(self) -> str:
        return f"<TcpConnection {self.name} {self.state}>"
