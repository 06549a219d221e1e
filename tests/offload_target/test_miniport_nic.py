"""NicNode: the emulated NIC as a FrameNode between the wire and the host stack."""

from __future__ import annotations

from ndis import Ndis, Protocol
from ndis.checker import ConformanceChecker
from ndis.fakes import ScriptedHost
from offload_target.miniport import OffloadTarget
from offload_target.nic import NicNode

from .test_miniport_fakes import NIC_MAC, FakeDataPathTable, Peer, Rig


class StubStack:
    """A host stack FrameNode that records what it gets."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.to_send: list[bytes] = []
        self.deadline: float | None = None

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.received.append(frame)

    def poll(self, now: float) -> list[bytes]:
        out, self.to_send = self.to_send, []
        return out

    def next_deadline(self) -> float | None:
        return self.deadline


class PlainProtocol(Protocol):
    """A bound protocol without a ReceiveNetBufferLists of its own."""


def make(protocol: Protocol | None = None):
    ndis = Ndis(checker=ConformanceChecker(strict=True))
    target = OffloadTarget(4, mac=NIC_MAC, table=FakeDataPathTable(4))
    handle = ndis.register_miniport(target, capabilities=target.capabilities)
    stack = StubStack()
    if protocol is not None:
        ndis.open_adapter(protocol, handle)
    return NicNode(stack, target, ndis, mac=NIC_MAC), stack, target


def test_frames_not_ours_go_straight_to_the_stack_without_an_ndis_receiver() -> None:
    node, stack, _ = make(PlainProtocol())
    arp = bytes(6) + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    node.receive_frame(arp, 1.0)
    assert stack.received == [arp]
    assert node.counters["passed_up"] == 1


def test_frames_not_ours_go_up_through_ndis_when_the_protocol_receives() -> None:
    host = ScriptedHost()
    node, stack, _ = make(host)
    frame = Peer(40000).data(b"no such connection")
    node.receive_frame(frame, 1.0)
    assert stack.received == []
    assert host.events == [("ReceiveNetBufferLists", (frame,))]


def test_poll_returns_host_frames_and_runs_ndis_work() -> None:
    node, stack, target = make(ScriptedHost())
    stack.to_send = [b"host-frame"]
    target.ndis.NdisQueueIoWorkItem(lambda: target.outbox.append(b"target-frame"))
    assert node.next_deadline() == 0.0  # NDIS work pending
    out = node.poll(2.0)
    assert b"host-frame" in out and b"target-frame" in out
    assert not node.ndis.has_pending()
    assert node.next_deadline() is None
    stack.deadline = 7.0
    assert node.next_deadline() == 7.0


def test_offloaded_connection_end_to_end_through_the_node() -> None:
    rig = Rig()
    node = NicNode(StubStack(), rig.target, rig.ndis, mac=NIC_MAC)
    node.host.poll = lambda now: []  # type: ignore[method-assign]
    rig.offload()
    peer = Peer(40000)
    rig.host.send("T", b"to the peer")
    out = node.poll(0.01)
    assert any(b"to the peer" in f for f in out)
    node.receive_frame(peer.data(b"to the host"), 0.02)
    assert rig.events("ReceiveIndicate") == [("ReceiveIndicate", "T", b"to the host", "SUCCESS")]
    node.receive_frame(peer.ack_bytes(11), 0.03)
    node.poll(0.03)
    assert rig.events("TcpOffloadSendComplete") == [("TcpOffloadSendComplete", (("NDIS_STATUS_SUCCESS", 11),))]
    assert node.counters["consumed"] == 2
    rig.checker.assert_clean()
