"""export_state / from_snapshot: the TCB handed to an offload target and back (NDIS b.13, T.3-T.6)."""

import dataclasses

import pytest

from tcpip.tcb import TcpState
from tcpip.tcp import TcpConnection

from .conftest import (
    ACK,
    FIN,
    LOCAL_IP,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    SEND,
    close_wait,
    closing,
    config,
    established,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    recv,
    recv_nothing,
    recv_one,
    snapshot,
    syn_received,
    syn_sent,
    time_wait,
)

BASE = LOCAL_SEQ + 1
R = REMOTE_SEQ + 1
DATA = bytes(i * 7 & 0xFF for i in range(5000))


def busy():
    """In flight: 2 segments; unsent: the rest (window 3000); 3 bytes received, not read."""
    conn = established(snd_wnd=3000, max_snd_wnd=3000)
    conn.send(DATA)
    out = recv(conn, 0.0)
    assert [len(s.payload) for s in out] == [MSS, MSS]
    conn.on_segment(SEND(ack=BASE, payload=b"abc", window=3000), 0.1)
    assert recv_one(conn, 0.1).ack == R + 3
    return conn


def test_export_fields():
    snap = busy().export_state(0.3)
    assert snap.state is TcpState.ESTABLISHED
    assert (snap.snd_una, snap.snd_nxt, snap.snd_max) == (BASE, BASE + 2 * MSS, BASE + 2 * MSS)
    assert snap.send_data == DATA  # from SND.UNA: unacked, then unsent
    assert snap.buffered_receive == b"abc"
    assert snap.rcv_nxt == R + 3
    assert snap.rcv_wnd == 65535 - 3
    assert snap.snd_wnd == 3000 and snap.max_snd_wnd == 3000
    assert snap.retransmit_timeout_delta == pytest.approx(0.7)
    assert snap.persist_timeout_delta is None and snap.keepalive_timeout_delta is None
    assert snap.cwnd == 10 * MSS and snap.srtt is None
    assert (snap.local_port, snap.remote_port, snap.remote_mss) == (80, 49500, MSS)
    assert not snap.fin_queued and snap.fin_seq is None


def test_import_continues_exactly():
    snap = busy().export_state(0.3)
    conn = TcpConnection.from_snapshot(snap, config(), 10.0)
    assert conn.receive() == b"abc"
    recv_nothing(conn, 10.0)  # nothing new fits the window (sender SWS)
    assert conn.next_deadline() == pytest.approx(10.7)
    rexmit = recv_one(conn, 10.7)
    assert (rexmit.seq, rexmit.payload) == (BASE, DATA[:MSS])
    conn.on_segment(SEND(seq=R + 3, ack=BASE + 2 * MSS, window=65535), 10.8)
    got = b"".join(s.payload for s in recv(conn, 10.8))
    assert got == DATA[2 * MSS :]


def test_export_requires_flushing_the_delayed_ack():
    conn = established(cfg=config(delayed_ack=0.2))
    conn.on_segment(SEND(payload=b"owed"), 0.0)
    with pytest.raises(ValueError, match="flush_ack"):
        conn.export_state(0.01)
    ack = conn.flush_ack(0.01)
    assert [(s.ack, s.flags) for s in ack] == [(R + 4, ACK)]
    assert conn.flush_ack(0.01) == []
    snap = conn.export_state(0.01)
    assert snap.buffered_receive == b"owed"
    recv_nothing(conn, 1.0)  # the delayed ACK timer is gone too


@pytest.mark.parametrize("make", [lambda: syn_sent()[0], lambda: syn_received()[0], time_wait])
def test_export_refused_outside_synchronized_states(make):
    with pytest.raises(ValueError):
        make().export_state(0.0)


@pytest.mark.parametrize(
    "make", [established, fin_wait_1, fin_wait_2, close_wait, last_ack, closing, busy]
)
def test_snapshot_round_trip_is_identity(make):
    conn = make()
    recv(conn, 0.2)
    snap = conn.export_state(0.2)
    again = TcpConnection.from_snapshot(snap, config(), 0.2).export_state(0.2)
    assert again == snap


def test_fin_state_is_carried():
    snap = fin_wait_1().export_state(0.0)
    assert snap.fin_queued and snap.fin_seq == BASE
    conn = TcpConnection.from_snapshot(snap, config(), 5.0)
    recv_nothing(conn, 5.0)
    fin = recv_one(conn, conn.next_deadline())
    assert (fin.seq, fin.flags) == (BASE, FIN | ACK)
    conn.on_segment(SEND(ack=BASE + 1), 7.0)
    assert conn.state is TcpState.FIN_WAIT_2


def test_unsent_data_and_queued_fin_are_sent_after_import():
    conn = established(snd_wnd=0)
    conn.send(b"queued")
    conn.close()
    recv(conn, 0.0)
    snap = conn.export_state(0.1)
    assert snap.state is TcpState.FIN_WAIT_1 and snap.fin_seq == BASE + 6
    assert snap.persist_timeout_delta == pytest.approx(0.9)
    imported = TcpConnection.from_snapshot(snap, config(), 1.0)
    imported.on_segment(SEND(window=1000), 1.0)
    seg = recv_one(imported, 1.0)
    assert (seg.seq, seg.payload, seg.flags & FIN) == (BASE, b"queued", FIN)


def test_rtt_and_congestion_state_survive():
    conn = established()
    conn.send(b"x" * 100)
    recv(conn, 0.0)
    conn.on_segment(SEND(ack=BASE + 100), 0.08)
    snap = conn.export_state(0.1)
    assert snap.srtt == pytest.approx(0.08)
    snap = dataclasses.replace(snap, cwnd=4 * MSS, ssthresh=3 * MSS)
    imported = TcpConnection.from_snapshot(snap, config(), 0.0)
    assert imported.rtt.srtt == pytest.approx(0.08) and imported.rtt.rto == pytest.approx(0.24)
    imported.send(b"y" * (10 * MSS))
    assert len(recv(imported, 0.0)) == 4


def test_keepalive_and_probe_counters_survive():
    ka = dict(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0, keepalive_probes=3)
    conn = established(cfg=config(**ka), **ka)
    recv(conn, 0.0)
    recv_one(conn, 10.0)
    snap = conn.export_state(11.0)
    assert snap.keepalive_probe_count == 1 and snap.keepalive_timeout_delta == pytest.approx(1.0)
    imported = TcpConnection.from_snapshot(snap, config(), 50.0)
    recv_nothing(imported, 50.0)
    assert imported.next_deadline() == pytest.approx(51.0)
    recv_one(imported, 51.0)
    recv_one(imported, 53.0)
    recv(imported, 55.0)
    assert imported.closed


@pytest.mark.parametrize(
    "bad",
    [
        dict(state=TcpState.SYN_SENT),
        dict(snd_nxt=LOCAL_SEQ),  # SndNxt before SndUna
        dict(snd_nxt=LOCAL_SEQ + 100, snd_max=LOCAL_SEQ + 100),  # beyond the (empty) data
        dict(fin_queued=True, fin_seq=LOCAL_SEQ + 5, send_data=b"abc"),  # FIN not after data
        dict(fin_queued=True, fin_seq=None),
        dict(snd_wscale=15),
        dict(remote_mss=0),
    ],
)
def test_import_rejects_inconsistent_tcb(bad):
    with pytest.raises(ValueError):
        TcpConnection.from_snapshot(snapshot(**bad), config(), 0.0)


def test_import_logs_the_state_change(caplog):
    with caplog.at_level("DEBUG", logger="tcpip.tcp"):
        TcpConnection.from_snapshot(snapshot(), config(), 0.0)
    assert any("CLOSED -> ESTABLISHED" in r.message for r in caplog.records)


# ---- from_snapshot builds the connection in one pass: same result as __init__ + overwrite ------


def _reference_import(snap, cfg, now):
    """The straightforward import: construct with ``__init__``, then overwrite what the
    snapshot carries (what ``from_snapshot`` did before it wrote each attribute once)."""
    c = TcpConnection(
        cfg, snap.local_ip, snap.local_port, snap.remote_ip, snap.remote_port, snap.iss, now
    )
    c.irs = snap.irs
    c.remote_mss = snap.remote_mss
    c.snd_wscale = snap.snd_wscale
    c.rcv_wscale = snap.rcv_wscale
    c._our_wscale = snap.rcv_wscale
    c.ts_enabled = snap.timestamps_enabled
    c.sack_enabled = snap.sack_enabled
    c.nodelay = snap.nodelay
    c.keepalive = snap.keepalive
    c.keepalive_idle = snap.keepalive_idle
    c.keepalive_interval = snap.keepalive_interval
    c.keepalive_probes = snap.keepalive_probes
    c._rbuf_limit = max(1, snap.initial_rcv_wnd)
    c._update_mss()
    c.rcv_nxt = snap.rcv_nxt
    c._last_ack_sent = snap.rcv_nxt
    c._rcv_adv = c._rcv_adv_wire = (snap.rcv_nxt + max(0, snap.rcv_wnd)) % (1 << 32)
    c.snd_una, c.snd_nxt, c.snd_max = snap.snd_una, snap.snd_nxt, snap.snd_max
    c.snd_wnd = snap.snd_wnd
    c.max_snd_wnd = max(snap.max_snd_wnd, snap.snd_wnd)
    c.snd_wl1, c.snd_wl2 = snap.snd_wl1, snap.snd_wl2
    c._sbuf = bytearray(snap.send_data)
    c._sbuf_seq = snap.snd_una
    c._snd_sml = snap.snd_una
    c._sbuf_limit = max(c._sbuf_limit, len(c._sbuf))
    c._rbuf = bytearray(snap.buffered_receive)
    c._fin_queued = snap.fin_queued
    if snap.fin_queued:
        c._fin_seq = snap.fin_seq
    c.eof_received = snap.fin_received
    cc = c.cc
    cc.cwnd = max(snap.cwnd, c._smss)
    cc.ssthresh, cc.dup_acks = snap.ssthresh, snap.dup_ack_count
    cc.in_recovery, cc.recover = snap.in_recovery, snap.recover
    rtt = c.rtt
    if snap.srtt is not None:
        rtt.srtt = snap.srtt
        rtt.rttvar = snap.rttvar if snap.rttvar is not None else snap.srtt / 2
    rtt.rto = min(max(snap.rto, rtt.min_rto), rtt.max_rto)
    rtt.backoff = snap.retransmit_count
    c.retransmit_count = snap.retransmit_count
    if snap.retransmit_count:
        c._rt_start = now - snap.total_rt
    c.ts_recent = snap.ts_recent
    c._ts_recent_time = None if snap.ts_recent_age is None else now - snap.ts_recent_age
    c._ts_offset = (snap.ts_time - int(now * 1000)) % (1 << 32)
    c.persist_backoff = snap.snd_wnd_probe_count
    c.keepalive_probe_count = snap.keepalive_probe_count

    def at(delta):
        return None if delta is None else now + max(0.0, delta)

    c._rto_deadline = at(snap.retransmit_timeout_delta)
    c._persist_deadline = at(snap.persist_timeout_delta)
    c._close_deadline = at(snap.fin_wait_2_timeout_delta)
    c._ka_deadline = at(snap.keepalive_timeout_delta)
    if c._ka_deadline is None and c.keepalive and snap.state in (
            TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        c._ka_deadline = now + c.keepalive_idle
    if c._rto_deadline is None and c.snd_nxt != c.snd_una:
        c._rto_deadline = now + rtt.current_rto()
    c._set_state(snap.state)
    # output pending only for data or a FIN not sent yet (an idle resumed connection is not
    # polled until its timers are due: HostStack.attach)
    c._dirty = len(c._sbuf) > (c.snd_nxt - c.snd_una) % (1 << 32) or (
        snap.fin_queued and snap.snd_max == snap.fin_seq)
    return c


def _slots_set(obj):
    """The connection's attributes that are set, in slot order (TcpConnection has slots)."""
    return {s: getattr(obj, s) for s in type(obj).__slots__
            if s != "__weakref__" and hasattr(obj, s)}


def _attrs(obj):
    """Comparable view of a connection (sub-objects by their slots / fields)."""
    out = {}
    for k, v in _slots_set(obj).items():
        if hasattr(v, "__slots__") and not isinstance(v, (bytes, bytearray)) and k != "config":
            v = (type(v).__name__,
                 {s: getattr(v, s) for s in type(v).__slots__ if hasattr(v, s)})
        out[k] = v
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: busy().export_state(0.3),
        lambda: snapshot(),
        lambda: snapshot(timestamps_enabled=True, ts_recent=77, ts_recent_age=0.5, ts_time=123456,
                         snd_wscale=7, rcv_wscale=5, srtt=0.05, rttvar=None, rto=0.3,
                         keepalive=True),
        lambda: snapshot(keepalive=True, keepalive_timeout_delta=3.0, retransmit_count=2,
                         total_rt=1.5, srtt=0.1, rttvar=0.02, cwnd=10, persist_timeout_delta=-1.0,
                         snd_wnd=0, send_data=b"xy", snd_wnd_probe_count=3, dup_ack_count=2,
                         in_recovery=True, recover=LOCAL_SEQ + 2, buffered_receive=b"in"),
        lambda: snapshot(state=TcpState.FIN_WAIT_2, fin_queued=True, fin_seq=LOCAL_SEQ,
                         fin_sent=True, fin_wait_2_timeout_delta=59.0),
        lambda: snapshot(state=TcpState.LAST_ACK, fin_queued=True, fin_seq=LOCAL_SEQ + 5,
                         send_data=b"abcd", snd_nxt=LOCAL_SEQ + 6, snd_max=LOCAL_SEQ + 6,
                         fin_received=True, max_snd_wnd=10),
        lambda: snapshot(iss=(1 << 32) + 5, rcv_nxt=(1 << 32) - 10, rcv_wnd=100,
                         initial_rcv_wnd=0),
    ],
)
def test_from_snapshot_equals_construct_then_overwrite(make):
    snap = make()
    cfg = config(send_buffer=3, keepalive=False)
    fast = TcpConnection.from_snapshot(snap, cfg, 20.0)
    ref = _reference_import(snap, cfg, 20.0)
    # every attribute __init__ sets, and no other (a new one in __init__ must be added there)
    assert list(_slots_set(fast)) == list(_slots_set(ref))
    # ... and that is every slot: none is left unset (an unset slot raises AttributeError)
    assert len(_slots_set(fast)) == len(TcpConnection.__slots__) - 1
    assert _attrs(fast) == _attrs(ref)
    named = TcpConnection.from_snapshot(snap, cfg, 20.0, name=fast.name)
    assert _attrs(named) == _attrs(fast)
    assert fast.name == ref.name == "198.18.0.1:80 -> 198.18.0.2:49500"


def test_tcp_state_hashes_by_identity_and_still_maps_values():
    # (TcpState.__hash__ is object.__hash__: members are singletons compared by identity)
    states = list(TcpState)
    assert len(states) == 11 and len(set(states)) == 11
    assert {s: s.value for s in states}[TcpState(4)] == 4
    assert TcpState.ESTABLISHED in frozenset({TcpState.ESTABLISHED})
    assert TcpState.ESTABLISHED != 4 and TcpState(10) is TcpState.TIME_WAIT
    assert hash(TcpState.CLOSED) == hash(TcpState(0))


def test_connection_names_are_the_four_tuple_for_many_addresses():
    from tcpip.addr import four_tuple

    cfg = config()
    for i in range(5000):  # more addresses than the name cache keeps
        rip = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
        c = TcpConnection(cfg, LOCAL_IP, 80, rip, 1000 + i, 1, 0.0)
        assert c.name == four_tuple(LOCAL_IP, 80, rip, 1000 + i)


def test_take_buffers_adopts_the_snapshots_bytearrays_and_the_default_copies():
    """from_snapshot(take_buffers=True) (the upload path: megabytes of returned send data) uses
    the snapshot's bytearrays as the connection's buffers; by default they are copied, so the
    caller's objects stay its own."""
    snap = busy().export_state(0.2)
    sd, rd = bytearray(snap.send_data), bytearray(snap.buffered_receive)
    mine = dataclasses.replace(snap, send_data=sd, buffered_receive=rd)
    copied = TcpConnection.from_snapshot(mine, config(), 1.0)
    assert copied._sbuf == sd and copied._sbuf is not sd and copied._rbuf is not rd
    taken = TcpConnection.from_snapshot(mine, config(), 1.0, take_buffers=True)
    assert taken._sbuf is sd and taken._rbuf is rd
    # bytes (not bytearrays) are always copied into new buffers, whatever the flag
    as_bytes = dataclasses.replace(snap, send_data=bytes(sd))
    assert isinstance(TcpConnection.from_snapshot(as_bytes, config(), 1.0,
                                                  take_buffers=True)._sbuf, bytearray)
    # and the adopted buffers work: the rest of the data goes out, the received bytes read
    assert taken.receive(100) == b"abc"
    taken.on_segment(SEND(seq=R + 3, ack=BASE + 2 * MSS, window=60000), 1.0)
    sent = b"".join(s.payload for s in recv(taken, 1.0))
    assert len(sent) > 0 and sent == DATA[2 * MSS: 2 * MSS + len(sent)]
