"""``vnic demo``: the handoff, end to end, in under a minute.

A built-in scenario (:func:`demo_scenario`): six connections move 4 MiB each way between the
host stack and the peer; each is offloaded to the emulated NIC and handed back three times at
random points while data is in flight (some handoffs while the host application is not
reading), some uploads by host decision and some on the target's request (a mandatory
TcpIndicateRetrieve reason).  With the privileges for TAP and namespaces the peer is the Linux
kernel in a lab namespace; without them the demo says so and runs the same on the simulated wire.

While it runs, a table of the connections with their offload state (InHost / Offloading /
Offloaded / Uploading) and counters is redrawn in place on a terminal (plain progress lines
otherwise); it ends with the verdict and the paths of the report, the capture and the picture.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from vnic.runner import RunOptions, run_scenario
from vnic.scenario import Scenario, parse_scenario

__all__ = ["demo_scenario", "run_demo", "LiveTable", "render_table"]


def demo_scenario(seed: int = 1, *, connections: int = 6, size: str = "4MiB",
                  cycles: int = 3) -> Scenario:
    return parse_scenario({
        "run": {"name": "demo", "mode": "auto", "seed": seed, "timeout": 120,
                "description": "offload / terminate / resume cycles with data both ways"},
        "flow": [{"count": connections, "direction": "both", "bytes": size}],
        "schedule": [{"action": "cycles", "cycles": cycles, "terminate": "mixed",
                      "conditions": ["data", "data", "app_not_reading"]}],
        # every planned handoff, less one per connection: a cycle planned close to the end
        # may meet the connection's close (the target then uploads it on its own)
        "expect": {"intact": True, "no_rst": True,
                   "min_handoffs": connections * (cycles * 2 - 1), "verify": True},
    }, "<vnic demo>")


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:6.2f}"


def render_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """The live table as lines (no escape codes)."""
    clock = "simulated" if summary.get("virtual") else "elapsed"
    head = (f"t={summary['t']:7.3f}s ({clock})  moved {summary['moved'] / 1e6:7.1f} of "
            f"{summary['total'] / 1e6:.1f} MB  offloaded now {summary['offloaded']}  "
            f"handoffs {summary['handoffs']}  done {summary['done']}/{summary['connections']}")
    lines = [head,
             f"{'conn':>4} {'port':>5}  {'offload state':<13} {'tcp state':<11} {'up MB':>7} "
             f"{'down MB':>7} {'offl':>4} {'upl':>4} {'treq':>4} {'target seg':>10} {'rexmit':>6}  note"]
    for r in rows:
        note = "done" if r["done"] else ("app not reading" if r["paused"] else
                                         ("peer window 0" if r["zero_window"] else ""))
        if r["error"]:
            note = f"error: {r['error']}"[:40]
        lines.append(
            f"{r['conn']:>4} {r['port'] or '-':>5}  {r['offload_state']:<13} {r['tcp_state']:<11} "
            f"{_mb(r['up']):>7} {_mb(r['down']):>7} {r['offloads']:>4} {r['uploads']:>4} "
            f"{r['target_requests']:>4} {r['from_target']:>10} {r['retransmitted']:>6}  {note}")
    return lines


class LiveTable:
    """Redraws the table in place on a terminal (cursor up + clear), or prints a progress line
    now and then when the output is not a terminal."""

    def __init__(self, out: TextIO, tty: bool | None = None, interval: float = 2.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval = interval
        self._drawn = 0
        self._last = 0.0

    def __call__(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        lines = render_table(rows, summary)
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        now = time.monotonic()
        final = summary["done"] == summary["connections"]
        if final or now - self._last >= self.interval:
            self._last = now
            self.out.write("  .. " + lines[0] + "\n")
            self.out.flush()

    def final(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Print the whole table once (non-terminal output gets it at the end)."""
        if self.tty:
            self(rows, summary)
        else:
            self.out.write("\n".join(render_table(rows, summary)) + "\n")


def run_demo(*, sim: bool = False, seed: int = 1, out: str = "out", as_json: bool = False,
             stream: TextIO | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (``report["exit_status"]``)."""
    stream = stream or (sys.stderr if as_json else sys.stdout)
    table = None if as_json else LiveTable(stream)

    def say(msg: str) -> None:
        stream.write(f"  .. {msg}\n")
        stream.flush()

    last: dict[str, Any] = {}

    def live(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        last["rows"], last["summary"] = rows, summary
        if table is not None:
            table(rows, summary)

    scn = demo_scenario(seed)
    report = run_scenario(scn, RunOptions(sim=sim, seed=seed, out=out, progress=say,
                                          live=live if table is not None else None))
    if table is not None and not table.tty and last:
        table.final(last["rows"], last["summary"])
    return report
