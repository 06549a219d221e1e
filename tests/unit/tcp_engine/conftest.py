"""Factories and segment templates for the TCP engine tests (smoltcp style).

* ``SEND(...)`` builds a segment *from the peer to the engine* (what the test sends in);
  ``RECV(...)`` a segment *from the engine to the peer* (what the test expects to receive).
  Both start from a template and take keyword overrides, like ``TcpRepr { ..SEND_TEMPL }``.
* Factories build a connection directly in a state: the synchronized states go through
  ``TcpConnection.from_snapshot`` (the public import path), SYN-SENT / SYN-RECEIVED through
  ``connect`` / ``accept``.  Numbers are fixed: our ISS is ``LOCAL_SEQ``, the peer's
  ``REMOTE_SEQ``; in ESTABLISHED, SND.NXT = LOCAL_SEQ+1 and RCV.NXT = REMOTE_SEQ+1.
* ``recv(conn, now)`` returns what ``poll`` emits; ``recv_one`` asserts exactly one segment;
  ``recv_nothing`` asserts none.
"""

from __future__ import annotations

import dataclasses

import pytest

from tcpip.addr import ip_bytes
from tcpip.seq import seq_add
from tcpip.tcb import TcbSnapshot, TcpState
from tcpip.tcp import TcpConfig, TcpConnection
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment

LOCAL_IP = ip_bytes("198.18.0.1")
REMOTE_IP = ip_bytes("198.18.0.2")
LOCAL_PORT = 80
REMOTE_PORT = 49500
LOCAL_SEQ = 10_000
REMOTE_SEQ = 50_000
MSS = 1460
WINDOW = 65535

ACK = TcpFlags.ACK
SYN = TcpFlags.SYN
FIN = TcpFlags.FIN
RST = TcpFlags.RST
PSH = TcpFlags.PSH


def config(**kw) -> TcpConfig:
    """Test defaults: no timestamps, no window scaling needed (64 KiB buffers), immediate ACKs,
    no tail loss probes, no quick-ACK mode, so that each test states the feature it exercises."""
    base = dict(
        timestamps=False,
        delayed_ack=0.0,
        send_buffer=WINDOW,
        receive_buffer=WINDOW,
        msl=1.0,
        fin_wait_2_timeout=5.0,
        tail_loss_probe=False,
        quickack=0,
    )
    base.update(kw)
    return TcpConfig(**base)


def SEND(
    *,
    seq: int = REMOTE_SEQ + 1,
    ack: int | None = LOCAL_SEQ + 1,
    flags: TcpFlags = ACK,
    window: int = WINDOW,
    payload: bytes = b"",
    options: TcpOptions | None = None,
    ts: tuple[int, int] | None = None,
) -> TcpSegment:
    """A segment from the peer to the engine."""
    opts = options if options is not None else TcpOptions()
    if ts is not None:
        opts.timestamp = ts
    return TcpSegment(
        src_port=REMOTE_PORT,
        dst_port=LOCAL_PORT,
        seq=seq & 0xFFFFFFFF,
        ack=0 if ack is None else ack & 0xFFFFFFFF,
        flags=flags,
        window=window,
        options=opts,
        payload=payload,
    )


def RECV(
    *,
    seq: int = LOCAL_SEQ + 1,
    ack: int = REMOTE_SEQ + 1,
    flags: TcpFlags = ACK,
    payload: bytes = b"",
) -> dict:
    """The fields we expect on a segment from the engine (window/options checked separately)."""
    return dict(seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags, payload=payload)


def fields(seg: TcpSegment) -> dict:
    return dict(seq=seg.seq, ack=seg.ack, flags=seg.flags, payload=seg.payload)


def recv(conn: TcpConnection, now: float = 0.0) -> list[TcpSegment]:
    out = conn.poll(now)
    for s in out:
        assert s.src_port == LOCAL_PORT and s.dst_port == REMOTE_PORT
    return out


def recv_one(conn: TcpConnection, now: float = 0.0) -> TcpSegment:
    out = recv(conn, now)
    assert len(out) == 1, f"exactly one segment should be sent, got {out}"
    return out[0]


def recv_nothing(conn: TcpConnection, now: float = 0.0) -> None:
    out = recv(conn, now)
    assert out == [], f"no segment should be sent, got {out}"


def send(conn: TcpConnection, seg: TcpSegment, now: float = 0.0) -> None:
    conn.on_segment(seg, now)


# ---- factories ---------------------------------------------------------------------------------


def snapshot(**kw) -> TcbSnapshot:
    """An ESTABLISHED TCB: handshake done, nothing in flight, peer window 64 KiB."""
    base = dict(
        local_ip=LOCAL_IP,
        local_port=LOCAL_PORT,
        remote_ip=REMOTE_IP,
        remote_port=REMOTE_PORT,
        remote_mss=MSS,
        snd_wscale=0,
        rcv_wscale=0,
        timestamps_enabled=False,
        sack_enabled=False,
        nodelay=False,
        keepalive=False,
        keepalive_idle=7200.0,
        keepalive_interval=75.0,
        keepalive_probes=9,
        initial_rcv_wnd=WINDOW,
        state=TcpState.ESTABLISHED,
        rcv_nxt=REMOTE_SEQ + 1,
        rcv_wnd=WINDOW,
        snd_una=LOCAL_SEQ + 1,
        snd_nxt=LOCAL_SEQ + 1,
        snd_max=LOCAL_SEQ + 1,
        snd_wnd=WINDOW,
        max_snd_wnd=WINDOW,
        snd_wl1=REMOTE_SEQ + 1,
        snd_wl2=LOCAL_SEQ + 1,
        cwnd=10 * MSS,
        ssthresh=1 << 30,
        srtt=None,
        rttvar=None,
        rto=1.0,
        ts_recent=0,
        ts_recent_age=None,
        ts_time=0,
        total_rt=0.0,
        dup_ack_count=0,
        snd_wnd_probe_count=0,
        keepalive_probe_count=0,
        keepalive_timeout_delta=None,
        retransmit_count=0,
        retransmit_timeout_delta=None,
        persist_timeout_delta=None,
        fin_wait_2_timeout_delta=None,
        fin_queued=False,
        fin_seq=None,
        fin_sent=False,
        fin_received=False,
        in_recovery=False,
        recover=LOCAL_SEQ,
        iss=LOCAL_SEQ,
        irs=REMOTE_SEQ,
        send_data=b"",
        buffered_receive=b"",
    )
    base.update(kw)
    return TcbSnapshot(**base)


def established(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    return TcpConnection.from_snapshot(snapshot(**kw), cfg or config(), now)


def fin_wait_1(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    """We sent FIN at LOCAL_SEQ+1 (no data), not yet acknowledged."""
    base = dict(
        state=TcpState.FIN_WAIT_1,
        snd_nxt=LOCAL_SEQ + 2,
        snd_max=LOCAL_SEQ + 2,
        fin_queued=True,
        fin_seq=LOCAL_SEQ + 1,
        fin_sent=True,
        retransmit_timeout_delta=1.0,
    )
    base.update(kw)
    return established(now, cfg, **base)


def fin_wait_2(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    """Our FIN (at LOCAL_SEQ+1) was acknowledged; the peer may still send."""
    c = cfg or config()
    base = dict(
        state=TcpState.FIN_WAIT_2,
        snd_una=LOCAL_SEQ + 2,
        snd_nxt=LOCAL_SEQ + 2,
        snd_max=LOCAL_SEQ + 2,
        snd_wl2=LOCAL_SEQ + 2,
        fin_queued=True,
        fin_seq=LOCAL_SEQ + 1,
        fin_sent=True,
        fin_wait_2_timeout_delta=c.fin_wait_2_timeout,
    )
    base.update(kw)
    return established(now, c, **base)


def close_wait(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    """The peer's FIN (at REMOTE_SEQ+1) was consumed; RCV.NXT = REMOTE_SEQ+2."""
    base = dict(state=TcpState.CLOSE_WAIT, rcv_nxt=REMOTE_SEQ + 2, fin_received=True)
    base.update(kw)
    return established(now, cfg, **base)


def last_ack(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    base = dict(
        state=TcpState.LAST_ACK,
        snd_nxt=LOCAL_SEQ + 2,
        snd_max=LOCAL_SEQ + 2,
        fin_queued=True,
        fin_seq=LOCAL_SEQ + 1,
        fin_sent=True,
        retransmit_timeout_delta=1.0,
    )
    base.update(kw)
    return close_wait(now, cfg, **base)


def closing(now: float = 0.0, cfg: TcpConfig | None = None, **kw) -> TcpConnection:
    """Both FINs sent (simultaneous close); ours not yet acknowledged."""
    base = dict(
        state=TcpState.CLOSING,
        rcv_nxt=REMOTE_SEQ + 2,
        fin_received=True,
    )
    base.update(kw)
    return fin_wait_1(now, cfg, **base)


def time_wait(now: float = 0.0, cfg: TcpConfig | None = None) -> TcpConnection:
    """FIN-WAIT-2 + the peer's FIN -> TIME-WAIT (the ACK of that FIN is drained)."""
    conn = fin_wait_2(now, cfg)
    conn.on_segment(SEND(ack=LOCAL_SEQ + 2, flags=FIN | ACK), now)
    assert conn.state is TcpState.TIME_WAIT
    seg = recv_one(conn, now)
    assert fields(seg) == RECV(seq=LOCAL_SEQ + 2, ack=REMOTE_SEQ + 2)
    return conn


def syn_sent(now: float = 0.0, cfg: TcpConfig | None = None) -> tuple[TcpConnection, TcpSegment]:
    conn = TcpConnection.connect(
        cfg or config(), LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, LOCAL_SEQ, now
    )
    syn = recv_one(conn, now)
    return conn, syn


def peer_syn(**kw) -> TcpSegment:
    """A Linux-like SYN: MSS 1460, window scale 7, SACK permitted, timestamps."""
    opts = dict(mss=1460, wscale=7, sack_permitted=True, timestamp=(123456, 0))
    opts.update(kw.pop("options", {}))
    base = dict(seq=REMOTE_SEQ, ack=None, flags=SYN, window=64240)
    base.update(kw)
    return SEND(options=TcpOptions(**opts), **base)


def syn_received(
    now: float = 0.0, cfg: TcpConfig | None = None, syn: TcpSegment | None = None
) -> tuple[TcpConnection, TcpSegment]:
    syn = syn if syn is not None else peer_syn(options=dict(wscale=None, timestamp=None))
    conn = TcpConnection.accept(
        cfg or config(), LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, LOCAL_SEQ, syn, now
    )
    synack = recv_one(conn, now)
    return conn, synack


def replace(seg: TcpSegment, **kw) -> TcpSegment:
    return dataclasses.replace(seg, **kw)


def seq(n: int) -> int:
    return seq_add(n, 0)


@pytest.fixture
def conn() -> TcpConnection:
    return established()
