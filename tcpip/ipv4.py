"""IPv4 header (RFC 791 section 3.1).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |   DSCP    |ECN|          Total Length         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Identification        |0|D|M|      Fragment Offset    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Time to Live |    Protocol   |         Header Checksum       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                       Source Address                          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Destination Address                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Options (IHL > 5)                          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The parser never reassembles and never interprets options: fragments (MF set or a non-zero
offset) and headers with options are *reported* (``is_fragment``, ``has_options``, the raw
``options`` octets); the stack hands fragments to :mod:`tcpip.reassembly` and drops options.
The payload is trimmed to the Total Length (anything after it is link-layer padding, RFC 894).
``build_ipv4`` sets DF by default: the stack does path-MTU-sized segments and never fragments
(RFC 1191).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpip.checksum import internet_checksum
from tcpip.errors import DecodeError

__all__ = [
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_HEADER_LEN",
    "Ipv4Packet",
    "build_ipv4",
    "parse_ipv4",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IPV4_HEADER_LEN = 20
DEFAULT_TTL = 64  # RFC 1700 / Linux net.ipv4.ip_default_ttl

_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_OFFSET_MASK = 0x1FFF

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(slots=True)
class Ipv4Packet:
    src: bytes
    dst: bytes
    protocol: int
    payload: bytes | memoryview  # trimmed to total_length - header_length
    ttl: int = DEFAULT_TTL
    identification: int = 0
    dont_fragment: bool = True
    more_fragments: bool = False
    fragment_offset: int = 0  # in 8-octet units, as on the wire
    dscp: int = 0
    ecn: int = 0
    options: bytes = b""  # raw option octets (IHL > 5), never interpreted
    total_length: int = 0  # as received (0 on packets built by hand: encode() computes it)
    checksum: int = 0  # as received
    reserved_flag: bool = False  # the "evil bit" (RFC 3514); reported, not interpreted

    @property
    def header_length(self) -> int:
        return IPV4_HEADER_LEN + len(self.options)

    @property
    def is_fragment(self) -> bool:
        """RFC 791: a datagram is a fragment when MF is set or the offset is non-zero."""
        return self.more_fragments or self.fragment_offset != 0

    @property
    def has_options(self) -> bool:
        return bool(self.options)

    def encode(self) -> bytes:
        return build_ipv4(
            self.src,
            self.dst,
            self.protocol,
            self.payload,
            identification=self.identification,
            ttl=self.ttl,
            dont_fragment=self.dont_fragment,
            more_fragments=self.more_fragments,
            fragment_offset=self.fragment_offset,
            dscp=self.dscp,
            ecn=self.ecn,
            options=self.options,
        )


def parse_ipv4(buf: bytes | bytearray | memoryview, verify_checksum: bool = True) -> Ipv4Packet:
    """Decode an IPv4 header; ``payload`` is a slice of ``buf`` (zero-copy for a memoryview)."""
    n = len(buf)
    if n < IPV4_HEADER_LEN:
        raise DecodeError("ipv4-truncated", f"{n} octets")
    vihl, tos, total_length, ident, frag, ttl, proto, csum, src, dst = _HDR.unpack_from(buf, 0)
    if vihl >> 4 != 4:
        raise DecodeError("ipv4-bad-version", f"version {vihl >> 4}")
    hlen = (vihl & 0x0F) * 4
    if hlen < IPV4_HEADER_LEN:
        raise DecodeError("ipv4-bad-header-length", f"IHL {vihl & 0x0F}")
    if total_length < hlen:
        raise DecodeError("ipv4-bad-total-length", f"total length {total_length} < header {hlen}")
    if total_length > n:
        raise DecodeError("ipv4-truncated", f"total length {total_length} > {n} octets")
    if verify_checksum and internet_checksum(buf[:hlen]) != 0:
        # RFC 1122 section 3.2.1.2: a host MUST verify the header checksum and silently
        # discard a datagram that fails.
        raise DecodeError("ipv4-bad-checksum", f"checksum {csum:#06x}")
    return Ipv4Packet(
        src,
        dst,
        proto,
        buf[hlen:total_length],
        ttl,
        ident,
        bool(frag & _FLAG_DF),
        bool(frag & _FLAG_MF),
        frag & _OFFSET_MASK,
        tos >> 2,
        tos & 3,
        bytes(buf[IPV4_HEADER_LEN:hlen]) if hlen > IPV4_HEADER_LEN else b"",
        total_length,
        csum,
        bool(frag & 0x8000),
    )


def build_ipv4(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | bytearray | memoryview,
    *,
    identification: int = 0,
    ttl: int = DEFAULT_TTL,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    dscp: int = 0,
    ecn: int = 0,
    options: bytes = b"",
) -> bytes:
    """Encode header + payload with the header checksum set.

    ``options`` must already be padded to a multiple of 4 octets (RFC 791 "the internet header
    padding is used to ensure that the internet header ends on a 32 bit boundary").
    """
    if len(options) % 4 or len(options) > 40:
        raise ValueError(
            f"IPv4 options must be padded to 4 octets, at most 40 (got {len(options)})"
        )
    hlen = IPV4_HEADER_LEN + len(options)
    total = hlen + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 datagram of {total} octets")
    frag = fragment_offset & _OFFSET_MASK
    if dont_fragment:
        frag |= _FLAG_DF
    if more_fragments:
        frag |= _FLAG_MF
    header = _HDR.pack(
        0x40 | (hlen >> 2),
        (dscp << 2) | ecn,
        total,
        identification,
        frag,
        ttl,
        protocol,
        0,
        src,
        dst,
    )
    if options:
        header += options
    csum = internet_checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload
