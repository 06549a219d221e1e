"""TcbSnapshot <-> TCP_OFFLOAD_STATE_CONST / CACHED / DELEGATED, neighbor and path state
(reference b.8 - b.13, T.3 - T.6)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndis.blocks import iter_nbls, link_nbls
from ndis.state import (
    TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_NAGLING_ENABLED,
    TCP_FLAG_SACK_ENABLED,
    TCP_FLAG_TIMESTAMP_ENABLED,
    TCP_FLAG_WINDOW_SCALING_ENABLED,
    TCP_OFFLOAD_CONNECTION_STATE,
    TCP_OFFLOAD_STATE_DELEGATED,
    TIMER_NOT_RUNNING,
    NeighborOffloadState,
    PathOffloadState,
    PointerTable,
)
from tcpip.offload_convert import (
    ConversionError,
    nbl_chain_bytes,
    neighbor_state,
    path_state,
    rttvar_to_field,
    send_nbls,
    snapshot_from_delegated,
    srtt_from_field,
    srtt_to_field,
    tcp_cached_from_snapshot,
    tcp_const_from_snapshot,
    tcp_delegated_from_snapshot,
    tcp_state_from_snapshot,
    timer_from_ticks,
    timer_to_ticks,
    to_ticks,
)
from tcpip.seq import seq_add
from tcpip.tcb import EXPORTABLE_STATES, TcbSnapshot, TcpState

HOST = bytes([198, 18, 0, 2])
PEER = bytes([198, 18, 0, 1])


def make_snapshot(**kw: object) -> TcbSnapshot:
    una = int(kw.pop("snd_una", 5000))  # type: ignore[call-overload]
    data = bytes(kw.pop("send_data", b"hello world"))  # type: ignore[call-overload]
    base: dict[str, object] = dict(
        local_ip=HOST, local_port=40000, remote_ip=PEER, remote_port=7, remote_mss=1460,
        snd_wscale=7, rcv_wscale=9, timestamps_enabled=True, sack_enabled=False,
        nodelay=False, keepalive=True, keepalive_idle=7200.0, keepalive_interval=75.0,
        keepalive_probes=9, initial_rcv_wnd=1 << 20,
        state=TcpState.ESTABLISHED, rcv_nxt=1000, rcv_wnd=65536, snd_una=una,
        snd_nxt=seq_add(una, 5), snd_max=seq_add(una, 8), snd_wnd=131072, max_snd_wnd=262144,
        snd_wl1=999, snd_wl2=una, cwnd=14600, ssthresh=65535, srtt=0.0125, rttvar=0.004,
        rto=0.2, ts_recent=123456, ts_recent_age=0.25, ts_time=987654, total_rt=0.0,
        dup_ack_count=0, snd_wnd_probe_count=0, keepalive_probe_count=0,
        keepalive_timeout_delta=7199.5, retransmit_count=0, retransmit_timeout_delta=0.2,
        persist_timeout_delta=None, fin_wait_2_timeout_delta=None, fin_queued=False,
        fin_seq=None, fin_sent=False, fin_received=False, in_recovery=False, recover=una,
        iss=una - 1, irs=999 - 1, send_data=data, buffered_receive=b"unread",
    )
    base.update(kw)
    return TcbSnapshot(**base)  # type: ignore[arg-type]


# ---- scalar rules ---------------------------------------------------------------------------


def test_ticks_default_and_other_rates() -> None:
    assert to_ticks(1.0) == 1000
    assert to_ticks(1.0, 100) == 100
    assert to_ticks(0.0) == 0 and to_ticks(-3) == 0
    assert to_ticks(0.0004) == 0 and to_ticks(0.0006) == 1


def test_timer_minus_one_rules() -> None:
    # T.4: a stopped timer is (ULONG)-1 both ways; a running one never is
    assert timer_to_ticks(None) == TIMER_NOT_RUNNING
    assert timer_from_ticks(TIMER_NOT_RUNNING) is None
    assert timer_to_ticks(0.0) == 0
    assert timer_from_ticks(0) == 0.0  # running, expires at once
    assert timer_to_ticks(1e12) == TIMER_NOT_RUNNING - 1


def test_srtt_x8_rttvar_x4() -> None:
    # T.5: SRtt x8 and RttVar x4 in ticks
    assert srtt_to_field(0.0125) == 100  # 12.5 ms = 12.5 ticks, x8
    assert rttvar_to_field(0.004) == 16  # 4 ticks x4
    assert srtt_to_field(0.0125, 100) == 10
    assert srtt_to_field(None) == 0 and srtt_from_field(0) is None
    assert srtt_to_field(100.0) == 0xFFFF  # USHORT clamp
    assert srtt_to_field(1e-9) == 1  # a real sample is never "no sample"


# ---- host -> target -------------------------------------------------------------------------


def test_const_mapping() -> None:
    s = make_snapshot(sack_enabled=True)
    c = tcp_const_from_snapshot(s, hash_value=0x1234)
    assert c.Flags == TCP_FLAG_TIMESTAMP_ENABLED | TCP_FLAG_SACK_ENABLED | TCP_FLAG_WINDOW_SCALING_ENABLED
    assert (c.RemotePort, c.LocalPort) == (7, 40000)
    assert (c.SndWindScale, c.RcvWindScale) == (7, 9)
    assert c.RemoteMss == 1460 and c.HashValue == 0x1234
    c2 = tcp_const_from_snapshot(make_snapshot(timestamps_enabled=False, snd_wscale=0, rcv_wscale=0))
    assert c2.Flags == 0
    assert len(c.encode()) == 0x18


def test_cached_mapping() -> None:
    s = make_snapshot()
    c = tcp_cached_from_snapshot(s, 1000)
    assert c.Flags == TCP_FLAG_KEEP_ALIVE_ENABLED | TCP_FLAG_NAGLING_ENABLED
    assert c.InitialRcvWnd == 1 << 20
    assert (c.KaProbeCount, c.KaTimeout, c.KaInterval) == (9, 7_200_000, 75_000)
    c10 = tcp_cached_from_snapshot(make_snapshot(keepalive=False, nodelay=True), 10)
    assert c10.Flags == 0 and c10.KaTimeout == 72_000
    assert len(c.encode()) == 0x2C


def test_delegated_mapping_exact() -> None:
    s = make_snapshot(retransmit_count=2, total_rt=1.5, dup_ack_count=1, snd_wnd_probe_count=0,
                      keepalive_probe_count=3)
    chain = send_nbls(s.send_data, 4)
    d = tcp_delegated_from_snapshot(s, 1000, send_data=link_nbls(chain))
    assert d.State == TCP_OFFLOAD_CONNECTION_STATE.TcpConnectionEstablished
    assert (d.RcvNxt, d.RcvWnd) == (1000, 65536)
    assert (d.SndUna, d.SndNxt, d.SndMax) == (5000, 5005, 5008)
    assert (d.SndWnd, d.MaxSndWnd, d.SendWL1) == (131072, 262144, 999)
    assert (d.CWnd, d.SsThresh) == (14600, 65535)
    assert (d.SRtt, d.RttVar) == (100, 16)
    assert (d.TsRecent, d.TsRecentAge, d.TsTime) == (123456, 250, 987654)
    assert (d.TotalRT, d.DupAckCount, d.SndWndProbeCount) == (1500, 1, 0)
    assert (d.KeepAlive.ProbeCount, d.KeepAlive.TimeoutDelta) == (3, 7_199_500)
    assert (d.Retransmit.Count, d.Retransmit.TimeoutDelta) == (2, 200)
    assert d.SendDataHead is chain[0] and d.SendDataTail is chain[-1]


def test_persist_and_fin_wait_2_ride_in_the_retransmit_slot() -> None:
    # T.4: Retransmit.TimeoutDelta also carries the persist and FIN_WAIT_2 timers
    s = make_snapshot(retransmit_timeout_delta=None, persist_timeout_delta=0.4, snd_wnd=0,
                      snd_nxt=5000, snd_max=5000)
    assert tcp_delegated_from_snapshot(s).Retransmit.TimeoutDelta == 400
    s2 = make_snapshot(retransmit_timeout_delta=None)
    assert tcp_delegated_from_snapshot(s2).Retransmit.TimeoutDelta == TIMER_NOT_RUNNING


def test_only_offloadable_states() -> None:
    # b.14 / V15
    for state in TcpState:
        s = make_snapshot(state=state)
        if state in EXPORTABLE_STATES:
            tcp_delegated_from_snapshot(s)
        else:
            with pytest.raises(ConversionError):
                tcp_delegated_from_snapshot(s)


def test_send_data_one_nbl_per_chunk_and_buffered_data() -> None:
    data = bytes(range(256)) * 100
    s = make_snapshot(send_data=data, snd_nxt=seq_add(5000, 10_000), snd_max=seq_add(5000, 20_000))
    state, chain = tcp_state_from_snapshot(s, chunk=8192)
    nbls = list(iter_nbls(chain))
    assert [n.DataLength for n in nbls] == [8192, 8192, 8192, 1024]
    assert nbl_chain_bytes(chain) == data
    assert state.Delegated.SendDataHead is nbls[0] and state.Delegated.SendDataTail is nbls[-1]
    assert bytes(state.Delegated.BufferedData.data) == b"unread"
    assert state.Delegated.BufferedData.Next is None
    _, none = tcp_state_from_snapshot(make_snapshot(send_data=b"", snd_nxt=5000, snd_max=5000))
    assert none is None


# ---- target -> host -------------------------------------------------------------------------


def _roundtrip(s: TcbSnapshot, tps: int = 1000) -> TcbSnapshot:
    state, chain = tcp_state_from_snapshot(s, tps)
    ptrs = PointerTable()
    raw = state.Delegated.encode(ptrs)
    assert len(raw) == 0x80
    back = TCP_OFFLOAD_STATE_DELEGATED.decode(raw, ptrs)
    assert back.SendDataHead is state.Delegated.SendDataHead
    assert back.BufferedData is state.Delegated.BufferedData
    return snapshot_from_delegated(
        back, s, send_data=nbl_chain_bytes(chain), buffered=nbl_chain_bytes(back.BufferedData), tps=tps
    )


def test_round_trip_established() -> None:
    s = make_snapshot()
    r = _roundtrip(s)
    assert r == dataclasses.replace(s, rto=r.rto)
    assert r.rto == pytest.approx(0.2)


def test_round_trip_ticks_precision() -> None:
    s = make_snapshot(srtt=0.0333, rttvar=0.0111, total_rt=0.0, keepalive_timeout_delta=12.3456)
    r = _roundtrip(s, 100)
    assert r.srtt == pytest.approx(0.0333, abs=1 / 800)
    assert r.rttvar == pytest.approx(0.0111, abs=1 / 400)
    assert r.keepalive_timeout_delta == pytest.approx(12.35)
    assert r.ts_time == s.ts_time  # T.6: a clock value, not a duration


def test_fin_bookkeeping_from_state() -> None:
    una = 5000
    # FIN_WAIT_1: our FIN follows the data and was sent (SndMax = data end + 1)
    s = make_snapshot(state=TcpState.FIN_WAIT_1, send_data=b"abc", snd_nxt=una + 4, snd_max=una + 4,
                      fin_queued=True, fin_seq=una + 3, fin_sent=True)
    r = _roundtrip(s)
    assert (r.fin_queued, r.fin_seq, r.fin_sent, r.fin_received) == (True, una + 3, True, False)
    # FIN_WAIT_2: FIN acknowledged, no data left; the slot is the FIN_WAIT_2 timer
    s2 = make_snapshot(state=TcpState.FIN_WAIT_2, send_data=b"", snd_una=una + 1, snd_nxt=una + 1,
                       snd_max=una + 1, fin_queued=True, fin_seq=una, fin_sent=True,
                       retransmit_timeout_delta=None, fin_wait_2_timeout_delta=30.0)
    r2 = _roundtrip(s2)
    assert r2.fin_seq == una and r2.fin_wait_2_timeout_delta == 30.0
    assert r2.retransmit_timeout_delta is None
    # CLOSE_WAIT: the peer's FIN was consumed
    r3 = _roundtrip(make_snapshot(state=TcpState.CLOSE_WAIT, fin_received=True))
    assert r3.fin_received and not r3.fin_queued


def test_unknown_state_is_refused() -> None:
    d = TCP_OFFLOAD_STATE_DELEGATED(State=11)
    with pytest.raises(ConversionError):
        snapshot_from_delegated(d, make_snapshot(), send_data=b"")
    # in place: a refused state writes nothing into the base
    base = make_snapshot()
    before = dataclasses.replace(base)
    with pytest.raises(ConversionError):
        snapshot_from_delegated(d, base, send_data=b"", in_place=True)
    assert base == before


def test_in_place_writes_the_base_and_the_default_leaves_it() -> None:
    s = make_snapshot(rcv_nxt=1000, snd_una=5000, snd_nxt=5000, snd_max=5000, send_data=b"")
    state, _ = tcp_state_from_snapshot(s, 1000)
    d = state.Delegated
    d.RcvNxt, d.SndUna, d.SndNxt, d.SndMax = 1500, 5100, 5100, 5100
    base = dataclasses.replace(s)
    copy = snapshot_from_delegated(d, base, send_data=b"")
    assert copy is not base and base == s  # the default: a copy, the base as it was
    assert (copy.rcv_nxt, copy.snd_una) == (1500, 5100)
    same = snapshot_from_delegated(d, base, send_data=b"", in_place=True)
    assert same is base and same == copy


# ---- hypothesis over snapshots -------------------------------------------------------------

seqs = st.integers(0, 0xFFFFFFFF)
timers = st.one_of(st.none(), st.floats(0, 100_000, allow_nan=False))


@st.composite
def snapshots(draw: st.DrawFn) -> TcbSnapshot:
    una = draw(seqs)
    data = draw(st.binary(max_size=300))
    sent = draw(st.integers(0, len(data)))
    nxt_off = draw(st.integers(0, sent))
    state = draw(st.sampled_from([TcpState.ESTABLISHED, TcpState.CLOSE_WAIT]))
    ts = draw(st.booleans())
    srtt = draw(st.one_of(st.none(), st.floats(0.001, 8.0)))
    rexmit = draw(timers)
    return make_snapshot(
        state=state, fin_received=state is TcpState.CLOSE_WAIT,
        snd_una=una, send_data=data, snd_nxt=seq_add(una, nxt_off), snd_max=seq_add(una, sent),
        snd_wl2=una, recover=una, rcv_nxt=draw(seqs), rcv_wnd=draw(st.integers(0, 1 << 30)),
        snd_wnd=draw(st.integers(1, 1 << 30)), max_snd_wnd=1 << 30, snd_wl1=draw(seqs),
        cwnd=draw(st.integers(0, 0xFFFFFFFF)), ssthresh=draw(st.integers(0, 0xFFFFFFFF)),
        srtt=srtt, rttvar=None if srtt is None else draw(st.floats(0, 4.0)),
        timestamps_enabled=ts, ts_recent=draw(seqs),
        ts_recent_age=draw(st.floats(0, 1e5)) if ts else None, ts_time=draw(seqs),
        total_rt=draw(st.floats(0, 1e4)), dup_ack_count=draw(st.integers(0, 255)),
        snd_wnd_probe_count=0, keepalive_probe_count=draw(st.integers(0, 255)),
        keepalive_timeout_delta=draw(timers), retransmit_count=draw(st.integers(0, 255)),
        retransmit_timeout_delta=rexmit, buffered_receive=draw(st.binary(max_size=100)),
    )


@settings(max_examples=300, deadline=None)
@given(snapshots(), st.sampled_from([10, 100, 1000]))
def test_hypothesis_round_trip(s: TcbSnapshot, tps: int) -> None:
    r = _roundtrip(s, tps)
    tick = 1 / tps
    for name in ("state", "rcv_nxt", "rcv_wnd", "snd_una", "snd_nxt", "snd_max", "snd_wnd",
                 "snd_wl1", "cwnd", "ssthresh", "ts_recent", "ts_time", "dup_ack_count",
                 "keepalive_probe_count", "retransmit_count", "send_data", "buffered_receive",
                 "fin_received", "iss", "irs", "local_port", "remote_port"):
        assert getattr(r, name) == getattr(s, name), name
    if s.srtt is None:
        assert r.srtt is None and r.rttvar is None
    else:
        assert r.srtt == pytest.approx(min(s.srtt, 0xFFFF / (8 * tps)), abs=tick / 8 + 1e-9)
    for name in ("keepalive_timeout_delta", "retransmit_timeout_delta"):
        a, b = getattr(s, name), getattr(r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert b == pytest.approx(a, abs=tick)
    if s.timestamps_enabled:
        assert r.ts_recent_age == pytest.approx(s.ts_recent_age, abs=tick)
    assert r.total_rt == pytest.approx(s.total_rt, abs=tick)


# ---- neighbor and path (b.8, b.9) -----------------------------------------------------------


def test_neighbor_and_path_state() -> None:
    mac = bytes.fromhex("020000000001")
    n = neighbor_state(mac, source_mac=bytes.fromhex("020000000002"), vlan_id=5)
    assert isinstance(n, NeighborOffloadState)
    assert n.Cached.DlDestinationAddress[:6] == mac and len(n.Cached.DlDestinationAddress) == 32
    assert n.Const.DlSourceAddress[:6] == bytes.fromhex("020000000002")
    assert n.Const.VlanId == 5
    assert neighbor_state(mac).Const.DlSourceAddress == bytes(32)
    p = path_state(HOST, PEER, 1400)
    assert isinstance(p, PathOffloadState)
    assert (p.Const.SourceAddress, p.Const.DestinationAddress, p.Cached.PathMtu) == (HOST, PEER, 1400)
    n.validate()
    p.validate()
