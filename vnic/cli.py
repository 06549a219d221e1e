"""The ``vnic`` command line.

Every user mistake ends in one clear line on stderr and exit status 2, never a traceback.
Library code logs; only this module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran and found a problem (a stream not intact, a check failed)
EXIT_USAGE = 2  # the user asked for something we cannot do as asked

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (naming the command's --help), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_size(text: str) -> int:
    """``"64M"`` -> 64_000_000, ``"64MiB"`` -> 67_108_864, ``"1500"`` -> 1500."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (examples: 1500, 64K, 16MiB, 1G)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value < 0 or value > 1 << 40:
        raise argparse.ArgumentTypeError(f"size out of range: {text!r}")
    return int(value)


def fragment_size(text: str) -> int:
    """argparse type: IPv4 fragment payload size, a positive multiple of 8 (RFC 791 3.1)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 8 or n % 8:
        raise argparse.ArgumentTypeError(
            f"must be a positive multiple of 8 (fragment offsets count 8-octet units): {text!r}")
    return n


def probability(text: str) -> float:
    """Accept ``0.01`` or ``1%``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a probability: {text!r} (examples: 0.01, 1%)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be within 0..1 (or 0%..100%): {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(result))


# --------------------------------------------------------------------------------------- commands


def cmd_transfer(args: argparse.Namespace) -> int:
    from vnic import transfer

    options = transfer.TransferOptions(
        size=args.bytes, direction=args.direction, connections=args.connections,
        loss=args.loss, reorder=args.reorder, duplicate=args.duplicate,
        fragment=args.fragment, fragment_size=args.fragment_size, seed=args.seed,
        sim=args.sim, pcap=args.pcap, timeout=args.timeout, tap_offload=args.tap_offload,
        progress=None if args.json else _progress_printer())
    result = transfer.run_transfer(options)
    emit(result, args.json, transfer.render_result)
    return EXIT_OK if result["intact"] else EXIT_FAILED


def cmd_lab_up(args: argparse.Namespace) -> int:
    from vnic import labcmd

    return labcmd.lab_up(services=not args.no_services, pcap=args.pcap,
                         progress=_progress_printer())


def cmd_lab_down(args: argparse.Namespace) -> int:
    from vnic import labcmd

    result = labcmd.lab_down(name=args.name)
    emit(result, args.json, labcmd.render_down)
    return EXIT_OK


def cmd_lab_status(args: argparse.Namespace) -> int:
    from vnic import labcmd

    result = labcmd.lab_status()
    emit(result, args.json, labcmd.render_status)
    return EXIT_OK


def cmd_bench_host(args: argparse.Namespace) -> int:
    from vnic import bench

    result = bench.bench_host(size=args.bytes, progress=None if args.json else _progress_printer())
    emit(result, args.json, bench.render_host)
    return EXIT_OK


def cmd_bench_offload(args: argparse.Namespace) -> int:
    from vnic import bench
    from vnic.bench_offload import parse_only

    try:
        parse_only(args.only)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result = bench.bench_offload(size=args.bytes, sim_only=args.sim, only=args.only,
                                 progress=None if args.json else _progress_printer())
    emit(result, args.json, bench.render_offload)
    return EXIT_OK if result["intact"] else EXIT_FAILED


def cmd_bench_handoff(args: argparse.Namespace) -> int:
    from vnic import bench

    try:
        result = bench.bench_handoff(handoffs=args.handoffs, connections=args.connections,
                                     sim_only=args.sim, upload_only=args.upload_only,
                                     runs=args.runs,
                                     progress=None if args.json else _progress_printer())
    except RuntimeError as exc:  # the bench ran and something did not work (one line)
        print(f"vnic: bench handoff failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    emit(result, args.json, bench.render_handoff)
    return EXIT_OK if result["ok"] else EXIT_FAILED


def cmd_bench_table(args: argparse.Namespace) -> int:
    from vnic import bench

    result = bench.bench_table(connections=args.connections, memory_connections=args.memory_connections,
                               progress=None if args.json else _progress_printer())
    emit(result, args.json, bench.render_table)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from vnic import verify

    try:
        report = verify.verify_capture(args.capture)
    except verify.CaptureError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(verify.render_verify(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _load_scenario(path: str) -> Any:
    from vnic.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from vnic import runner

    scn = _load_scenario(args.scenario)
    report = runner.run_scenario(scn, runner.RunOptions(
        sim=args.sim, seed=args.seed, out=args.out,
        progress=_progress_printer(), live=None))
    emit(report, args.json, runner.render_report)
    return int(report["exit_status"])


def cmd_demo(args: argparse.Namespace) -> int:
    from vnic import demo, runner

    report = demo.run_demo(sim=args.sim, seed=args.seed, out=args.out, as_json=args.json)
    emit(report, args.json, runner.render_report)
    return int(report["exit_status"])


def _progress_printer() -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    return progress


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vnic",
        description=(
            "vnic: an emulated TCP-chimney offload NIC on a Linux TAP device, a host TCP/IP stack "
            "in Python, and a real Linux kernel TCP peer in a network namespace."),
        epilog="Most commands need root (TAP devices and network namespaces); "
               "`--sim` runs the same job on a simulated wire without privileges.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log state changes (-v) or everything (-vv) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "transfer", help="move data between the host stack and the Linux peer and check it",
        description=(
            "The host stack exchanges data with the Linux kernel peer (a source/sink in the peer "
            "namespace) and reports, per connection and direction, the bytes, whether the SHA-256 "
            "of what arrived equals what was sent, throughput, retransmissions and RSTs seen. "
            "Exit status 0 only if every stream is intact."))
    p.add_argument("--bytes", type=parse_size, default=parse_size("16MiB"), metavar="SIZE",
                   help="bytes per connection and direction (e.g. 64MiB; default 16MiB)")
    p.add_argument("--direction", choices=("up", "down", "both"), default="both",
                   help="up = host to peer, down = peer to host, both (default)")
    p.add_argument("--connections", type=positive_int, default=1, metavar="N",
                   help="concurrent connections (default 1)")
    p.add_argument("--loss", type=probability, default=0.0, metavar="P",
                   help="drop probability per frame on the TAP path, each direction (0.01 or 1%%)")
    p.add_argument("--reorder", type=probability, default=0.0, metavar="P",
                   help="probability that a frame is held back behind later ones")
    p.add_argument("--duplicate", type=probability, default=0.0, metavar="P",
                   help="probability that a frame is delivered twice")
    p.add_argument("--fragment", type=probability, default=0.0, metavar="P",
                   help="probability that an IPv4 frame is split into IP fragments (each "
                        "direction; the host stack and the kernel reassemble them)")
    p.add_argument("--fragment-size", type=fragment_size, default=512, metavar="N",
                   help="payload octets per fragment, a multiple of 8 (default 512)")
    p.add_argument("--seed", type=int, default=1, metavar="S",
                   help="seed for faults, ISNs and payload (default 1)")
    p.add_argument("--sim", action="store_true",
                   help="run against a second host stack on a simulated wire (virtual clock)")
    p.add_argument("--pcap", metavar="FILE", help="write every frame to this pcapng file")
    p.add_argument("--tap-offload", action="store_true",
                   help="TCP segmentation and checksum offload on the TAP (virtio-net header): "
                        "frames of up to 64 KiB cross the TAP, as with a TSO/GRO NIC; faster, "
                        "and the capture shows the super-segments")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="give up after this long (default 600)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_transfer)

    demo = sub.add_parser(
        "demo", help="the handoff end to end: offload, terminate, resume, repeat (< 1 minute)",
        description=(
            "Opens 6 connections with 4 MiB each way between the host stack and the peer, "
            "offloads each to the emulated NIC and hands it back 3 times at random points "
            "while data is in flight (some uploads by host decision, some on the target's "
            "request), shows a live table of the connections with their offload state "
            "(InHost / Offloading / Offloaded / Uploading) and counters, and ends with a "
            "verdict and the paths of what it wrote: report.json, capture.pcapng, seqtime.png "
            "and seqtime.svg (sequence number over time, offload epochs shaded, handoffs "
            "marked). The peer is the Linux kernel in a lab namespace when this process may "
            "create TAP devices and namespaces; otherwise the demo says so and runs the same on "
            "the simulated wire. Exit status 0 only if every stream is intact, there was no RST, "
            "every handoff happened and the capture verifies."))
    demo.add_argument("--sim", action="store_true",
                      help="use the simulated wire (virtual clock) even when a lab is possible")
    demo.add_argument("--seed", type=int, default=1, metavar="S",
                      help="seed for the handoff points, faults, ISNs and payload (default 1)")
    demo.add_argument("--out", default="out", metavar="DIR",
                      help="write the run directory <name>-<timestamp>/ under DIR (default out)")
    demo.add_argument("--json", action="store_true",
                      help="print the final report as JSON (progress goes to stderr)")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run", help="run a scenario file (TOML): flows, offload schedule, faults, expectations",
        description=(
            "Executes SCENARIO.toml (format: README, section 'Scenario format'; examples in "
            "scenarios/) on a TAP lab with the Linux kernel peer, or on the simulated wire with "
            "--sim or mode = \"sim\" (mode = \"auto\" falls back to the simulated wire "
            "without privileges). Writes <DIR>/<name>-<timestamp>/report.json, capture.pcapng, "
            "seqtime.png and seqtime.svg, then verifies the capture. Exit status 0 only if "
            "every expectation of the scenario holds, 1 if one does not, 2 for a mistake in "
            "the scenario file (one line naming the file and the key)."))
    run.add_argument("scenario", metavar="SCENARIO.toml", help="the scenario file")
    run.add_argument("--sim", action="store_true",
                     help="run on the simulated wire whatever the scenario's mode says")
    run.add_argument("--seed", type=int, default=None, metavar="S",
                     help="override the scenario's seed")
    run.add_argument("--out", default="out", metavar="DIR",
                     help="write the run directory <name>-<timestamp>/ under DIR (default out)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(func=cmd_run)

    lab = sub.add_parser("lab", help="bring a lab up or down, or show it",
                         description="A lab is a TAP device whose kernel side sits in a fresh "
                                     "network namespace with the Linux peer, and the emulated "
                                     "host behind the TAP fd.")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    up = lab_sub.add_parser("up", help="run a lab in the foreground until Ctrl-C or `vnic lab down`",
                            description="Creates the namespace and TAP, starts the host stack with "
                                        "echo (7), discard (9) and chargen (19), prints how to "
                                        "reach them (ip netns exec NS nc HOST 7) and runs until "
                                        "Ctrl-C or `vnic lab down`; always cleans up.")
    up.add_argument("--no-services", action="store_true", help="do not start echo/discard/chargen")
    up.add_argument("--pcap", metavar="FILE", help="capture every frame to this pcapng file")
    up.set_defaults(func=cmd_lab_up)
    down = lab_sub.add_parser("down", help="stop labs started by `vnic lab up`; remove stale ones",
                              description="Stops every lab that `vnic lab up` runs on this machine "
                                          "(or only --name), and removes labs whose owner process "
                                          "is gone. Labs of running tests or transfers are left "
                                          "alone unless named.")
    down.add_argument("--name", help="only this lab (any kind), e.g. vnic7")
    down.add_argument("--json", action="store_true")
    down.set_defaults(func=cmd_lab_down)
    status = lab_sub.add_parser("status", help="list labs: namespace, interfaces, addresses, counters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_lab_status)

    bench = sub.add_parser("bench", help="measure throughput, table rates and handoff latency")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    host = bench_sub.add_parser("host", help="host-stack throughput vs kernel-to-kernel veth",
                                description="Upload and download MB/s of the host stack over TAP "
                                            "against the kernel peer, next to kernel-to-kernel "
                                            "veth throughput measured in the same run.")
    host.add_argument("--bytes", type=parse_size, default=parse_size("64MiB"), metavar="SIZE")
    host.add_argument("--json", action="store_true")
    host.set_defaults(func=cmd_bench_host)
    offload = bench_sub.add_parser(
        "offload", help="one bulk connection offloaded vs in the host stack",
        description="MB/s of one bulk connection (each direction) while it runs in the host "
                    "stack and while it is offloaded to the emulated NIC, measured side by side "
                    "on the same connection: on the simulated wire, and over TAP against the "
                    "kernel peer when privileges allow (otherwise the simulated part only). "
                    "The TAP part runs in two modes, each in its own lab: one MTU frame per "
                    "TAP write/read, and with virtio-net offload on the TAP, where both the "
                    "host stack and the NIC send TCP super-segments (TSO, up to 64 KiB) and "
                    "receive them GRO'd; each mode reports host MB/s, offloaded MB/s and ratio.")
    offload.add_argument("--bytes", type=parse_size, default=parse_size("32MiB"), metavar="SIZE",
                         help="bytes per phase and direction (default 32MiB)")
    offload.add_argument("--sim", action="store_true", help="the simulated wire only (no lab)")
    offload.add_argument("--only", metavar="MODE[:DIR]",
                         help="run one part only, for iterating on one figure: MODE is sim, "
                              "tap or tap_offload, DIR up or down (default: both)")
    offload.add_argument("--json", action="store_true")
    offload.set_defaults(func=cmd_bench_offload)
    handoff = bench_sub.add_parser(
        "handoff", help="handoff gap after terminate; uploading 10,000 connections at once",
        description="Two figures. (1) The handoff gap: one connection with data flowing both "
                    "ways is offloaded to the emulated NIC and terminated again, --handoffs "
                    "times; each gap is the real time from the terminate call to the host "
                    "stack's first frame of that connection on the wire after the terminate "
                    "completed (host frames: IPv4 identification below 0x8000). Reported: "
                    "median, p90, p99 and max in ms (goal: median under 1 ms) and whether the "
                    "stream stayed intact. Over TAP against the Linux kernel peer when "
                    "privileges allow; otherwise (or with --sim) on the simulated wire, where "
                    "the gap is wall-clock time of the simulation's processing (virtual wire "
                    "clock). (2) On the simulated wire: --connections connections are opened "
                    "and offloaded, one terminate_all() sends them all back in one terminate "
                    "tree; reported: wall-clock ms until every one is in the host again, the median "
                    "of --runs independent runs (goal: 10,000 under 200 ms) and whether all resumed (each then moves data both "
                    "ways, byte-exact). Setting up 10,000 connections takes a few seconds. "
                    "Exit status 0 only if every handoff was measured, the stream is intact "
                    "and all connections resumed (the goals do not decide the status).")
    handoff.add_argument("--handoffs", type=positive_int, default=200, metavar="N",
                         help="offload -> terminate cycles for the gap (default 200)")
    handoff.add_argument("--connections", type=positive_int, default=10_000, metavar="N",
                         help="connections uploaded in one terminate tree (default 10000)")
    handoff.add_argument("--sim", action="store_true",
                         help="measure the gap on the simulated wire even when a lab is possible")
    handoff.add_argument("--upload-only", action="store_true",
                         help="only figure (2), the upload of --connections connections "
                              "(no gap cycles, no lab)")
    handoff.add_argument("--runs", type=positive_int, default=3, metavar="N",
                         help="independent upload runs, each in a fresh process (this machine "
                              "is noisy); the median is reported with every run's figure "
                              "(default 3; 1 = one run in this process)")
    handoff.add_argument("--json", action="store_true", help="print the result as JSON")
    handoff.set_defaults(func=cmd_bench_handoff)
    table = bench_sub.add_parser("table", help="C connection table vs its Python twin",
                                 description="Insert / lookup / remove rates of the C table and "
                                             "the Python twin through the same API, the ratio, "
                                             "and memory per connection.")
    table.add_argument("--connections", type=positive_int, default=200_000, metavar="N",
                       help="connections for the rate measurement (default 200000)")
    table.add_argument("--memory-connections", type=positive_int, default=1_000_000, metavar="N",
                       help="connections for the memory measurement (default 1000000)")
    table.add_argument("--json", action="store_true")
    table.set_defaults(func=cmd_bench_table)

    ver = sub.add_parser(
        "verify", help="check a capture: streams intact, no RST, every handoff resumed exactly",
        description="Reassembles every TCP connection of a vnic pcapng capture per direction and "
                    "checks the rules of docs/capture-format.md: the byte stream is complete, in "
                    "order and consistent; it equals the recorded application digests; no RST; "
                    "after every terminate the host resumes at the returned SndNxt/RcvNxt and "
                    "the target's buffered data reaches the host once. Exit status 0 only if "
                    "every rule holds, 1 on a violation, 2 for an unreadable file.")
    ver.add_argument("capture", metavar="CAPTURE", help="a pcapng file written by vnic")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    func = getattr(args, "func", None)
    if func is not None:
        from vnic.alloc import keep_large_buffers_in_heap

        keep_large_buffers_in_heap()  # megabyte buffers per handoff: heap, not mmap (vnic.alloc)
    if func is None:
        # `vnic`, `vnic lab`, `vnic bench` without an action: show the relevant help.
        target = {"lab": "lab", "bench": "bench"}.get(args.command or "")
        if target:
            parser.parse_args([target, "--help"])
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except UsageError as exc:
        print(f"vnic: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vnic: interrupted; cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
