"""The second, independent view of a TAP run: what the kernel peer saw.

:class:`PeerCapture` runs ``tcpdump`` inside the lab's peer namespace on the kernel side of the
TAP (so it sees exactly the frames the Linux stack sent and received, with the kernel's
timestamps); :func:`analyze_with_tshark` reads such a file with ``tshark`` and returns, per
connection and direction, frames, payload bytes, RSTs and the counts of tshark's TCP analysis
flags (``tcp.analysis.*``: retransmissions, duplicate ACKs, out-of-order, lost segments, zero
windows ...).  Neither shares code with the emulated host or with :mod:`vnic.verify`.

Synchronisation without sleeps: ``PeerCapture`` returns from ``start`` once tcpdump printed
"listening on"; before ``stop`` a caller that wants every frame waits with
:meth:`PeerCapture.wait_for_packets` (driven by its own run loop's ``run_until``) until the
file holds as many packets as its own capture.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from vnic.tap import default_tx_priority

__all__ = [
    "ANALYSIS_FLAGS",
    "PeerCapture",
    "PeerCaptureError",
    "analyze_with_tshark",
    "compare_with_capture",
    "count_packets",
    "have_tcpdump",
    "have_tshark",
]

ANALYSIS_FLAGS = (
    "retransmission",
    "fast_retransmission",
    "spurious_retransmission",
    "duplicate_ack",
    "out_of_order",
    "lost_segment",
    "ack_lost_segment",
    "zero_window",
    "zero_window_probe",
    "zero_window_probe_ack",
    "window_full",
    "window_update",
    "keep_alive",
    "keep_alive_ack",
    "reused_ports",
)


class PeerCaptureError(RuntimeError):
    """tcpdump / tshark missing or failed."""


def have_tcpdump() -> bool:
    return shutil.which("tcpdump") is not None


def have_tshark() -> bool:
    return shutil.which("tshark") is not None


def count_packets(path: str | os.PathLike[str]) -> int:
    """Packets in a classic pcap file (as tcpdump writes it; a torn last record not counted)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    if len(data) < 24:
        return 0
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise PeerCaptureError(f"{path} is not a pcap file")
    rec = struct.Struct(endian + "IIII")
    n, pos = 0, 24
    while pos + 16 <= len(data):
        _s, _us, incl, _orig = rec.unpack_from(data, pos)
        pos += 16 + incl
        if pos > len(data):
            break
        n += 1
    return n


class PeerCapture:
    """``with PeerCapture(lab) as pc: ...``: tcpdump on the TAP inside the peer namespace.

    ``path``: the pcap file (default: a new file in a temporary directory); ``interface``: the
    lab's TAP (``lab.tap_name``); ``bpf``: an optional capture filter; ``buffer_kib``: tcpdump's
    kernel buffer (a small one drops frames of a fast transfer: see ``packets_dropped``).  The process is started
    with ``lab.run_in_namespace`` (so the lab's teardown stops it too) and stopped with SIGINT
    by :meth:`stop` / ``__exit__``.  After stopping: ``packets_captured``, ``packets_dropped``
    (tcpdump's own statistics, None if it printed none).
    """

    def __init__(self, lab: Any, path: str | os.PathLike[str] | None = None, *,
                 interface: str | None = None, bpf: str | None = None,
                 snaplen: int = 262144, buffer_kib: int = 65536,
                 start_timeout: float = 10.0) -> None:
        if not have_tcpdump():
            raise PeerCaptureError("tcpdump is not installed (scripts/setup.sh installs it)")
        self.lab = lab
        if path is None:
            self._tmp: str | None = tempfile.mkdtemp(prefix="vnic-peercap-")
            path = Path(self._tmp) / "peer.pcap"
        else:
            self._tmp = None
        self.path = Path(path)
        self.interface = interface or lab.tap_name
        self.host_ip: str | None = getattr(lab, "host_ip", None)  # names the "host" side
        self.bpf = bpf
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib  # the kernel capture buffer (-B): bursts at TAP speed
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._tap: Any = None  # the lab's TAP while its writer is kept at normal priority
        self.stderr = ""
        self.packets_captured: int | None = None
        self.packets_dropped: int | None = None

    def start(self) -> PeerCapture:
        # tcpdump runs at normal priority on a machine with few cores: a TAP writer that
        # writes its bursts at SCHED_FIFO (vnic.tap.TX_PRIORITY) would starve it, and the
        # capture would drop frames -- this view must see every one
        self._tap = self._lab_tap()
        if self._tap is not None:
            self._tap.set_tx_priority(0)
        argv = ["tcpdump", "-i", self.interface, "-w", str(self.path), "-U", "-n",
                "--immediate-mode", "-s", str(self.snaplen), "-B", str(self.buffer_kib), "-Z", "root"]
        if self.bpf:
            argv.append(self.bpf)
        self.proc = self.lab.run_in_namespace(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        end = time.monotonic() + self.start_timeout
        buf = b""
        while b"listening on" not in buf:
            left = end - time.monotonic()
            if left <= 0:
                self.stop()
                raise PeerCaptureError(f"tcpdump did not start: {buf.decode(errors='replace')}")
            ready, _, _ = select.select([fd], [], [], left)  # wait for its output, not a sleep
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait()
                raise PeerCaptureError(
                    f"tcpdump exited ({self.proc.returncode}): {buf.decode(errors='replace')}")
            buf += chunk
        self.stderr = buf.decode(errors="replace")
        return self

    def packets(self) -> int:
        """Packets written to the file so far."""
        return count_packets(self.path)

    def wait_for_packets(self, n: int, run_until: Callable[[Callable[[], bool], float], bool],
                         timeout: float = 10.0) -> bool:
        """Drive ``run_until`` (e.g. ``RunLoop.run_until``) until the file holds ``n`` packets."""
        return run_until(lambda: self.packets() >= n, timeout)

    def _lab_tap(self) -> Any:
        try:
            return getattr(self.lab, "tap", None)
        except RuntimeError:  # (LabError: a lab that is not up has no TAP)
            return None

    def stop(self) -> dict[str, Any]:
        """SIGINT tcpdump, collect its statistics; idempotent."""
        tap, self._tap = self._tap, None
        if tap is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # (closed by now)
                tap.set_tx_priority(default_tx_priority())
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
            try:
                _out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
            self.stderr += (err or b"").decode(errors="replace")
        elif proc is not None and proc.stderr is not None and not proc.stderr.closed:
            with contextlib.suppress(OSError, ValueError):
                self.stderr += proc.stderr.read().decode(errors="replace")
        for line in self.stderr.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] == "packets":
                if words[2] == "captured":
                    self.packets_captured = int(words[0])
                elif words[2] == "dropped" and "kernel" in line:
                    self.packets_dropped = int(words[0])
        return {"path": str(self.path), "captured": self.packets_captured,
                "dropped": self.packets_dropped, "in_file": self.packets()}

    def __enter__(self) -> PeerCapture:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_FIELDS = ("frame.number", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.len",
           "tcp.flags.reset", "tcp.flags.syn", "tcp.flags.fin",
           *(f"tcp.analysis.{f}" for f in ANALYSIS_FLAGS),
           "tcp.seq_raw", "tcp.ack_raw", "tcp.flags.ack")


def _dir_record() -> dict[str, int]:
    return {"frames": 0, "bytes": 0, "rsts": 0, "late_rsts": 0, "syns": 0, "fins": 0,
            **{f: 0 for f in ANALYSIS_FLAGS}}


def _flag(value: str) -> bool:
    return value in ("1", "True")


def analyze_with_tshark(pcap: str | os.PathLike[str] | PeerCapture, *, host_ip: str | None = None,
                        timeout: float = 300.0) -> dict[str, Any]:
    """tshark's view of ``pcap`` (a pcap/pcapng path, or a stopped :class:`PeerCapture`): per
    connection (``host:port-peer:port``: the side with ``host_ip`` first (a PeerCapture knows
    its lab's), else the side that sent the connection's first frame) and direction
    (``host->peer`` / ``peer->host``): frames, payload bytes (``tcp.len``, retransmissions
    included), RSTs, SYNs, FINs and every ``tcp.analysis`` flag; plus totals, ``rsts`` and
    ``ok`` (the kernel saw no RST but *late* ones: sent after both FINs were acknowledged, as
    ``vnic run`` and ``vnic verify`` count them; ``rsts`` counts every RST, ``late_rsts``
    those)."""
    if isinstance(pcap, PeerCapture):
        host_ip = host_ip or pcap.host_ip
        pcap = pcap.path
    if not have_tshark():
        raise PeerCaptureError("tshark is not installed (scripts/setup.sh installs it)")
    argv = ["tshark", "-n", "-r", str(pcap), "-Y", "tcp", "-T", "fields",
            "-E", "separator=\t", "-E", "occurrence=f"]
    for f in _FIELDS:
        argv += ["-e", f]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerCaptureError(f"tshark took longer than {timeout} s") from exc
    if proc.returncode != 0:
        raise PeerCaptureError(f"tshark failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    conns: dict[str, dict[str, dict[str, int]]] = {}
    local_of: dict[frozenset[tuple[str, str]], tuple[str, str]] = {}
    totals = _dir_record()
    frames = 0
    nfix = 9
    nflags = len(ANALYSIS_FLAGS)
    # per connection and direction: [FIN end (raw sequence) or None, acknowledged]
    fins: dict[str, dict[str, list[Any]]] = {}
    for line in proc.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) < nfix:
            continue
        cols += [""] * (len(_FIELDS) - len(cols))
        _num, src, sport, dst, dport, tlen, rst, syn, fin = cols[:nfix]
        if not src or not sport:
            continue
        frames += 1
        a, b = (src, sport), (dst, dport)
        key = frozenset((a, b))
        local = local_of.get(key)
        if local is None:
            if host_ip is not None:
                local = a if src == host_ip else b
            else:
                local = a
            local_of[key] = local
        remote = b if local == a else a
        name = f"{local[0]}:{local[1]}-{remote[0]}:{remote[1]}"
        direction = "host->peer" if a == local else "peer->host"
        rec = conns.setdefault(name, {"host->peer": _dir_record(), "peer->host": _dir_record()})
        r = rec[direction]
        r["frames"] += 1
        n = int(tlen or 0)
        r["bytes"] += n
        for field, value in (("rsts", rst), ("syns", syn), ("fins", fin)):
            if _flag(value):
                r[field] += 1
        for flag, value in zip(ANALYSIS_FLAGS, cols[nfix:nfix + nflags], strict=True):
            if value:
                r[flag] += 1
        seq_raw, ack_raw, ackf = cols[nfix + nflags:nfix + nflags + 3]
        st = fins.setdefault(name, {"host->peer": [None, False], "peer->host": [None, False]})
        if _flag(rst):
            if all(x[0] is not None and x[1] for x in st.values()):
                r["late_rsts"] += 1  # after both FINs were acknowledged: the streams were complete
        elif seq_raw.isdigit():
            seq, ack = int(seq_raw), int(ack_raw) if ack_raw.isdigit() else 0
            if _flag(fin):
                st[direction][0] = (seq + n + (1 if _flag(syn) else 0) + 1) & 0xFFFFFFFF
            other = st["peer->host" if direction == "host->peer" else "host->peer"]
            if (_flag(ackf) and other[0] is not None
                    and ((ack - other[0]) & 0xFFFFFFFF) < 0x80000000):
                other[1] = True
        totals["frames"] += 1
    for rec in conns.values():
        for r in rec.values():
            for k, v in r.items():
                if k != "frames":
                    totals[k] += v
    version = subprocess.run(["tshark", "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    return {"tool": version[0] if version else "tshark", "pcap": str(pcap), "tcp_frames": frames,
            "rsts": totals["rsts"], "late_rsts": totals["late_rsts"],
            "ok": totals["rsts"] == totals["late_rsts"], "totals": totals,
            "connections": conns}


def compare_with_capture(kernel: dict[str, Any], report: Any) -> dict[str, Any]:
    """Do the two views agree?  ``kernel``: :func:`analyze_with_tshark`; ``report``: a
    :class:`vnic.verify.VerifyReport` of the host-side capture.  Per connection and direction
    the kernel saw at least the stream's bytes (its count includes retransmissions) and the same
    number of RSTs.  Returns ``{"agrees": bool, "disagreements": [str, ...]}``."""
    out: list[str] = []
    kconns = kernel.get("connections", {})
    for name, cr in report.connections.items():
        kc = kconns.get(name)
        if kc is None:
            if any(d.frames for d in cr.directions.values()):
                out.append(f"{name}: not seen by the kernel-side capture")
            continue
        for d, res in cr.directions.items():
            k = kc.get(d, {})
            if k.get("bytes", 0) < res.bytes:
                out.append(f"{name} {d}: the kernel saw {k.get('bytes', 0)} payload bytes, "
                           f"the host-side stream has {res.bytes}")
            # RSTs while the streams ran must be the same.  The late ones (after both FINs were
            # acknowledged, e.g. the kernel, CLOSED, answering duplicate ACKs) go on while the
            # host runs, and the kernel-side capture is stopped after it caught up with the
            # host-side one (the run loop still running): it may hold more of them, not fewer
            k_rsts, k_late = k.get("rsts", 0), k.get("late_rsts", 0)
            if k_rsts - k_late != res.rsts - res.late_rsts:
                out.append(f"{name} {d}: RSTs kernel {k_rsts - k_late} vs host-side "
                           f"{res.rsts - res.late_rsts} (before both FINs were acknowledged)")
            elif k_late < res.late_rsts:
                out.append(f"{name} {d}: late RSTs kernel {k_late} vs host-side {res.late_rsts}")
    return {"agrees": not out, "disagreements": out}
