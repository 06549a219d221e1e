"""Keep megabyte buffers in the heap: glibc allocator settings for a latency-sensitive process.

Every handoff moves megabytes: the unacknowledged send data the target hands back becomes the
resumed connection's send buffer, the data path's rings grow to the window and are freed with
the connection.  glibc serves allocations above its mmap threshold (128 KiB at start, raised
only after such a chunk is freed) with a fresh ``mmap`` -- every page faults on first touch --
and returns them with ``munmap``; it also trims the heap top back to the kernel.  Which of the
two a 1 MiB allocation gets depends on the process's history, and measured, it decides
whether a handoff takes ~0.25 ms or ~0.8 ms (``vnic bench handoff``).

:func:`keep_large_buffers_in_heap` fixes both thresholds (``mallopt(M_MMAP_THRESHOLD)`` at
32 MiB, glibc's maximum, and ``M_TRIM_THRESHOLD`` at 256 MiB): buffers up to 32 MiB come from
the heap and freed memory is reused instead of being unmapped and faulted in again.  The cost
is memory: up to 256 MiB freed by the process may stay mapped.  The ``vnic`` command calls it
at start; a library user may call it too (it is process-wide).  Not glibc: nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

__all__ = ["keep_large_buffers_in_heap", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # HEAP_MAX_SIZE / 2 on 64-bit glibc: the largest value it accepts
TRIM_THRESHOLD = 256 << 20

_done: bool | None = None


def keep_large_buffers_in_heap() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if set (also on
    a repeated call), False where there is no glibc ``mallopt``."""
    global _done
    if _done is not None:
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = False
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    _done = ok
    return ok
