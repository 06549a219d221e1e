/* SPDX-License-Identifier: MIT */
/*
 * include/vnic_inet_sum.h -- the RFC 1071 one's-complement sum, shared by the two C extensions:
 * offload_target/_datapath.c (segment checksums of the offloaded data path) and vnic/_tapio.c
 * (the RX ring completing the checksums a virtio-net header asks for).
 */
#ifndef VNIC_INET_SUM_H
#define VNIC_INET_SUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The one's-complement sum of p[0..n), folded to 16 bits, of 16-bit words loaded in memory
 * (native) order; an odd last byte is padded as the first byte of a word.  Stored back in
 * memory order, the result is the network-order sum: the one's-complement sum does not depend
 * on byte order (RFC 1071 2(B)), nor on the width of the words added as long as the carries are
 * folded back in (2(C); 2^16 is 1 modulo 0xFFFF), so eight bytes are added per step.  The
 * 64-bit accumulator cannot overflow: each step adds at most 2^33 - 2, so it would take more
 * than 2^30 steps (8 GiB). */
static inline uint32_t
inet_sum_native(const unsigned char *p, size_t n)
{
    uint64_t acc = 0;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        acc += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        acc += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        const unsigned char last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        acc += h;
    }
    while (acc >> 16) {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    return (uint32_t)acc;
}

#endif /* VNIC_INET_SUM_H */
