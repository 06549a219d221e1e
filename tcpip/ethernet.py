"""Ethernet II frames with IEEE 802.1Q / 802.1ad VLAN tags.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                  Destination MAC (6 octets)                   |
    +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                               |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+        Source MAC (6)         +
    |                                                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  TPID 0x8100 (optional tag)   | PCP |D|        VLAN ID        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           EtherType           |  payload ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Frames come from a TAP device without preamble and FCS.  ``build_ethernet`` does not pad to
the 60-octet minimum (the TAP driver and the kernel accept short frames, and the IPv4 total
length lets receivers strip any padding).  Values below 0x0600 in the type field are 802.3
lengths (LLC frames); they are not Ethernet II and raise ``DecodeError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from tcpip.errors import DecodeError

__all__ = [
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_ARP",
    "ETH_P_IPV4",
    "ETH_P_IPV6",
    "ETH_HEADER_LEN",
    "EthernetFrame",
    "VlanTag",
    "build_ethernet",
    "parse_ethernet",
    "vlan_tag",
]

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_8021AD = 0x88A8

ETH_HEADER_LEN = 14
_VLAN_TPIDS = frozenset((ETH_P_8021Q, ETH_P_8021AD))
_MAX_TAGS = 2  # 802.1ad Q-in-Q; a third tag is not a frame we would ever accept

_HDR = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")  # TCI, next type


class VlanTag(NamedTuple):
    """One 802.1Q tag: TPID, priority code point, drop-eligible indicator, VLAN identifier."""

    tpid: int
    pcp: int
    dei: bool
    vid: int

    @property
    def tci(self) -> int:
        return (self.pcp << 13) | (int(self.dei) << 12) | self.vid


@dataclass(slots=True)
class EthernetFrame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes | memoryview  # a slice of the parsed buffer (zero-copy for a memoryview)
    vlan_tags: tuple[VlanTag, ...] = ()  # outermost first

    @property
    def vlan_id(self) -> int | None:
        """The outermost tag's VLAN identifier, None for an untagged frame."""
        return self.vlan_tags[0].vid if self.vlan_tags else None

    @property
    def pcp(self) -> int:
        return self.vlan_tags[0].pcp if self.vlan_tags else 0

    @property
    def is_broadcast(self) -> bool:
        return self.dst == b"\xff\xff\xff\xff\xff\xff"

    @property
    def is_multicast(self) -> bool:
        """Group address (includes broadcast): I/G bit of the first octet."""
        return bool(self.dst[0] & 1)

    def encode(self) -> bytes:
        return build_ethernet(self.dst, self.src, self.ethertype, self.payload, self.vlan_tags)


def parse_ethernet(buf: bytes | bytearray | memoryview) -> EthernetFrame:
    """Decode an Ethernet II frame (any 802.1Q/802.1ad tags are parsed into ``vlan_tags``)."""
    n = len(buf)
    if n < ETH_HEADER_LEN:
        raise DecodeError("ethernet-truncated", f"{n} octets")
    dst, src, ethertype = _HDR.unpack_from(buf, 0)
    offset = ETH_HEADER_LEN
    tags: tuple[VlanTag, ...] = ()
    while ethertype in _VLAN_TPIDS:
        if len(tags) == _MAX_TAGS:
            raise DecodeError("ethernet-too-many-vlan-tags")
        if n < offset + 4:
            raise DecodeError("ethernet-truncated", "in a VLAN tag")
        tci, next_type = _TAG.unpack_from(buf, offset)
        tags += (VlanTag(ethertype, tci >> 13, bool(tci & 0x1000), tci & 0x0FFF),)
        ethertype = next_type
        offset += 4
    if ethertype < 0x0600:
        # IEEE 802.3 length field: an LLC/SNAP frame, not Ethernet II.
        raise DecodeError("ethernet-not-ethernet-ii", f"length/type {ethertype:#06x}")
    return EthernetFrame(dst, src, ethertype, buf[offset:], tags)


def build_ethernet(
    dst: bytes,
    src: bytes,
    ethertype: int,
    payload: bytes | bytearray | memoryview,
    vlan_tags: tuple[VlanTag, ...] = (),
) -> bytes:
    """Encode an Ethernet II frame; ``vlan_tags`` (outermost first) are inserted after the MACs."""
    if not vlan_tags:
        return _HDR.pack(dst, src, ethertype) + payload
    parts = [dst, src]
    for tag in vlan_tags:
        parts.append(_TAG.pack(tag.tpid, tag.tci))
    parts.append(ethertype.to_bytes(2, "big"))
    parts.append(payload)
    return b"".join(parts)


def vlan_tag(vid: int, pcp: int = 0, dei: bool = False, tpid: int = ETH_P_8021Q) -> VlanTag:
    """Convenience constructor with range checks (configuration, not the fast path)."""
    if not 0 <= vid <= 0xFFF or not 0 <= pcp <= 7:
        raise ValueError(f"bad VLAN tag vid={vid} pcp={pcp}")
    return VlanTag(tpid, pcp, dei, vid)
