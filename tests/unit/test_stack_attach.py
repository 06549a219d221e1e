"""HostStack.attach (the resume of an uploaded connection): a connection with nothing to do
now is not polled -- its earliest timer is registered instead -- and one with unsent data
sends it at the first poll (TcpConnection.from_snapshot marks it), without waiting for an ACK.
"""

from __future__ import annotations

import dataclasses
import random

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.stack import HostStack
from tcpip.streams import open_connection, serve
from tcpip.tcp import TcpConnection
from tests.helpers import FramePair

IP_A, IP_B = "198.18.0.1", "198.18.0.2"


def _pair() -> tuple[HostStack, HostStack, FramePair, object]:
    a = HostStack(mac_bytes("02:00:00:00:00:01"), ip_bytes(IP_A), 24, rng=random.Random(1),
                  name="a")
    b = HostStack(mac_bytes("02:00:00:00:00:02"), ip_bytes(IP_B), 24, rng=random.Random(2),
                  name="b")
    wire = FramePair(a, b)
    got: list[object] = []

    async def sink(reader, writer) -> None:  # type: ignore[no-untyped-def]
        while await reader.read(65536):
            pass

    serve(b, sink, 9)

    async def client() -> None:
        got.append(await open_connection(a, IP_B, 9))

    a.scheduler.spawn(client())
    wire.run_until(lambda: bool(got))
    return a, b, wire, got[0]


def _rebuild(a: HostStack, writer, **changes):  # type: ignore[no-untyped-def]
    """Detach the writer's connection and attach a rebuilt one, as the chimney's resume does."""
    sock = writer.get_extra_info("connection")
    conn = sock.engine if hasattr(sock, "engine") else sock
    key = a.connection_key(conn)
    snap = dataclasses.replace(conn.export_state(a.now), **changes)
    a.detach(conn, lambda *args: None)
    new = TcpConnection.from_snapshot(snap, a.tcp_config, a.now)
    if hasattr(sock, "swap"):
        sock.swap(new, sock.offload_state)
    return key, new


def test_an_idle_resumed_connection_is_not_polled_but_its_timer_is_kept(monkeypatch) -> None:
    a, b, wire, (reader, writer) = _pair()
    key, new = _rebuild(a, writer, keepalive=True, keepalive_timeout_delta=5.0)
    polls = []
    orig = TcpConnection.poll

    def counting_poll(self, now):  # (TcpConnection has slots: patched on the class)
        if self is new:
            polls.append(now)
        return orig(self, now)

    monkeypatch.setattr(TcpConnection, "poll", counting_poll)
    a.attach(new, key)
    assert a.poll(a.now) == [] and polls == []  # nothing to do now: not polled
    deadline = a.next_deadline()
    assert deadline is not None and abs(deadline - (a.now + 5.0)) < 1e-6  # the keepalive
    frames = a.poll(deadline)
    assert polls == [deadline] and frames  # polled when its timer is due: the probe goes out


def test_a_resumed_connection_sends_its_unsent_data_at_once() -> None:
    a, b, wire, (reader, writer) = _pair()
    key, new = _rebuild(a, writer, send_data=b"resumed with data", snd_wnd=65535)
    a.attach(new, key)
    assert a.next_deadline() == a.now  # polled at once
    frames = a.poll(a.now)
    assert any(f.endswith(b"resumed with data") for f in frames)  # no ACK needed first
