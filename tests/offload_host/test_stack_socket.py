"""The stack-side indirection the chimney relies on: the stable socket record, detach / attach
(parking a 4-tuple while the chimney owns it), services polled with the stack."""

from __future__ import annotations

import errno

import pytest

from tcpip.offload_socket import OffloadState, TcpSocket
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment
from tests.offload_host.rig import PORT, Rig


def test_socket_is_stable_and_routes_to_the_engine() -> None:
    rig = Rig(1)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    conn = sock.host_connection
    assert rig.host.socket(conn) is sock and rig.host.socket(sock) is sock
    assert sock.offload_state is OffloadState.IN_HOST
    assert rig.host.four_tuple(sock) == rig.host.four_tuple(conn)
    assert sock.send(b"abc") == 3 and sock.send_space() == conn.send_space()
    assert (sock.local_port, sock.remote_port, sock.remote_ip) == (conn.local_port, PORT, rig.peer.ip)
    with pytest.raises(KeyError):
        rig.host.socket(object())


def test_detach_parks_the_four_tuple_and_attach_restores_it() -> None:
    rig = Rig(2)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    conn = sock.host_connection
    seen: list[TcpSegment] = []
    key = rig.host.detach(conn, lambda seg, src, dst, now: seen.append(seg))
    assert key == sock.key and rig.host.is_parked(key)
    assert rig.host.find_connection(*key) is None
    assert rig.host.socket_for_key(key) is sock  # the record survives
    pw.write(b"while parked")
    rig.run_for(0.01)
    assert seen and seen[0].payload == b"while parked"  # handed to the parked handler
    with pytest.raises(OSError) as exc:
        rig.host.connect(rig.peer.ip, PORT, key[2])
    assert exc.value.errno == errno.EADDRINUSE
    rig.host.attach(conn, key)
    assert not rig.host.is_parked(key) and rig.host.find_connection(*key) is conn
    for seg in seen:
        rig.host.deliver_tcp(seg, rig.peer.ip, rig.host.ip, rig.now)
    assert conn.receive_available() == 12
    rig.host.release(key)  # nothing parked: a no-op but drops the record
    assert rig.host.socket_for_key(key) is None


def test_parked_segment_never_gets_a_reset() -> None:
    rig = Rig(3)
    hr, hw, pr, pw = rig.connect()
    conn = rig.sock(hw).host_connection
    key = rig.host.detach(conn, lambda *a: None)
    seg = TcpSegment(PORT, key[2], 1, 1, TcpFlags.ACK, 100, TcpOptions(), b"x")
    before = rig.host.counters.rst_out
    rig.host.deliver_tcp(seg, rig.peer.ip, rig.host.ip, rig.now)
    assert rig.host.counters.rst_out == before


class _Service:
    def __init__(self) -> None:
        self.polls: list[float] = []
        self.due: float | None = 5.0

    def poll(self, now: float) -> None:
        self.polls.append(now)

    def next_deadline(self) -> float | None:
        return self.due


def test_services_poll_with_the_stack() -> None:
    rig = Rig(4)
    svc = _Service()
    rig.host.add_service(svc)
    rig.host.add_service(svc)  # once only
    rig.host.poll(1.0)
    assert svc.polls == [1.0]
    assert rig.host.next_deadline() is not None and rig.host.next_deadline() <= 5.0


def test_wake_on_a_socket_marks_the_connection() -> None:
    rig = Rig(5)
    hr, hw, pr, pw = rig.connect()
    sock = rig.sock(hw)
    assert isinstance(sock, TcpSocket)
    sock.send(b"data")
    rig.host.wake(sock)
    assert rig.host.next_deadline() == rig.host.now
