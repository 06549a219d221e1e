"""Pure conversions between the engine's :class:`tcpip.tcb.TcbSnapshot` and the NDIS chimney
offload state structures (reference b.8 - b.13, b.19, T.3 - T.6).

Nothing here has side effects or knows about connections, stacks or bindings; the chimney host
(:mod:`tcpip.offload`) calls these functions when it builds an initiate tree and when a
terminate hands the delegated state back.

Unit rules (all from the reference):

* Durations travel in host ticks, ``TicksPerSecond`` from the
  ``NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS`` the host set (b.16, default 1000).  Seconds are
  rounded to the nearest tick.
* ``SRtt`` is passed scaled x8 and ``RttVar`` x4, in ticks (b.13, T.5), clamped to USHORT.
  ``SRtt == 0`` means "no RTT sample yet" (the engine's ``srtt is None``).
* A stopped timer is ``TimeoutDelta = 0xFFFFFFFF`` (T.4); a running one never encodes as that
  value (it is clamped to 0xFFFFFFFE).  A handed-back 0 means "running, expire at once".
* ``Retransmit.TimeoutDelta`` carries the retransmit timer, or the persist timer, or the
  FIN_WAIT_2 timer (T.4), whichever runs; on the way back the state tells which one it is.
* ``TsTime`` is the timestamp clock value of the side handing over (clock + delta, T.6).  The
  engine's ``ts_time`` already *is* that value, so it passes unchanged both ways and the
  timestamps stay monotonic across any number of handoffs.
* Send data (T.3): the bytes from SND.UNA travel as NBLs in the TCP block's
  ``NetBufferListChain`` (``SendDataHead`` .. ``SendDataTail``); received, ACKed but undelivered
  bytes travel in ``BufferedData`` (b.13, d.3 steps 6-7).

Things NDIS does not carry are rebuilt on the way back (:func:`snapshot_from_delegated`):
``snd_wl2`` (= SndUna), ``rto`` (from SRtt/RttVar, RFC 6298), the FIN bookkeeping (from the
State, b.14), NewReno recovery (not in recovery), ISS/IRS (from the offload-time snapshot).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ndis.blocks import NET_BUFFER_LIST, iter_nbls, link_nbls
from ndis.state import (
    NEIGHBOR_OFFLOAD_STATE_CACHED,
    NEIGHBOR_OFFLOAD_STATE_CONST,
    NEIGHBOR_OFFLOAD_STATE_DELEGATED,
    PATH_OFFLOAD_STATE_CACHED,
    PATH_OFFLOAD_STATE_CONST,
    PATH_OFFLOAD_STATE_DELEGATED,
    TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_NAGLING_ENABLED,
    TCP_FLAG_SACK_ENABLED,
    TCP_FLAG_TIMESTAMP_ENABLED,
    TCP_FLAG_WINDOW_SCALING_ENABLED,
    TCP_OFFLOAD_CONNECTION_STATE,
    TCP_OFFLOAD_STATE_CACHED,
    TCP_OFFLOAD_STATE_CONST,
    TCP_OFFLOAD_STATE_DELEGATED,
    TIMER_NOT_RUNNING,
    KeepAliveState,
    NeighborOffloadState,
    PathOffloadState,
    RetransmitState,
    TcpOffloadState,
)
from tcpip.seq import seq_add, seq_diff
from tcpip.tcb import EXPORTABLE_STATES, TcbSnapshot, TcpState

__all__ = [
    "DEFAULT_TICKS_PER_SECOND",
    "SEND_CHUNK",
    "ConversionError",
    "TcpCachedExtras",
    "to_ticks",
    "from_ticks",
    "timer_to_ticks",
    "timer_from_ticks",
    "srtt_to_field",
    "srtt_from_field",
    "rttvar_to_field",
    "rttvar_from_field",
    "tcp_const_from_snapshot",
    "tcp_cached_from_snapshot",
    "tcp_delegated_from_snapshot",
    "tcp_state_from_snapshot",
    "send_nbls",
    "buffered_nbl",
    "nbl_chain_bytes",
    "snapshot_from_delegated",
    "neighbor_state",
    "path_state",
    "pad_mac",
]

DEFAULT_TICKS_PER_SECOND = 1000  # b.16: TicksPerSecond default
SEND_CHUNK = 16384  # bytes of send data per NBL at initiate (one NBL per chunk)
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_MAX_RUNNING = TIMER_NOT_RUNNING - 1  # a running timer never encodes as (ULONG)-1 (T.4)
_MIN_RTO = 0.2  # only used when rebuilding rto without an offload-time snapshot value
_MAX_RTO = 60.0


class ConversionError(ValueError):
    """State that cannot be converted (a connection in a non-offloadable state, ...)."""


@dataclass(slots=True)
class TcpCachedExtras:
    """Cached members the engine does not own (b.12); the host policy sets them."""

    rcv_indication_size: int = 0  # 0 = unspecified, indicate as much as possible
    max_rt: int = 0  # 0 = count-based (TcpMaximumRetransmissions)
    ttl: int = 64
    tos: int = 0
    flow_label: int = 0
    user_priority: int = 0


# ---- scalar helpers -----------------------------------------------------------------------------


def to_ticks(seconds: float, tps: int = DEFAULT_TICKS_PER_SECOND) -> int:
    """Seconds -> ticks (nearest, >= 0, clamped to ULONG)."""
    if seconds <= 0:
        return 0
    return min(_U32, int(math.floor(seconds * tps + 0.5)))


def from_ticks(ticks: int, tps: int = DEFAULT_TICKS_PER_SECOND) -> float:
    return ticks / tps


def timer_to_ticks(delta: float | None, tps: int = DEFAULT_TICKS_PER_SECOND) -> int:
    """T.4: None (stopped) -> 0xFFFFFFFF; a running timer -> ticks, never 0xFFFFFFFF."""
    if delta is None:
        return TIMER_NOT_RUNNING
    return min(_MAX_RUNNING, to_ticks(delta, tps))


def timer_from_ticks(ticks: int, tps: int = DEFAULT_TICKS_PER_SECOND) -> float | None:
    """T.4: 0xFFFFFFFF -> None; 0 -> 0.0 (running, expires at once)."""
    if ticks == TIMER_NOT_RUNNING:
        return None
    return ticks / tps


def srtt_to_field(srtt: float | None, tps: int = DEFAULT_TICKS_PER_SECOND) -> int:
    """b.13 / T.5: SRtt in ticks scaled x8 (USHORT); 0 = no sample.  A real sample never
    encodes as 0 (at least 1)."""
    if srtt is None:
        return 0
    return max(1, min(_U16, int(math.floor(srtt * tps * 8 + 0.5))))


def srtt_from_field(value: int, tps: int = DEFAULT_TICKS_PER_SECOND) -> float | None:
    return None if value == 0 else value / (8 * tps)


def rttvar_to_field(rttvar: float | None, tps: int = DEFAULT_TICKS_PER_SECOND) -> int:
    """b.13 / T.5: RttVar in ticks scaled x4 (USHORT)."""
    if rttvar is None:
        return 0
    return max(0, min(_U16, int(math.floor(rttvar * tps * 4 + 0.5))))


def rttvar_from_field(value: int, srtt: float | None, tps: int = DEFAULT_TICKS_PER_SECOND) -> float | None:
    if srtt is None:
        return None
    return value / (4 * tps)


def _u8(v: int) -> int:
    return max(0, min(0xFF, v))


def _u32(v: int) -> int:
    return max(0, min(_U32, v))


def pad_mac(mac: bytes) -> bytes:
    """A MAC in a UCHAR[32] field (b.8)."""
    return bytes(mac[:32]).ljust(32, b"\0")


# ---- host -> target ---------------------------------------------------------------------------


def tcp_const_from_snapshot(snap: TcbSnapshot, *, hash_value: int = 0) -> TCP_OFFLOAD_STATE_CONST:
    """b.11.  Ports are host-order integers (the reference leaves the byte order open)."""
    flags = 0
    if snap.timestamps_enabled:
        flags |= TCP_FLAG_TIMESTAMP_ENABLED
    if snap.sack_enabled:
        flags |= TCP_FLAG_SACK_ENABLED
    if snap.snd_wscale or snap.rcv_wscale:
        flags |= TCP_FLAG_WINDOW_SCALING_ENABLED
    return TCP_OFFLOAD_STATE_CONST(
        Flags=flags,
        RemotePort=snap.remote_port,
        LocalPort=snap.local_port,
        SndWindScale=snap.snd_wscale,
        RcvWindScale=snap.rcv_wscale,
        RemoteMss=min(_U16, snap.remote_mss),
        HashValue=hash_value & _U32,
    )


def tcp_cached_from_snapshot(
    snap: TcbSnapshot,
    tps: int = DEFAULT_TICKS_PER_SECOND,
    extras: TcpCachedExtras | None = None,
    *,
    flags: int = 0,
) -> TCP_OFFLOAD_STATE_CACHED:
    """b.12.  ``flags`` adds TCP_FLAG_KEEP_ALIVE_RESTART / MAX_RT_RESTART / UPDATE_RCV_WND for an
    update (the enable flags come from the snapshot)."""
    x = extras if extras is not None else TcpCachedExtras()
    f = flags
    if snap.keepalive:
        f |= TCP_FLAG_KEEP_ALIVE_ENABLED
    if not snap.nodelay:
        f |= TCP_FLAG_NAGLING_ENABLED
    return TCP_OFFLOAD_STATE_CACHED(
        Flags=f,
        InitialRcvWnd=_u32(snap.initial_rcv_wnd),
        RcvIndicationSize=x.rcv_indication_size,
        KaProbeCount=_u8(snap.keepalive_probes),
        KaTimeout=to_ticks(snap.keepalive_idle, tps),
        KaInterval=to_ticks(snap.keepalive_interval, tps),
        MaxRT=x.max_rt,
        FlowLabel=x.flow_label,
        TtlOrHopLimit=x.ttl,
        TosOrTrafficClass=x.tos,
        UserPriority=x.user_priority,
    )


def _retransmit_slot(snap: TcbSnapshot) -> float | None:
    """T.4: the one timer that Retransmit.TimeoutDelta carries."""
    for d in (snap.retransmit_timeout_delta, snap.persist_timeout_delta, snap.fin_wait_2_timeout_delta):
        if d is not None:
            return d
    return None


def tcp_delegated_from_snapshot(
    snap: TcbSnapshot,
    tps: int = DEFAULT_TICKS_PER_SECOND,
    *,
    send_data: NET_BUFFER_LIST | None = None,
    buffered: NET_BUFFER_LIST | None = None,
) -> TCP_OFFLOAD_STATE_DELEGATED:
    """b.13 from the snapshot.  ``send_data`` (head of the NBL chain holding ``snap.send_data``)
    sets SendDataHead/SendDataTail; ``buffered`` is BufferedData."""
    if snap.state not in EXPORTABLE_STATES:
        raise ConversionError(f"state {snap.state} is not offloadable (b.14)")
    nbls = list(iter_nbls(send_data))
    return TCP_OFFLOAD_STATE_DELEGATED(
        State=TCP_OFFLOAD_CONNECTION_STATE(snap.state.value),
        RcvNxt=snap.rcv_nxt & _U32,
        RcvWnd=_u32(snap.rcv_wnd),
        SndUna=snap.snd_una & _U32,
        SndNxt=snap.snd_nxt & _U32,
        SndMax=snap.snd_max & _U32,
        SndWnd=_u32(snap.snd_wnd),
        MaxSndWnd=_u32(snap.max_snd_wnd),
        SendWL1=snap.snd_wl1 & _U32,
        CWnd=_u32(snap.cwnd),
        SsThresh=_u32(snap.ssthresh),
        SRtt=srtt_to_field(snap.srtt, tps),
        RttVar=rttvar_to_field(snap.rttvar, tps),
        TsRecent=snap.ts_recent & _U32,
        TsRecentAge=to_ticks(snap.ts_recent_age or 0.0, tps),
        TsTime=snap.ts_time & _U32,  # T.6: clock + delta, already in the snapshot
        TotalRT=to_ticks(snap.total_rt, tps),
        DupAckCount=_u8(snap.dup_ack_count),
        SndWndProbeCount=_u8(snap.snd_wnd_probe_count),
        KeepAlive=KeepAliveState(
            _u8(snap.keepalive_probe_count), timer_to_ticks(snap.keepalive_timeout_delta, tps)
        ),
        Retransmit=RetransmitState(
            _u8(snap.retransmit_count), timer_to_ticks(_retransmit_slot(snap), tps)
        ),
        SendDataHead=nbls[0] if nbls else None,
        SendDataTail=nbls[-1] if nbls else None,
        BufferedData=buffered,
    )


def send_nbls(data: bytes, chunk: int = SEND_CHUNK, *, label: str = "send") -> list[NET_BUFFER_LIST]:
    """T.3: the send data as NBLs of at most ``chunk`` bytes, in order (one NBL per chunk)."""
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    return [
        NET_BUFFER_LIST(data[i : i + chunk], label=f"{label}{i // chunk}")
        for i in range(0, len(data), chunk)
    ]


def buffered_nbl(data: bytes, *, label: str = "buffered") -> NET_BUFFER_LIST | None:
    """b.13 BufferedData: one NBL, or None when nothing is buffered."""
    return NET_BUFFER_LIST(data, label=label) if data else None


def nbl_chain_bytes(head: NET_BUFFER_LIST | Iterable[NET_BUFFER_LIST] | None) -> bytes:
    """T.3: the data of a chain from each NBL's current data start, in chain order."""
    if head is None:
        return b""
    it = iter_nbls(head) if isinstance(head, NET_BUFFER_LIST) else head
    return b"".join([n.data for n in it])  # views: one copy, into the result


def tcp_state_from_snapshot(
    snap: TcbSnapshot,
    tps: int = DEFAULT_TICKS_PER_SECOND,
    *,
    extras: TcpCachedExtras | None = None,
    hash_value: int = 0,
    chunk: int = SEND_CHUNK,
    include_buffered: bool = True,
    label: str = "T",
) -> tuple[TcpOffloadState, NET_BUFFER_LIST | None]:
    """The full TCP state for an initiate (b.19) and the send-data NBL chain that goes in the
    block's NetBufferListChain (``None`` when there is no send data)."""
    chain = link_nbls(send_nbls(snap.send_data, chunk, label=f"{label}-send"))
    buffered = (
        buffered_nbl(snap.buffered_receive, label=f"{label}-buffered") if include_buffered else None
    )
    state = TcpOffloadState(
        tcp_const_from_snapshot(snap, hash_value=hash_value),
        tcp_cached_from_snapshot(snap, tps, extras),
        tcp_delegated_from_snapshot(snap, tps, send_data=chain, buffered=buffered),
    )
    return state, chain


# ---- target -> host ---------------------------------------------------------------------------

_FIN_SENT_STATES = frozenset(
    {TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT}
)
_FIN_ACKED_STATES = frozenset({TcpState.FIN_WAIT_2, TcpState.TIME_WAIT})
_FIN_RECEIVED_STATES = frozenset(
    {TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT}
)


_STATE_OF = {s.value: s for s in TcpState}


def snapshot_from_delegated(
    d: TCP_OFFLOAD_STATE_DELEGATED,
    base: TcbSnapshot,
    send_data: bytes,
    buffered: bytes = b"",
    tps: int = DEFAULT_TICKS_PER_SECOND,
    *,
    in_place: bool = False,
) -> TcbSnapshot:
    """Rebuild a ``TcbSnapshot`` from the delegated state a terminate returned (d.3 step 5).

    ``base`` is the snapshot exported at offload: it supplies the constant and cached members
    (never returned, b.19) and the ISS/IRS.  The result is a copy of ``base`` with the returned
    members written; ``in_place``: ``base`` itself becomes the result (for a caller that does
    not need the offload-time snapshot any more: the upload of a terminate tree, where a new
    52-member object per connection is a cost worth saving).  Nothing is written when the
    state is refused (:class:`ConversionError`).  ``send_data`` is the data from SndUna (the bytes of
    the returned NetBufferListChain, plus anything the host still has queued after it);
    ``buffered`` is received-but-undelivered data ending at RcvNxt (BufferedData, d.3 step 7).

    (The unit conversions of ``srtt_from_field``, ``rttvar_from_field``, ``timer_from_ticks``
    and ``from_ticks`` are written out here: this runs once per connection of a terminate
    tree.)
    """
    try:
        state = _STATE_OF[int(d.State)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"unknown State {d.State!r}") from exc
    una, mx = d.SndUna, d.SndMax
    # b.13 / T.5: SRtt x8, RttVar x4, in ticks; SRtt 0 = no sample yet
    srtt_field = d.SRtt
    if srtt_field == 0:
        srtt = rttvar = None
        rto = base.rto
    else:
        srtt = srtt_field / (8 * tps)
        rttvar = d.RttVar / (4 * tps)
        rto = srtt + 4 * rttvar  # RFC 6298 (2.3)
        rto = _MIN_RTO if rto < _MIN_RTO else (_MAX_RTO if rto > _MAX_RTO else rto)
    # T.4: Retransmit.TimeoutDelta is the retransmit timer, or the persist timer (zero window,
    # nothing in flight), or the FIN_WAIT_2 timer (FIN acked, nothing in flight); 0xFFFFFFFF
    # = not running.
    rt = d.Retransmit
    rexmit = persist = fw2 = None
    if rt.TimeoutDelta != TIMER_NOT_RUNNING:
        slot = rt.TimeoutDelta / tps
        if state is TcpState.FIN_WAIT_2 and una == mx:
            fw2 = slot
        elif d.SndWnd == 0 and una == mx and send_data:
            persist = slot
        else:
            rexmit = slot
    ka = d.KeepAlive
    ka_delta = None if ka.TimeoutDelta == TIMER_NOT_RUNNING else ka.TimeoutDelta / tps
    # b.14: the FIN bookkeeping follows from the state
    fin_queued = state in _FIN_SENT_STATES
    fin_seq: int | None = None
    fin_sent = False
    if fin_queued:
        fin_seq = seq_add(una, -1) if state in _FIN_ACKED_STATES else seq_add(una, len(send_data))
        fin_sent = seq_diff(mx, fin_seq) > 0
    snd_wnd = d.SndWnd
    max_snd_wnd = d.MaxSndWnd
    # Everything that can fail has been checked: the members the terminate returns are
    # written now (the const and cached ones, ISS and IRS stay as exported)
    s = base if in_place else dataclasses.replace(base)
    s.state = state
    s.rcv_nxt = d.RcvNxt
    s.rcv_wnd = d.RcvWnd
    s.snd_una = una
    s.snd_nxt = d.SndNxt
    s.snd_max = mx
    s.snd_wnd = snd_wnd
    s.max_snd_wnd = max_snd_wnd if max_snd_wnd > snd_wnd else snd_wnd
    s.snd_wl1 = d.SendWL1
    s.snd_wl2 = una  # not carried (b.13 has no SndWL2): SND.UNA is a safe WL2
    s.cwnd = d.CWnd
    s.ssthresh = d.SsThresh
    s.srtt = srtt
    s.rttvar = rttvar
    s.rto = rto
    s.ts_recent = d.TsRecent
    s.ts_recent_age = d.TsRecentAge / tps if s.timestamps_enabled else None
    s.ts_time = d.TsTime  # T.6
    s.total_rt = d.TotalRT / tps
    s.dup_ack_count = d.DupAckCount
    s.snd_wnd_probe_count = d.SndWndProbeCount
    s.keepalive_probe_count = ka.ProbeCount
    s.keepalive_timeout_delta = ka_delta
    s.retransmit_count = rt.Count
    s.retransmit_timeout_delta = rexmit
    s.persist_timeout_delta = persist
    s.fin_wait_2_timeout_delta = fw2
    s.fin_queued = fin_queued
    s.fin_seq = fin_seq
    s.fin_sent = fin_sent
    s.fin_received = state in _FIN_RECEIVED_STATES
    s.in_recovery = False  # NewReno state is not carried
    s.recover = una
    s.send_data = send_data
    s.buffered_receive = buffered
    return s


# ---- neighbor and path (b.8, b.9) ----------------------------------------------------------------


def neighbor_state(
    next_hop_mac: bytes,
    *,
    source_mac: bytes | None = None,
    vlan_id: int = 0,
    host_reachability_delta: int = 0,
    nic_reachability_delta: int = 0,
) -> NeighborOffloadState:
    """b.8: DlDestinationAddress = the next hop's MAC (from the neighbor cache);
    DlSourceAddress = ``source_mac`` or zero (= the interface's MAC); VlanId (0 = interface's)."""
    return NeighborOffloadState(
        NEIGHBOR_OFFLOAD_STATE_CONST(
            pad_mac(source_mac) if source_mac else bytes(32), vlan_id & 0xFFF
        ),
        NEIGHBOR_OFFLOAD_STATE_CACHED(pad_mac(next_hop_mac), host_reachability_delta & _U32),
        NEIGHBOR_OFFLOAD_STATE_DELEGATED(nic_reachability_delta & _U32),
    )


def path_state(source: bytes, destination: bytes, path_mtu: int = 1500) -> PathOffloadState:
    """b.9: SourceAddress / DestinationAddress (network order) and PathMtu."""
    return PathOffloadState(
        PATH_OFFLOAD_STATE_CONST(bytes(source), bytes(destination)),
        PATH_OFFLOAD_STATE_CACHED(path_mtu),
        PATH_OFFLOAD_STATE_DELEGATED(),
    )
