"""Kernel-to-kernel TCP throughput over a veth pair, for comparison with the host stack.

Two namespaces ``vnic<N>a`` / ``vnic<N>b`` joined by a veth pair (198.19.N.1/24 and .2/24, MTU
1500 like the lab); the peer agent runs ``sink`` in b and ``source --connect`` in a. Everything
is recorded in ``/run/vnic`` like a lab, so a killed benchmark is swept later.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from vnic.lab import (
    BENCH_SUBNET,
    PREFIX,
    LabError,
    LabRecord,
    allocate_record,
    new_record,
    release_record,
    sweep_stale_labs,
)
from vnic.payload import connection_seed, payload_digest
from vnic.peer import PeerAgent
from vnic.privileges import check_lab_privileges

log = logging.getLogger(__name__)


class VethPair:
    """Context manager: two namespaces joined by a veth pair (kernel TCP on both ends)."""

    def __init__(self, mtu: int = 1500) -> None:
        self.mtu = mtu
        self.ns_a = self.ns_b = ""
        self.ip_a = self.ip_b = ""
        self._record: LabRecord | None = None
        self._owner_pid = os.getpid()

    def __enter__(self) -> VethPair:
        reason = check_lab_privileges()
        if reason:
            raise LabError(reason)
        sweep_stale_labs()

        def make(lab_id: int) -> LabRecord:
            base = f"{PREFIX}{lab_id}"
            return new_record("veth-bench", lab_id, base + "v", [base + "a", base + "b"],
                              [base + "a", base + "b"], {})

        self._record = rec = allocate_record(make)
        try:
            self._build(rec)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self, rec: LabRecord) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        self.ns_a, self.ns_b = rec.namespaces
        if_a, if_b = rec.interfaces
        self.ip_a = f"{BENCH_SUBNET}.{rec.lab_id}.1"
        self.ip_b = f"{BENCH_SUBNET}.{rec.lab_id}.2"
        netns.create(self.ns_a)
        netns.create(self.ns_b)
        with IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer=if_b)
            ipr.link("set", index=ipr.link_lookup(ifname=if_a)[0], net_ns_fd=self.ns_a)
            ipr.link("set", index=ipr.link_lookup(ifname=if_b)[0], net_ns_fd=self.ns_b)
        for ns_name, ifname, ip in ((self.ns_a, if_a, self.ip_a), (self.ns_b, if_b, self.ip_b)):
            with NetNS(ns_name) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                ns.link("set", index=idx, mtu=self.mtu)
                ns.addr("add", index=idx, address=ip, prefixlen=24)
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.link("set", index=idx, state="up")
        rec.info = {"a": [self.ns_a, if_a, self.ip_a], "b": [self.ns_b, if_b, self.ip_b]}
        rec.save()
        log.info("veth pair %s(%s) <-> %s(%s)", self.ns_a, self.ip_a, self.ns_b, self.ip_b)

    def __exit__(self, *exc: object) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked copy must not tear down the owner's pair
        rec, self._record = self._record, None
        if rec is not None:
            release_record(rec)


def veth_throughput(size: int = 256 << 20, seed: int = 1, port: int = 5201,
                    timeout: float = 120.0) -> dict[str, Any]:
    """Send ``size`` bytes kernel to kernel over a veth pair; returns MB/s and digests."""
    with VethPair() as pair:
        sink = PeerAgent.start(pair.ns_b, "sink", "--port", str(port), "--bind", pair.ip_b,
                               "--accept-timeout", str(timeout))
        source = None
        try:
            sink.wait_ready()
            source = PeerAgent.start(pair.ns_a, "source", "--connect", pair.ip_b, "--port",
                                     str(port), "--size", str(size), "--seed", str(seed))
            src = source.wait_result(timeout)
            dst = sink.wait_result(timeout)
        finally:
            sink.stop()
            if source is not None:
                source.stop()
    rx = dst["connections"][0]
    tx = src["connections"][0]
    expected = payload_digest(connection_seed(seed, 0), size)
    return {
        "bytes": rx["bytes_received"],
        "mb_per_s": rx["mbps_received"],
        "seconds": rx["seconds"],
        "sha256_ok": rx["sha256_received"] == tx["sha256_sent"] == expected,
        "ok": bool(dst["ok"] and src["ok"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vnic.veth_bench")
    p.add_argument("--size", type=int, default=256 << 20)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = veth_throughput(a.size, a.seed)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["ok"] and result["sha256_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
