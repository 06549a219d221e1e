"""``TcbSnapshot``: a TCP connection's complete state, for handing it to an offload target and
back (NDIS chimney TCP_OFFLOAD_STATE_CONST / _CACHED / _DELEGATED, reference sections b.11-b.13
and T.3-T.6).

Field names follow the delegated structure (RcvNxt -> ``rcv_nxt`` ...) but the units are the
engine's: seconds (not ticks), bytes, unscaled SRTT/RTTVAR.  The ``ndis`` layer converts to ticks,
x8 / x4 scaling and TimeoutDelta = 0xFFFFFFFF for a stopped timer.  A delta of ``None`` here
means "timer not running".

Data (T.3): ``send_data`` starts at SND.UNA: bytes [0, snd_nxt-snd_una) were sent and are
unacknowledged, [snd_nxt-snd_una, snd_max-snd_una) were sent before and must be sent first,
the rest was never sent.  ``buffered_receive`` is data already acknowledged to the peer but not
yet taken by the application; it ends at RCV.NXT (minus one if the peer's FIN was consumed).

Delayed-ACK, push and SWS timers are not carried (T.4): call ``TcpConnection.flush_ack(now)``
and transmit its result before ``export_state``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TcpState(enum.Enum):
    """RFC 9293 section 3.3.2 connection states.  Values are TCP_OFFLOAD_CONNECTION_STATE (b.14)."""

    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's
    # own __hash__ hashes the name in Python; the engine tests state-set membership per
    # segment, and a resume of 10,000 connections several times per connection).
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.name.replace("_", "-")


# b.14: "the host only offloads connections that are not in Closed, Listen, SynRcvd, SynSent or
# TimeWait".
EXPORTABLE_STATES = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSE_WAIT,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
    }
)


@dataclass(slots=True)
class TcbSnapshot:
    # ---- const (b.11) -------------------------------------------------------------------------
    local_ip: bytes
    local_port: int
    remote_ip: bytes
    remote_port: int
    remote_mss: int  # RemoteMss: MSS option the peer sent (536 if none)
    snd_wscale: int  # SndWindScale: shift applied to the peer's window field
    rcv_wscale: int  # RcvWindScale: shift applied to the window we advertise
    timestamps_enabled: bool  # TCP_FLAG_TIMESTAMP_ENABLED
    sack_enabled: bool  # TCP_FLAG_SACK_ENABLED
    # ---- cached (b.12) ------------------------------------------------------------------------
    nodelay: bool  # not TCP_FLAG_NAGLING_ENABLED
    keepalive: bool  # TCP_FLAG_KEEP_ALIVE_ENABLED
    keepalive_idle: float  # KaTimeout (seconds)
    keepalive_interval: float  # KaInterval (seconds)
    keepalive_probes: int  # KaProbeCount
    initial_rcv_wnd: int  # InitialRcvWnd: receive buffer size
    # ---- delegated (b.13) ---------------------------------------------------------------------
    state: TcpState
    rcv_nxt: int
    rcv_wnd: int  # bytes currently offered: RCV.NXT + rcv_wnd is the advertised right edge
    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int  # bytes (already scaled)
    max_snd_wnd: int
    snd_wl1: int
    snd_wl2: int  # not in the NDIS structure; kept for an exact RFC 9293 window-update rule
    cwnd: int
    ssthresh: int
    srtt: float | None  # seconds; None = no RTT sample yet
    rttvar: float | None
    rto: float  # current base RTO (without backoff)
    ts_recent: int  # TsRecent
    ts_recent_age: float | None  # seconds since TsRecent was recorded; None = none recorded
    ts_time: int  # TsTime: our timestamp clock at export (T.6)
    total_rt: float  # TotalRT: seconds spent retransmitting the current segment
    dup_ack_count: int
    snd_wnd_probe_count: int  # SndWndProbeCount: persist round (backoff exponent)
    keepalive_probe_count: int  # KeepAlive.ProbeCount
    keepalive_timeout_delta: float | None  # KeepAlive.TimeoutDelta
    retransmit_count: int  # Retransmit.Count (consecutive timeouts of the current segment)
    retransmit_timeout_delta: float | None  # Retransmit.TimeoutDelta (the retransmit timer)
    persist_timeout_delta: float | None  # NDIS carries it in Retransmit.TimeoutDelta too
    fin_wait_2_timeout_delta: float | None  # NDIS carries it in Retransmit.TimeoutDelta too
    # our FIN: queued by close(); its sequence number (sent once snd_max > fin_seq)
    fin_queued: bool
    fin_seq: int | None
    fin_sent: bool  # derived (snd_max > fin_seq); informational, not used on import
    fin_received: bool  # peer's FIN consumed (RCV.NXT counts it)
    # NewReno state (not in NDIS; an importer may ignore it)
    in_recovery: bool
    recover: int
    iss: int
    irs: int
    # ---- data (SendDataHead..Tail, BufferedData) ----------------------------------------------
    send_data: bytes
    buffered_receive: bytes
