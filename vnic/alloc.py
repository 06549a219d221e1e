"""Keep megabyte buffers in the heap: glibc allocator settings for a latency-sensitive process.

Every handoff moves megabytes: the unacknowledged send data the target hands back becomes the
resumed connection's send buffer, the data path's rings grow to the window and are freed with
the connection.  glibc serves allocations above its mmap threshold (128 KiB at start, raised
only after such a chunk is freed) with a fresh ``mmap`` -- every page faults on first touch --
and returns them with ``munmap``; it also trims the heap top back to the kernel.  Which of the
two a 1 MiB allocation gets depends on the process's history, and measured, it decides
whether a handoff takes ~0.25 ms or ~0.8 ms (``vnic bench handoff``).  Frame I/O at line rate
does the same with 64 KiB super-segments, read buffers and receive buffers many times a second:
measured with the defaults, about one page fault per 4 KiB received, half the CPU of a 1 GB/s
download over a TAP.

:func:`keep_large_buffers_in_heap` fixes both thresholds (``mallopt(M_MMAP_THRESHOLD)`` at
32 MiB, glibc's maximum, and ``M_TRIM_THRESHOLD`` at 256 MiB): buffers up to 32 MiB come from
the heap and freed memory is reused instead of being unmapped and faulted in again; the heap
grows 16 MiB at a time (``M_TOP_PAD``).  The cost is memory: up to 256 MiB freed by the process
may stay mapped.  The ``vnic`` command calls it at start and so does opening a TAP device
(:class:`vnic.tap.TapDevice`); a library user may call it too (it is process-wide).  Not glibc,
or ``VNIC_KEEP_HEAP=0`` in the environment: nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

__all__ = ["keep_large_buffers_in_heap", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD",
           "KEEP_HEAP_ENV"]

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # HEAP_MAX_SIZE / 2 on 64-bit glibc: the largest value it accepts
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 16 << 20
#: environment variable: "0" leaves glibc's defaults alone
KEEP_HEAP_ENV = "VNIC_KEEP_HEAP"

_done: bool | None = None


def keep_large_buffers_in_heap() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if set (also on
    a repeated call), False where there is no glibc ``mallopt``."""
    global _done
    if _done is not None:
        return _done
    if os.environ.get(KEEP_HEAP_ENV, "").strip() == "0":
        _done = False
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = False
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    _done = ok
    return ok
