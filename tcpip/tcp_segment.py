"""TCP segment representation: the currency between the host stack and the TCP engine.

The dataclasses are fixed here (see docs/internals.md); ``parse_tcp`` / ``build_tcp`` turn them
into bytes and back (RFC 9293 section 3.1 header format, RFC 7323 / RFC 2018 options).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TcpFlags(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


@dataclass(slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None  # shift count as sent (0..14, RFC 7323 section 2.3)
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr), RFC 7323 section 3.2


@dataclass(slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int  # the raw 16-bit field as on the wire (not scaled)
    options: TcpOptions = field(default_factory=TcpOptions)
    payload: bytes = b""
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """SEG.LEN of RFC 9293 section 3.4: payload octets plus one each for SYN and FIN."""
        n = len(self.payload)
        if self.flags & TcpFlags.SYN:
            n += 1
        if self.flags & TcpFlags.FIN:
            n += 1
        return n
