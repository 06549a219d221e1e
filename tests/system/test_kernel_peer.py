"""The host stack against the real Linux kernel TCP peer (lab namespace, TAP, RunLoop).

Each test starts the traffic agent (``python -m vnic.peer``) in the lab's namespace, drives the
host side through the streams API on the run loop, checks the bytes both ways against the
agent's SHA-256 report, and reads the pcapng capture of the run with scapy: in every clean case
no frame on the wire carries RST.  The fixtures tear down labs, agents and captures also when
a test fails, and check that nothing this test created is left.
"""

from __future__ import annotations

from typing import Any

import pytest

from tcpip import streams
from tcpip.streams import StreamReader, StreamWriter
from tcpip.tcp import TcpConfig
from tests.helpers import tcp_connection
from tests.system.kernel import (
    KernelLab,
    LeakGuard,
    StateLog,
    capture_rst_frames,
    outbound_rst_count,
)
from vnic.payload import PayloadStream, StreamDigest, payload_digest

pytestmark = pytest.mark.system

PORT = 5001
CHUNK = 64 * 1024


def payload(seed: int, size: int) -> bytes:
    return PayloadStream(seed, size).read(size)


async def send_all(writer: StreamWriter, seed: int, size: int) -> StreamDigest:
    sent = StreamDigest()
    stream = PayloadStream(seed, size)
    while chunk := stream.read(CHUNK):
        writer.write(chunk)
        sent.update(chunk)
        await writer.drain()
    return sent


async def read_all(reader: StreamReader) -> StreamDigest:
    got = StreamDigest()
    while data := await reader.read(CHUNK):
        got.update(data)
    return got


def only_connection(result: dict[str, Any]) -> dict[str, Any]:
    assert result["event"] == "result", result
    assert len(result["connections"]) == 1, result
    return result["connections"][0]


def assert_no_rst(kl: KernelLab) -> None:
    rsts = kl.rst_frames()
    assert rsts == [], f"RST frames in {kl.capture_path}: {rsts}"


# ---- opens, data both ways ----------------------------------------------------------------


def test_active_open_data_both_ways(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    up, down = 3_000_000, 2_500_000
    agent = kl.agent("both", "--port", str(PORT), "--size", str(down), "--seed", "41")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = tcp_connection(writer.get_extra_info("connection"))
        out["sent"] = await send_all(writer, 17, up)
        writer.close()  # FIN after our data; the kernel's data keeps coming
        out["got"] = await read_all(reader)
        await writer.wait_closed()

    kl.run_task(kl.spawn(client()), timeout=60)
    res = only_connection(kl.agent_result(agent))
    assert res["error"] is None and res["eof"], res
    assert res["bytes_received"] == up and res["sha256_received"] == out["sent"].hexdigest()
    assert res["sha256_received"] == payload_digest(17, up)
    assert out["got"].count == down and out["got"].hexdigest() == res["sha256_sent"]
    assert res["sha256_sent"] == payload_digest(41, down)
    conn = out["conn"]
    assert conn.counters.rsts_in == 0 and conn.counters.rsts_out == 0
    assert_no_rst(kl)


def test_passive_open_kernel_connects_to_host_listener(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    up, down = 2_000_000, 2_200_000  # up = host -> kernel
    server: dict[str, Any] = {}

    async def handler(reader: StreamReader, writer: StreamWriter) -> None:
        server["conn"] = tcp_connection(writer.get_extra_info("connection"))
        server["peer"] = writer.get_extra_info("peername")
        writer.write(payload(23, up))  # never blocks: the writer flushes in the background
        writer.close()
        server["got"] = await read_all(reader)
        await writer.wait_closed()
        server["done"] = True

    srv = streams.start_server(kl.stack, handler, 6000)
    agent = kl.agent("connect", "--connect", kl.host_ip, "--port", "6000", "--size", str(down),
                     "--seed", "37")
    res = only_connection(kl.agent_result(agent, timeout=60))
    kl.run_until(lambda: server.get("done", False), 30, "server handler done")
    srv.close()
    assert server["peer"][0] == kl.peer_ip
    assert kl.stack.counters.connections_accepted == 1
    assert res["error"] is None and res["eof"], res
    assert res["bytes_received"] == up and res["sha256_received"] == payload_digest(23, up)
    assert server["got"].count == down and server["got"].hexdigest() == res["sha256_sent"]
    assert res["sha256_sent"] == payload_digest(37, down)
    assert server["conn"].counters.rsts_in == 0 and server["conn"].counters.rsts_out == 0
    assert_no_rst(kl)


# ---- the big one: 64 MiB each way with 1% loss and 1% reordering on the TAP path ----------


@pytest.mark.slow
def test_64mib_each_way_with_loss_and_reordering(tmp_path: Any, leak_guard: LeakGuard) -> None:
    from vnic.transfer import TransferOptions, run_transfer

    pcap = tmp_path / "transfer.pcapng"
    result = run_transfer(TransferOptions(size=64 << 20, direction="both", connections=1,
                                          loss=0.01, reorder=0.01, seed=3, pcap=str(pcap),
                                          timeout=300))
    leak_guard.register(result["lab"]["namespace"], result["lab"]["tap"])
    conn = result["connections"][0]
    assert result["completed"] and result["intact"], result
    for name in ("up", "down"):
        d = conn["directions"][name]
        assert d["bytes_sent"] == d["bytes_received"] == 64 << 20, (name, d)
        assert d["sha256_sent"] == d["sha256_received"], (name, d)
    assert conn["retransmissions"] > 0  # the faults did bite
    assert conn["rsts_in"] == 0 and conn["rsts_out"] == 0
    rsts = capture_rst_frames(pcap, dissect=False)
    assert rsts == [], rsts


# ---- graceful close in both orders --------------------------------------------------------


def test_close_host_fin_first(kernel_lab_factory: Any) -> None:
    kl = kernel_lab_factory(tcp_config=TcpConfig(msl=0.25))
    size = 500_000
    # sink --close wait: the kernel reads to our FIN, then closes (its FIN comes second)
    agent = kl.agent("sink", "--port", str(PORT), "--close", "wait")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["log"] = StateLog(tcp_connection(writer.get_extra_info("connection")))
        out["sent"] = await send_all(writer, 5, size)
        writer.close()
        out["rest"] = await reader.read()  # b"" at the kernel's FIN
        await writer.wait_closed()

    kl.run_task(kl.spawn(client()))
    res = only_connection(kl.agent_result(agent))
    log: StateLog = out["log"]
    kl.run_until(lambda: log.conn.closed, 10, "TIME-WAIT over")  # 2*MSL = 0.5 s
    assert out["rest"] == b""
    assert res["error"] is None and res["eof"] and res["bytes_received"] == size
    assert res["sha256_received"] == out["sent"].hexdigest() == payload_digest(5, size)
    assert log.names[-3:] in (["FIN_WAIT_2", "TIME_WAIT", "CLOSED"],
                              ["FIN_WAIT_1", "TIME_WAIT", "CLOSED"]), log.names
    assert "CLOSE_WAIT" not in log.names and log.conn.error is None
    assert kl.stack.connection_count() == 0
    assert_no_rst(kl)


def test_close_kernel_fin_first(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    size = 700_000
    # source --close first: the kernel sends, then FIN at once, and drains until our FIN
    agent = kl.agent("source", "--port", str(PORT), "--size", str(size), "--seed", "8",
                     "--close", "first")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["log"] = StateLog(tcp_connection(writer.get_extra_info("connection")))
        out["got"] = await read_all(reader)  # to the kernel's FIN
        out["state_at_eof"] = out["log"].conn.state.name
        writer.close()
        await writer.wait_closed()

    kl.run_task(kl.spawn(client()))
    res = only_connection(kl.agent_result(agent))
    log: StateLog = out["log"]
    kl.run_until(lambda: log.conn.closed, 10, "LAST-ACK acknowledged")
    assert res["error"] is None and res["eof"], res
    assert out["got"].count == size and out["got"].hexdigest() == res["sha256_sent"]
    assert res["sha256_sent"] == payload_digest(8, size)
    assert out["state_at_eof"] == "CLOSE_WAIT"
    assert log.names[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSED"], log.names
    assert "TIME_WAIT" not in log.names and log.conn.error is None
    assert_no_rst(kl)


# ---- the kernel resets ----------------------------------------------------------------------


def test_kernel_abort_after_bytes_resets_host(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    agent = kl.agent("sink", "--port", str(PORT), "--abort-after", "100000")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = conn = tcp_connection(writer.get_extra_info("connection"))
        try:
            await send_all(writer, 3, 8_000_000)
        except ConnectionResetError as exc:
            out["drain_error"] = exc
        await kl.stack.scheduler.wait_until(lambda: conn.reset_received, key=conn)
        try:
            await reader.read()
        except ConnectionResetError as exc:
            out["read_error"] = exc

    kl.run_task(kl.spawn(client()), timeout=30)
    res = only_connection(kl.agent_result(agent))
    # let late segments of ours reach the kernel and its answers come back
    kl.loop.run_for(0.3)
    conn = out["conn"]
    assert res["aborted"] and res["bytes_received"] >= 100000, res
    assert conn.reset_received and conn.closed and conn.counters.rsts_in == 1
    assert isinstance(out.get("read_error"), ConnectionResetError)
    # no RST storm: the host never answers a RST; it sent none at all here
    assert conn.counters.rsts_out == 0 and kl.stack.counters.rst_out == 0

    sent, received = outbound_rst_count(kl.close_capture())
    assert sent == 0 and received >= 1, (sent, received)


def test_kernel_close_rst_after_sending(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    size = 300_000
    agent = kl.agent("source", "--port", str(PORT), "--size", str(size), "--seed", "12",
                     "--close", "rst")
    out: dict[str, Any] = {"got": b""}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = tcp_connection(writer.get_extra_info("connection"))
        try:
            while data := await reader.read(CHUNK):
                out["got"] += data
        except ConnectionResetError as exc:
            out["read_error"] = exc

    kl.run_task(kl.spawn(client()), timeout=30)
    res = only_connection(kl.agent_result(agent))
    kl.loop.run_for(0.3)
    conn = out["conn"]
    assert res["aborted"] and res["bytes_sent"] == size, res
    assert isinstance(out.get("read_error"), ConnectionResetError), out
    assert conn.reset_received and conn.closed and conn.counters.rsts_in == 1
    # whatever arrived before the reset is an exact prefix of the stream
    assert out["got"] == payload(12, size)[: len(out["got"])]
    assert conn.counters.rsts_out == 0 and kl.stack.counters.rst_out == 0

    sent, received = outbound_rst_count(kl.close_capture())
    assert sent == 0 and received >= 1, (sent, received)


# ---- the kernel stops reading: zero window and probes -------------------------------------


def test_zero_window_probes_then_resume(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    size = 1_500_000
    agent = kl.agent("sink", "--port", str(PORT), "--pause-after", "150000", "--pause-for", "2",
                     "--rcvbuf", "8192", "--close", "wait")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = tcp_connection(writer.get_extra_info("connection"))
        out["sent"] = await send_all(writer, 99, size)
        writer.close()
        out["rest"] = await reader.read()
        await writer.wait_closed()

    task = kl.spawn(client())
    kl.run_until(lambda: "conn" in out and out["conn"].counters.zero_window_probes > 0, 20,
                 "a zero-window probe")
    kl.run_task(task, timeout=60)
    res = only_connection(kl.agent_result(agent))
    conn = out["conn"]
    assert conn.counters.zero_window_probes > 0
    assert res["error"] is None and res["eof"] and res["bytes_received"] == size, res
    assert res["sha256_received"] == out["sent"].hexdigest() == payload_digest(99, size)
    path = kl.close_capture()
    from scapy.layers.inet import TCP
    from scapy.utils import PcapNgReader

    zero_windows = 0
    with PcapNgReader(str(path)) as reader:
        for pkt in reader:
            if TCP in pkt and pkt[TCP].sport == PORT and pkt[TCP].window == 0 \
                    and not pkt[TCP].flags & 0x07:
                zero_windows += 1
    assert zero_windows > 0  # the kernel really advertised a zero window
    assert capture_rst_frames(path) == []


# ---- keepalive both ways ----------------------------------------------------------------------


def test_host_keepalive_answered_by_kernel(kernel_lab_factory: Any) -> None:
    cfg = TcpConfig(keepalive=True, keepalive_idle=0.3, keepalive_interval=0.25,
                    keepalive_probes=3)
    kl = kernel_lab_factory(tcp_config=cfg)
    agent = kl.agent("sink", "--port", str(PORT), "--close", "wait")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = tcp_connection(writer.get_extra_info("connection"))
        out["reader"], out["writer"] = reader, writer

    kl.run_task(kl.spawn(client()))
    conn = out["conn"]
    # More probes than keepalive_probes: without the kernel's answers the engine would have
    # given up (RST, CLOSED) after the third.
    kl.run_until(lambda: conn.counters.keepalive_probes >= 6 or conn.closed, 20,
                 "six keepalive probes")
    assert conn.state.name == "ESTABLISHED" and conn.error is None
    assert conn.counters.keepalive_probes >= 6

    async def finish() -> None:
        out["writer"].close()
        out["rest"] = await out["reader"].read()
        await out["writer"].wait_closed()

    kl.run_task(kl.spawn(finish()))
    res = only_connection(kl.agent_result(agent))
    assert res["error"] is None and res["eof"] and res["bytes_received"] == 0, res
    assert out["rest"] == b""
    assert conn.counters.rsts_in == 0 and conn.counters.rsts_out == 0
    assert_no_rst(kl)


class ProbeCounter:
    """Counts the kernel's keepalive probes to one connection as they arrive at the host:
    no payload, ACK only, SEG.SEQ = RCV.NXT - 1 (Linux's form, RFC 9293 3.8.4)."""

    def __init__(self, kl: KernelLab) -> None:
        self.kl = kl
        self.conn: Any = None
        self.probes = 0
        node = kl.loop.node
        inner = node.receive_frame

        def receive_frame(frame: bytes, now: float) -> None:
            self._inspect(frame)
            inner(frame, now)

        node.receive_frame = receive_frame  # type: ignore[method-assign]

    def _inspect(self, frame: bytes) -> None:
        conn = self.conn
        if conn is None or len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            return
        ihl = (frame[14] & 0x0F) * 4
        total = int.from_bytes(frame[16:18], "big")
        tcp = frame[14 + ihl:]
        doff = (tcp[12] >> 4) * 4
        if total - ihl - doff != 0 or tcp[13] != 0x10:
            return
        seq = int.from_bytes(tcp[4:8], "big")
        if seq == (conn.rcv_nxt - 1) & 0xFFFFFFFF:
            self.probes += 1


def test_kernel_keepalive_answered_by_host(kernel_lab: KernelLab) -> None:
    kl = kernel_lab
    probes = ProbeCounter(kl)
    # the kernel probes after 1 s idle, every 1 s, and drops the connection after 2 unanswered
    agent = kl.agent("sink", "--port", str(PORT), "--close", "wait", "--keepalive",
                     "--keepidle", "1", "--keepintvl", "1", "--keepcnt", "2")
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await streams.open_connection(kl.stack, kl.peer_ip, PORT)
        out["conn"] = tcp_connection(writer.get_extra_info("connection"))
        out["reader"], out["writer"] = reader, writer

    kl.run_task(kl.spawn(client()))
    conn = out["conn"]
    probes.conn = conn
    segments_out = conn.counters.segments_out
    kl.run_until(lambda: probes.probes >= 3 or agent.poll_result() is not None, 20,
                 "three kernel keepalive probes")
    assert probes.probes >= 3, agent.result
    assert agent.poll_result() is None  # the kernel did not give up on us
    assert conn.state.name == "ESTABLISHED"
    assert conn.counters.segments_out - segments_out >= 3  # one ACK per probe

    async def finish() -> None:
        out["writer"].close()
        out["rest"] = await out["reader"].read()
        await out["writer"].wait_closed()

    kl.run_task(kl.spawn(finish()))
    res = only_connection(kl.agent_result(agent))
    assert res["error"] is None and res["eof"], res
    assert conn.counters.rsts_in == 0 and conn.counters.rsts_out == 0
    assert_no_rst(kl)
