"""ARP for IPv4 over Ethernet (RFC 826).  Other hardware or protocol types raise DecodeError.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      HTYPE = 1 (Ethernet)     |      PTYPE = 0x0800 (IPv4)    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   HLEN = 6    |   PLEN = 4    |     OPER (1 request, 2 reply) |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  sender hardware address (6), sender protocol address (4),    |
    |  target hardware address (6), target protocol address (4)     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Trailing octets (Ethernet padding to 60 octets) are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpip.errors import DecodeError

__all__ = ["ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "ArpPacket", "build_arp", "parse_arp"]

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_HTYPE_ETHERNET = 1
_PTYPE_IPV4 = 0x0800


@dataclass(slots=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    @property
    def is_request(self) -> bool:
        return self.op == ARP_REQUEST

    @property
    def is_reply(self) -> bool:
        return self.op == ARP_REPLY

    def encode(self) -> bytes:
        return build_arp(self.op, self.sender_mac, self.sender_ip, self.target_mac, self.target_ip)


def parse_arp(buf: bytes | bytearray | memoryview) -> ArpPacket:
    if len(buf) < ARP_LEN:
        raise DecodeError("arp-truncated", f"{len(buf)} octets")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, 0)
    if htype != _HTYPE_ETHERNET or hlen != 6:
        raise DecodeError("arp-unsupported-hardware", f"htype={htype} hlen={hlen}")
    if ptype != _PTYPE_IPV4 or plen != 4:
        raise DecodeError("arp-unsupported-protocol", f"ptype={ptype:#06x} plen={plen}")
    if op != ARP_REQUEST and op != ARP_REPLY:
        # RARP (3/4) and InARP (8/9) are other protocols on the same ethertype or not ours.
        raise DecodeError("arp-unsupported-op", f"op={op}")
    return ArpPacket(op, sha, spa, tha, tpa)


def build_arp(
    op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes
) -> bytes:
    return _ARP.pack(
        _HTYPE_ETHERNET, _PTYPE_IPV4, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip
    )
