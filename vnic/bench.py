"""``vnic bench``: throughput and rates, always as ratios measured side by side in one run
(this machine is noisy; an absolute figure alone says little)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[str], None]


#: the two ways frames cross the TAP: one MSS-sized segment per frame, or TCP super-segments
#: with segmentation/checksum offload (virtio-net header, vnic.vnet), as a TSO/GRO NIC does
HOST_MODES = (("per_segment", False), ("tap_offload", True))


def bench_host(size: int, progress: Progress | None = None) -> dict[str, Any]:
    """Host stack over TAP against the kernel peer, each direction, with and without TAP
    segmentation offload, next to kernel-to-kernel veth throughput measured in the same run."""
    from vnic.cli import UsageError
    from vnic.privileges import check_lab_privileges
    from vnic.transfer import TransferOptions, run_transfer
    from vnic.veth_bench import veth_throughput

    reason = check_lab_privileges()
    if reason:
        raise UsageError(reason)
    say = progress or (lambda _m: None)
    figures: dict[str, Any] = {"bytes": size, "mtu": 1500, "goal_mbytes_per_s": 80, "modes": {}}
    for mode, offload in HOST_MODES:
        row: dict[str, Any] = {}
        for direction in ("up", "down"):
            say(f"host stack {direction}load, {mode.replace('_', ' ')}: {size} bytes over TAP "
                "to the Linux peer")
            result = run_transfer(TransferOptions(size=size, direction=direction, connections=1,
                                                  tap_offload=offload))
            conn = result["connections"][0]
            d = conn["directions"][direction]
            row[f"{direction}load_mbytes_per_s"] = d["mbytes_per_s"]
            row[f"{direction}load_intact"] = d["intact"]
            row[f"{direction}load_retransmissions"] = conn["retransmissions"]
        figures["modes"][mode] = row
    say(f"kernel to kernel over veth: {size} bytes")
    veth_result = veth_throughput(size)
    veth = veth_result["mb_per_s"] if veth_result["ok"] and veth_result["sha256_ok"] else None
    figures["veth_mbytes_per_s"] = veth
    figures["veth_intact"] = bool(veth_result["sha256_ok"])
    for row in figures["modes"].values():
        for direction in ("up", "down"):
            rate = row[f"{direction}load_mbytes_per_s"]
            row[f"ratio_{direction}load_to_veth"] = round(rate / veth, 4) if veth else None
            row[f"{direction}load_meets_goal"] = rate >= figures["goal_mbytes_per_s"]
    return figures


def render_host(r: dict[str, Any]) -> str:
    lines = [f"vnic bench host ({r['bytes']} bytes per direction, MTU {r['mtu']}, "
             f"goal >= {r['goal_mbytes_per_s']} MB/s each direction)"]
    for mode, row in r["modes"].items():
        lines.append(f"  {mode.replace('_', ' ')}:")
        for direction in ("up", "down"):
            lines.append(
                f"    {direction + 'load':9s} {row[f'{direction}load_mbytes_per_s']:9.2f} MB/s  "
                f"ratio to veth {row[f'ratio_{direction}load_to_veth']}  "
                f"(intact: {row[f'{direction}load_intact']}, "
                f"retransmissions {row[f'{direction}load_retransmissions']}, "
                f"goal {'met' if row[f'{direction}load_meets_goal'] else 'NOT met'})")
    lines.append(f"  kernel veth {r['veth_mbytes_per_s'] or 0:9.2f} MB/s  (intact: {r['veth_intact']})")
    return "\n".join(lines)


def bench_table(connections: int, memory_connections: int,
                progress: Progress | None = None) -> dict[str, Any]:
    from vnic.bench_table import run_table_bench

    return run_table_bench(connections, memory_connections, progress=progress)


def render_table(r: dict[str, Any]) -> str:
    from vnic.bench_table import render

    return render(r)


def bench_offload(size: int, progress: Progress | None = None, *, sim_only: bool = False,
                  only: str | None = None) -> dict[str, Any]:
    """One bulk connection in the host stack vs offloaded to the emulated NIC, each direction,
    on the simulated wire and (with privileges, unless ``sim_only``) over TAP against the
    kernel peer (:mod:`vnic.bench_offload`)."""
    from vnic.bench_offload import run
    from vnic.privileges import check_lab_privileges

    say = progress or (lambda _m: None)
    reason = "--sim given" if sim_only else check_lab_privileges()
    if reason and not sim_only:
        say(f"{reason}: running the simulated part only")
    from vnic.cli import UsageError
    from vnic.lab import LabError

    try:
        result = run(size, progress, tap=not reason, only=only)
    except LabError as exc:
        raise UsageError(f"cannot set up the lab: {exc}; --sim runs the simulated part only") from exc
    result["tap_skipped"] = reason or None
    return result


def render_offload(r: dict[str, Any]) -> str:
    from vnic.bench_offload import render

    return render(r)


def bench_handoff(handoffs: int, connections: int, progress: Progress | None = None, *,
                  sim_only: bool = False, upload_only: bool = False,
                  runs: int = 1) -> dict[str, Any]:
    """Handoff gap (terminate call to the host's first frame on the wire) over many offload ->
    terminate cycles, over TAP with the kernel peer when privileges allow (unless ``sim_only``;
    otherwise on the simulated wire), and the time to upload ``connections`` offloaded
    connections in one terminate tree on the simulated wire (:mod:`vnic.bench_handoff`).
    ``upload_only``: the upload alone (no gap cycles, no lab).  ``runs``: independent upload
    runs, each in a fresh process; the median is reported with every run's figure."""
    from vnic.bench_handoff import run
    from vnic.privileges import check_lab_privileges

    if upload_only:
        return run(handoffs, connections, progress, tap=False, upload_only=True, runs=runs)
    say = progress or (lambda _m: None)
    reason = "--sim given" if sim_only else check_lab_privileges()
    if reason and not sim_only:
        say(f"{reason}: measuring the handoff gap on the simulated wire")
    from vnic.cli import UsageError
    from vnic.lab import LabError

    try:
        result = run(handoffs, connections, progress, tap=not reason, runs=runs)
    except LabError as exc:
        raise UsageError(f"cannot set up the lab: {exc}; --sim uses the simulated wire") from exc
    result["tap_skipped"] = reason or None
    return result


def render_handoff(r: dict[str, Any]) -> str:
    from vnic.bench_handoff import render

    return render(r)
