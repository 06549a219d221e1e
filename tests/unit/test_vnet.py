"""The virtio-net header helpers behind TAP segmentation offload (vnic/vnet.py)."""

from __future__ import annotations

import struct

from tcpip.checksum import internet_checksum, pseudo_header_sum
from tcpip.ethernet import build_ethernet
from tcpip.ipv4 import build_ipv4, parse_ipv4
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp, parse_tcp
from vnic import vnet

SRC, DST = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
MAC_A, MAC_B = b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x01"


def _frame(payload_len: int) -> bytes:
    seg = TcpSegment(40000, 5001, 1000, 2000, TcpFlags.ACK | TcpFlags.PSH, 512,
                     TcpOptions(timestamp=(1, 2)), bytes(range(256)) * (payload_len // 256))
    tcp = build_tcp(seg, SRC, DST)
    return build_ethernet(MAC_B, MAC_A, 0x0800, build_ipv4(SRC, DST, 6, tcp, identification=7))


def test_plain_frames_get_the_empty_header_and_stay_untouched() -> None:
    frame = _frame(1280)
    assert vnet.outbound_header(frame, 1500) == vnet.PLAIN_HEADER == bytes(10)
    assert vnet.complete_inbound(vnet.PLAIN_HEADER, frame) is frame


def test_super_segment_is_marked_tso_with_the_mss_its_headers_imply() -> None:
    frame = bytearray(_frame(64 * 256))
    header = vnet.outbound_header(frame, 1500)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", header)
    assert flags == vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM and gso_type == vnet.VIRTIO_NET_HDR_GSO_TCPV4
    assert (csum_start, csum_offset) == (34, 16)
    assert hdr_len == 34 + 32 and gso_size == 1500 - 20 - 32  # timestamps: MSS 1448
    # the TCP checksum field now holds the folded pseudo-header sum (what the kernel expects)
    tcp_len = len(frame) - 34
    want = pseudo_header_sum(SRC, DST, 6, tcp_len) % 0xFFFF
    assert int.from_bytes(frame[50:52], "big") == want


def test_inbound_partial_checksum_is_completed_exactly() -> None:
    frame = bytearray(_frame(64 * 256))
    good = bytes(frame)
    header = vnet.outbound_header(frame, 1500)  # turns the field into the partial sum
    assert bytes(frame) != good
    done = vnet.complete_inbound(header, bytes(frame))
    assert done == good
    ip = parse_ipv4(memoryview(done)[14:])
    seg = parse_tcp(ip.payload, ip.src, ip.dst)  # verifies the checksum
    assert len(seg.payload) == 64 * 256


def test_inbound_gso_frame_gets_a_valid_ipv4_header_checksum() -> None:
    frame = bytearray(_frame(64 * 256))
    frame[24:26] = b"\xde\xad"  # whatever the kernel left there
    header = struct.pack("<BBHHHH", 0, vnet.VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 0, 0)
    done = vnet.complete_inbound(header, bytes(frame))
    assert internet_checksum(done[14:34]) == 0
