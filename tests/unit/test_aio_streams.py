"""The sans-IO scheduler (tcpip.aio) and the asyncio-shaped streams (tcpip.streams), the latter
against an in-memory fake of the TcpConnection API so each behaviour is pinned exactly."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tcpip.addr import ip_bytes
from tcpip.aio import CancelledError, Scheduler
from tcpip.services import chargen_lines
from tcpip.streams import (
    IncompleteReadError,
    StreamReader,
    StreamWriter,
    open_connection,
    serve,
    start_server,
)

# ---- scheduler ----------------------------------------------------------------------------


class Flag:
    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


def test_spawned_task_runs_only_in_run_ready() -> None:
    s = Scheduler()
    log: list[str] = []

    async def job() -> int:
        log.append("ran")
        return 42

    t = s.spawn(job())
    assert log == [] and not t.done()
    assert s.next_deadline() == 0.0  # runnable now
    assert s.run_ready(1.0) == 1
    assert t.done() and t.result() == 42 and log == ["ran"]
    assert s.next_deadline() is None and not s.tasks


def test_wait_until_resumes_when_predicate_holds() -> None:
    s = Scheduler()
    flag = Flag()
    seen: list[bool] = []

    async def job() -> None:
        seen.append(await s.wait_until(flag))

    t = s.spawn(job())
    s.run_ready(0.0)
    s.run_ready(1.0)
    assert not t.done() and s.next_deadline() is None  # a predicate wait has no deadline
    flag.value = True
    s.run_ready(2.0)
    assert t.done() and seen == [True]


def test_keyed_wait_needs_notify() -> None:
    s = Scheduler()
    key = object()
    flag = Flag()

    async def job() -> str:
        await s.wait_until(flag, key=key)
        return "woken"

    t = s.spawn(job())
    s.run_ready(0.0)
    flag.value = True
    s.run_ready(1.0)
    assert not t.done()  # not re-evaluated: nobody notified the key
    s.notify(object())  # another key does not help
    s.run_ready(1.5)
    assert not t.done()
    s.notify(key)
    assert s.next_deadline() == 1.5
    s.run_ready(2.0)
    assert t.result() == "woken"


def test_sleep_and_deadlines() -> None:
    s = Scheduler()
    times: list[float] = []

    async def job() -> None:
        await s.sleep(2.5)
        times.append(s.now)
        await s.sleep(1.0)
        times.append(s.now)

    s.spawn(job())
    s.run_ready(10.0)
    assert s.next_deadline() == 12.5
    s.run_ready(12.4)
    assert times == []
    s.run_ready(12.5)
    assert times == [12.5] and s.next_deadline() == 13.5
    s.run_ready(20.0)
    assert times == [12.5, 20.0]


def test_sleep_zero_yields_to_the_loop() -> None:
    s = Scheduler()
    count = 0

    async def spinner() -> None:
        nonlocal count
        while True:
            count += 1
            await s.sleep(0)

    s.spawn(spinner())
    s.run_ready(1.0)
    assert count == 1  # not re-run inside the same call
    assert s.next_deadline() == 1.0
    s.run_ready(1.0)
    assert count == 2


def test_wait_with_timeout() -> None:
    s = Scheduler()
    flag = Flag()
    results: list[bool] = []

    async def job() -> None:
        results.append(await s.wait_until(flag, timeout=1.0))
        results.append(await s.wait_until(flag, timeout=1.0))

    s.spawn(job())
    s.run_ready(0.0)
    assert s.next_deadline() == 1.0
    s.run_ready(1.0)
    assert results == [False]
    flag.value = True
    s.run_ready(1.5)  # fast path: the predicate already holds
    assert results == [False, True]


def test_task_exception_is_logged_and_stored(caplog: pytest.LogCaptureFixture) -> None:
    s = Scheduler()

    async def bad() -> None:
        raise ValueError("boom")

    async def good() -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="tcpip.aio"):
        tb, tg = s.spawn(bad(), name="bad"), s.spawn(good())
        s.run_ready(0.0)
    assert isinstance(tb.exception(), ValueError)
    with pytest.raises(ValueError, match="boom"):
        tb.result()
    assert tg.result() == "fine"
    assert any("bad" in r.getMessage() and "boom" in r.getMessage() for r in caplog.records)


def test_awaiting_a_task_propagates_result_and_exception() -> None:
    s = Scheduler()
    flag = Flag()

    async def inner() -> int:
        await s.wait_until(flag)
        return 7

    async def failing() -> None:
        raise KeyError("k")

    async def outer() -> tuple[int, str]:
        value = await s.spawn(inner())
        try:
            await s.spawn(failing())
        except KeyError:
            return value, "caught"
        return value, "not caught"

    t = s.spawn(outer())
    s.run_ready(0.0)
    assert not t.done()
    flag.value = True
    s.run_ready(1.0)
    assert t.result() == (7, "caught")


def test_cancel_runs_finally() -> None:
    s = Scheduler()
    cleaned: list[bool] = []

    async def job() -> None:
        try:
            await s.sleep(100)
        finally:
            cleaned.append(True)

    t = s.spawn(job())
    s.run_ready(0.0)
    assert t.cancel() and cleaned == [True] and t.cancelled()
    with pytest.raises(CancelledError):
        t.result()
    assert not t.cancel()
    assert s.next_deadline() is None  # the stale sleep timer is ignored


def test_raising_predicate_fails_in_the_task_not_the_scheduler() -> None:
    s = Scheduler()
    armed = Flag()

    def predicate() -> bool:
        if armed.value:
            raise RuntimeError("predicate broke")
        return False

    async def job() -> str:
        try:
            await s.wait_until(predicate)
        except RuntimeError as exc:
            return f"handled {exc}"
        return "not raised"

    t = s.spawn(job())
    s.run_ready(0.0)
    armed.value = True
    s.run_ready(1.0)  # must not raise here
    assert t.result() == "handled predicate broke"


def test_foreign_awaitable_fails_the_task_only() -> None:
    s = Scheduler()

    class Foreign:
        def __await__(self) -> Any:
            yield "not a scheduler wait"

    async def job() -> None:
        await Foreign()

    t = s.spawn(job())
    s.run_ready(0.0)
    assert isinstance(t.exception(), TypeError)


def test_livelock_is_bounded_and_resumed_by_next_run() -> None:
    s = Scheduler(max_steps=50)
    state = {"turn": 0}

    async def player(me: int) -> None:
        while True:
            await s.wait_until(lambda: state["turn"] == me)
            state["turn"] = 1 - me

    s.spawn(player(0))
    s.spawn(player(1))
    assert s.run_ready(0.0) == 50
    assert s.next_deadline() == 0.0  # come back at once
    assert s.run_ready(0.0) == 50


# ---- a fake TcpConnection and a fake stack ------------------------------------------------


class St(enum.Enum):
    CLOSED = 0
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    LAST_ACK = 9
    TIME_WAIT = 10


class FakeConn:
    """Just the API the streams may use, with a bounded send buffer and an inbox."""

    def __init__(self, state: St = St.ESTABLISHED, send_buffer: int = 10) -> None:
        self.state = state
        self.limit = send_buffer
        self.sent = bytearray()  # accepted by send(), not yet "transmitted"
        self.wire = bytearray()  # "transmitted" (acknowledged) bytes
        self.inbox = bytearray()
        self.eof_received = False
        self.reset_received = False
        self.error: str | None = None
        self.close_calls = 0
        self.close_at: int | None = None  # len(wire + sent) when close() was called
        self.aborted = False

    @property
    def closed(self) -> bool:
        return self.state is St.CLOSED

    def send_space(self) -> int:
        if self.state not in (St.ESTABLISHED, St.CLOSE_WAIT) or self.close_calls:
            return 0
        return self.limit - len(self.sent)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        n = min(len(data), self.send_space())
        self.sent += bytes(data[:n])
        return n

    def receive_available(self) -> int:
        return len(self.inbox)

    def receive(self, max_bytes: int = -1) -> bytes:
        n = len(self.inbox) if max_bytes < 0 else min(max_bytes, len(self.inbox))
        data = bytes(self.inbox[:n])
        del self.inbox[:n]
        return data

    def close(self) -> None:
        self.close_calls += 1
        self.close_at = len(self.wire) + len(self.sent)
        self.state = St.FIN_WAIT_1 if self.state is St.ESTABLISHED else St.LAST_ACK

    def abort(self) -> None:
        self.aborted = True
        self.sent.clear()
        self.state = St.CLOSED

    # test-side controls
    def transmit(self, n: int = 1 << 30) -> None:
        chunk = self.sent[:n]
        self.wire += chunk
        del self.sent[: len(chunk)]

    def deliver(self, data: bytes) -> None:
        self.inbox += data

    def peer_fin(self) -> None:
        self.eof_received = True
        if self.state is St.ESTABLISHED:
            self.state = St.CLOSE_WAIT

    def peer_rst(self) -> None:
        self.reset_received = True
        self.error = "connection reset"
        self.state = St.CLOSED


class FakeStack:
    """The part of HostStack that the streams use."""

    def __init__(self) -> None:
        self.scheduler = Scheduler()
        self.woken: list[FakeConn] = []
        self.listeners: dict[int, Callable[[FakeConn], None]] = {}
        self.next_conn: FakeConn | None = None
        self.connects: list[tuple[bytes, int, int | None]] = []

    def wake(self, conn: FakeConn) -> None:
        self.woken.append(conn)
        self.scheduler.notify(conn)

    def four_tuple(self, conn: FakeConn) -> tuple[bytes, int, bytes, int]:
        return (ip_bytes("198.18.0.1"), 40000, ip_bytes("198.18.0.2"), 7)

    def connect(self, ip: bytes, port: int, local_port: int | None = None) -> FakeConn:
        self.connects.append((ip, port, local_port))
        assert self.next_conn is not None
        return self.next_conn

    def listen(self, port: int, on_accept: Callable[[FakeConn], None]) -> None:
        self.listeners[port] = on_accept

    def unlisten(self, port: int) -> None:
        del self.listeners[port]

    def run(self, now: float = 0.0) -> None:
        """One poll: the stack notifies every connection it touched, then runs the tasks."""
        for conn in list(self.woken):
            self.scheduler.notify(conn)
        self.scheduler.run_ready(now)

    def touch(self, conn: FakeConn) -> None:
        """What HostStack does after a segment for ``conn``: notify and run."""
        self.scheduler.notify(conn)
        self.scheduler.run_ready(0.0)


@pytest.fixture
def fs() -> FakeStack:
    return FakeStack()


def pair(fs: FakeStack, conn: FakeConn) -> tuple[StreamReader, StreamWriter]:
    reader = StreamReader(fs, conn)  # type: ignore[arg-type]
    return reader, StreamWriter(fs, conn, reader)  # type: ignore[arg-type]


def run_task(fs: FakeStack, coro: Any) -> Any:
    return fs.scheduler.spawn(coro)


# ---- StreamReader -------------------------------------------------------------------------


def test_read_returns_what_is_there_and_blocks_when_empty(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, _ = pair(fs, conn)
    got: list[bytes] = []

    async def app() -> None:
        got.append(await reader.read(4))
        got.append(await reader.read(100))
        got.append(await reader.read(100))

    conn.deliver(b"abcdefg")
    t = run_task(fs, app())
    fs.touch(conn)
    assert got == [b"abcd", b"efg"] and not t.done()
    assert fs.woken == [conn, conn]  # every receive() may open the window
    conn.peer_fin()
    fs.touch(conn)
    assert got == [b"abcd", b"efg", b""] and t.done()
    assert reader.at_eof()


def test_read_all_until_eof(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, _ = pair(fs, conn)
    t = run_task(fs, reader.read())
    for chunk in (b"one ", b"two ", b"three"):
        conn.deliver(chunk)
        fs.touch(conn)
    assert not t.done()
    conn.peer_fin()
    fs.touch(conn)
    assert t.result() == b"one two three"


def test_readexactly_across_arrivals_and_incomplete(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, _ = pair(fs, conn)
    t = run_task(fs, reader.readexactly(6))
    conn.deliver(b"abc")
    fs.touch(conn)
    assert not t.done()
    conn.deliver(b"defgh")
    fs.touch(conn)
    assert t.result() == b"abcdef"
    t2 = run_task(fs, reader.readexactly(5))
    conn.peer_fin()
    fs.touch(conn)
    exc = t2.exception()
    assert isinstance(exc, IncompleteReadError) and exc.partial == b"gh" and exc.expected == 5


def test_readline_split_lines_last_line_and_limit(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, _ = pair(fs, conn)
    lines: list[bytes] = []

    async def app() -> None:
        while line := await reader.readline():
            lines.append(line)

    t = run_task(fs, app())
    conn.deliver(b"hel")
    fs.touch(conn)
    conn.deliver(b"lo\nworld\nta")
    fs.touch(conn)
    assert lines == [b"hello\n", b"world\n"]
    conn.deliver(b"il")
    conn.peer_fin()
    fs.touch(conn)
    assert lines == [b"hello\n", b"world\n", b"tail"] and t.done()

    conn2 = FakeConn()
    reader2 = StreamReader(fs, conn2, limit=8)  # type: ignore[arg-type]
    conn2.deliver(b"0123456789\n")
    t2 = run_task(fs, reader2.readline())
    fs.touch(conn2)
    assert isinstance(t2.exception(), ValueError)


def test_reset_raises_connection_reset(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, writer = pair(fs, conn)
    t = run_task(fs, reader.read(10))
    fs.touch(conn)
    conn.peer_rst()
    fs.touch(conn)
    assert isinstance(t.exception(), ConnectionResetError)

    async def drain() -> None:
        await writer.drain()

    t2 = run_task(fs, drain())
    fs.touch(conn)
    assert isinstance(t2.exception(), ConnectionResetError)


def test_data_before_fin_is_still_read(fs: FakeStack) -> None:
    conn = FakeConn()
    reader, _ = pair(fs, conn)
    conn.deliver(b"last words")
    conn.peer_fin()
    t = run_task(fs, reader.read())
    fs.touch(conn)
    assert t.result() == b"last words" and reader.at_eof()


# ---- StreamWriter -------------------------------------------------------------------------


def test_write_buffers_and_drain_waits_for_space(fs: FakeStack) -> None:
    conn = FakeConn(send_buffer=10)
    _, writer = pair(fs, conn)
    drained: list[bool] = []

    async def app() -> None:
        writer.write(b"0123456789ABCDEFGHIJ!")  # 21 bytes into a 10-byte buffer
        await writer.drain()
        drained.append(True)

    run_task(fs, app())
    fs.touch(conn)
    assert bytes(conn.sent) == b"0123456789" and drained == []
    conn.transmit(4)
    fs.touch(conn)
    assert bytes(conn.wire + conn.sent) == b"0123456789ABCD" and drained == []
    conn.transmit()
    fs.touch(conn)
    conn.transmit()
    fs.touch(conn)
    assert bytes(conn.wire + conn.sent) == b"0123456789ABCDEFGHIJ!" and drained == [True]
    assert conn in fs.woken


def test_close_sends_fin_only_after_pending_data(fs: FakeStack) -> None:
    conn = FakeConn(send_buffer=5)
    _, writer = pair(fs, conn)
    writer.write(b"abcdefghij")
    writer.close()
    assert conn.close_calls == 0  # 5 bytes still wait in the writer
    with pytest.raises(RuntimeError):
        writer.write(b"more")
    fs.touch(conn)
    conn.transmit()
    fs.touch(conn)
    assert conn.close_calls == 1 and conn.close_at == 10
    assert bytes(conn.wire + conn.sent) == b"abcdefghij"
    writer.close()
    assert conn.close_calls == 1


def test_wait_closed_waits_for_fin_acked(fs: FakeStack) -> None:
    conn = FakeConn()
    _, writer = pair(fs, conn)

    async def app() -> None:
        writer.close()
        await writer.wait_closed()

    t = run_task(fs, app())
    fs.touch(conn)
    assert conn.state is St.FIN_WAIT_1 and not t.done()
    conn.state = St.FIN_WAIT_2
    fs.touch(conn)
    assert t.done() and t.exception() is None


def test_abort_discards_and_resets(fs: FakeStack) -> None:
    conn = FakeConn(send_buffer=2)
    _, writer = pair(fs, conn)
    writer.write(b"abcdef")
    writer.abort()
    fs.touch(conn)
    assert conn.aborted and conn.close_calls == 0 and writer.is_closing()
    assert fs.woken[-1] is conn


def test_extra_info(fs: FakeStack) -> None:
    _, writer = pair(fs, FakeConn())
    assert writer.get_extra_info("peername") == ("198.18.0.2", 7)
    assert writer.get_extra_info("sockname") == ("198.18.0.1", 40000)
    assert writer.get_extra_info("nothing", "dflt") == "dflt"


# ---- open_connection / start_server -------------------------------------------------------


def test_open_connection_waits_for_handshake(fs: FakeStack) -> None:
    conn = FakeConn(state=St.SYN_SENT)
    fs.next_conn = conn
    t = run_task(fs, open_connection(fs, "198.18.0.2", 7))  # type: ignore[arg-type]
    fs.touch(conn)
    assert not t.done() and fs.connects == [(ip_bytes("198.18.0.2"), 7, None)]
    conn.state = St.ESTABLISHED
    fs.touch(conn)
    reader, writer = t.result()
    assert isinstance(reader, StreamReader) and isinstance(writer, StreamWriter)


@pytest.mark.parametrize(
    ("outcome", "error"), [("rst", ConnectionRefusedError), ("timeout", TimeoutError)]
)
def test_open_connection_failures(fs: FakeStack, outcome: str, error: type) -> None:
    conn = FakeConn(state=St.SYN_SENT)
    fs.next_conn = conn
    t = run_task(fs, open_connection(fs, "198.18.0.2", 7))  # type: ignore[arg-type]
    fs.touch(conn)
    if outcome == "rst":
        conn.peer_rst()
    else:
        conn.error = "connection timed out"
        conn.state = St.CLOSED
    fs.touch(conn)
    assert isinstance(t.exception(), error)


def test_server_runs_handler_per_connection(fs: FakeStack) -> None:
    seen: list[bytes] = []

    async def handler(reader: StreamReader, writer: StreamWriter) -> None:
        data = await reader.readline()
        seen.append(data)
        writer.write(data.upper())
        writer.close()

    server = serve(fs, handler, 7)  # type: ignore[arg-type]
    conn = FakeConn()
    fs.listeners[7](conn)
    conn.deliver(b"hi\n")
    fs.touch(conn)
    assert seen == [b"hi\n"] and bytes(conn.sent) == b"HI\n" and conn.close_calls == 1
    server.close()
    assert 7 not in fs.listeners and not server.is_serving()
    t = run_task(fs, server.wait_closed())
    fs.touch(conn)
    assert t.done()


def test_start_server_plain_or_awaited(fs: FakeStack) -> None:
    async def handler(reader: StreamReader, writer: StreamWriter) -> None:
        pass

    server = start_server(fs, handler, 9)  # type: ignore[arg-type]
    assert 9 in fs.listeners and server.port == 9

    async def app() -> object:
        return await start_server(fs, handler, 10)  # type: ignore[arg-type]

    t = run_task(fs, app())
    fs.scheduler.run_ready(0.0)
    assert 10 in fs.listeners and t.result().port == 10


def test_chargen_pattern_is_rfc864() -> None:
    first = chargen_lines(1, 2)
    assert first.split(b"\r\n")[0] == (
        b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh"
    )
    assert first.split(b"\r\n")[1].startswith(b'"#$%') and first.endswith(b"abcdefghi\r\n")
    assert chargen_lines(1, 95) + chargen_lines(96, 1) == chargen_lines(1, 96)
