"""Two HostStacks wired frame to frame in memory (virtual clock): ARP, handshake, streams,
services, teardown, determinism and the idle-connection cost of poll()."""

from __future__ import annotations

import hashlib
import random

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from tcpip.addr import ip_bytes, mac_bytes
from tcpip.stack import HostStack
from tcpip.streams import open_connection, serve
from tests.helpers import FramePair

tcp = pytest.importorskip("tcpip.tcp")

IP_A, IP_B = "198.18.0.1", "198.18.0.2"


def make_pair(seed: int = 1) -> tuple[HostStack, HostStack, FramePair]:
    a = HostStack(
        mac_bytes("02:00:00:00:00:01"), ip_bytes(IP_A), 24, rng=random.Random(seed), name="a"
    )
    b = HostStack(
        mac_bytes("02:00:00:00:00:02"), ip_bytes(IP_B), 24, rng=random.Random(seed + 1), name="b"
    )
    return a, b, FramePair(a, b)


def no_internal_errors(*stacks: HostStack) -> bool:
    return all(s.counters.drops["internal-error"] == 0 for s in stacks)


def test_handshake_and_echo_through_streams() -> None:
    from tcpip import services

    a, b, wire = make_pair()
    services.install(b)
    data = random.Random(5).randbytes(300_000)
    out: dict[str, object] = {}

    async def client() -> None:
        reader, writer = await open_connection(a, IP_B, 7)
        out["peer"] = writer.get_extra_info("peername")
        writer.write(data)
        await writer.drain()
        out["echo"] = await reader.readexactly(len(data))
        writer.close()
        out["rest"] = await reader.read()
        await writer.wait_closed()

    task = a.scheduler.spawn(client())
    wire.run_until(task.done)
    assert task.exception() is None
    assert out["peer"] == (IP_B, 7)
    assert hashlib.sha256(out["echo"]).digest() == hashlib.sha256(data).digest()  # type: ignore[arg-type]
    assert out["rest"] == b""  # the server closed after our FIN: clean EOF
    # The wire began with ARP, then a three-way handshake.
    first = [Ether(f) for _, _, f in wire.frames[:5]]
    assert ARP in first[0] and first[0][ARP].op == 1
    assert ARP in first[1] and first[1][ARP].op == 2
    syns = [p[TCP] for p in first if TCP in p]
    assert [str(t.flags) for t in syns[:3]] == ["S", "SA", "A"]
    # Both sides eventually forget the connection (TIME-WAIT included).
    wire.run_until(lambda: a.connection_count() == 0 and b.connection_count() == 0, timeout=300)
    assert a.counters.connections_closed == 1 and b.counters.connections_closed == 1
    assert no_internal_errors(a, b)


def test_every_frame_on_the_wire_is_valid_for_scapy() -> None:
    a, b, wire = make_pair()
    serve(b, _upper_echo, 8000)

    async def client() -> bytes:
        reader, writer = await open_connection(a, IP_B, 8000)
        writer.write(b"hello\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    task = a.scheduler.spawn(client())
    wire.run_until(task.done)
    assert task.result() == b"HELLO\n"
    for _, _, frame in wire.frames:
        pkt = Ether(frame)
        if IP in pkt:
            again = pkt.copy()
            del again[IP].chksum
            del again[TCP].chksum
            assert raw(Ether(raw(again))) == frame
            assert pkt[IP].flags.DF and pkt[IP].id < 0x8000


async def _upper_echo(reader, writer) -> None:  # type: ignore[no-untyped-def]
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()


def test_connection_refused_by_closed_port() -> None:
    a, b, wire = make_pair()

    async def client() -> None:
        await open_connection(a, IP_B, 4444)

    task = a.scheduler.spawn(client())
    wire.run_until(task.done)
    assert isinstance(task.exception(), ConnectionRefusedError)
    assert b.counters.rst_out == 1
    wire.run_until(lambda: a.connection_count() == 0)


def test_discard_and_chargen_services() -> None:
    from tcpip import services

    a, b, wire = make_pair()
    services.install(b)
    got: dict[str, bytes] = {}

    async def discard_client() -> None:
        reader, writer = await open_connection(a, IP_B, 9)
        writer.write(b"x" * 100_000)
        writer.close()
        got["discard"] = await reader.read()

    async def chargen_client() -> None:
        reader, writer = await open_connection(a, IP_B, 19)
        got["chargen"] = await reader.readexactly(200_000)
        writer.close()
        await reader.read()  # the server closes once it sees our FIN

    t1 = a.scheduler.spawn(discard_client())
    t2 = a.scheduler.spawn(chargen_client())
    wire.run_until(lambda: t1.done() and t2.done(), timeout=120)
    assert t1.exception() is None and t2.exception() is None
    assert got["discard"] == b""
    expected = services.chargen_lines(1, 200_000 // 74 + 1)[:200_000]
    assert got["chargen"] == expected
    assert no_internal_errors(a, b)


def test_same_seeds_same_frames() -> None:
    def run() -> list[bytes]:
        a, b, wire = make_pair(seed=11)
        serve(b, _upper_echo, 8000)

        async def client() -> None:
            reader, writer = await open_connection(a, IP_B, 8000)
            for i in range(20):
                writer.write(b"line %d\n" % i)
                await reader.readline()
            writer.close()
            await writer.wait_closed()

        t = a.scheduler.spawn(client())
        wire.run_until(t.done)
        return [f for _, _, f in wire.frames]

    assert run() == run()


def test_idle_connections_are_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, wire = make_pair()
    accepted: list[object] = []
    b.listen(5000, accepted.append)
    conns = [a.connect(ip_bytes(IP_B), 5000) for _ in range(300)]
    wire.run_until(lambda: len(accepted) == 300)
    wire.run_until(lambda: not any(c.ack_owed for c in conns), timeout=5)
    wire.step()
    calls = {"n": 0}
    real_poll = tcp.TcpConnection.poll

    def counting_poll(self, now):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real_poll(self, now)

    monkeypatch.setattr(tcp.TcpConnection, "poll", counting_poll)
    conns[7].send(b"ping")
    a.wake(conns[7])
    wire.step()
    wire.step()
    assert sum(c.receive_available() for c in accepted) == 4  # type: ignore[attr-defined]
    assert calls["n"] <= 4  # one connection per side per step, not 600


def test_engine_exceptions_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, wire = make_pair()
    b.listen(5000, lambda conn: None)
    conn = a.connect(ip_bytes(IP_B), 5000)
    wire.run_until(lambda: conn.state.name == "ESTABLISHED")

    def broken(self, *args):  # type: ignore[no-untyped-def]
        raise RuntimeError("engine bug")

    monkeypatch.setattr(tcp.TcpConnection, "on_segment", broken)
    monkeypatch.setattr(tcp.TcpConnection, "poll", broken)
    conn.send(b"data")
    a.wake(conn)
    assert a.poll(wire.now) == []  # poll() survives the engine raising
    assert a.counters.drops["internal-error"] == 1 and a.connection_count() == 0
    frame = next(f for _, i, f in reversed(wire.frames) if i == 0)  # a frame a sent to b
    b.receive_frame(frame, wire.now)  # receive_frame survives on_segment raising
    assert b.counters.drops["internal-error"] == 1


def test_burst_budget_spreads_a_burst_over_polls_and_the_stream_stays_intact() -> None:
    """HostStack with TcpConfig.burst_segments: one poll() returns at most the budget of one
    connection's data segments even when its application writes more during that poll; the
    stack asks to be polled again at once; the byte stream arrives intact."""
    budget = 3
    a = HostStack(mac_bytes("02:00:00:00:00:01"), ip_bytes(IP_A), 24, rng=random.Random(1),
                  name="a", tcp_config=tcp.TcpConfig(burst_segments=budget))
    b = HostStack(mac_bytes("02:00:00:00:00:02"), ip_bytes(IP_B), 24, rng=random.Random(2),
                  name="b")
    wire = FramePair(a, b)
    data = random.Random(9).randbytes(400_000)
    got = bytearray()
    largest = 0

    async def sink(reader, writer) -> None:  # type: ignore[no-untyped-def]
        while chunk := await reader.read(1 << 16):
            got.extend(chunk)

    serve(b, sink, 9)

    async def client() -> None:
        _r, w = await open_connection(a, IP_B, 9)
        for i in range(0, len(data), 50_000):
            w.write(data[i:i + 50_000])
            await w.drain()
        w.close()

    task = a.scheduler.spawn(client())
    orig_poll = a.poll

    def counting_poll(now: float) -> list[bytes]:
        nonlocal largest
        out = orig_poll(now)
        data_frames = sum(1 for f in out if len(f) > 200)
        largest = max(largest, data_frames)
        if data_frames == budget:
            assert a.next_deadline() == now  # the rest goes out on the next pass
        return out

    a.poll = counting_poll  # type: ignore[method-assign]
    wire.run_until(lambda: task.done() and len(got) >= len(data))
    assert task.exception() is None
    assert bytes(got) == data
    assert largest == budget
