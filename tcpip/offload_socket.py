"""The stable per-connection record applications hold (the "socket").

A TCP connection changes hands during its life: it starts as a host
:class:`tcpip.tcp.TcpConnection`, is handed to an offload target (the chimney then serves it,
:class:`tcpip.offload.OffloadedConnection`), and comes back as a *new* ``TcpConnection``
rebuilt from the returned state.  Streams (and anything else the application uses) must not
notice, so they hold a :class:`TcpSocket`: one object per 4-tuple for the whole life of the
connection, whose data operations route to whichever engine currently owns the connection
(the "logical switch" of reference section 1).

Both engines implement the same duck-typed surface, the part of ``TcpConnection`` the streams
use: ``send``, ``send_space``, ``receive``, ``receive_available``, ``close``, ``abort``,
``eof_received``, ``reset_received``, ``closed``, ``state``, ``error``.

The stack notifies the socket (as a scheduler key) whenever it notifies the connection behind
it, and the chimney notifies it on every completion or indication that changes what the
application can do.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

from tcpip.addr import four_tuple

if TYPE_CHECKING:
    from tcpip.stack import ConnKey, HostStack
    from tcpip.tcb import TcpState

__all__ = ["OffloadState", "TcpSocket"]

log = logging.getLogger(__name__)


class OffloadState(enum.Enum):
    """Where a connection lives (reference c.1, host's view)."""

    IN_HOST = "InHost"
    OFFLOADING = "Offloading"
    OFFLOADED = "Offloaded"
    UPLOADING = "Uploading"

    def __str__(self) -> str:
        return self.value


class TcpSocket:
    """One connection as the application sees it (see the module docstring)."""

    __slots__ = ("stack", "key", "engine", "offload_state", "name", "__weakref__")

    def __init__(self, stack: HostStack, conn: Any, key: ConnKey) -> None:
        self.stack = stack
        self.key = key
        self.engine: Any = conn  # TcpConnection (in host) or the chimney's OffloadedConnection
        self.offload_state = OffloadState.IN_HOST
        self.name = four_tuple(stack.ip, key[2], key[0], key[1])

    def __repr__(self) -> str:
        return f"<TcpSocket {self.name} {self.offload_state} {self.engine!r}>"

    # ---- identity -------------------------------------------------------------------------------

    @property
    def local_ip(self) -> bytes:
        return self.stack.ip

    @property
    def local_port(self) -> int:
        return self.key[2]

    @property
    def remote_ip(self) -> bytes:
        return self.key[0]

    @property
    def remote_port(self) -> int:
        return self.key[1]

    @property
    def host_connection(self) -> Any | None:
        """The host ``TcpConnection`` while the connection is in the host, else None."""
        return self.engine if self.offload_state is OffloadState.IN_HOST else None

    def swap(self, engine: Any, state: OffloadState) -> None:
        """Hand the connection to another engine (called by the chimney only)."""
        self.engine = engine
        self.offload_state = state
        self.stack.scheduler.notify(self)

    # ---- the connection surface the streams use ----------------------------------------------

    @property
    def state(self) -> TcpState:
        return self.engine.state  # type: ignore[no-any-return]

    @property
    def eof_received(self) -> bool:
        return bool(self.engine.eof_received)

    @property
    def reset_received(self) -> bool:
        return bool(self.engine.reset_received)

    @property
    def closed(self) -> bool:
        return bool(self.engine.closed)

    @property
    def error(self) -> str | None:
        return self.engine.error  # type: ignore[no-any-return]

    @property
    def counters(self) -> Any:
        return getattr(self.engine, "counters", None)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        return int(self.engine.send(data))

    def send_space(self) -> int:
        return int(self.engine.send_space())

    def receive(self, max_bytes: int = -1) -> bytes:
        return bytes(self.engine.receive(max_bytes))

    def receive_available(self) -> int:
        return int(self.engine.receive_available())

    def close(self) -> None:
        self.engine.close()

    def abort(self) -> None:
        self.engine.abort()
