"""Hand-built Ethernet/IPv4/TCP frames for the connection-table tests (no codec dependencies,
so the classifier is tested against bytes laid out by hand)."""

from __future__ import annotations

import struct

LOCAL_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_tcp_frame(src_ip: bytes, sport: int, dst_ip: bytes, dport: int, *,
                   payload: bytes = b"", ip_options: bytes = b"", tcp_options: bytes = b"",
                   ethertype: int = 0x0800, proto: int = 6, flags_frag: int = 0x4000,
                   vlan: int | None = None, padding: bytes = b"", version: int = 4,
                   seq: int = 1000, ack: int = 2000, tcp_flags: int = 0x10) -> bytes:
    """Ethernet (optionally 802.1Q-tagged) + IPv4 + TCP, checksums correct, DF set."""
    assert len(ip_options) % 4 == 0 and len(tcp_options) % 4 == 0
    doff = (20 + len(tcp_options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, tcp_flags, 65535, 0, 0)
    tcp += tcp_options + payload
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ihl = (20 + len(ip_options)) // 4
    total = ihl * 4 + len(tcp)
    ip = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total, 1, flags_frag, 64, proto, 0,
                     src_ip, dst_ip) + ip_options
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = LOCAL_MAC + PEER_MAC          # received by the local side: dst, src
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    eth += struct.pack("!H", ethertype)
    return eth + ip + tcp + padding


def fix_ip_checksum(frame: bytes | bytearray, offset: int = 14) -> bytes:
    """Recompute the IPv4 header checksum after a test edited the header."""
    b = bytearray(frame)
    ihl = (b[offset] & 0x0F) * 4
    b[offset + 10:offset + 12] = b"\x00\x00"
    b[offset + 10:offset + 12] = struct.pack("!H", checksum(bytes(b[offset:offset + ihl])))
    return bytes(b)
