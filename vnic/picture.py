"""The time-sequence picture of a run: sequence number over time per connection.

One panel per connection: the relative sequence number (MB) of the data the host side sent
(up, solid) and received (down, dashed) over time; points sent by the offload target (IPv4
identification >= 0x8000) are drawn darker.  The connection's offloaded epochs are shaded
(Offloaded: green; Offloading / Uploading: yellow) and every handoff is a vertical mark:
offload completed (green), upload completed after a host decision (blue), after a target
request (red), after UPLOAD_ALL (purple).  Written as PNG and SVG with matplotlib's Agg backend.

Input (:func:`render_seqtime`)::

    {"name": str, "connections": [{"index", "label",
        "up": [(t, seq_bytes, from_target), ...], "down": [...],
        "intervals": [(state, start, end), ...],          # state "Offloaded" / "Offloading" / ...
        "handoffs": [{"t", "kind": "offloaded" | "uploaded", "cause"}, ...]}]}
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["render_seqtime"]

MAX_POINTS = 3000
_SHADE = {"Offloaded": ("#2ca02c", 0.18), "Offloading": ("#ffbf00", 0.35),
          "Uploading": ("#ffbf00", 0.35)}


def _cause_color(h: dict[str, Any]) -> str:
    if h.get("kind") == "offloaded":
        return "#2ca02c"
    cause = str(h.get("cause", ""))
    if cause == "host":
        return "#1f77b4"
    if cause == "upload_all":
        return "#9467bd"
    return "#d62728"


def _thin(points: list[Any]) -> list[Any]:
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    return points[::step] + [points[-1]]


def render_seqtime(data: dict[str, Any], png_path: str, svg_path: str | None = None,
                   title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    conns = data.get("connections", [])
    n = max(1, len(conns))
    ncols = 1 if n <= 6 else 2 if n <= 16 else 4
    nrows = math.ceil(n / ncols)
    width = 11 if ncols == 1 else 7 * ncols
    height = max(3.0, 1.9 * nrows + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), sharex=True, squeeze=False)
    t_end = 0.0
    for c in conns:
        for key in ("up", "down"):
            if c.get(key):
                t_end = max(t_end, c[key][-1][0])
        for _s, _a, b in c.get("intervals", []):
            if b is not None:
                t_end = max(t_end, b)
    for k, c in enumerate(conns):
        ax = axes[k // ncols][k % ncols]
        for state, a, b in c.get("intervals", []):
            color, alpha = _SHADE.get(state, ("#cccccc", 0.2))
            ax.axvspan(a, b if b is not None else t_end, color=color, alpha=alpha, lw=0)
        for key, style in (("up", "-"), ("down", "--")):
            pts = _thin(c.get(key) or [])
            if not pts:
                continue
            ts = [p[0] for p in pts]
            ys = [p[1] / 1e6 for p in pts]
            ax.plot(ts, ys, style, color="#444444" if key == "up" else "#8c564b", lw=1.0)
            tgt = [(p[0], p[1] / 1e6) for p in pts if len(p) > 2 and p[2]]
            if tgt:
                ax.plot([p[0] for p in tgt], [p[1] for p in tgt], ".", ms=1.6,
                        color="#006400" if key == "up" else "#b8860b")
        for h in c.get("handoffs", []):
            ax.axvline(h["t"], color=_cause_color(h), lw=0.9, alpha=0.9)
        ax.set_ylabel("MB", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(c.get("label", f"conn {k}"), fontsize=8, loc="left", pad=2)
        ax.grid(True, alpha=0.25)
    for k in range(len(conns), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    for col in range(ncols):
        axes[nrows - 1][col].set_xlabel("seconds", fontsize=8)
    legend = [
        Line2D([0], [0], color="#444444", lw=1.2, label="up: host -> peer (relative seq)"),
        Line2D([0], [0], color="#8c564b", lw=1.2, ls="--", label="down: peer -> host"),
        Line2D([0], [0], color="#006400", marker=".", lw=0, label="segment sent by the target"),
        Patch(color=_SHADE["Offloaded"][0], alpha=0.3, label="Offloaded"),
        Patch(color=_SHADE["Offloading"][0], alpha=0.4, label="Offloading / Uploading"),
        Line2D([0], [0], color="#2ca02c", label="offload done"),
        Line2D([0], [0], color="#1f77b4", label="upload (host)"),
        Line2D([0], [0], color="#d62728", label="upload (target request)"),
        Line2D([0], [0], color="#9467bd", label="upload (UPLOAD_ALL)"),
    ]
    fig.suptitle(title or data.get("name", ""), fontsize=10, y=1.0 - 0.08 / height, va="top")
    fig.legend(handles=legend, loc="upper center", ncol=5, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0 - 0.32 / height))
    fig.subplots_adjust(left=0.07 if ncols == 1 else 0.05, right=0.98, bottom=0.6 / height,
                        top=1.0 - 0.95 / height, hspace=0.35, wspace=0.15)
    fig.savefig(png_path, dpi=110)
    if svg_path:
        fig.savefig(svg_path)
    plt.close(fig)
