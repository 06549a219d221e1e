"""ChimneyHost against ndis.fakes.ScriptedTarget under the strict ConformanceChecker: offload
success / failure / partial failure, tree shapes, shared neighbor and path objects, I/O while
offloaded, target-initiated uploads, UPLOAD_ALL, abort, lost connections."""

from __future__ import annotations

import logging

import pytest

from ndis.blocks import BlockRole, block_role, iter_tree
from ndis.driver import NDIS_STATUS_INDICATION
from ndis.fakes import ScriptedTarget
from ndis.state import (
    TCP_OFFLOAD_EVENT_TYPE,
    TCP_OFFLOAD_STATE_DELEGATED,
    TCP_UPLOAD_REASON,
    NeighborOffloadState,
    OffloadLayer,
    PathOffloadState,
    TcpOffloadState,
)
from ndis.status import NdisStatus, Operation
from tcpip.addr import mac_bytes
from tcpip.offload import ChimneyPolicy, OffloadedConnection
from tcpip.offload_socket import OffloadState
from tcpip.tcb import TcpState
from tests.offload_host.rig import PEER_MAC, Rig, failing_target


def _tree_summary(root: object) -> list[tuple[int, str, str]]:
    out = []
    for block, depth, _ in iter_tree(root):  # type: ignore[arg-type]
        state = block.state
        kind = type(state).__name__ if state is not None else "-"
        out.append((depth, block_role(block).value, kind))
    return out


def test_offload_success_tree_and_state() -> None:
    rig = Rig(1)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    hw.write(b"a" * 5000)
    rig.run_for(0.05)
    rig.offload_and_wait(sock)
    assert sock.offload_state is OffloadState.OFFLOADED
    op, root = rig.target.requests[0]
    assert op is Operation.INITIATE
    blocks = [b for b, _, _ in iter_tree(root)]
    assert [type(b.state) for b in blocks] == [NeighborOffloadState, PathOffloadState, TcpOffloadState]
    n, p, t = (b.state for b in blocks)
    assert n.Cached.DlDestinationAddress[:6] == mac_bytes(PEER_MAC)
    assert n.Const.DlSourceAddress[:6] == rig.host.mac
    assert p.Const.SourceAddress == rig.host.ip and p.Const.DestinationAddress == rig.peer.ip
    key = sock.key
    assert (t.Const.LocalPort, t.Const.RemotePort) == (key[2], key[1])
    assert t.Delegated.State == TcpState.ESTABLISHED.value
    assert rig.target.parameters.TicksPerSecond == 1000  # the OID was set at bind
    rig.checker.assert_clean()


def test_app_writes_while_offloaded_become_send_nbls_and_complete() -> None:
    rig = Rig(2, target=ScriptedTarget(auto_ack=True))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    label = rig.tcp_label(sock)
    payload = bytes(range(256)) * 300
    hw.write(payload)
    rig.settle()
    obj = rig.target.obj(label)
    assert bytes(obj.sent_data) == payload  # SUCCESS = sent and ACKed (f.3)
    rec = rig.chimney.records[sock.key]
    assert rec.outstanding == 0 and sock.send_space() == rig.chimney.send_limit
    assert rig.chimney.counters["send_nbls"] >= 2  # one NBL per chunk
    rig.checker.assert_clean()


def test_offload_failure_connection_stays_and_works() -> None:
    rig = Rig(3, target=failing_target(("T",)))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    hw.write(b"before")
    assert rig.chimney.offload(sock) is not None
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST)
    assert rig.chimney.counters["offload_failures"] == 1
    hw.write(b"-after")
    pw.write(b"pong")
    got = bytearray()

    async def reader() -> None:
        while len(got) < 12:
            got.extend(await pr.read(100))

    rig.peer.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) >= 12 and hr._conn.receive_available() >= 4)
    assert bytes(got) == b"before-after"
    rig.settle()
    # the neighbor and path offloaded for it have no dependents: terminated (c.3)
    assert rig.target.objects == {}
    rig.checker.assert_clean()


def test_partial_failure_two_connections() -> None:
    rig = Rig(4, target=failing_target(("T2",)))
    c1 = rig.connect()
    c2 = rig.connect()
    s1, s2 = rig.sock(c1[1]), rig.sock(c2[1])
    infos = rig.chimney.offload_many([s1, s2])
    assert len(infos) == 2
    rig.run_until(lambda: OffloadState.OFFLOADING not in (s1.offload_state, s2.offload_state))
    assert s1.offload_state is OffloadState.OFFLOADED
    assert s2.offload_state is OffloadState.IN_HOST
    _, root = rig.target.requests[0]
    assert root.Status == NdisStatus.SUCCESS  # d.7: N offloaded, its path did too
    assert root.DependentBlockList.Status == NdisStatus.OFFLOAD_PARTIAL_SUCCESS  # T2 failed
    # the failed one keeps working in the host
    c2[1].write(b"still here")
    got = bytearray()

    async def reader() -> None:
        got.extend(await c2[2].readexactly(10))

    rig.peer.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) == 10)
    assert bytes(got) == b"still here"
    rig.checker.assert_clean()


def test_shared_neighbor_and_path_and_terminate_order() -> None:
    rig = Rig(5)
    c1, c2 = rig.connect(), rig.connect()
    s1, s2 = rig.sock(c1[1]), rig.sock(c2[1])
    rig.offload_and_wait(s1)
    rig.offload_and_wait(s2)
    second = rig.target.requests[1][1]
    roles = _tree_summary(second)
    # neighbor and path are linkers (no state follows them), only the TCP block is new (b.5)
    assert [(r[0], r[2]) for r in roles] == [(0, "-"), (1, "-"), (2, "TcpOffloadState")]
    assert all(r[1] == BlockRole.REFERENCE.value for r in roles)  # all have contexts now
    layers = sorted(o.layer for o in rig.target.objects.values())
    assert layers == [OffloadLayer.NEIGHBOR, OffloadLayer.PATH, OffloadLayer.TCP, OffloadLayer.TCP]
    rig.upload_and_wait(s1)
    term1 = rig.target.requests[2][1]
    assert [b.layer for b, _, _ in iter_tree(term1)] == [OffloadLayer.TCP]  # path still used
    rig.upload_and_wait(s2)
    rig.settle()
    term2 = rig.target.requests[3][1]
    assert [b.layer for b, _, _ in iter_tree(term2)] == [
        OffloadLayer.NEIGHBOR, OffloadLayer.PATH, OffloadLayer.TCP]  # with its last dependent
    assert rig.target.objects == {}
    rig.checker.assert_clean()


def test_terminate_returns_state_and_data_resumes() -> None:
    rig = Rig(6)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    hw.write(b"written while offloaded")  # held by the target (auto_ack off)
    rig.settle()
    assert rig.target.obj(rig.tcp_label(sock)).sends
    rig.upload_and_wait(sock)
    _, term = rig.target.requests[-1]
    got = bytearray()

    async def reader() -> None:
        got.extend(await pr.readexactly(23))

    rig.peer.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) == 23)
    assert bytes(got) == b"written while offloaded"
    assert rig.node.rst_out == 0 and rig.peer_node.rst_out == 0
    rig.checker.assert_clean()


def test_buffered_data_goes_down_and_comes_back() -> None:
    rig = Rig(7)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    pw.write(b"unread by the app")
    rig.run_until(lambda: sock.receive_available() == 17)
    rig.offload_and_wait(sock)
    label = rig.tcp_label(sock)
    assert bytes(rig.target.obj(label).rx_pending) == b"unread by the app"
    rig.upload_and_wait(sock)
    assert sock.receive_available() == 17
    assert any(n.label.endswith("-buffered") for n in rig.target.returned_nbls)  # d.3 step 7
    got = bytearray()

    async def reader() -> None:
        got.extend(await hr.readexactly(17))

    rig.host.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) == 17)
    assert bytes(got) == b"unread by the app"
    rig.checker.assert_clean()


def test_receive_indication_and_flow_control() -> None:
    rig = Rig(8, policy=ChimneyPolicy(receive_limit=10))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    label = rig.tcp_label(sock)
    rig.target.deliver(label, b"0123456789abcdef")
    rig.settle()
    assert sock.receive_available() == 10  # partially accepted (a.4)
    got = bytearray()

    async def reader() -> None:
        while len(got) < 16:
            got.extend(await hr.read(4))

    rig.host.scheduler.spawn(reader())
    # reading frees room: a zero-byte post re-enables indications (T.2)
    for _ in range(20):
        rig.settle()
        if len(got) >= 16:
            break
        obj = rig.target.obj(label)
        if obj.rx_pending and not obj.posts:
            rig.target.ndis.NdisQueueIoWorkItem(rig.target._indicate_pending, obj)
    assert bytes(got) == b"0123456789abcdef"
    assert rig.chimney.counters["posts"] >= 1
    assert rig.target.returned_nbls  # indicated NBLs are returned (a.3)
    rig.checker.assert_clean()


def test_posted_receives() -> None:
    rig = Rig(9, policy=ChimneyPolicy(post_receive_size=8))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.settle()
    label = rig.tcp_label(sock)
    assert rig.target.obj(label).posts
    rig.target.deliver(label, b"posted-receive-data!")
    rig.settle()
    got = bytearray()

    async def reader() -> None:
        while len(got) < 20:
            got.extend(await hr.read(100))

    rig.host.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) >= 20, 2.0)
    assert bytes(got) == b"posted-receive-data!"
    rig.upload_and_wait(sock)  # the outstanding post is completed by the terminate (d.3 step 4)
    rig.checker.assert_clean()


@pytest.mark.parametrize("reason", list(TCP_UPLOAD_REASON)[:-1])
def test_retrieve_triggers_upload(reason: TCP_UPLOAD_REASON) -> None:
    rig = Rig(10, policy=ChimneyPolicy(upload_on_optional_reasons=False))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.target.request_upload(rig.tcp_label(sock), reason)
    rig.settle()
    mandatory = reason in (5, 8, 9, 10, 11)
    expected = OffloadState.IN_HOST if mandatory else OffloadState.OFFLOADED
    assert sock.offload_state is expected
    rig.checker.assert_clean()


def test_optional_reason_honoured_by_default() -> None:
    rig = Rig(11)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.target.request_upload(rig.tcp_label(sock), TCP_UPLOAD_REASON.LowActivity)
    rig.settle()
    assert sock.offload_state is OffloadState.IN_HOST


def test_upload_all_uploads_everything_and_latches() -> None:
    rig = Rig(12)
    conns = [rig.connect() for _ in range(3)]
    socks = [rig.sock(c[1]) for c in conns]
    rig.chimney.offload_many(socks)
    rig.settle()
    assert all(s.offload_state is OffloadState.OFFLOADED for s in socks)
    rig.target.indicate_status(NdisStatus.UPLOAD_ALL)
    rig.settle()
    assert all(s.offload_state is OffloadState.IN_HOST for s in socks)
    assert rig.target.objects == {}
    assert rig.chimney.offload(socks[0]) is None  # d.8: not until OFFLOAD_RESUME
    rig.target.ndis.NdisMIndicateStatusEx(NDIS_STATUS_INDICATION(NdisStatus.OFFLOAD_RESUME))
    assert rig.chimney.offload(socks[0]) is not None
    rig.settle()
    rig.checker.assert_clean()


def test_upload_all_while_offloading() -> None:
    rig = Rig(13)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.target.hold = True
    rig.chimney.offload(sock)
    rig.target.indicate_status(NdisStatus.UPLOAD_ALL)
    rig.run_for(0.01)
    assert sock.offload_state is OffloadState.OFFLOADING  # c.3: never terminate it now
    rig.target.hold = False
    rig.target.release()
    rig.settle()
    assert sock.offload_state is OffloadState.IN_HOST
    assert rig.target.objects == {}
    rig.checker.assert_clean()


def test_abort_indication_resets_app_and_uploads() -> None:
    rig = Rig(14)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.target.indicate_event(rig.tcp_label(sock), TCP_OFFLOAD_EVENT_TYPE.TcpIndicateAbort)
    rig.settle()
    assert sock.offload_state is OffloadState.IN_HOST
    assert rig.target.objects == {}
    assert not rig.host.is_parked(sock.key)
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await hr.read(10)
        except ConnectionResetError as exc:
            errors.append(exc)

    rig.host.scheduler.spawn(reader())
    rig.run_for(0.01)
    assert errors
    rig.checker.assert_clean()


def test_terminate_failure_loses_the_connection() -> None:
    rig = Rig(15)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.target.op_script[(Operation.TERMINATE, rig.tcp_label(sock))] = NdisStatus.FAILURE
    rig.upload_and_wait(sock)
    assert sock.closed and sock.reset_received
    assert rig.chimney.counters["lost"] == 1
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await hr.read(10)
        except ConnectionResetError as exc:
            errors.append(exc)

    rig.host.scheduler.spawn(reader())
    rig.run_for(0.01)
    assert errors


def test_peer_fin_while_offloaded_is_eof() -> None:
    rig = Rig(16)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rig.target.deliver(rig.tcp_label(sock), b"last words")
    rig.target.indicate_event(rig.tcp_label(sock), TCP_OFFLOAD_EVENT_TYPE.TcpIndicateDisconnect)
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await hr.read())

    rig.host.scheduler.spawn(reader())
    rig.settle()
    rig.run_for(0.01)
    assert got == [b"last words"]
    assert sock.state is TcpState.CLOSE_WAIT


def test_close_while_offloaded_is_graceful_disconnect() -> None:
    rig = Rig(17, target=ScriptedTarget(auto_ack=True))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    hw.write(b"bye")
    hw.close()
    rig.settle()
    obj = rig.target.obj(rig.tcp_label(sock))
    assert bytes(obj.sent_data) == b"bye"
    assert sock.state is TcpState.FIN_WAIT_1
    assert sock.send_space() == 0


def test_abort_while_offloaded_is_abortive_disconnect() -> None:
    rig = Rig(18)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    hw.abort()
    rig.settle()
    assert sock.closed
    assert rig.target.objects == {}  # uploaded and freed
    assert not rig.host.is_parked(sock.key)
    rig.checker.assert_clean()


def test_forward_while_offloaded_and_hold_during_terminate() -> None:
    rig = Rig(19)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    label = rig.tcp_label(sock)
    pw.write(b"to the host")  # the ScriptedTarget is not on the wire: the host sees it
    rig.run_for(0.001)
    assert rig.target.obj(label).forwarded  # NdisOffloadTcpForward (c.3)
    rig.target.hold = True
    assert rig.chimney.terminate(sock)
    rig.run_for(0.3)  # the peer retransmits: held, not forwarded (V13)
    rec = rig.chimney.records[sock.key]
    assert rec.held
    rig.target.hold = False
    rig.target.release()
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST)
    got = bytearray()

    async def reader() -> None:
        got.extend(await hr.readexactly(11))

    rig.host.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) == 11)
    assert bytes(got) == b"to the host"
    rig.checker.assert_clean()


def test_query_and_update() -> None:
    rig = Rig(20)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    results: list[TCP_OFFLOAD_STATE_DELEGATED | None] = []
    assert rig.chimney.query(sock, results.append)
    assert rig.chimney.update(sock, keepalive=True, keepalive_idle=30.0, initial_rcv_wnd=1 << 19)
    assert not rig.chimney.update(sock, nodelay=True)  # one update at a time (c.3)
    assert rig.chimney.terminate(sock)  # waits for the query and the update (V13)
    rig.settle()
    assert results and results[0] is not None and results[0].State == TcpState.ESTABLISHED.value
    cached = rig.target.requests[2][1].state
    assert cached.KaTimeout == 30_000 and cached.InitialRcvWnd == 1 << 19
    assert sock.offload_state is OffloadState.IN_HOST
    conn = sock.host_connection
    assert conn.keepalive and conn.keepalive_idle == 30.0  # the host owns cached state
    rig.checker.assert_clean()


def test_neighbor_reachability_query() -> None:
    rig = Rig(21)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    n_label = next(label for label, o in rig.target.objects.items() if o.layer is OffloadLayer.NEIGHBOR)
    hrd = rig.target.reachability_query(n_label)
    assert hrd >= 1  # the host's entry is REACHABLE (T.7)


def test_through_intermediates() -> None:
    rig = Rig(22, ims=2, target=ScriptedTarget(auto_ack=True))
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    hw.write(b"via two IMs")
    rig.settle()
    rig.upload_and_wait(sock)
    rig.checker.assert_clean()


def test_not_offloadable_states_and_unresolved() -> None:
    rig = Rig(23)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.host.neighbors.remove(rig.peer.ip)
    assert rig.chimney.offload(sock) is None  # no next-hop MAC
    rig.run_for(0.1)
    conn = rig.host.connect(rig.peer.ip, 9)  # SYN_SENT
    assert rig.chimney.offload(conn) is None  # b.14 / V15


def test_phase_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(24)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    with caplog.at_level(logging.INFO, logger="tcpip.offload"):
        rig.offload_and_wait(sock)
        rig.upload_and_wait(sock)
    lines = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert [ln.split()[-3:] for ln in lines if sock.name in ln] == [
        ["InHost", "->", "Offloading"], ["Offloading", "->", "Offloaded"],
        ["Offloaded", "->", "Uploading"], ["Uploading", "->", "InHost"]]
    assert isinstance(OffloadedConnection, type)


def test_upload_logs_the_resumed_connections_state_change(caplog: pytest.LogCaptureFixture) -> None:
    # the levels are checked once per terminate tree; the INFO lines are still written
    rig = Rig(26)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    with caplog.at_level(logging.INFO, logger="tcpip.tcp"):
        rig.upload_and_wait(sock)
    lines = [r.getMessage() for r in caplog.records if r.name == "tcpip.tcp"]
    assert any(sock.name in ln and "CLOSED -> ESTABLISHED" in ln for ln in lines), lines


def test_upload_logs_nothing_per_connection_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(27)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    with caplog.at_level(logging.WARNING):
        rig.upload_and_wait(sock)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]


def test_sends_refused_with_upload_in_progress_are_resent_in_order() -> None:
    rig = Rig(25)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    label = rig.tcp_label(sock)
    # (no earlier send outstanding: ScriptedTarget would complete the refused one ahead of
    # it, which the checker flags as a V6 FIFO violation of the fake target)
    rig.target.request_upload(label, TCP_UPLOAD_REASON.UploadRequested)
    hw.write(b"second;")  # d.2: the target completes it with UPLOAD_IN_PROGRESS
    rig.run_until(lambda: sock.offload_state is OffloadState.IN_HOST)
    hw.write(b"third")
    got = bytearray()

    async def reader() -> None:
        got.extend(await pr.readexactly(12))

    rig.peer.scheduler.spawn(reader())
    rig.run_until(lambda: len(got) == 12)
    assert bytes(got) == b"second;third"
    rig.checker.assert_clean()


def test_ordinary_path_segments_from_the_target_are_forwarded() -> None:
    from ndis.blocks import NET_BUFFER_LIST
    from tcpip.ethernet import ETH_P_IPV4, build_ethernet
    from tcpip.ipv4 import IPPROTO_TCP, build_ipv4
    from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp

    rig = Rig(26)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    rec = rig.chimney.records[sock.key]
    seg = TcpSegment(sock.remote_port, sock.local_port, 1, rec.base.snd_una, TcpFlags.ACK, 100,
                     TcpOptions(), b"x")
    packet = build_ipv4(rig.peer.ip, rig.host.ip, IPPROTO_TCP, build_tcp(seg, rig.peer.ip, rig.host.ip))
    frame = build_ethernet(rig.host.mac, rig.peer.mac, ETH_P_IPV4, packet)
    rig.target.ndis.NdisMIndicateReceiveNetBufferLists(NET_BUFFER_LIST(frame))  # a.5
    rig.settle()
    fwd = rig.target.obj(rig.tcp_label(sock)).forwarded
    assert fwd and fwd[-1][14:] == packet  # forwarded as the frame (c.3)
    rig.checker.assert_clean()


def test_neighbor_mac_change_updates_cached_state_and_path_mtu() -> None:
    rig = Rig(27)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    rig.offload_and_wait(sock)
    new_mac = bytes.fromhex("02766e0000aa")
    rig.host.neighbors.add(rig.peer.ip, new_mac, rig.now)  # ARP says the next hop moved (b.8)
    rig.run_for(0.001)
    rig.settle()
    n_obj = next(o for o in rig.target.objects.values() if o.layer is OffloadLayer.NEIGHBOR)
    assert n_obj.state.Cached.DlDestinationAddress[:6] == new_mac
    assert rig.chimney.update_path_mtu(rig.peer.ip, 1280)
    assert not rig.chimney.update_path_mtu(rig.peer.ip, 1000)  # c.3: one update at a time
    rig.settle()
    p_obj = next(o for o in rig.target.objects.values() if o.layer is OffloadLayer.PATH)
    assert p_obj.state.Cached.PathMtu == 1280
    rig.upload_and_wait(sock)
    rig.settle()
    assert rig.target.objects == {}
    rig.checker.assert_clean()


def test_status_lists_owned_connections() -> None:
    rig = Rig(28)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    assert rig.chimney.status() == []
    rig.offload_and_wait(sock)
    (row,) = rig.chimney.status()
    assert row["connection"] == sock.name and row["offload_state"] == "Offloaded"
    assert row["tcp_state"] == "ESTABLISHED"
    assert rig.chimney.offload_state(sock) is OffloadState.OFFLOADED
    assert rig.chimney.offloaded_count() == 1


def test_invalidate_neighbor_uploads_its_connections() -> None:
    rig = Rig(29)
    c1, c2 = rig.connect(), rig.connect()
    s1, s2 = rig.sock(c1[1]), rig.sock(c2[1])
    rig.chimney.offload_many([s1, s2])
    rig.settle()
    assert rig.chimney.invalidate_neighbor(rig.peer.ip)
    assert not rig.chimney.invalidate_neighbor(rig.peer.ip)  # already in progress
    assert rig.chimney.offload(rig.host.connect(rig.peer.ip, 9)) is None
    rig.settle()
    assert s1.offload_state is OffloadState.IN_HOST and s2.offload_state is OffloadState.IN_HOST
    assert rig.target.objects == {}
    assert rig.chimney.offload(s1) is not None  # a fresh neighbor object
    rig.settle()
    rig.checker.assert_clean()
