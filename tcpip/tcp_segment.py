"""TCP segment representation: the currency between the host stack and the TCP engine.

The dataclasses are fixed here (see docs/internals.md); ``parse_tcp`` / ``build_tcp`` turn them
into bytes and back (RFC 9293 section 3.1 header format, RFC 7323 / RFC 2018 options).

Parsing is strict about lengths (a malformed option length raises ``DecodeError``), skips
unknown options, clamps a received window-scale shift above 14 to 14 (RFC 7323 section 2.3),
and keeps the last occurrence of a repeated option.
"""

from __future__ import annotations

import enum
import struct as _struct
from dataclasses import dataclass, field

from tcpip.checksum import finish_checksum, internet_checksum, ones_sum, pseudo_header_sum
from tcpip.errors import DecodeError


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


# ---- wire format ---------------------------------------------------------------------------
#
#     0                   1                   2                   3
#     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |          Source Port          |       Destination Port        |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |                        Sequence Number                        |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |                    Acknowledgment Number                      |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |  Data |       |C|E|U|A|P|R|S|F|                               |
#    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
#    |       |       |R|E|G|K|H|T|N|N|                               |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |           Checksum            |         Urgent Pointer        |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#    |                           [Options]                           |
#    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#
# RFC 9293 section 3.1.  The four reserved bits are ignored on input and sent as zero.
#
# Options on output use Linux's layout, each item 32-bit aligned:
#   MSS            02 04 mm mm                       (RFC 9293 section 3.7.1)
#   SACK-perm + TS 04 02 08 0a TSval TSecr           (RFC 2018 section 2, RFC 7323 section 3.2)
#   TS alone       01 01 08 0a TSval TSecr
#   SACK-perm      01 01 04 02
#   window scale   01 03 03 ss                       (RFC 7323 section 2.2)
#   SACK blocks    01 01 05 LL left right ...        (RFC 2018 section 3)

TCP_HEADER_LEN = 20
TCP_MAX_OPTIONS_LEN = 40
IPPROTO_TCP = 6

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERMITTED = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 section 2.3

_HDR = _struct.Struct("!HHIIHHHH")
_U16 = _struct.Struct("!H")
_U32X2 = _struct.Struct("!II")
_TS_OPT = _struct.Struct("!BBII")
_MSS_OPT = _struct.Struct("!BBH")
# One pre-built flag value per octet: indexing is much cheaper than TcpFlags(x) per segment.
_FLAGS = tuple(TcpFlags(i) for i in range(256))


def _parse_options(buf: bytes | bytearray | memoryview, end: int) -> TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None
    i = TCP_HEADER_LEN
    while i < end:
        kind = buf[i]
        if kind == TCPOPT_EOL:  # RFC 9293 section 3.1: end of option list
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise DecodeError("tcp-bad-option-length", f"option {kind} has no length octet")
        length = buf[i + 1]
        # RFC 9293 section 3.1 (MUST-68): the length covers kind and length; an option that
        # claims less than 2 octets or runs past the data offset is malformed.
        if length < 2 or i + length > end:
            raise DecodeError("tcp-bad-option-length", f"option {kind} length {length}")
        if kind == TCPOPT_MSS:
            if length != 4:
                raise DecodeError("tcp-bad-option-length", f"MSS length {length}")
            mss = _U16.unpack_from(buf, i + 2)[0]
        elif kind == TCPOPT_TIMESTAMP:
            if length != 10:
                raise DecodeError("tcp-bad-option-length", f"timestamp length {length}")
            timestamp = _U32X2.unpack_from(buf, i + 2)
        elif kind == TCPOPT_WINDOW:
            if length != 3:
                raise DecodeError("tcp-bad-option-length", f"window scale length {length}")
            # RFC 7323 section 2.3: a shift count above 14 MUST be treated as 14.
            wscale = min(buf[i + 2], MAX_WSCALE)
        elif kind == TCPOPT_SACK_PERMITTED:
            if length != 2:
                raise DecodeError("tcp-bad-option-length", f"SACK-permitted length {length}")
            sack_permitted = True
        elif kind == TCPOPT_SACK:
            # RFC 2018 section 3: 8 octets per block, at least one block.
            if length < 10 or (length - 2) % 8:
                raise DecodeError("tcp-bad-option-length", f"SACK length {length}")
            sack_blocks = tuple(_U32X2.unpack_from(buf, off) for off in range(i + 2, i + length, 8))
        # Any other kind is skipped by its length (RFC 9293 section 3.1, MUST-6).
        i += length
    return TcpOptions(mss, wscale, sack_permitted, sack_blocks, timestamp)


def parse_tcp(
    buf: bytes | bytearray | memoryview,
    src_ip: bytes,
    dst_ip: bytes,
    verify_checksum: bool = True,
) -> TcpSegment:
    """Decode a TCP segment (``buf`` = the whole IP payload, header + data).

    Raises ``DecodeError`` with reasons ``tcp-truncated``, ``tcp-bad-data-offset``,
    ``tcp-bad-checksum`` or ``tcp-bad-option-length``.
    """
    n = len(buf)
    if n < TCP_HEADER_LEN:
        raise DecodeError("tcp-truncated", f"{n} octets")
    sport, dport, seq, ack, off_flags, window, csum, urgent = _HDR.unpack_from(buf, 0)
    doff = (off_flags >> 12) << 2
    if doff < TCP_HEADER_LEN:
        raise DecodeError("tcp-bad-data-offset", f"data offset {doff >> 2}")
    if doff > n:
        raise DecodeError("tcp-truncated", f"data offset {doff} > {n} octets")
    # RFC 9293 section 3.1: the checksum covers the pseudo-header, the header and the data.
    if verify_checksum and internet_checksum(
        buf, pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, n)
    ):
        raise DecodeError("tcp-bad-checksum", f"checksum {csum:#06x}")
    options = _parse_options(buf, doff) if doff > TCP_HEADER_LEN else TcpOptions()
    return TcpSegment(
        sport,
        dport,
        seq,
        ack,
        _FLAGS[off_flags & 0xFF],
        window,
        options,
        bytes(buf[doff:]),
        urgent,
    )


def _build_options(o: TcpOptions) -> bytes:
    parts: list[bytes] = []
    if o.mss is not None:
        parts.append(_MSS_OPT.pack(TCPOPT_MSS, 4, o.mss))
    if o.timestamp is not None:
        prefix = b"\x04\x02" if o.sack_permitted else b"\x01\x01"
        parts.append(prefix + _TS_OPT.pack(TCPOPT_TIMESTAMP, 10, o.timestamp[0], o.timestamp[1]))
    elif o.sack_permitted:
        parts.append(b"\x01\x01\x04\x02")
    if o.wscale is not None:
        parts.append(bytes((TCPOPT_NOP, TCPOPT_WINDOW, 3, o.wscale)))
    if o.sack_blocks:
        used = sum(len(p) for p in parts)
        # RFC 2018 section 3: at most 4 blocks, 3 alongside timestamps; keep what fits (the
        # first blocks are the most recent ones and must be kept, RFC 2018 section 4).
        room = min(4, (TCP_MAX_OPTIONS_LEN - used - 4) // 8)
        blocks = o.sack_blocks[:room]
        if blocks:
            parts.append(bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK, 2 + 8 * len(blocks))))
            parts.extend(_U32X2.pack(left, right) for left, right in blocks)
    return b"".join(parts)


def build_tcp(seg: TcpSegment, src_ip: bytes, dst_ip: bytes) -> bytes:
    """Encode ``seg`` (header, options, payload) with the checksum set."""
    o = seg.options
    if (
        o.timestamp is not None
        and o.mss is None
        and o.wscale is None
        and not o.sack_permitted
        and not o.sack_blocks
    ):
        # The common case on an established connection: NOP NOP TS.
        opts = b"\x01\x01" + _TS_OPT.pack(TCPOPT_TIMESTAMP, 10, o.timestamp[0], o.timestamp[1])
    elif (
        o.timestamp is None
        and o.mss is None
        and o.wscale is None
        and not o.sack_permitted
        and not o.sack_blocks
    ):
        opts = b""
    else:
        opts = _build_options(o)
    hlen = TCP_HEADER_LEN + len(opts)
    payload = seg.payload
    off_flags = (hlen << 10) | (int(seg.flags) & 0xFF)  # int(): no IntFlag arithmetic
    header = _HDR.pack(
        seg.src_port, seg.dst_port, seg.seq, seg.ack, off_flags, seg.window, 0, seg.urgent
    )
    if opts:
        header += opts
    csum = finish_checksum(
        pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, hlen + len(payload))
        + ones_sum(header)
        + ones_sum(payload)
    )
    return header[:16] + _U16.pack(csum) + header[18:] + payload
