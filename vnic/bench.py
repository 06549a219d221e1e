"""``vnic bench``: throughput and rates, always as ratios measured side by side in one run
(this machine is noisy; an absolute figure alone says little)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[str], None]


def bench_host(size: int, progress: Progress | None = None) -> dict[str, Any]:
    """Host stack over TAP against the kernel peer (each direction) vs kernel-to-kernel veth."""
    from vnic.cli import UsageError
    from vnic.privileges import check_lab_privileges
    from vnic.transfer import TransferOptions, run_transfer
    from vnic.veth_bench import veth_throughput

    reason = check_lab_privileges()
    if reason:
        raise UsageError(reason)
    say = progress or (lambda _m: None)
    figures: dict[str, Any] = {"bytes": size, "mtu": 1500}
    for direction in ("up", "down"):
        say(f"host stack {direction}load: {size} bytes over TAP to the Linux peer")
        result = run_transfer(TransferOptions(size=size, direction=direction, connections=1))
        conn = result["connections"][0]
        d = conn["directions"][direction]
        figures[f"host_{direction}load_mbytes_per_s"] = d["mbytes_per_s"]
        figures[f"host_{direction}load_intact"] = d["intact"]
        figures[f"host_{direction}load_retransmissions"] = conn["retransmissions"]
    say(f"kernel to kernel over veth: {size} bytes")
    veth_result = veth_throughput(size)
    veth = veth_result["mb_per_s"] if veth_result["ok"] and veth_result["sha256_ok"] else None
    figures["veth_mbytes_per_s"] = veth
    figures["veth_intact"] = bool(veth_result["sha256_ok"])
    for direction in ("up", "down"):
        figures[f"ratio_{direction}load_to_veth"] = round(
            figures[f"host_{direction}load_mbytes_per_s"] / veth, 4) if veth else None
    figures["goal_mbytes_per_s"] = 80
    return figures


def render_host(r: dict[str, Any]) -> str:
    return "\n".join([
        f"vnic bench host ({r['bytes']} bytes each, MTU {r['mtu']})",
        f"  host stack upload   {r['host_upload_mbytes_per_s']:9.2f} MB/s  "
        f"(intact: {r['host_upload_intact']}, retransmissions {r['host_upload_retransmissions']})",
        f"  host stack download {r['host_download_mbytes_per_s']:9.2f} MB/s  "
        f"(intact: {r['host_download_intact']}, retransmissions {r['host_download_retransmissions']})",
        f"  kernel veth         {r['veth_mbytes_per_s'] or 0:9.2f} MB/s  (intact: {r['veth_intact']})",
        f"  ratio upload/veth {r['ratio_upload_to_veth']}, download/veth {r['ratio_download_to_veth']}"
        f"  (goal: >= {r['goal_mbytes_per_s']} MB/s each direction)",
    ])


def bench_table(connections: int, memory_connections: int,
                progress: Progress | None = None) -> dict[str, Any]:
    from vnic.bench_table import run_table_bench

    return run_table_bench(connections, memory_connections, progress=progress)


def render_table(r: dict[str, Any]) -> str:
    from vnic.bench_table import render

    return render(r)
