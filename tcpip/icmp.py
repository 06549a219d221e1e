"""ICMP for IPv4 (RFC 792).  Echo request/reply are decoded; every other type is kept opaque
(type, code and the 4 "rest of header" octets plus the body).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Type      |     Code      |          Checksum             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Identifier (echo)            |  Sequence Number (echo)       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Data ...
    +-+-+-+-+-
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpip.checksum import internet_checksum
from tcpip.errors import DecodeError

__all__ = [
    "ICMP_DEST_UNREACHABLE",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_TIME_EXCEEDED",
    "IcmpMessage",
    "build_icmp",
    "build_icmp_echo",
    "parse_icmp",
]

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11

ICMP_HEADER_LEN = 8
_HDR = struct.Struct("!BBH4s")
_ECHO = struct.Struct("!HH")


@dataclass(slots=True)
class IcmpMessage:
    type: int
    code: int
    rest: bytes  # the 4 octets after the checksum (identifier + sequence for echo)
    payload: bytes | memoryview
    checksum: int = 0  # as received

    @property
    def is_echo(self) -> bool:
        return self.type == ICMP_ECHO_REQUEST or self.type == ICMP_ECHO_REPLY

    @property
    def identifier(self) -> int:
        return _ECHO.unpack(self.rest)[0]

    @property
    def sequence(self) -> int:
        return _ECHO.unpack(self.rest)[1]

    def encode(self) -> bytes:
        return build_icmp(self.type, self.code, self.rest, self.payload)


def parse_icmp(buf: bytes | bytearray | memoryview, verify_checksum: bool = True) -> IcmpMessage:
    if len(buf) < ICMP_HEADER_LEN:
        raise DecodeError("icmp-truncated", f"{len(buf)} octets")
    # RFC 792: the checksum covers the whole ICMP message, starting with the type.
    if verify_checksum and internet_checksum(buf) != 0:
        raise DecodeError("icmp-bad-checksum")
    icmp_type, code, csum, rest = _HDR.unpack_from(buf, 0)
    return IcmpMessage(icmp_type, code, rest, buf[ICMP_HEADER_LEN:], csum)


def build_icmp(
    icmp_type: int, code: int, rest: bytes, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    if len(rest) != 4:
        raise ValueError("the ICMP rest-of-header field has 4 octets")
    header = _HDR.pack(icmp_type, code, 0, rest)
    csum = internet_checksum(header + payload)
    return header[:2] + csum.to_bytes(2, "big") + header[4:] + payload


def build_icmp_echo(
    icmp_type: int, identifier: int, sequence: int, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    """Echo request (type 8) or reply (type 0) per RFC 792 "Echo or Echo Reply Message"."""
    return build_icmp(icmp_type, 0, _ECHO.pack(identifier, sequence), payload)
