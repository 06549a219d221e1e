"""Address helpers.  On fast paths IPv4 addresses are 4-byte ``bytes`` and MACs 6-byte ``bytes``;
these functions convert for humans and for configuration."""

from __future__ import annotations

import ipaddress

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6


def ip_bytes(text: str | bytes | ipaddress.IPv4Address) -> bytes:
    """``"198.18.0.1"`` -> ``b"\\xc6\\x12\\x00\\x01"`` (bytes pass through after a length check)."""
    if isinstance(text, bytes):
        if len(text) != 4:
            raise ValueError(f"an IPv4 address has 4 bytes, got {len(text)}")
        return text
    return ipaddress.IPv4Address(text).packed


def ip_str(raw: bytes) -> str:
    return ipaddress.IPv4Address(raw).compressed


def mac_bytes(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        if len(text) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {len(text)}")
        return text
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def in_subnet(ip: bytes, network: bytes, prefix_len: int) -> bool:
    mask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF if prefix_len else 0
    return (int.from_bytes(ip, "big") & mask) == (int.from_bytes(network, "big") & mask)


def four_tuple(local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int) -> str:
    """The connection name used in every log line: ``198.18.0.2:40000 -> 198.18.0.1:7``."""
    return f"{ip_str(local_ip)}:{local_port} -> {ip_str(remote_ip)}:{remote_port}"
