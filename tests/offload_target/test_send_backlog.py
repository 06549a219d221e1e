"""TcpIndicateSendBacklogChange and SendBacklogSize end to end (b.13 0x60, b.14).

The target side runs against the test data path built on the Python twin (``fake``, with slow
start added: the plain fake never moves CWnd) and the C data path (``real``), like the other
miniport tests, under a strict ConformanceChecker; the host side (``ChimneyHost`` honouring
the backlog, the fault hook reaching it) runs end to end on the simulated wire with the C
data path, like test_miniport_e2e.py.

The rule is restated here on purpose (not imported): a change to the target's rule must show
up as a failing test.
"""

from __future__ import annotations

from typing import Any

import pytest

from ndis.state import TCP_OFFLOAD_EVENT_TYPE, TCP_UPLOAD_REASON
from ndis.status import NdisStatus
from offload_target import table as table_mod
from offload_target.miniport import preferred_send_backlog
from tcpip.ethernet import build_ethernet, parse_ethernet
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp

from .test_miniport_fakes import (
    LOCAL_IP,
    NIC_MAC,
    PEER_MAC,
    REMOTE_IP,
    REMOTE_PORT,
    SEQ,
    FakeDataPathTable,
    Peer,
    Rig,
    real_table_available,
)

BACKLOG = TCP_OFFLOAD_EVENT_TYPE.TcpIndicateSendBacklogChange
MSS = 1460  # sample_states: RemoteMss 1460, path MTU 1500, no timestamps
INTERVAL = 0.1  # the target's minimum interval between two evaluations of one connection
ROUND = 0.02  # virtual seconds per round trip in the rig tests


def rule(cwnd: int, snd_wnd: int, mss: int = MSS, maximum: int = 1 << 20) -> int:
    """max(2 * min(CWnd, SndWnd), 2 * MSS), rounded up to whole MSS, at most ``maximum``."""
    value = max(2 * min(cwnd, snd_wnd), 2 * mss)
    value = (value + mss - 1) // mss * mss
    return min(value, maximum)


class SlowStartTable(FakeDataPathTable):
    """The fake data path plus RFC 5681 window growth on the table's CWnd (one MSS per ACK in
    slow start, MSS*MSS/CWnd in congestion avoidance) and SndWnd taken from the ACKs' window,
    so that CWnd and SndWnd move as with the C path (the plain fake keeps both fixed)."""

    def process_frame(self, frame: bytes, now_ticks: int) -> int:
        before = {h: c.acked for h, c in self.conns.items()}
        verdict = super().process_frame(frame, now_ticks)
        for h, c in self.conns.items():
            acked = c.acked - before.get(h, c.acked)
            if acked > 0:
                cwnd = self.t.get_field(h, "CWnd")
                if cwnd < self.t.get_field(h, "SsThresh"):
                    cwnd += min(acked, self.mss)
                else:
                    cwnd += max(1, self.mss * self.mss // cwnd)
                ip = parse_ipv4(parse_ethernet(frame).payload)
                seg = parse_tcp(ip.payload, ip.src, ip.dst)
                self.t.set_fields(h, CWnd=cwnd, SndWnd=seg.window)
        return verdict


class WindowPeer(Peer):
    """A peer whose segments advertise ``window`` (no window scaling: at most 65535)."""

    window = 65535

    def frame(self, flags: TcpFlags = TcpFlags.ACK, payload: bytes = b"", *, seq: int | None = None,
              ack: int | None = None) -> bytes:
        seg = TcpSegment(REMOTE_PORT, self.port, self.seq if seq is None else seq,
                         self.ack if ack is None else ack, flags, self.window, TcpOptions(), payload)
        pkt = build_ipv4(REMOTE_IP, LOCAL_IP, 6, build_tcp(seg, REMOTE_IP, LOCAL_IP))
        return build_ethernet(NIC_MAC, PEER_MAC, 0x0800, pkt)


@pytest.fixture(params=["fake", "real"])
def rig(request) -> Rig:
    if request.param == "real":
        if not real_table_available():
            pytest.skip("the C data path is not built")
        return Rig(8, real=True)
    return Rig(8, table=SlowStartTable(8))


def backlog_events(r: Rig, label: str = "T") -> list[int]:
    return [e[3] for e in r.events("TcpOffloadEvent") if e[1] == label and e[2] == BACKLOG]


def table_state(r: Rig, label: str = "T") -> dict[str, Any]:
    t = r.target
    return t.table.export(t.find(label).handle, t.now_ticks)


def ack_round(r: Rig, peer: Peer) -> None:
    """The peer ACKs, one ACK per MSS, what the target sent -- at most one usable window
    (min(CWnd, SndWnd)) of it per round trip, as a pipe would deliver it (the fake data path
    sends everything at once)."""
    s = table_state(r)
    unacked = min((s["SndMax"] - peer.ack) % SEQ, s["CWnd"], s["SndWnd"])
    while unacked:
        n = min(MSS, unacked)
        r.target.receive_frame(peer.ack_bytes(n), r.now)
        unacked -= n


def transfer(r: Rig, peer: Peer, rounds: int) -> list[tuple[float, int, int, int]]:
    """``rounds`` round trips of ``ROUND`` seconds: the target sends, the peer ACKs.  Returns
    (time, value, CWnd, SndWnd) per new indication, with the CWnd / SndWnd the table held
    when it was made: only ACKs move them, so they are read after the ACKs that precede
    the indication (before the clock moves, or after the round's ACKs)."""
    out: list[tuple[float, int, int, int]] = []

    def collect(n_before: int, s: dict[str, Any]) -> None:
        for v in backlog_events(r)[n_before:]:
            out.append((r.now, v, s["CWnd"], s["SndWnd"]))

    for _ in range(rounds):
        n, s = len(backlog_events(r)), table_state(r)
        r.advance(ROUND)  # (a deferred evaluation may come due here)
        collect(n, s)
        ack_round(r, peer)
        n = len(backlog_events(r))
        r.run()  # the evaluation of this round's ACK progress
        collect(n, table_state(r))
    return out


# ---------------------------------------------------------------------------------------------
# the rule


def test_preferred_send_backlog_rule() -> None:
    assert preferred_send_backlog(14600, 65535, 1460) == 29200  # 2 x CWnd
    assert preferred_send_backlog(100_000, 65535, 1460) == 131_400  # 2 x SndWnd, 90 segments
    assert preferred_send_backlog(10_000, 65535, 1448) == 20_272  # 20,000 up to 14 x 1448
    assert preferred_send_backlog(14600, 0, 1460) == 2920  # zero window: 2 MSS
    assert preferred_send_backlog(0, 0, 536) == 1072
    assert preferred_send_backlog(1 << 30, 1 << 30, 1460) == 1 << 20  # the send ring
    assert preferred_send_backlog(1 << 30, 1 << 30, 1460, maximum=50_000) == 50_000
    for cwnd, wnd, mss in ((1, 1, 1), (7777, 123_456, 1448), (3 << 20, 70_000, 8960)):
        assert preferred_send_backlog(cwnd, wnd, mss) == rule(cwnd, wnd, mss)


# ---------------------------------------------------------------------------------------------
# the target's own indications (both tables)


def test_indications_follow_cwnd_during_a_bulk_transfer(rig: Rig) -> None:
    rig.offload()
    peer = Peer(40000, ack=5000)
    assert backlog_events(rig) == []  # nothing before the first ACK progress
    rig.host.send("T", bytes(600_000))
    rig.run()
    got = transfer(rig, peer, 40)
    values = [v for _, v, _, _ in got]
    # the initial value at the first ACK, then growth with CWnd up to 2 x SndWnd (65535)
    assert len(values) >= 2, got
    assert values[-1] == rule(1 << 30, 65535) == 131_400  # (SndWnd 65535: no window scale)
    assert values == sorted(values) and values[0] < values[-1]
    for _t, v, cwnd, wnd in got:
        assert v == rule(cwnd, wnd)
    # meaningful changes only (a quarter, at least 2 MSS), at most one per 100 ms
    for (t0, v0, _, _), (t1, v1, _, _) in zip(got, got[1:], strict=False):
        assert t1 - t0 >= INTERVAL - 1e-9
        assert abs(v1 - v0) >= max(v0 // 4, 2 * MSS)
    acked = (peer.ack - 5000) % SEQ
    assert acked > 300_000
    assert len(values) < acked // MSS // 50  # not one per ACK
    assert rig.target.counters["send_backlog_indications"] == len(values)
    assert rig.target.describe()[0]["send_backlog"] == values[-1]
    rig.checker.assert_clean()


def test_only_meaningful_changes_are_indicated(rig: Rig) -> None:
    """The send window binds (CWnd has grown past it): a change of the window by less than a
    quarter of the value indicated is not indicated, a larger one is, in either direction."""
    rig.offload()
    peer = WindowPeer(40000, ack=5000)
    rig.host.send("T", bytes(4_000_000))
    rig.run()
    transfer(rig, peer, 12)
    assert backlog_events(rig)[-1] == rule(1 << 30, 65535)  # CWnd > SndWnd from here on

    def settle(window: int) -> list[int]:
        peer.window = window
        n = len(backlog_events(rig))
        got = transfer(rig, peer, 8)  # 160 ms: past one evaluation interval
        for _t, v, cwnd, wnd in got:
            assert v == rule(cwnd, wnd)
        assert table_state(rig)["SndWnd"] == window
        return backlog_events(rig)[n:]

    assert settle(40000) == [rule(1 << 30, 40000)]  # 131400 -> 80300: down by 39%
    assert settle(43000) == []  # 86140: up by 7% (< 1/4 of 80300), not indicated
    assert settle(30000) == []  # 61320: down by 23.6% of 80300, not indicated
    assert settle(25000) == [rule(1 << 30, 25000)]  # 51100: down by 36% of 80300
    assert settle(60000) == [rule(1 << 30, 60000)]  # 120450: doubled
    rig.checker.assert_clean()


def test_no_indication_without_ack_progress(rig: Rig) -> None:
    rig.offload()
    rig.host.send("T", bytes(50_000))
    for _ in range(20):
        rig.advance(ROUND)  # the data goes out, nothing is ACKed
    assert backlog_events(rig) == []
    rig.checker.assert_clean()


def test_query_returns_the_indicated_value(rig: Rig) -> None:
    rig.offload()
    peer = Peer(40000, ack=5000)
    rig.host.send("T", bytes(600_000))
    rig.run()
    transfer(rig, peer, 40)
    indicated = backlog_events(rig)[-1]
    root = rig.host.query(["T"])
    rig.run()
    assert root.Status == NdisStatus.SUCCESS
    d = root.state.Delegated
    assert d.SendBacklogSize == indicated == rule(d.CWnd, d.SndWnd)
    assert rig.target.send_backlog_size("T") == indicated


def test_query_before_any_indication_and_with_auto_off(rig: Rig) -> None:
    rig.offload()
    rig.target.faults.auto_send_backlog(False)
    root = rig.host.query(["T"])
    rig.run()
    d = root.state.Delegated
    assert d.SendBacklogSize == rule(14600, 65535) == 29200  # sample_states: CWnd 14600
    assert d.SendBacklogSize != 0xFFFFFFFF  # b.13: supported


def test_no_indication_after_terminate(rig: Rig) -> None:
    rig.offload()
    peer = Peer(40000, ack=5000)
    rig.host.send("T", bytes(300_000))
    rig.run()
    transfer(rig, peer, 3)
    n = len(backlog_events(rig))
    assert n >= 1
    # more ACK progress inside the interval: the connection waits for its next evaluation
    rig.advance(ROUND)
    ack_round(rig, peer)
    rig.run()
    assert rig.target._backlog_acked  # (pending evaluation when the terminate comes)
    rig.host.terminate(["T"])
    rig.run()
    assert rig.target.tcp_count == 0
    for _ in range(20):
        rig.advance(ROUND)
    assert len(backlog_events(rig)) == n
    assert rig.target.next_deadline() is None  # nothing left waiting for the dead connection
    rig.checker.assert_clean()  # (an event after the terminate completed would be V10)


def test_no_indication_while_an_upload_is_pending(rig: Rig) -> None:
    rig.offload()
    peer = Peer(40000, ack=5000)
    rig.host.send("T", bytes(200_000))
    rig.run()
    rig.target.faults.request_upload("T", TCP_UPLOAD_REASON.UploadRequested)
    rig.run()
    transfer(rig, peer, 10)
    assert backlog_events(rig) == []
    rig.checker.assert_clean()


# ---------------------------------------------------------------------------------------------
# the fault hook (both tables)


def test_fault_hook_indicates_any_value_and_auto_off_keeps_it(rig: Rig) -> None:
    rig.offload()
    f = rig.target.faults
    f.auto_send_backlog(False)
    for value in (12345, 0, 0xFFFFFFFF):
        f.indicate_send_backlog("T", value)
    rig.run()
    assert backlog_events(rig) == [12345, 0, 0xFFFFFFFF]
    peer = Peer(40000, ack=5000)
    rig.host.send("T", bytes(300_000))
    rig.run()
    transfer(rig, peer, 15)
    assert backlog_events(rig) == [12345, 0, 0xFFFFFFFF]  # no indication of its own
    assert ("indicate_send_backlog", "T", "0") in f.log
    with pytest.raises(ValueError):
        f.indicate_send_backlog("T", 1 << 32)
    with pytest.raises(ValueError):
        f.indicate_send_backlog("T", -1)
    rig.checker.assert_clean()


def test_forced_value_is_replaced_by_the_targets_own_at_its_next_change(rig: Rig) -> None:
    rig.offload()
    rig.target.faults.indicate_send_backlog("T", 7)
    rig.run()
    assert backlog_events(rig) == [7]
    peer = Peer(40000, ack=5000)
    rig.host.send("T", bytes(100_000))
    rig.run()
    got = transfer(rig, peer, 2)
    assert got and got[0][1] == rule(got[0][2], got[0][3])
    rig.checker.assert_clean()


def test_forced_value_waits_for_the_initiate_completion(rig: Rig) -> None:
    rig.target.faults.delay_completion("initiate", 0.5)
    rig.offload()
    assert not rig.tcp().live
    rig.target.faults.indicate_send_backlog("T", 4096)
    rig.advance(0.1)
    assert backlog_events(rig) == []  # c.4 / checker C4: not before the completion
    rig.advance(0.5)
    assert rig.tcp().live
    assert backlog_events(rig) == [4096]
    rig.checker.assert_clean()


# ---------------------------------------------------------------------------------------------
# the host (ChimneyHost) end to end, C data path

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")


def _world(latency: float = 0.01, **policy: Any) -> Any:
    """test_miniport_e2e's world with a wire of ``latency`` seconds each way, so that a bulk
    transfer lasts several of the target's evaluation intervals."""
    from vnic.simwire import SimWire

    from .test_miniport_e2e import World

    w = World()
    w.wire = SimWire(w.node, w.peer, latency=latency)
    for k, v in policy.items():
        setattr(w.chimney.policy, k, v)
    return w


def _target_obj(w: Any, sock: Any) -> Any:
    rec = w.chimney.records[sock.key]
    return w.target.find(rec.handle.label)


def _watch_sends(w: Any) -> list[tuple[int, int, int | None]]:
    """(outstanding after the hand-down, the limit the policy allows, the backlog) per send."""
    seen: list[tuple[int, int, int | None]] = []
    chimney = w.chimney
    original = chimney._send

    def send(rec: Any, data: Any) -> None:
        original(rec, data)
        p = chimney.policy
        limit = min(chimney.send_limit, max(rec.send_backlog or 0, p.send_backlog_floor))
        seen.append((rec.outstanding, limit, rec.send_backlog))

    chimney._send = send
    return seen


@needs_datapath
def test_host_counts_and_shows_a_forced_value() -> None:
    from .test_miniport_e2e import World

    w = World()
    _hr, hw, _pr, _pw = w.connect()
    sock = w.offload(hw)
    w.target.faults.auto_send_backlog(False)
    w.target.faults.indicate_send_backlog(_target_obj(w, sock), 777_777)
    w.run_until(lambda: w.chimney.counters["send_backlog_indications"] == 1, 1.0)
    [st] = w.chimney.status()
    assert st["send_backlog"] == 777_777
    assert w.chimney.records[sock.key].send_backlog == 777_777
    w.checker.assert_clean()


@needs_datapath
def test_host_default_policy_records_but_does_not_limit() -> None:
    from tcpip.offload import ChimneyPolicy

    assert ChimneyPolicy().honour_send_backlog is False
    w = _world()
    _hr, hw, pr, _pw = w.connect()
    sock = w.offload(hw)
    w.target.faults.auto_send_backlog(False)
    w.target.faults.indicate_send_backlog(_target_obj(w, sock), 1000)
    w.run_until(lambda: w.chimney.counters["send_backlog_indications"] == 1, 1.0)
    rec = w.chimney.records[sock.key]
    assert rec.send_space() == w.chimney.send_limit - rec.outstanding


@needs_datapath
def test_host_keeps_at_most_the_backlog_outstanding() -> None:
    from .test_miniport_e2e import payload

    floor = 4096  # below the initial backlog: the target's value is what limits
    w = _world(honour_send_backlog=True, send_backlog_floor=floor)
    _hr, hw, pr, _pw = w.connect()
    sock = w.offload(hw)
    seen = _watch_sends(w)
    data = payload(1_500_000, 21)
    hw.write(data)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    assert seen and all(out <= limit for out, limit, _ in seen), max(seen)
    rec = w.chimney.records[sock.key]
    assert w.chimney.counters["send_backlog_indications"] >= 2
    w.run_until(lambda: not w.target._backlog_acked, 1.0)  # (no evaluation waiting)
    # the host holds the last value indicated; the target's current one differs from it by
    # less than a meaningful change (else it would have been indicated)
    now = w.target.send_backlog_size(_target_obj(w, sock))
    assert abs(now - rec.send_backlog) < max(rec.send_backlog // 4, 2 * 1448)
    # the backlog, not the floor or the send buffer, was the limit, and it was used
    limited = [out for out, limit, b in seen if b is not None and limit == b]
    assert limited and max(limited) > floor
    assert max(out for out, _, _ in seen) < w.chimney.send_limit
    w.checker.assert_clean()


@needs_datapath
def test_host_floor_and_a_zero_backlog_do_not_stall() -> None:
    from .test_miniport_e2e import payload

    w = _world(honour_send_backlog=True, send_backlog_floor=16384)
    _hr, hw, pr, _pw = w.connect()
    sock = w.offload(hw)
    w.target.faults.auto_send_backlog(False)
    w.target.faults.indicate_send_backlog(_target_obj(w, sock), 0)
    w.run_until(lambda: w.chimney.counters["send_backlog_indications"] == 1, 1.0)
    seen = _watch_sends(w)
    data = payload(200_000, 22)
    hw.write(data)
    assert bytes(w.read_exactly(w.peer, pr, len(data))) == data
    assert seen and max(out for out, _, _ in seen) <= 16384
    w.checker.assert_clean()


@needs_datapath
def test_host_bulk_transfer_with_a_terminate_in_the_middle_is_byte_exact() -> None:
    from tcpip.offload_socket import OffloadState

    from .test_miniport_e2e import payload

    w = _world(honour_send_backlog=True, send_backlog_floor=8192)
    hr, hw, pr, pw = w.connect()
    sock = w.offload(hw)
    seen = _watch_sends(w)
    data = payload(2_000_000, 23)
    hw.write(data)
    got = bytearray()

    async def read() -> None:
        while len(got) < len(data):
            chunk = await pr.read(65536)
            if not chunk:
                return
            got.extend(chunk)

    w.peer.scheduler.spawn(read())
    w.run_until(lambda: len(got) >= 400_000, 30.0)
    assert len(got) < len(data)
    # the application's bytes not handed down wait in its stream, in order
    assert len(hw._pending) > 0
    assert w.chimney.terminate(sock)
    w.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 5.0)
    w.run_until(lambda: len(got) >= len(data), 60.0)
    assert bytes(got) == data
    assert seen and all(out <= limit for out, limit, _ in seen)
    # and the connection works both ways in the host afterwards
    pw.write(b"after")
    assert bytes(w.read_exactly(w.host, hr, 5)) == b"after"
    w.checker.assert_clean()
