"""Raw TAP frame rates (no protocol stack): how fast this process can move frames.

``python -m vnic.tap_bench`` prints JSON. Write rate: 1514-byte UDP frames to the peer's
address (the kernel accepts and drops them: no listener). Read rate: a UDP flood from the peer
namespace towards the emulated host (a static neighbour entry, so no ARP is needed), drained
with :meth:`TapDevice.read_frames`.
"""

from __future__ import annotations

import json
import logging
import select
import struct
import subprocess
import sys
import time
from typing import Any

from vnic.lab import Lab

log = logging.getLogger(__name__)

_FLOOD = r"""
import socket, sys, time
dst, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
payload = b"x" * 1472
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(payload, (dst, 9))
            n += 1
        except OSError:
            pass
print(n)
"""


def _checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _udp_frame(lab: Lab, size: int = 1514) -> bytes:
    payload = b"\0" * (size - 14 - 20 - 8)
    ip_len = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 1, 0x4000, 64, 17, 0,
                     lab.host_ip_bytes, lab.peer_ip_bytes)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0)
    return lab.peer_mac_bytes + lab.host_mac_bytes + b"\x08\x00" + ip + udp + payload


def measure_write(lab: Lab, seconds: float = 1.0) -> dict[str, float]:
    frame = _udp_frame(lab)
    tap = lab.tap
    write = tap.write
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            write(frame)
        n += 1000
    elapsed = time.perf_counter() - start
    return {"frames_per_s": n / elapsed, "mb_per_s": n * len(frame) / elapsed / 1e6}


def measure_read(lab: Lab, seconds: float = 1.0) -> dict[str, float]:
    from pyroute2 import NetNS

    with NetNS(lab.namespace) as ns:
        idx = ns.link_lookup(ifname=lab.tap_name)[0]
        ns.neigh("replace", dst=lab.host_ip, lladdr=lab.host_mac, ifindex=idx, state="permanent")
    proc = lab.run_in_namespace([sys.executable, "-c", _FLOOD, lab.host_ip, str(seconds)], stdout=subprocess.PIPE,
                          text=True)
    tap = lab.tap
    fd = tap.fileno()
    n = nbytes = 0
    first = last = 0.0
    while proc.poll() is None:
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            continue
        frames = tap.read_frames(256)
        if frames:
            now = time.perf_counter()
            if not first:
                first = now
            last = now
            n += len(frames)
            nbytes += sum(map(len, frames))
    sent = int(proc.communicate()[0].strip() or 0)
    elapsed = max(last - first, 1e-9)
    return {"frames_per_s": n / elapsed, "mb_per_s": nbytes / elapsed / 1e6,
            "frames": n, "sent_by_peer": sent}


def measure_drain(lab: Lab, rounds: int = 3) -> dict[str, float]:
    """Let the kernel queue a burst on the TAP (nobody reading), then time draining it.

    Unlike :func:`measure_read` this is not bounded by the Python flood sender: it is the
    reader's own per-frame cost. Needs the lab's txqueuelen to be large (the burst size).
    """
    from pyroute2 import NetNS

    with NetNS(lab.namespace) as ns:
        idx = ns.link_lookup(ifname=lab.tap_name)[0]
        ns.neigh("replace", dst=lab.host_ip, lladdr=lab.host_mac, ifindex=idx, state="permanent")
    tap = lab.tap
    total = 0
    elapsed = 0.0
    for _ in range(rounds):
        proc = lab.run_in_namespace([sys.executable, "-c", _FLOOD, lab.host_ip, "0.05"],
                                    stdout=subprocess.DEVNULL)
        proc.wait()
        start = time.perf_counter()
        while True:
            frames = tap.read_frames(1024)
            total += len(frames)
            if len(frames) < 1024:
                break
        elapsed += time.perf_counter() - start
    return {"frames_per_s": total / max(elapsed, 1e-9), "frames": total}


class _CountingNode:
    """Receives and counts; answers nothing (the loop's own per-frame cost)."""

    def __init__(self) -> None:
        self.frames = 0

    def receive_frame(self, frame: bytes, now: float) -> None:
        self.frames += 1

    def poll(self, now: float) -> list[bytes]:
        return []

    def next_deadline(self) -> float | None:
        return None


def measure_loop(lab: Lab, rounds: int = 3) -> dict[str, float]:
    """Like :func:`measure_drain` but through :class:`vnic.loop.RunLoop` and a null node."""
    from vnic.loop import RunLoop

    node = _CountingNode()
    loop = RunLoop(lab.tap, node)
    elapsed = 0.0
    for _ in range(rounds):
        proc = lab.run_in_namespace([sys.executable, "-c", _FLOOD, lab.host_ip, "0.05"],
                                    stdout=subprocess.DEVNULL)
        proc.wait()
        before = loop.stats.iterations
        start = time.perf_counter()
        while True:
            loop.work()
            if loop.stats.iterations - before > 1 and lab.tap.read_frame() is None:
                break
        elapsed += time.perf_counter() - start
    return {"frames_per_s": node.frames / max(elapsed, 1e-9), "frames": node.frames}


def run(seconds: float = 1.0) -> dict[str, Any]:
    with Lab(txqueuelen=20000) as lab:
        return {"write": measure_write(lab, seconds), "read": measure_read(lab, seconds),
                "drain": measure_drain(lab), "loop": measure_loop(lab)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    json.dump(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0), sys.stdout, indent=1)
    sys.stdout.write("\n")
