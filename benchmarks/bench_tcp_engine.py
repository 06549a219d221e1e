"""Throughput of two TcpConnection engines wired back to back in memory (no IP, no checksums).

Measures the pure-Python per-segment cost of the TCP engine: bulk transfer from ``a`` to ``b``
with a virtual clock (each exchange round advances it by ``--rtt``), no loss.  Prints payload
MB/s and segments/s (both directions) per CPU second of this process, best of ``--repeat`` runs
(CPU time, not wall time, so that other load on the machine does not distort the figure).
``poll_per_segment`` polls the receiver after every segment (every 2nd segment is ACKed, as a
run loop that reads one frame at a time would see); otherwise once per burst (stretch ACKs).

    .venv/bin/python -m benchmarks.bench_tcp_engine [--mbytes 64] [--rtt 0.0005] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time

from tcpip.addr import ip_bytes
from tcpip.tcp import TcpConfig, TcpConnection, TcpState


def run(
    mbytes: int, rtt: float, timestamps: bool, per_segment: bool
) -> tuple[int, int, float, float, float, int]:
    cfg = TcpConfig(timestamps=timestamps)
    a_ip, b_ip = ip_bytes("198.18.0.2"), ip_bytes("198.18.0.1")
    now = 0.0
    a = TcpConnection.connect(cfg, a_ip, 40000, b_ip, 9, 1, now)
    syn = a.poll(now)[0]
    b = TcpConnection.accept(cfg, b_ip, 9, a_ip, 40000, 7777, syn, now)
    for s in b.poll(now):
        a.on_segment(s, now)
    for s in a.poll(now):
        b.on_segment(s, now)
    assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED

    total = mbytes * 1_000_000
    chunk = bytes(range(256)) * 256  # 64 KiB
    sent = received = 0
    segs = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while received < total:
        if sent < total:
            sent += a.send(chunk if total - sent >= len(chunk) else chunk[: total - sent])
        out = a.poll(now)
        segs += len(out)
        if per_segment:
            # Like a run loop that reads one frame at a time: the receiver is polled after
            # every segment, so delayed ACK acknowledges every 2nd segment (as Linux does).
            back = []
            for s in out:
                b.on_segment(s, now)
                back += b.poll(now)
            received += len(b.receive())
            back += b.poll(now)
        else:
            for s in out:
                b.on_segment(s, now)
            received += len(b.receive())
            back = b.poll(now)
        segs += len(back)
        now += rtt / 2
        for s in back:
            a.on_segment(s, now)
        if not out and not back:
            dl = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
            if dl:
                now = max(now, min(dl))
        now += rtt / 2
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    assert received == total
    return total, segs, dt, cpu, now, a.counters.retransmissions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mbytes", type=int, default=64)
    ap.add_argument("--rtt", type=float, default=0.0005)
    ap.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    args = ap.parse_args()
    for per_segment in (True, False):
        for ts in (True, False):
            runs = [run(args.mbytes, args.rtt, ts, per_segment) for _ in range(args.repeat)]
            total, segs, dt, cpu, vt, rexmit = min(runs, key=lambda r: r[3])
            sys.stdout.write(
                f"timestamps={ts!s:5} poll_per_segment={per_segment!s:5}: "
                f"{total / cpu / 1e6:6.1f} MB/s, {segs / cpu:9,.0f} segments/s "
                f"(CPU time, best of {args.repeat}; {segs} segments, {dt:.2f} s wall, "
                f"{vt:.2f} s virtual, {rexmit} retransmissions)\n"
            )


if __name__ == "__main__":
    main()
