/* SPDX-License-Identifier: MIT */
/*
 * benchmarks/mem_latency.c -- what one dependent random memory read costs on this machine, for
 * a working set of N MiB: a pointer chase through one 64-byte line per element in a random
 * cyclic order (each read needs the previous one's result, so nothing overlaps).  It puts a
 * number on what `vnic bench table` reports as the C lookup's cost beyond the Python call: one
 * read of the index, which at 200,000 connections is 10 MiB (2^19 buckets x 20 bytes).
 *
 *     gcc -O2 -o /tmp/mem_latency benchmarks/mem_latency.c
 *     for mib in 1 4 8 10 32 128; do /tmp/mem_latency $mib; done
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int
main(int argc, char **argv)
{
    if (argc != 2 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: %s MIB   (working set in MiB, >= 1)\n", argv[0]);
        return 2;
    }
    const size_t lines = (size_t)atoi(argv[1]) * 1024 * 1024 / 64;
    uint64_t *a = aligned_alloc(64, lines * 64);
    uint32_t *order = malloc(lines * sizeof *order);
    if (a == NULL || order == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < lines; i++) {
        order[i] = (uint32_t)i;
    }
    srand(1);
    for (size_t i = lines - 1; i > 0; i--) {       /* Fisher-Yates: one random cycle */
        size_t j = (size_t)rand() % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) {
        a[(size_t)order[i] * 8] = (uint64_t)order[(i + 1) % lines] * 8;
    }
    const size_t steps = 5000000;
    size_t p = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < steps; i++) {
        p = a[p];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / steps;
    printf("%s MiB: %.1f ns per dependent random read (%zu)\n", argv[1], ns, p & 1);
    free(order);
    free(a);
    return 0;
}
