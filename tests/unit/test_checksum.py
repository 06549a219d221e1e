"""RFC 1071 checksum: against a word-by-word reference, RFC examples, and scapy."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP

from tcpip.checksum import (
    finish_checksum,
    internet_checksum,
    ones_sum,
    pseudo_header_sum,
    update_checksum16,
    verify_checksum,
)


def reference_checksum(data: bytes, initial_words: tuple[int, ...] = ()) -> int:
    """RFC 1071 section 4.1, literally: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(initial_words)
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_numerical_example() -> None:
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, so the checksum is 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data) == 0x220D


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xFFFF),
        (b"\x00\x00\x00\x00", 0xFFFF),  # all zero: sum 0, checksum 0xffff
        (b"\xff\xff", 0x0000),  # sum is "negative zero"
        (b"\x01", 0xFEFF),  # odd byte padded on the right
        (b"\x12\x34\x56", ~(0x1234 + 0x5600) & 0xFFFF),
    ],
)
def test_edge_cases(data: bytes, expected: int) -> None:
    assert internet_checksum(data) == expected == reference_checksum(data)


@given(st.binary(max_size=3000))
def test_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_partial_sums_compose(a: bytes, b: bytes) -> None:
    if len(a) % 2:
        a += b"\x5a"  # pieces must start at even offsets
    assert finish_checksum(ones_sum(a) + ones_sum(b)) == internet_checksum(a + b)


@given(st.binary(min_size=2, max_size=1500).filter(lambda d: len(d) % 2 == 0))
def test_inserted_checksum_verifies_and_a_flip_does_not(data: bytes) -> None:
    body = b"\x00\x00" + data
    csum = internet_checksum(body)
    good = csum.to_bytes(2, "big") + data
    assert verify_checksum(good)
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    assert not verify_checksum(bytes(flipped))


def test_both_zero_encodings_verify() -> None:
    # RFC 1624 section 3: 0x0000 and 0xffff are the same one's-complement value.
    data = b"\x00\x00\x12\x34"
    csum = internet_checksum(data)
    assert verify_checksum(csum.to_bytes(2, "big") + data[2:])


@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 255),
    st.binary(max_size=100),
)
def test_pseudo_header_matches_reference(src: bytes, dst: bytes, proto: int, data: bytes) -> None:
    pseudo = src + dst + bytes((0, proto)) + len(data).to_bytes(2, "big")
    words = struct.unpack("!6H", pseudo)
    expected = reference_checksum(data, words)
    assert internet_checksum(data, pseudo_header_sum(src, dst, proto, len(data))) == expected


def test_tcp_checksum_matches_scapy() -> None:
    pkt = IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=40000, dport=7, flags="PA") / b"hi!"
    wire = raw(pkt)
    tcp = bytearray(wire[20:])
    scapy_csum = int.from_bytes(tcp[16:18], "big")
    tcp[16:18] = b"\x00\x00"
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    assert internet_checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))) == scapy_csum


@given(st.binary(min_size=18, max_size=18), st.integers(1, 9), st.integers(0, 0xFFFF))
def test_incremental_update_rfc1624(rest: bytes, word_index: int, new_word: int) -> None:
    # An IPv4-like header: the first word (0x4500) is never zero and never rewritten, which
    # rules out the all-zero degenerate case RFC 1624 section 3 discusses.
    body = b"\x00\x00\x45\x00" + rest
    csum = internet_checksum(body)
    offset = 2 + 2 * word_index
    old_word = int.from_bytes(body[offset : offset + 2], "big")
    changed = body[:offset] + new_word.to_bytes(2, "big") + body[offset + 2 :]
    updated = update_checksum16(csum, old_word, new_word)
    # The updated value must verify; it may differ from a fresh computation only in the
    # encoding of zero (RFC 1624 section 3).
    assert verify_checksum(updated.to_bytes(2, "big") + changed[2:])
    fresh = internet_checksum(changed)
    assert updated == fresh or {updated, fresh} == {0, 0xFFFF}
