"""asyncio-shaped streams over the host stack's TCP connections.

``await open_connection(stack, host, port)`` and ``start_server(stack, handler, port)`` (a
plain call, or awaited) return and hand out ``(StreamReader, StreamWriter)`` pairs that behave
like asyncio's, but run on the stack's own :class:`tcpip.aio.Scheduler` (inside ``HostStack.poll``), never on an event loop.
An application written against them cannot tell whether its connection lives in the host
stack or is offloaded.

The streams use only the connection's public API (send/send_space/receive/receive_available/
close/abort/eof_received/reset_received/closed/state) and call ``stack.wake(conn)`` after
every call that may produce output.  Every wait is keyed on the connection, so the scheduler
re-evaluates it only when the stack touched that connection.  The "connection" the streams
hold is the stack's stable socket record (``stack.socket(conn)``,
:class:`tcpip.offload_socket.TcpSocket`), which routes every call to the host TCP engine or,
while the connection is offloaded, to the chimney (``tcpip.offload``).

Differences from asyncio, on purpose:

- ``StreamWriter.close()`` is a TCP half-close (FIN after the queued data); the reader keeps
  working until the peer's FIN.  ``wait_closed()`` returns when our FIN is acknowledged
  (FIN-WAIT-2, TIME-WAIT or CLOSED) or the connection was reset.
- ``write()`` never blocks and never fails; bytes that do not fit in the connection's send
  buffer wait in the writer and are pushed by a background flusher; ``drain()`` waits for them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from tcpip.addr import ip_bytes, ip_str

if TYPE_CHECKING:
    from tcpip.aio import Scheduler, Task
    from tcpip.stack import HostStack
    from tcpip.tcp import TcpConnection

__all__ = [
    "IncompleteReadError",
    "LimitOverrunError",
    "Server",
    "StreamReader",
    "StreamWriter",
    "open_connection",
    "serve",
    "start_server",
]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1 << 16  # asyncio's _DEFAULT_LIMIT for readline/readuntil
_HANDSHAKE_STATES = frozenset(("SYN_SENT", "SYN_RECEIVED"))
_FIN_ACKED_STATES = frozenset(("FIN_WAIT_2", "TIME_WAIT", "CLOSED"))


class IncompleteReadError(EOFError):
    """EOF before ``readexactly``/``readuntil`` got what it needed (as asyncio's)."""

    def __init__(self, partial: bytes, expected: int | None) -> None:
        r_expected = "undefined" if expected is None else repr(expected)
        super().__init__(f"{len(partial)} bytes read on a total of {r_expected} expected bytes")
        self.partial = partial
        self.expected = expected


class LimitOverrunError(Exception):
    """The separator was not found within the reader's limit (as asyncio's)."""

    def __init__(self, message: str, consumed: int) -> None:
        super().__init__(message)
        self.consumed = consumed


def _socket(stack: HostStack, conn: TcpConnection) -> TcpConnection:
    """The stable socket record the streams hold (the connection itself for stacks without
    one, e.g. test doubles)."""
    make = getattr(stack, "socket", None)
    return make(conn) if make is not None else conn


def _reset_error(conn: TcpConnection) -> ConnectionResetError:
    return ConnectionResetError(getattr(conn, "error", None) or "connection reset by peer")


class StreamReader:
    def __init__(self, stack: HostStack, conn: TcpConnection, limit: int = DEFAULT_LIMIT) -> None:
        self._stack = stack
        self._sched: Scheduler = stack.scheduler
        self._conn = conn
        self._limit = limit
        self._buffer = bytearray()  # taken from the connection but not yet returned

    def __repr__(self) -> str:
        return f"<StreamReader buffered={len(self._buffer)} conn={self._conn!r}>"

    # ---- helpers --------------------------------------------------------------------------

    def _readable(self) -> bool:
        c = self._conn
        return c.receive_available() > 0 or c.eof_received or c.reset_received or c.closed

    def _eof(self) -> bool:
        c = self._conn
        return (c.eof_received or c.closed) and c.receive_available() == 0

    def _take(self, max_bytes: int) -> bytes:
        data = self._conn.receive(max_bytes)
        if data:
            self._stack.wake(self._conn)  # the window may have opened: a window update is due
        return data

    async def _wait_readable(self) -> None:
        await self._sched.wait_until(self._readable, key=self._conn)

    def _fill(self, max_total: int) -> bool:
        """Move available bytes into the local buffer (up to ``max_total``); True if any."""
        room = max_total - len(self._buffer)
        if room <= 0:
            return False
        data = self._take(room)
        if data:
            self._buffer += data
            return True
        return False

    def _raise_if_reset(self) -> None:
        """A reset, or a connection that died without the peer's FIN (timeout, abort)."""
        c = self._conn
        if c.reset_received or (c.closed and c.error and not c.eof_received):
            raise _reset_error(c)

    # ---- the asyncio API ------------------------------------------------------------------

    def at_eof(self) -> bool:
        """True when the peer's FIN was consumed and nothing is left to read."""
        return not self._buffer and self._eof()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``n < 0``: everything until EOF); b"" at EOF."""
        if n == 0:
            return b""
        if n < 0:
            chunks = [bytes(self._buffer)]
            self._buffer.clear()
            while True:
                await self._wait_readable()
                data = self._take(-1)
                if data:
                    chunks.append(data)
                    continue
                self._raise_if_reset()
                if self._eof():
                    return b"".join(chunks)
        if self._buffer:
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data
        while True:
            await self._wait_readable()
            data = self._take(n)
            if data:
                return data
            self._raise_if_reset()
            if self._eof():
                return b""

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if not self._fill(n):
                self._raise_if_reset()
                if self._eof():
                    partial = bytes(self._buffer)
                    self._buffer.clear()
                    raise IncompleteReadError(partial, n)
                await self._wait_readable()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        start = 0
        seplen = len(separator)
        while True:
            idx = self._buffer.find(separator, start)
            if idx >= 0:
                end = idx + seplen
                if end > self._limit:
                    raise LimitOverrunError(
                        "separator is found, but chunk is longer than limit", idx
                    )
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            start = max(0, len(self._buffer) - seplen + 1)
            if len(self._buffer) >= self._limit:
                raise LimitOverrunError("separator is not found, and chunk exceed the limit", start)
            if not self._fill(self._limit):
                self._raise_if_reset()
                if self._eof():
                    partial = bytes(self._buffer)
                    self._buffer.clear()
                    raise IncompleteReadError(partial, None)
                await self._wait_readable()

    async def readline(self) -> bytes:
        """A line ending in b"\\n", or the last bytes before EOF (as asyncio's readline)."""
        try:
            return await self.readuntil(b"\n")
        except IncompleteReadError as exc:
            return exc.partial
        except LimitOverrunError as exc:
            # asyncio drops the data it could not return and raises ValueError.
            del self._buffer[: exc.consumed]
            raise ValueError(exc.args[0]) from None

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if line == b"":
            raise StopAsyncIteration
        return line


class StreamWriter:
    def __init__(
        self,
        stack: HostStack,
        conn: TcpConnection,
        reader: StreamReader | None = None,
    ) -> None:
        self._stack = stack
        self._sched: Scheduler = stack.scheduler
        self._conn = conn
        self._reader = reader
        self._pending = bytearray()  # written but not yet accepted by the connection
        self._closing = False
        self._close_sent = False
        self._flusher: Task | None = None
        ft = stack.four_tuple(conn)
        self._sockname = (ip_str(ft[0]), ft[1]) if ft else None
        self._peername = (ip_str(ft[2]), ft[3]) if ft else None

    def __repr__(self) -> str:
        return f"<StreamWriter pending={len(self._pending)} conn={self._conn!r}>"

    @property
    def transport(self) -> TcpConnection:
        """The underlying connection (asyncio code reaches for ``writer.transport``)."""
        return self._conn

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        if name == "connection":
            return self._conn
        return default

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._closing:
            raise RuntimeError("write() after close()")
        conn = self._conn
        if self._pending:
            self._pending += data
        else:
            n = conn.send(data)
            if n < len(data):
                self._pending += memoryview(data)[n:]
            if n:
                self._stack.wake(conn)
        if self._pending:
            self._start_flusher()

    def writelines(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def write_eof(self) -> None:
        self.close()

    async def drain(self) -> None:
        """Wait until everything written was accepted by the connection's send buffer."""
        conn = self._conn
        if conn.reset_received:
            raise _reset_error(conn)
        if self._pending:
            await self._sched.wait_until(
                lambda: not self._pending or conn.reset_received or conn.closed, key=conn
            )
            if conn.reset_received:
                raise _reset_error(conn)
            if self._pending and conn.closed:
                raise ConnectionResetError("connection closed with unsent data")

    def close(self) -> None:
        """Half-close: FIN after everything written (RFC 9293 section 3.10.4)."""
        if self._closing:
            return
        self._closing = True
        if not self._pending:
            self._send_close()
        # else: the flusher closes after the last byte

    async def wait_closed(self) -> None:
        conn = self._conn
        await self._sched.wait_until(
            lambda: (
                conn.reset_received
                or conn.closed
                or (self._close_sent and conn.state.name in _FIN_ACKED_STATES)
            ),
            key=conn,
        )

    def abort(self) -> None:
        """Reset the connection now (RFC 9293 section 3.10.5); unsent data is discarded."""
        self._pending.clear()
        self._closing = True
        self._close_sent = True
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        self._conn.abort()
        self._stack.wake(self._conn)

    # ---- internals ------------------------------------------------------------------------

    def _send_close(self) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._conn.close()
            self._stack.wake(self._conn)

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = self._sched.spawn(self._flush(), name=f"flush {self._peername}")

    async def _flush(self) -> None:
        conn = self._conn
        while self._pending:
            await self._sched.wait_until(
                lambda: conn.send_space() > 0 or conn.reset_received or conn.closed, key=conn
            )
            if conn.reset_received or conn.closed:
                self._pending.clear()  # drain() reports the loss
                return
            n = conn.send(self._pending)
            if n:
                del self._pending[:n]
                self._stack.wake(conn)
        if self._closing:
            self._send_close()


async def open_connection(
    stack: HostStack,
    host: bytes | str,
    port: int,
    *,
    local_port: int | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[StreamReader, StreamWriter]:
    """Active open; returns once the connection is synchronized.

    Raises ``ConnectionRefusedError`` when the peer answers with a reset and
    ``TimeoutError`` when the SYN retransmissions run out.
    """
    conn = _socket(stack, stack.connect(ip_bytes(host), port, local_port))
    await stack.scheduler.wait_until(lambda: conn.state.name not in _HANDSHAKE_STATES, key=conn)
    if conn.reset_received:
        raise ConnectionRefusedError(f"{ip_str(ip_bytes(host))}:{port}: connection refused")
    if conn.closed:
        raise TimeoutError(f"{ip_str(ip_bytes(host))}:{port}: {conn.error or 'connect failed'}")
    reader = StreamReader(stack, conn, limit)
    return reader, StreamWriter(stack, conn, reader)


Handler = Callable[[StreamReader, StreamWriter], Awaitable[None]]


class Server:
    """A listening port whose accepted connections each run ``handler(reader, writer)``."""

    def __init__(self, stack: HostStack, handler: Handler, port: int, limit: int) -> None:
        self._stack = stack
        self._handler = handler
        self.port = port
        self._limit = limit
        self._serving = True
        self.tasks: set[Task] = set()  # handler tasks, pruned as they finish
        self._active = 0
        stack.listen(port, self._on_accept)

    def _on_accept(self, conn: TcpConnection) -> None:
        conn = _socket(self._stack, conn)
        reader = StreamReader(self._stack, conn, self._limit)
        writer = StreamWriter(self._stack, conn, reader)
        coro = self._run(reader, writer)
        self._active += 1
        self.tasks = {t for t in self.tasks if not t.done()}
        self.tasks.add(
            self._stack.scheduler.spawn(coro, name=f"port {self.port} {writer._peername}")
        )

    async def _run(self, reader: StreamReader, writer: StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except ConnectionResetError as exc:
            log.info("port %d handler: %s", self.port, exc)
        finally:
            self._active -= 1

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        """Stop accepting; running handlers continue."""
        if self._serving:
            self._serving = False
            self._stack.unlisten(self.port)

    async def wait_closed(self) -> None:
        await self._stack.scheduler.wait_until(lambda: self._active == 0)

    def __await__(self) -> Generator[Any, None, Server]:
        """``await start_server(...)`` works like asyncio's: the server is already listening."""
        return self
        yield  # pragma: no cover  (makes this a generator)


def start_server(
    stack: HostStack, handler: Handler, port: int, *, limit: int = DEFAULT_LIMIT
) -> Server:
    """Listen on ``port``; every accepted connection runs ``handler(reader, writer)`` as a task.

    Usable both ways: ``server = start_server(...)`` from plain code (the listener exists at
    once) and ``server = await start_server(...)`` inside a task, as with asyncio.
    """
    return Server(stack, handler, port, limit)


serve = start_server  # the name used by tcpip.services
