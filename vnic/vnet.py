"""The virtio-net header of a TAP opened with ``IFF_VNET_HDR``: segmentation and checksum offload.

With ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)`` the kernel treats the TAP like a virtio NIC that
can segment and checksum TCP itself (Documentation/networking/tuntap.rst; struct
virtio_net_hdr in include/uapi/linux/virtio_net.h):

* frames we **read** may be TCP super-segments of up to 64 KiB (the kernel skips segmenting them
  because "the device" would) and may carry only the pseudo-header sum in the TCP checksum
  field (``VIRTIO_NET_HDR_F_NEEDS_CSUM``).  :func:`complete_inbound` finishes the checksums, so
  the host stack above sees ordinary, valid (if large) frames;
* frames we **write** may be super-segments too: :func:`outbound_header` marks an IPv4/TCP frame
  longer than the link MTU as GSO with ``gso_size`` = the MSS the frame's headers imply, and
  lets the kernel finish the TCP checksum.  The interface MTU stays 1500 and the peer's TCP
  sees MSS-sized segments semantics (it may deliver the super-segment whole, as it does after
  GRO on a real NIC).

The header is 10 bytes, native byte order (legacy virtio; x86-64 and arm64 are little-endian):
``flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16``.
"""

from __future__ import annotations

import struct

from tcpip.checksum import finish_checksum, internet_checksum, ones_sum

try:  # the same function in C (offload_target/_datapath.c): 64 KiB super-segments, 8x faster
    from offload_target._ctable import internet_checksum as _checksum
except ImportError:  # pragma: no cover - the extension is not built
    _checksum = internet_checksum

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 0x01
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
PLAIN_HEADER = VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)

_ETH = 14
_ETHERTYPE_IPV4 = b"\x08\x00"
_TCP = 6


def complete_inbound(header: bytes, frame: bytes | memoryview) -> bytes:
    """The frame with its checksums completed per the virtio-net header read with it.

    ``frame`` may be a view (of the buffer read with its header): a frame whose checksums
    must be completed is copied once, into the result, rather than sliced out first."""
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = VNET_HDR.unpack(header)
    if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and gso_type == VIRTIO_NET_HDR_GSO_NONE:
        return frame if isinstance(frame, bytes) else bytes(frame)
    needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and csum_start + csum_offset + 2 <= len(frame)
    field = csum_start + csum_offset if needs_csum else len(frame)
    # the headers up to the checksum field are copied and fixed; the payload is copied once
    head = bytearray(frame[:field])
    if gso_type != VIRTIO_NET_HDR_GSO_NONE and head[12:14] == _ETHERTYPE_IPV4:
        # a super-segment's IPv4 header describes the whole of it; make its checksum valid
        ihl = (head[_ETH] & 0x0F) * 4
        head[_ETH + 10:_ETH + 12] = b"\0\0"
        head[_ETH + 10:_ETH + 12] = _checksum(head[_ETH:_ETH + ihl]).to_bytes(2, "big")
    if not needs_csum:
        return bytes(head)
    # the field holds the pseudo-header sum; the checksum covers csum_start .. end
    view = memoryview(frame)
    total = _checksum(view[csum_start:])
    return b"".join((head, total.to_bytes(2, "big"), view[field + 2:]))


def _gso(frame: bytes | bytearray | memoryview, mtu: int) -> tuple[bytes, int, bytes] | None:
    """For an IPv4/TCP frame longer than the link MTU allows: (virtio-net header marking it a
    TSO super-segment, offset of its TCP checksum field, the value that field must hold -- the
    pseudo-header sum the kernel starts from, NEEDS_CSUM).  None for any other frame."""
    if len(frame) <= _ETH + mtu or frame[12:14] != _ETHERTYPE_IPV4 or frame[_ETH + 9] != _TCP:
        return None
    ihl = (frame[_ETH] & 0x0F) * 4
    tcp_start = _ETH + ihl
    tcp_header_len = (frame[tcp_start + 12] >> 4) * 4
    tcp_len = len(frame) - tcp_start
    pseudo = ones_sum(bytes(frame[_ETH + 12:_ETH + 20])) + _TCP + tcp_len
    partial = (~finish_checksum(pseudo)) & 0xFFFF
    header = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                           tcp_start + tcp_header_len, mtu - ihl - tcp_header_len, tcp_start, 16)
    return header, tcp_start + 16, partial.to_bytes(2, "big")


def outbound_header(frame: bytes | bytearray, mtu: int) -> bytes:
    """The virtio-net header to write before ``frame``; a TSO super-segment when the IPv4/TCP
    frame is longer than the link MTU allows.  Rewrites the TCP checksum field of such a frame
    in place to the pseudo-header sum (``frame`` must then be a ``bytearray``)."""
    gso = _gso(frame, mtu)
    if gso is None:
        return PLAIN_HEADER
    if not isinstance(frame, bytearray):
        raise TypeError("a super-segment must be passed as a bytearray (its checksum is rewritten)")
    header, field, partial = gso
    frame[field:field + 2] = partial
    return header


def outbound_parts(frame: bytes | bytearray, mtu: int) -> tuple[bytes | memoryview, ...]:
    """What to ``os.writev`` for ``frame``: the virtio-net header then the frame; for a TSO
    super-segment (as :func:`outbound_header`) the frame in pieces around its TCP checksum
    field, which is replaced by the pseudo-header sum -- without copying or changing
    ``frame`` (any bytes-like object)."""
    gso = _gso(frame, mtu)
    if gso is None:
        return PLAIN_HEADER, frame
    header, field, partial = gso
    view = memoryview(frame)
    return header, view[:field], partial, view[field + 2:]
