"""pcapng capture of the wire, with a comment on every frame.

Writer: one Section Header Block, one Interface Description Block (LINKTYPE_ETHERNET, µs
timestamps), then an Enhanced Packet Block per frame carrying ``opt_comment`` (e.g.
``"dir=host->peer component=host epoch=0"``) and ``epb_flags`` direction (inbound = towards the
emulated host, outbound = towards the kernel peer).

Free-form annotations (``annotate("offload initiated conn=1", t)``) become further
``opt_comment`` options of the *next* frame written, as ``"note t=<seconds> <text>"`` so that
Wireshark shows them in the packet list and frame numbers stay the same in every tool. Notes
still pending at :meth:`PcapngWriter.close` go into a Custom Block (type 0x00000BAD, PEN 32473,
the documentation PEN of RFC 5612), which scapy skips. :func:`read_annotations` returns both.

Readable by Wireshark/tshark (checked with tshark 4.0) and by scapy (``rdpcap`` /
``PcapNgReader``: the comments are in ``pkt.comments``, a list of ``bytes``, in scapy >= 2.5;
the first is the frame comment, the rest are notes). :func:`read_pcapng` returns
``CapturedFrame(timestamp, frame, comment, direction, notes)`` without dissecting.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger(__name__)

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BT_CB_COPY = 0x00000BAD
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9
EPB_FLAGS = 2
VNIC_PEN = 32473
NOTE_PREFIX = "note "

DIR_INBOUND = 1  # epb_flags direction bits: towards the emulated host
DIR_OUTBOUND = 2  # from the emulated host towards the kernel peer


def _pad(n: int) -> int:
    return -n % 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad(len(value))


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Append frames to a pcapng file. Use as a context manager or call :meth:`close`.

    ``timestamp`` arguments are loop time (seconds); the file gets ``time_base + timestamp``.
    ``time_base=None`` maps ``time.monotonic()`` to wall-clock time (right for the real loop);
    simulations pass a fixed base (e.g. ``0.0``) so captures are byte-identical per seed.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        *,
        interface_name: str = "vnic",
        snaplen: int = 262144,
        time_base: float | None = None,
        flush_interval: float = 1.0,
        application: str = "vnic",
    ) -> None:
        if isinstance(target, (str, os.PathLike)):
            self.path: Path | None = Path(target)
            self._f: BinaryIO = open(target, "wb", buffering=1 << 20)  # noqa: SIM115
            self._owns = True
        else:
            self.path = None
            self._f = target
            self._owns = False
        self.time_base = time.time() - time.monotonic() if time_base is None else time_base
        self.snaplen = snaplen
        self.flush_interval = flush_interval
        self.frames = 0
        self.annotations = 0
        self._notes: list[tuple[float, str]] = []  # (file time, text) not yet written
        self._last_flush = time.monotonic()
        shb_opts = _option(SHB_USERAPPL, application.encode()) + _option(OPT_ENDOFOPT, b"")
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts
        idb_opts = (
            _option(IF_NAME, interface_name.encode())
            + _option(IF_TSRESOL, b"\x06")
            + _option(OPT_ENDOFOPT, b"")
        )
        idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + idb_opts
        self._f.write(_block(BT_SHB, shb) + _block(BT_IDB, idb))

    def _ts(self, timestamp: float) -> tuple[int, int]:
        us = int(round((self.time_base + timestamp) * 1e6))
        if us < 0:
            us = 0
        return us >> 32, us & 0xFFFFFFFF

    def write_frame(
        self,
        frame: bytes,
        timestamp: float,
        comment: str | None = None,
        direction: int | None = None,
    ) -> None:
        """One Ethernet frame seen at loop time ``timestamp``."""
        hi, lo = self._ts(timestamp)
        caplen = min(len(frame), self.snaplen)
        opts = b""
        if comment:
            opts += _option(OPT_COMMENT, comment.encode())
        if self._notes:
            for ts, text in self._notes:
                opts += _option(OPT_COMMENT, f"{NOTE_PREFIX}t={ts:.6f} {text}".encode())
            self._notes.clear()
        if direction:
            opts += _option(EPB_FLAGS, struct.pack("<I", direction))
        if opts:
            opts += _option(OPT_ENDOFOPT, b"")
        body = (
            struct.pack("<IIIII", 0, hi, lo, caplen, len(frame))
            + frame[:caplen]
            + b"\0" * _pad(caplen)
            + opts
        )
        self._f.write(_block(BT_EPB, body))
        self.frames += 1
        if self.flush_interval >= 0:
            now = time.monotonic()
            if now - self._last_flush >= self.flush_interval:
                self.flush()

    def annotate(self, text: str, timestamp: float) -> None:
        """A free-form note at loop time ``timestamp``; attached to the next frame written."""
        self._notes.append((self.time_base + timestamp, text))
        self.annotations += 1

    def _write_pending_notes(self) -> None:
        """Notes with no frame after them: one Custom Block each (``<u64 µs ts><utf-8>``)."""
        for ts, text in self._notes:
            us = max(0, int(round(ts * 1e6)))
            data = struct.pack("<II", us >> 32, us & 0xFFFFFFFF) + text.encode()
            body = struct.pack("<I", VNIC_PEN) + data + b"\0" * _pad(len(data))
            self._f.write(_block(BT_CB_COPY, body))
        self._notes.clear()

    def flush(self) -> None:
        self._f.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._f.closed:
            return
        self._write_pending_notes()
        self.flush()
        if self._owns:
            self._f.close()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedFrame:
    timestamp: float  # seconds as stored in the file (time_base + loop time)
    frame: bytes
    comment: str
    direction: int | None  # DIR_INBOUND / DIR_OUTBOUND / None
    notes: tuple[str, ...] = ()  # annotate() texts attached to this frame ("t=<s> <text>")


def parse_comment(comment: str) -> dict[str, str]:
    """``"dir=host->peer component=host epoch=0"`` -> ``{"dir": "host->peer", ...}``."""
    out = {}
    for word in comment.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def read_pcapng(path: str | os.PathLike[str]) -> list[CapturedFrame]:
    """All frames of a pcapng file with timestamp and comment (via scapy's reader)."""
    from scapy.utils import RawPcapNgReader

    frames = []
    with RawPcapNgReader(str(path)) as reader:
        while True:
            try:
                item = reader._read_packet(size=1 << 20)  # raw bytes + metadata, no dissection
            except EOFError:
                break
            if item is None:
                break
            data, meta = item
            ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
            comments = meta.comments or []
            if isinstance(comments, bytes):
                comments = [comments]
            texts = [c.decode("utf-8", "replace") for c in comments]
            marker = NOTE_PREFIX + "t="
            notes = tuple(t[len(NOTE_PREFIX) :] for t in texts if t.startswith(marker))
            plain = [t for t in texts if not t.startswith(marker)]
            frames.append(CapturedFrame(ts, bytes(data), " ".join(plain), meta.direction, notes))
    return frames


def read_annotations(path: str | os.PathLike[str]) -> list[tuple[float, str]]:
    """The :meth:`PcapngWriter.annotate` notes of a file written by this module, in order."""
    out: list[tuple[float, str]] = []
    for f in read_pcapng(path):
        for note in f.notes:
            ts_text, _, text = note.partition(" ")
            out.append((float(ts_text[2:]), text))
    out += _read_custom_notes(path)
    return out


def _read_custom_notes(path: str | os.PathLike[str]) -> list[tuple[float, str]]:
    out = []
    with open(path, "rb") as f:
        data = f.read()
    view = io.BytesIO(data)
    while True:
        head = view.read(8)
        if len(head) < 8:
            break
        btype, blen = struct.unpack("<II", head)
        body = view.read(blen - 12)
        view.read(4)
        if btype == BT_CB_COPY and len(body) >= 12:
            (pen,) = struct.unpack_from("<I", body)
            if pen != VNIC_PEN:
                continue
            hi, lo = struct.unpack_from("<II", body, 4)
            text = body[12:].rstrip(b"\0").decode("utf-8", "replace")
            out.append((((hi << 32) | lo) / 1e6, text))
    return out
