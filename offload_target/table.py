"""The offload target's connection table: the C extension when it is built, else the twin.

``ConnectionTable`` is ``offload_target._ctable.ConnectionTable`` when that extension imports
and the environment variable ``VNIC_PURE_PYTHON`` is unset or empty, otherwise the pure-Python
twin ``offload_target.pytable.ConnectionTable``; both have the same public API and give the
same handles.  ``IMPLEMENTATION`` says which one is in use ("c" or "python").  The exception
classes, ``FIELDS``, ``FIELD_MAX``, ``TIMER_STOPPED``, ``SLOT_SIZE`` and ``MAX_CAPACITY`` are
those of the selected implementation, so ``except table.TableFullError`` always matches.
``HAS_DATAPATH`` is True when the table has the C data path (the twin has none), and
``FRAME_*`` / ``EVENT_*`` are its verdict and event codes.

Reading one environment variable at import is the only use of ``os`` in the sans-IO packages
(sanctioned in tests/unit/test_layering.py); nothing here does I/O.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Literal

from offload_target import pytable

__all__ = [
    "EVENT_DATA",
    "EVENT_FIN",
    "EVENT_FIN_ACKED",
    "EVENT_RETRIEVE",
    "EVENT_RST",
    "EVENT_SEND_ACKED",
    "FIELDS",
    "FIELD_MAX",
    "FRAME_CONSUMED",
    "FRAME_NOT_OURS",
    "FRAME_PASS_UP",
    "HAS_DATAPATH",
    "IMPLEMENTATION",
    "MAX_CAPACITY",
    "SLOT_SIZE",
    "TIMER_STOPPED",
    "ConnectionTable",
    "DuplicateConnectionError",
    "StaleHandleError",
    "TableError",
    "TableFullError",
    "implementation_module",
]


def _load_c() -> ModuleType | None:
    if os.environ.get("VNIC_PURE_PYTHON"):
        return None
    try:
        from offload_target import _ctable
    except ImportError:
        return None
    return _ctable


_c = _load_c()
_impl: ModuleType = _c if _c is not None else pytable

IMPLEMENTATION: Literal["c", "python"] = "c" if _c is not None else "python"

ConnectionTable = _impl.ConnectionTable
TableError = _impl.TableError
TableFullError = _impl.TableFullError
DuplicateConnectionError = _impl.DuplicateConnectionError
StaleHandleError = _impl.StaleHandleError
FIELDS: tuple[str, ...] = _impl.FIELDS
FIELD_MAX = _impl.FIELD_MAX
TIMER_STOPPED: int = _impl.TIMER_STOPPED
SLOT_SIZE: int = _impl.SLOT_SIZE
MAX_CAPACITY: int = _impl.MAX_CAPACITY

# The data path (docs/internals.md, "The data path (firmware, C only)") exists only on the C
# table; the twin has none, so HAS_DATAPATH is False for it.  The verdict and event codes are
# the C module's (the values here are the same, for code that never gets the C table).
HAS_DATAPATH: bool = bool(getattr(_impl, "HAS_DATAPATH", False))
FRAME_CONSUMED: int = getattr(_impl, "FRAME_CONSUMED", 0)
FRAME_NOT_OURS: int = getattr(_impl, "FRAME_NOT_OURS", 1)
FRAME_PASS_UP: int = getattr(_impl, "FRAME_PASS_UP", 2)
EVENT_SEND_ACKED: int = getattr(_impl, "EVENT_SEND_ACKED", 1)
EVENT_DATA: int = getattr(_impl, "EVENT_DATA", 2)
EVENT_FIN: int = getattr(_impl, "EVENT_FIN", 3)
EVENT_RST: int = getattr(_impl, "EVENT_RST", 4)
EVENT_RETRIEVE: int = getattr(_impl, "EVENT_RETRIEVE", 5)
EVENT_FIN_ACKED: int = getattr(_impl, "EVENT_FIN_ACKED", 6)


def implementation_module() -> ModuleType:
    """The module providing the selected implementation (``_ctable`` or ``pytable``)."""
    return _impl
