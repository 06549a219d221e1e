"""The classic small TCP services, written against :mod:`tcpip.streams`.

- echo (port 7, RFC 862): "any data received is sent back".
- discard (port 9, RFC 863): "simply throw away any data it receives".
- chargen (port 19, RFC 864): send the 72-character rotating pattern "until the user
  closes"; flow is bounded by the peer's reading (``drain``), and data received is discarded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tcpip.streams import Server, StreamReader, StreamWriter, serve

if TYPE_CHECKING:
    from tcpip.stack import HostStack

__all__ = ["CHARGEN_PORT", "DISCARD_PORT", "ECHO_PORT", "chargen_lines", "install"]

log = logging.getLogger(__name__)

ECHO_PORT = 7
DISCARD_PORT = 9
CHARGEN_PORT = 19
_CHUNK = 1 << 16

# RFC 864: the 95 printable ASCII characters, 72 per line, each line starting one further on.
_PRINTABLE = bytes(range(0x20, 0x7F))
_LINE = 72


def chargen_lines(start: int, count: int) -> bytes:
    """``count`` RFC 864 lines starting with pattern line ``start`` (each ends in CR LF)."""
    doubled = _PRINTABLE * 2
    out = bytearray()
    n = len(_PRINTABLE)
    for i in range(start, start + count):
        k = i % n
        out += doubled[k : k + _LINE]
        out += b"\r\n"
    return bytes(out)


# One full cycle of the pattern (95 lines, 7,030 bytes), sent in rotation.  It starts with the
# line RFC 864 shows first ('!' through 'h'); the line starting with the space comes last.
_CYCLE = chargen_lines(1, len(_PRINTABLE))


async def echo(reader: StreamReader, writer: StreamWriter) -> None:
    while True:
        data = await reader.read(_CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def discard(reader: StreamReader, writer: StreamWriter) -> None:
    while await reader.read(_CHUNK):
        pass
    writer.close()
    await writer.wait_closed()


async def chargen(reader: StreamReader, writer: StreamWriter) -> None:
    stop = False

    async def swallow() -> None:
        nonlocal stop
        try:
            while await reader.read(_CHUNK):
                pass  # RFC 864: "Data received is thrown away"
        except ConnectionResetError:
            pass
        stop = True

    sched = writer._sched
    sched.spawn(swallow(), name=f"chargen-reader {writer.get_extra_info('peername')}")
    chunk = _CYCLE * 8  # about 55 KB per write, always whole pattern cycles
    while not stop:
        writer.write(chunk)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def install(stack: HostStack) -> dict[int, Server]:
    """Start echo, discard and chargen on ``stack``; returns the servers by port."""
    servers = {
        ECHO_PORT: serve(stack, echo, ECHO_PORT),
        DISCARD_PORT: serve(stack, discard, DISCARD_PORT),
        CHARGEN_PORT: serve(stack, chargen, CHARGEN_PORT),
    }
    log.info("%s: services echo/7 discard/9 chargen/19 installed", stack.name)
    return servers
