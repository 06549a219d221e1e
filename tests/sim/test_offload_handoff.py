"""Acceptance tests of the offload target, end to end on the simulated wire.

The host is :func:`vnic.offload_lab.build_offload_host`: HostStack + ChimneyHost + NDIS under a
strict ConformanceChecker + the real OffloadTarget with its C data path behind a NicNode; the
peer is a second HostStack (``tests/sim/offload_rig.py``).  Established connections carrying
data both ways are offloaded with unacked send data and undelivered receive data, run on the
target (frames with IPv4 identification >= 0x8000, T.1), are terminated and continue in the
host.  The applications' byte streams must be exact, the peer never sees a gap, a duplicate
delivery or an RST.  Then the same on a lossy wire, repeated cycles, every target-side fault
hook with its documented outcome, and the connection events while offloaded (peer FIN / RST,
host graceful / abortive disconnect, zero window with persist probes).

Everything runs on the virtual clock; every case is a pure function of its seed.
"""

from __future__ import annotations

import random

import pytest

from ndis.state import TCP_UPLOAD_REASON, OffloadLayer
from ndis.status import NdisStatus
from offload_target import table as table_mod
from tcpip.offload import MANDATORY_UPLOAD_REASONS, ChimneyPolicy
from tcpip.offload_socket import OffloadState
from tcpip.tcp import TcpConfig
from tests.sim.offload_rig import App, HandoffLog, OffloadRig

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def finish(rig: OffloadRig, *apps: App, timeout: float = 120.0) -> None:
    """Run until every app wrote everything and saw EOF (or one failed)."""
    rig.run_until(lambda: all(a.write_done and a.eof for a in apps)
                  or any(a.error is not None for a in apps), timeout)
    for a in apps:
        assert a.error is None, a.error


def close_both(rig: OffloadRig, h: App, p: App) -> None:
    """Both ends close once their data is out; run to the double EOF."""
    rig.run_until(lambda: h.write_done and p.write_done, 120.0)
    h.writer.close()
    p.writer.close()
    finish(rig, h, p)


def assert_peer_clean(rig: OffloadRig, p: App, *, lossless: bool, strict: bool = False) -> None:
    """The peer saw no RST and, on a clean wire, no gap (nothing out of order) and no
    duplicate from the target.  ``strict``: nothing retransmitted at all (the host stack's
    tail loss probe, when the peer's delayed ACK outlasts it, is a legitimate duplicate the
    peer discards, so only the handoff tests, which do not end on a lone tail, ask this)."""
    c = rig.engine(p).counters
    assert c.rsts_in == 0 and c.rsts_out == 0
    rig.assert_no_rst()
    if lossless:
        assert c.ooo_segments == 0
        assert rig.watch.total("out_retransmitted_by_target") == 0
        if strict:
            assert rig.watch.total("out_retransmitted") == 0
            assert c.unacceptable_segments == 0


# ---- the handoff with data in flight both ways ----------------------------------------------------


def run_handoff(seed: int, *, loss: float = 0.0, cycles: int = 1) -> tuple[OffloadRig, HandoffLog]:
    rng = random.Random(seed)
    # the host's receive side varies: indications accepted up to 1 MiB or only a little (the
    # target then holds the rest, T.2), or posted receive buffers
    policy = ChimneyPolicy(receive_limit=rng.choice([None, 8192, 32768]),
                           post_receive_size=rng.choice([0, 0, 16384]))
    # odd seeds: the target's interrupt moderation (events of a batch of frames serviced at the
    # next poll, as vnic.offload_lab builds it); even seeds: every frame serviced at once
    rig = OffloadRig(seed, loss=loss, policy=policy, moderate=seed % 2 == 1)
    log = HandoffLog(rig.target)
    hd = data(seed, rng.randrange(200_000, 600_000))
    pd = data(seed + 1, rng.randrange(200_000, 600_000))
    h, p = rig.pair(hd, pd, chunk=rng.choice([1460, 8192, 65536]))
    rig.run_until(lambda: len(h.got) > 10_000 and len(p.got) > 10_000, 30.0)
    sock = rig.sock(h)
    for _ in range(cycles):
        # the host application stops reading for a moment: the host holds undelivered data
        h.paused = True
        rig.run_for(rng.uniform(0.001, 0.004))
        rig.watch.phase = "offloading"  # the host flushes its output and owed ACK first (T.4)
        rig.offload(sock)
        rig.watch.phase = "offloaded"
        rig.run_for(rng.uniform(0.005, 0.02))
        assert rig.target.tcp_count == 1
        # the target runs the connection now: every frame of it comes from the target
        ph = rig.watch.phase_conn("offloaded", sock.local_port)
        assert ph.out_from_target > 0 and ph.out_from_host == 0, ph
        rig.run_for(rng.uniform(0.0, 0.01))
        h.paused = rng.random() < 0.5  # sometimes the target holds undelivered data at terminate
        rig.watch.phase = "uploading"  # the target's owed ACK goes out now (d.3 step 2)
        rig.upload(sock)
        rig.watch.phase = "host"
        h.paused = False
        assert rig.target.tcp_count == 0 and len(rig.target.table) == 0
        rig.run_for(rng.uniform(0.002, 0.01))
        if rng.random() < 0.5:
            rig.watch.phase = ""
    close_both(rig, h, p)
    assert bytes(h.got) == pd
    assert bytes(p.got) == hd
    assert_peer_clean(rig, p, lossless=not loss, strict=True)
    back = rig.watch.phase_conn("host", sock.local_port)
    assert back.out_from_target == 0 and back.out_from_host > 0
    rig.assert_clean()
    assert rig.chimney.counters["offloads"] == cycles and rig.chimney.counters["uploads"] == cycles
    assert rig.chimney.counters["lost"] == 0
    return rig, log


@pytest.mark.parametrize("seed", range(1, 31))
def test_handoff_with_data_in_flight_both_ways_is_byte_exact(seed: int) -> None:
    rig, log = run_handoff(seed)
    # the initiate carried unacked send data and undelivered receive data
    assert len(log.initiates) == 1 and len(log.terminates) == 1
    _label, send, buffered, _st = log.initiates[0]
    assert send > 0 and buffered > 0, log.initiates


def test_handoff_seeds_exercise_returned_send_and_receive_data() -> None:
    """Across seeds the terminate hands back unacked send data and BufferedData."""
    sends = buffered = 0
    for seed in range(1, 13):
        _rig, log = run_handoff(seed)
        sends += sum(1 for _l, s, _b, _st in log.terminates if s)
        buffered += sum(1 for _l, _s, b, _st in log.terminates if b)
    assert sends >= 6 and buffered >= 3, (sends, buffered)


@pytest.mark.parametrize("seed", range(100, 196))
def test_handoff_on_a_lossy_wire(seed: int) -> None:
    loss = [0.01, 0.02, 0.03, 0.05][seed % 4]
    rig, _log = run_handoff(seed, loss=loss)
    assert rig.wire.faults is not None


@pytest.mark.parametrize("seed,loss", [(7, 0.0), (8, 0.0), (9, 0.02), (10, 0.04)])
def test_repeated_offload_terminate_cycles(seed: int, loss: float) -> None:
    run_handoff(seed, loss=loss, cycles=5)


def test_repeated_cycles_on_several_connections_at_once() -> None:
    rig = OffloadRig(31, loss=0.01)
    pairs = [rig.pair(data(100 + i, 150_000), data(200 + i, 120_000), chunk=4096)
             for i in range(4)]
    socks = [rig.sock(h) for h, _p in pairs]
    for cycle in range(4):
        infos = rig.chimney.offload_many(socks)
        assert len(infos) == len(socks)
        rig.run_until(lambda: all(s.offload_state is OffloadState.OFFLOADED for s in socks), 5.0)
        assert rig.target.tcp_count == 4
        rig.run_for(0.01 + 0.003 * cycle)
        for s in socks:
            assert rig.chimney.terminate(s)
        rig.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST for s in socks), 10.0)
        assert rig.target.tcp_count == 0
        assert rig.target.neighbors == {} and rig.target.paths == {}
    for h, p in pairs:
        close_both(rig, h, p)
    for i, (h, p) in enumerate(pairs):
        assert bytes(p.got) == data(100 + i, 150_000)
        assert bytes(h.got) == data(200 + i, 120_000)
        assert_peer_clean(rig, p, lossless=False)
    assert rig.chimney.counters["offloads"] == 16 and rig.chimney.counters["uploads"] == 16
    rig.assert_clean()


# ---- target-side fault hooks ---------------------------------------------------------------------


def busy_pair(rig: OffloadRig, seed: int, n_host: int = 250_000, n_peer: int = 200_000,
              ) -> tuple[App, App]:
    h, p = rig.pair(data(seed, n_host), data(seed + 1, n_peer), chunk=8192)
    rig.run_until(lambda: len(h.got) > 5000 and len(p.got) > 5000, 10.0)
    return h, p


def finish_intact(rig: OffloadRig, h: App, p: App, *, lossless: bool = True) -> None:
    close_both(rig, h, p)
    assert bytes(p.got) == h.data and bytes(h.got) == p.data
    assert_peer_clean(rig, p, lossless=lossless)
    rig.assert_clean()


@pytest.mark.parametrize("op", ["initiate", "terminate", "send", "receive", "query", "update"])
def test_delayed_completion_still_completes(op: str) -> None:
    """delay_completion(op, s): the completion comes ``s`` later; nothing else changes."""
    rig = OffloadRig(41, policy=ChimneyPolicy(post_receive_size=8192, receive_limit=65536))
    h, p = busy_pair(rig, 41)
    sock = rig.sock(h)
    faults = rig.target.faults
    if op == "initiate":
        faults.delay_completion("initiate", 0.05)
        assert rig.chimney.offload(sock) is not None
        rig.run_for(0.03)
        assert sock.offload_state is OffloadState.OFFLOADING  # not yet
        rig.run_until(lambda: sock.offload_state is OffloadState.OFFLOADED, 1.0)
    else:
        rig.offload(sock)
    if op in ("send", "receive"):
        faults.delay_completion(op, 0.02, count=5)
    rig.run_for(0.01)
    if op == "query":
        faults.delay_completion("query", 0.05)
        got: list = []
        assert rig.chimney.query(sock, got.append)
        rig.run_for(0.03)
        assert got == []
        rig.run_until(lambda: bool(got), 1.0)
        assert got[0] is not None and got[0].State == 4  # Established
    if op == "update":
        faults.delay_completion("update", 0.05)
        assert rig.chimney.update(sock, keepalive=True, keepalive_idle=30.0)
        rig.run_until(lambda: not rig.chimney.pending, 1.0)
    if op == "terminate":
        faults.delay_completion("terminate", 0.05)
        assert rig.chimney.terminate(sock)
        rig.run_for(0.03)
        assert sock.offload_state is OffloadState.UPLOADING
        rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 1.0)
    else:
        rig.run_for(0.02)
        rig.upload(sock)
    assert any(e[0] == "delayed" and e[1] == op for e in faults.log), faults.log
    finish_intact(rig, h, p)


@pytest.mark.parametrize("op", ["initiate", "terminate", "send", "receive"])
def test_withheld_completion_then_released(op: str) -> None:
    """never_complete(op): the completion is withheld (the operation stays pending);
    release_withheld() makes it after all and everything continues."""
    rig = OffloadRig(43, policy=ChimneyPolicy(post_receive_size=8192, receive_limit=65536))
    h, p = busy_pair(rig, 43)
    sock = rig.sock(h)
    faults = rig.target.faults
    if op == "initiate":
        faults.never_complete("initiate")
        assert rig.chimney.offload(sock) is not None
        rig.run_for(0.5)
        assert sock.offload_state is OffloadState.OFFLOADING and len(faults.withheld) == 1
        assert faults.release_withheld() == 1
        rig.run_until(lambda: sock.offload_state is OffloadState.OFFLOADED, 1.0)
    else:
        rig.offload(sock)
    if op in ("send", "receive"):
        # the host keeps one post outstanding, so one receive completion is enough to stall;
        # later completions queue behind the withheld one (FIFO)
        faults.never_complete(op, count=3 if op == "send" else 1)
        rig.run_until(lambda: len(faults.withheld) >= (3 if op == "send" else 1), 5.0)
        rig.run_for(0.05)
        assert faults.release_withheld() >= 1
        rig.run_for(0.01)
    if op == "terminate":
        faults.never_complete("terminate")
        assert rig.chimney.terminate(sock)
        rig.run_for(0.5)
        assert sock.offload_state is OffloadState.UPLOADING and len(faults.withheld) == 1
        assert faults.release_withheld() == 1
        rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 1.0)
    else:
        rig.upload(sock)
    finish_intact(rig, h, p)


@pytest.mark.parametrize("layer,status", [
    (OffloadLayer.TCP, NdisStatus.OFFLOAD_TCP_ENTRIES),
    (OffloadLayer.TCP, NdisStatus.FAILURE),
    (OffloadLayer.PATH, NdisStatus.FAILURE),
    (OffloadLayer.NEIGHBOR, NdisStatus.FAILURE),
])
def test_failed_initiate_block_keeps_the_connection_in_the_host(layer: OffloadLayer,
                                                                 status: int) -> None:
    rig = OffloadRig(47)
    h, p = busy_pair(rig, 47)
    sock = rig.sock(h)
    rig.target.faults.fail_blocks(lambda b, op: b.layer is layer, status)
    assert rig.chimney.offload(sock) is not None
    rig.run_until(lambda: sock.offload_state is not OffloadState.OFFLOADING, 1.0)
    assert sock.offload_state is OffloadState.IN_HOST
    assert rig.target.tcp_count == 0 and len(rig.target.table) == 0
    assert rig.chimney.counters["offload_failures"] == 1
    assert rig.watch.conn(sock.local_port).out_from_target == 0
    finish_intact(rig, h, p)
    # the next offload (no more faults) works
    rig.target.faults.clear()
    h2, p2 = busy_pair(rig, 48)
    s2 = rig.sock(h2)
    rig.offload(s2)
    rig.run_for(0.01)
    rig.upload(s2)
    finish_intact(rig, h2, p2)


def test_partially_failed_initiate_offloads_the_others() -> None:
    """One TCP block of a tree with three fails: its parent reports
    OFFLOAD_PARTIAL_SUCCESS, the other two run on the target, the failed one in the host."""
    rig = OffloadRig(53)
    pairs = [busy_pair(rig, 53 + 2 * i, 120_000, 100_000) for i in range(3)]
    socks = [rig.sock(h) for h, _ in pairs]
    failing: set[str] = set()
    statuses: list[int] = []

    def sel(block, op) -> bool:
        if block.layer is OffloadLayer.PATH:
            statuses.append(block)  # looked at again after the initiate
        return block.label in failing

    rig.target.faults.fail_blocks(sel, NdisStatus.FAILURE)
    infos = rig.chimney.offload_many(socks)
    assert len(infos) == 3
    failing.add(infos[1].tcp.label)
    rig.run_until(lambda: all(s.offload_state is not OffloadState.OFFLOADING for s in socks), 1.0)
    assert [s.offload_state for s in socks] == [
        OffloadState.OFFLOADED, OffloadState.IN_HOST, OffloadState.OFFLOADED]
    assert rig.target.tcp_count == 2
    assert statuses and statuses[0].Status == NdisStatus.OFFLOAD_PARTIAL_SUCCESS
    for i, (h, _p) in enumerate(pairs):
        h.write_more(data(600 + i, 50_000))
    rig.run_for(0.01)
    assert rig.watch.conn(socks[0].local_port).out_from_target > 0
    assert rig.watch.conn(socks[1].local_port).out_from_target == 0
    for s in (socks[0], socks[2]):
        rig.upload(s)
    for h, p in pairs:
        finish_intact(rig, h, p)


def test_failed_query_block_uploads_the_connection() -> None:
    """d.5: a connection whose state cannot be queried is uploaded; it goes on in the host."""
    from ndis.status import Operation

    rig = OffloadRig(57)
    h, p = busy_pair(rig, 57)
    sock = rig.sock(h)
    rig.offload(sock)
    rig.target.faults.fail_blocks(lambda b, op: True, NdisStatus.FAILURE, ops=(Operation.QUERY,))
    got: list = []
    assert rig.chimney.query(sock, got.append)
    rig.run_until(lambda: bool(got), 1.0)
    assert got == [None]
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 1.0)
    assert rig.target.tcp_count == 0
    finish_intact(rig, h, p)


def test_corrupt_hardware_state_loses_the_connection() -> None:
    """d.4: Retrieve(HardwareFailure) + Abort, the terminate's block fails: the connection
    is lost and the application sees ConnectionResetError; the others are untouched."""
    rig = OffloadRig(59)
    h, p = busy_pair(rig, 59, 2_000_000, 2_000_000)
    h2, p2 = busy_pair(rig, 61)
    sock, sock2 = rig.sock(h), rig.sock(h2)
    rig.offload(sock)
    rig.offload(sock2)
    rig.run_for(0.01)
    obj = rig.tcp_obj(sock)
    rig.target.faults.corrupt_hardware_state(obj)
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 2.0)
    assert rig.chimney.counters["lost"] == 1 and rig.chimney.counters["uploads"] == 1
    assert rig.chimney.counters["retrieve_requests"] >= 1
    rig.run_until(lambda: h.error is not None, 2.0)
    assert isinstance(h.read_error or h.write_error, ConnectionResetError), (h.read_error,
                                                                             h.write_error)
    assert obj.hw_failed and obj.abort_indicated and obj.terminated
    assert rig.target.tcp_count == 1  # the other one still runs there
    rig.upload(sock2)
    # the lost connection is not reset on the wire by the target; the host stack answers the
    # peer's next segment with a RST (tcpip/offload.py), so only the other stream is checked
    close_both(rig, h2, p2)
    assert bytes(p2.got) == h2.data and bytes(h2.got) == p2.data
    assert rig.watch.conn(sock2.local_port).rsts == 0
    # ... which resets the peer: it sees the loss too
    rig.run_until(lambda: p.error is not None, 2.0)
    assert isinstance(p.error, ConnectionResetError), p.error
    assert rig.watch.conn(sock.local_port).rst_in == 0  # the peer never resets first
    rig.assert_clean()


@pytest.mark.parametrize("optional_policy", [True, False])
@pytest.mark.parametrize("reason", [r for r in TCP_UPLOAD_REASON if r != TCP_UPLOAD_REASON.MaxUploadReason],
                         ids=lambda r: r.name)
def test_requested_upload_per_reason(reason: TCP_UPLOAD_REASON, optional_policy: bool) -> None:
    """TcpIndicateRetrieve(reason): mandatory reasons are always uploaded, optional ones only
    when the host's policy honours them; either way the stream stays exact."""
    rig = OffloadRig(67 + int(reason), policy=ChimneyPolicy(
        upload_on_optional_reasons=optional_policy))
    h, p = busy_pair(rig, 67)
    sock = rig.sock(h)
    rig.offload(sock)
    rig.run_for(0.005)
    rig.target.faults.request_upload(rig.tcp_obj(sock), reason)
    expect_upload = reason in MANDATORY_UPLOAD_REASONS or optional_policy
    rig.run_until(lambda: rig.chimney.counters["retrieve_requests"] == 1, 1.0)
    if expect_upload:
        rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, 2.0)
        assert rig.target.tcp_count == 0
    else:
        rig.run_for(0.05)
        assert sock.offload_state is OffloadState.OFFLOADED
        rig.upload(sock)
    finish_intact(rig, h, p)


def test_upload_all_with_200_connections() -> None:
    """NDIS_STATUS_UPLOAD_ALL: every one of 200 live connections comes back exactly; no new
    offload until OFFLOAD_RESUME."""
    rig = OffloadRig(71, bandwidth=None, latency=0.0001)
    pairs = []
    for i in range(200):
        h, p = rig.pair(data(1000 + i, 3000), data(5000 + i, 2000), chunk=1000)
        pairs.append((h, p))
    socks = [rig.sock(h) for h, _ in pairs]
    for i in range(0, 200, 50):
        assert len(rig.chimney.offload_many(socks[i:i + 50])) == 50
        rig.run_until(lambda: all(s.offload_state is not OffloadState.OFFLOADING for s in socks), 2.0)
    assert all(s.offload_state is OffloadState.OFFLOADED for s in socks)
    assert rig.target.tcp_count == 200
    for i, (h, _p) in enumerate(pairs):
        h.write_more(data(9000 + i, 5000))
    rig.target.faults.upload_all()
    rig.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST for s in socks), 10.0)
    assert rig.target.tcp_count == 0 and len(rig.target.table) == 0
    assert rig.target.neighbors == {} and rig.target.paths == {}
    assert rig.chimney.offload(socks[0]) is None  # latched until OFFLOAD_RESUME (d.8)
    rig.target.resume()
    rig.offload(socks[0])
    rig.upload(socks[0])
    for h, p in pairs:
        close_both(rig, h, p)
    for i, (h, p) in enumerate(pairs):
        assert bytes(p.got) == data(1000 + i, 3000) + data(9000 + i, 5000)
        assert bytes(h.got) == data(5000 + i, 2000)
    assert_peer_clean(rig, pairs[0][1], lossless=True)
    rig.assert_clean()


def test_shrink_capacity_uploads_the_excess() -> None:
    rig = OffloadRig(73)
    pairs = [busy_pair(rig, 73 + 2 * i, 80_000, 60_000) for i in range(6)]
    socks = [rig.sock(h) for h, _ in pairs]
    for s in socks:
        rig.offload(s)
    assert rig.target.tcp_count == 6
    rig.target.faults.shrink_capacity(2)
    rig.run_until(lambda: sum(s.offload_state is OffloadState.OFFLOADED for s in socks) == 2
                  and not rig.chimney.pending, 2.0)
    assert rig.target.tcp_count == 2 and rig.target.capacity == 2
    assert not rig.chimney.paused
    assert rig.chimney.capabilities.TcpConnectionOffloadCapacity == 2
    assert not rig.chimney.can_offload()
    for s in socks:
        if s.offload_state is OffloadState.OFFLOADED:
            rig.upload(s)
    for h, p in pairs:
        finish_intact(rig, h, p)


# ---- connection events while offloaded -----------------------------------------------------------


def test_peer_fin_while_offloaded_then_host_replies_and_closes() -> None:
    """The peer sends its last data and FIN while the target runs the connection: the host
    application reads everything then EOF (TcpIndicateDisconnect after the data), answers
    while still offloaded, is uploaded in CLOSE_WAIT and closes from the host."""
    rig = OffloadRig(81, policy=ChimneyPolicy(post_receive_size=4096))
    h, p = rig.pair(b"", b"", start=False)
    sock = rig.sock(h)
    rig.offload(sock)
    h.start(write=False)
    p.data = data(81, 150_000)
    p.keep_open = False
    p.start(read=False)
    rig.run_until(lambda: h.eof, 5.0)
    assert bytes(h.got) == p.data
    assert sock.offload_state is OffloadState.OFFLOADED
    assert rig.watch.conn(sock.local_port).out_from_target > 0  # the target ACKed it all
    h.write_more(data(82, 60_000))
    p.start(write=False)
    rig.run_until(lambda: h.write_done and len(p.got) == 60_000, 5.0)
    rig.upload(sock)
    assert sock.state.name == "CLOSE_WAIT"
    h.writer.close()
    rig.run_until(lambda: p.eof, 5.0)
    assert bytes(p.got) == data(82, 60_000)
    rig.run_until(lambda: sock.closed, 5.0)
    assert_peer_clean(rig, p, lossless=True)
    rig.assert_clean()


def test_peer_rst_while_offloaded() -> None:
    """A peer RST reaches the target: TcpIndicateAbort, the host uploads what is left, the
    application sees ConnectionResetError; the only RST on the wire is the peer's."""
    rig = OffloadRig(83)
    h, p = busy_pair(rig, 83, 3_000_000, 3_000_000)
    sock = rig.sock(h)
    rig.offload(sock)
    rig.run_for(0.01)
    p.writer.abort()
    rig.run_until(lambda: h.error is not None, 2.0)
    assert isinstance(h.error, ConnectionResetError), h.error
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST and rig.target.tcp_count == 0,
                  2.0)
    w = rig.watch.conn(sock.local_port)
    assert w.rst_in == 1 and w.rst_out == 0
    assert rig.target.counters.get("frames_verdict_0", 0) > 0
    rig.assert_clean()


def test_graceful_disconnect_by_the_host_while_offloaded() -> None:
    """The host application closes while offloaded: the target sends its FIN after every
    queued byte; the peer reads all and EOF, closes too; nothing is reset."""
    rig = OffloadRig(85)
    h, p = rig.pair(b"", b"", start=False)
    sock = rig.sock(h)
    rig.offload(sock)
    rig.watch.phase = "offloaded"
    h.data = data(85, 300_000)
    h.keep_open = False
    h.start()
    p.start(write=False)
    rig.run_until(lambda: p.eof, 5.0)
    assert bytes(p.got) == h.data
    w = rig.watch.phase_conn("offloaded", sock.local_port)
    assert w.out_fins == 1 and w.out_from_host == 0  # the FIN came from the target
    p.writer.close()
    rig.run_until(lambda: h.eof, 5.0)
    rig.run_until(lambda: rig.target.tcp_count == 0 or sock.offload_state is OffloadState.IN_HOST
                  or not rig.chimney.pending, 5.0)
    if sock.offload_state is OffloadState.OFFLOADED:
        rig.upload(sock)
    rig.run_until(lambda: sock.closed, 10.0)
    assert_peer_clean(rig, p, lossless=True)
    rig.assert_clean()


def test_abortive_disconnect_by_the_host_while_offloaded() -> None:
    """The host application aborts while offloaded: the target sends the RST (IP id in the
    target's half), outstanding sends complete REQUEST_ABORTED, the peer sees
    ConnectionResetError, the connection is uploaded and freed."""
    rig = OffloadRig(87)
    h, p = busy_pair(rig, 87, 3_000_000, 100_000)
    sock = rig.sock(h)
    rig.offload(sock)
    rig.run_for(0.01)
    h.writer.abort()
    rig.run_until(lambda: p.error is not None, 2.0)
    assert isinstance(p.error, ConnectionResetError), p.error
    rig.run_until(lambda: rig.target.tcp_count == 0 and sock.offload_state is OffloadState.IN_HOST,
                  2.0)
    w = rig.watch.conn(sock.local_port)
    assert w.rst_in == 0
    # the first RST is the target's (T.1: IP identification in its half); the peer's data
    # still in flight then meets a closed connection and is answered with RSTs by the host
    # stack (RFC 9293 3.10.7.1), which the reset peer ignores
    ids = [int.from_bytes(f[18:20], "big") for d, f in rig.watch.rst_frames if d == "out"]
    assert ids and ids[0] >= 0x8000 and sum(i >= 0x8000 for i in ids) == 1, ids
    rig.assert_clean()


def test_zero_window_while_offloaded_with_persist_probes() -> None:
    """The peer application stops reading: its window closes, the target probes it (persist
    timer), the peer reads again and the stream completes exactly."""
    small = TcpConfig(msl=1.0, receive_buffer=32 * 1024)
    rig = OffloadRig(89, peer_config=small)
    h, p = rig.pair(b"", b"", start=False)
    sock = rig.sock(h)
    rig.offload(sock)
    p.paused = True
    p.start(write=False)
    h.data = data(89, 400_000)
    h.start(read=False)
    w = rig.watch.conn(sock.local_port)
    rig.run_until(lambda: w.in_zero_windows > 0, 5.0)
    rig.run_for(6.0)  # several persist intervals with the window closed
    assert w.peer_window_zero and w.probes_from_target >= 2, w
    assert sock.offload_state is OffloadState.OFFLOADED and h.error is None
    assert len(p.got) <= 32 * 1024 + 4096
    p.paused = False
    rig.run_until(lambda: h.write_done and len(p.got) == len(h.data), 10.0)
    assert bytes(p.got) == h.data
    rig.upload(sock)
    h.writer.close()
    p.writer.close()
    rig.run_until(lambda: p.eof, 5.0)
    # the first segment after the window opens starts at the probed byte the peer refused
    assert_peer_clean(rig, p, lossless=False)
    assert rig.engine(p).counters.ooo_segments == 0
    rig.assert_clean()


def test_no_window_update_after_the_peers_fin() -> None:
    """The host closes first while offloaded; the peer's last data and FIN arrive in one burst
    (the target services them in one poll): the target ACKs the FIN and must send nothing
    more, so no RST comes back."""
    rig = OffloadRig(91, bandwidth=None)
    h, p = rig.pair(b"", b"", start=False)
    sock = rig.sock(h)
    rig.offload(sock)
    h.data = b"bye"
    h.keep_open = False
    h.start()
    p.start(write=False)
    rig.run_until(lambda: p.eof, 5.0)
    p.write_more(data(91, 300_000), close=True)
    rig.run_until(lambda: h.eof, 5.0)
    rig.run_for(1.0)
    assert bytes(h.got) == p.data
    assert rig.peer_rec.rst_frames == [] and rig.watch.rst_frames == []


# ---- everything at once: random hooks and handoffs on a lossy wire -----------------------------


@pytest.mark.parametrize("seed", range(300, 324))
def test_random_hooks_and_handoffs_on_a_lossy_wire(seed: int) -> None:
    """Three live connections on a wire with up to 3 % loss (plus reordering and duplicates);
    a seeded sequence of offloads, terminates, queries, updates, delayed / withheld
    completions and target-requested uploads.  Every stream ends exact, nothing is reset,
    the checker stays clean."""
    rng = random.Random(seed)
    policy = ChimneyPolicy(receive_limit=rng.choice([None, 16384]),
                           post_receive_size=rng.choice([0, 8192]),
                           upload_on_optional_reasons=rng.random() < 0.5)
    rig = OffloadRig(seed, loss=rng.choice([0.0, 0.01, 0.03]), policy=policy,
                     moderate=rng.random() < 0.5)
    pairs = [rig.pair(data(seed * 10 + i, rng.randrange(100_000, 300_000)),
                      data(seed * 10 + 5 + i, rng.randrange(100_000, 300_000)),
                      chunk=rng.choice([1460, 8192, 65536])) for i in range(3)]
    socks = [rig.sock(h) for h, _p in pairs]
    faults = rig.target.faults
    for _step in range(24):
        s = rng.choice(socks)
        action = rng.choice(["offload", "offload", "terminate", "terminate", "query", "update",
                             "delay", "withhold", "retrieve", "run"])
        if action == "offload" and s.offload_state is OffloadState.IN_HOST:
            rig.chimney.offload(s)
        elif action == "terminate" and s.offload_state is OffloadState.OFFLOADED:
            rig.chimney.terminate(s)
        elif action == "query" and s.offload_state is OffloadState.OFFLOADED:
            rig.chimney.query(s)
        elif action == "update" and s.offload_state is OffloadState.OFFLOADED:
            rig.chimney.update(s, keepalive=rng.random() < 0.5, keepalive_idle=60.0)
        elif action == "delay":
            faults.delay_completion(rng.choice(["initiate", "terminate", "send", "receive",
                                                "query"]), rng.uniform(0.001, 0.05))
        elif action == "withhold":
            faults.never_complete(rng.choice(["send", "receive", "terminate"]))
        elif action == "retrieve" and s.offload_state is OffloadState.OFFLOADED:
            faults.request_upload(rig.tcp_obj(s), rng.choice(list(TCP_UPLOAD_REASON)[:-1]))
        rig.run_for(rng.uniform(0.0, 0.02))
        if faults.withheld and rng.random() < 0.5:
            faults.release_withheld()
    faults.clear()
    rig.run_for(0.1)
    faults.release_withheld()
    rig.run_for(0.1)
    faults.release_withheld()
    for s in socks:
        if s.offload_state is not OffloadState.IN_HOST:
            rig.chimney.terminate(s)
    rig.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST for s in socks)
                  and not faults.withheld, 10.0)
    for h, p in pairs:
        close_both(rig, h, p)
    for h, p in pairs:
        assert bytes(p.got) == h.data and bytes(h.got) == p.data
        assert_peer_clean(rig, p, lossless=False)
    assert rig.target.tcp_count == 0 and rig.chimney.counters["lost"] == 0
    rig.assert_clean()
