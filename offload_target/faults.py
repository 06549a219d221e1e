"""Target-side fault hooks: what a misbehaving or stressed offload NIC does, on demand.

``target.faults`` (a :class:`TargetFaults`) is consulted by the miniport at every completion
and every block it decides; tests use it now, scenarios later.  Operation names are the five
state operations (``"initiate"``, ``"terminate"``, ``"update"``, ``"invalidate"``, ``"query"``)
and the four I/O completions (``"send"``, ``"receive"``, ``"disconnect"``, ``"forward"``).

=============================  ===================================================================
hook                           documented outcome
=============================  ===================================================================
delay_completion(op, s, n=1)   the next ``n`` completions of ``op`` are made ``s`` seconds later
                               (from ``poll``), still with the same root / NBLs
never_complete(op, n=1)        the next ``n`` completions of ``op`` are withheld (``withheld``);
                               ``release_withheld()`` makes them after all
(both)                         later completions never overtake a held one: I/O completions
                               of the same kind queue behind it (V6 FIFO), state operations
                               behind every held I/O completion (d.3)
fail_blocks(sel, status, ops)  blocks whose label is in ``sel`` (or for which ``sel(block, op)``
                               is true) get ``status`` (initiate: the object is not offloaded and
                               its parents report OFFLOAD_PARTIAL_SUCCESS; other operations:
                               SUCCESS/FAILURE only, the work is still done)
corrupt_hardware_state(conn)   the d.4 recipe: query/invalidate/terminate of it -> FAILURE,
                               TcpIndicateRetrieve(HardwareFailure), TcpIndicateAbort, at
                               terminate everything outstanding -> REQUEST_ABORTED
request_upload(conn, reason)   TcpIndicateRetrieve(reason) (d.1); mandatory reasons make later
                               sends complete with UPLOAD_IN_PROGRESS (d.2)
upload_all()                   NDIS_STATUS_UPLOAD_ALL (d.8)
shrink_capacity(n)             OFFLOAD_PAUSE, uploads requested beyond ``n``, then
                               OFFLOAD_RESUME with TcpConnectionOffloadCapacity = n (d.8)
wrong_rcv_nxt(conn, delta)     at its next terminate the returned delegated RcvNxt is off by
                               ``delta`` (the oracle test of ``vnic verify``: resume-at-rcvnxt)
drop_buffered_data(conn)       at its next terminate the received, ACKed, undelivered data is
                               not returned in BufferedData (lost; verify: buffered-once)
duplicate_delivery(conn)       the next data delivered to the host (indication or posted
                               receive) is delivered once more right after (verify:
                               delivered-once)
indicate_send_backlog(conn, v) TcpIndicateSendBacklogChange with ``v`` (any ULONG, also 0 or
                               absurdly large) for ``conn`` once it is offloaded (b.14); the
                               target's own evaluation may replace it at its next meaningful
                               change
auto_send_backlog(enabled)     the target's own TcpIndicateSendBacklogChange indications on
                               (the default) or off; queries still report SendBacklogSize
=============================  ===================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ndis.status import NdisStatus, Operation

if TYPE_CHECKING:
    from offload_target.miniport import OffloadTarget

log = logging.getLogger(__name__)

__all__ = ["TargetFaults", "OPERATIONS"]

OPERATIONS = ("initiate", "terminate", "update", "invalidate", "query",
              "send", "receive", "disconnect", "forward")
IO_OPERATIONS = frozenset({"send", "receive", "disconnect", "forward"})

BlockSelector = Callable[[Any, Operation], bool]


@dataclass
class _Rule:
    kind: str  # "delay" or "never"
    op: str
    seconds: float = 0.0
    remaining: int = 1  # -1 = every time


class TargetFaults:
    """Fault hooks of one :class:`~offload_target.miniport.OffloadTarget` (module docstring)."""

    def __init__(self, target: OffloadTarget) -> None:
        self.target = target
        self._rules: list[_Rule] = []
        self._block_rules: list[tuple[BlockSelector, int, frozenset[Operation]]] = []
        self.delayed: list[tuple[float, str, Callable[[], None]]] = []
        self.withheld: list[tuple[str, Callable[[], None]]] = []
        self.log: list[tuple[str, ...]] = []
        # data-integrity faults armed per connection (table handle)
        self._rcv_nxt_delta: dict[int, int] = {}
        self._drop_buffered: set[int] = set()
        self._duplicate: set[int] = set()

    # -- completions -----------------------------------------------------------------------------
    def delay_completion(self, op: str, seconds: float, count: int = 1) -> None:
        """The next ``count`` (-1: all) completions of ``op`` happen ``seconds`` later."""
        self._check_op(op)
        self._rules.append(_Rule("delay", op, seconds, count))

    def never_complete(self, op: str, count: int = 1) -> None:
        """The next ``count`` (-1: all) completions of ``op`` are withheld."""
        self._check_op(op)
        self._rules.append(_Rule("never", op, 0.0, count))

    def clear(self) -> None:
        """Forget every rule (delayed and withheld completions stay where they are)."""
        self._rules.clear()
        self._block_rules.clear()

    @property
    def withholding(self) -> bool:
        """Whether a never_complete rule is still armed (a completion will be withheld)."""
        return any(r.kind == "never" and r.remaining != 0 for r in self._rules)

    def release_withheld(self) -> int:
        """Make the withheld completions now; returns how many."""
        items, self.withheld = self.withheld, []
        for _op, fn in items:
            fn()
        return len(items)

    @staticmethod
    def _check_op(op: str) -> None:
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r} (one of {OPERATIONS})")

    def complete(self, op: str, fn: Callable[[], None]) -> None:
        """Called by the miniport instead of making completion ``fn`` of ``op`` itself."""
        for rule in self._rules:
            if rule.op != op or rule.remaining == 0:
                continue
            if rule.remaining > 0:
                rule.remaining -= 1
            self._rules = [r for r in self._rules if r.remaining != 0]
            if rule.kind == "never":
                self.log.append(("withheld", op))
                log.warning("fault: %s completion withheld", op)
                self.withheld.append((op, fn))
            else:
                due = self.target.now + rule.seconds
                self.log.append(("delayed", op, f"{rule.seconds:g}s"))
                log.warning("fault: %s completion delayed %.3fs", op, rule.seconds)
                self.delayed.append((due, op, fn))
            return
        # No rule for this one, but it must not overtake a completion held back before it:
        # an I/O completion waits behind held ones of its kind (FIFO, V6), a state operation
        # behind every held I/O completion (d.3: terminate completes after the I/O).
        def behind(other: str) -> bool:
            return other == op or (op not in IO_OPERATIONS and other in IO_OPERATIONS)

        if any(behind(o) for o, _fn in self.withheld):
            self.log.append(("queued", op))
            self.withheld.append((op, fn))
            return
        dues = [d for d, o, _fn in self.delayed if behind(o)]
        if dues:
            self.log.append(("queued", op))
            self.delayed.append((max(dues), op, fn))
            return
        fn()

    def poll(self, now: float) -> None:
        due = [d for d in self.delayed if d[0] <= now]
        if not due:
            return
        self.delayed = [d for d in self.delayed if d[0] > now]
        for _t, _op, fn in sorted(due, key=lambda d: d[0]):
            fn()

    def next_deadline(self) -> float | None:
        return min((d[0] for d in self.delayed), default=None)

    # -- block statuses ----------------------------------------------------------------------------------
    def fail_blocks(
        self,
        selector: Iterable[str] | BlockSelector,
        status: int = NdisStatus.FAILURE,
        ops: Iterable[Operation] = (Operation.INITIATE,),
    ) -> None:
        """Fail chosen blocks: labels or a predicate ``(block, op) -> bool``."""
        if callable(selector):
            pred = selector
        else:
            labels = frozenset(selector)

            def pred(block: Any, op: Operation) -> bool:
                return block.label in labels

        self._block_rules.append((pred, int(status), frozenset(ops)))

    @property
    def block_rules(self) -> bool:
        """Whether any fail/partially-fail rule is armed (a terminate tree of 10,000 blocks
        asks :meth:`block_status` only then)."""
        return bool(self._block_rules)

    @property
    def terminate_data_faults(self) -> bool:
        """Whether a wrong-RcvNxt or drop-buffered-data fault is armed for some connection."""
        return bool(self._rcv_nxt_delta or self._drop_buffered)

    def block_status(self, op: Operation, block: Any) -> int | None:
        """The status a rule forces on ``block`` in ``op`` (None = no rule)."""
        for pred, status, ops in self._block_rules:
            if op in ops and pred(block, op):
                self.log.append(("failed", op.value, block.label))
                if op is not Operation.INITIATE and status not in (NdisStatus.SUCCESS, NdisStatus.FAILURE):
                    return NdisStatus.FAILURE  # f.2: only SUCCESS / FAILURE outside initiate
                return status
        return None

    # -- target behaviour ----------------------------------------------------------------------------------
    def corrupt_hardware_state(self, conn: Any) -> None:
        self.log.append(("corrupt", str(getattr(conn, "label", conn))))
        self.target.corrupt_hardware_state(conn)

    def request_upload(self, conn: Any, reason: int) -> None:
        self.log.append(("request_upload", str(getattr(conn, "label", conn)), str(int(reason))))
        self.target.request_upload(conn, reason)

    def upload_all(self) -> None:
        self.log.append(("upload_all",))
        self.target.upload_all()

    def shrink_capacity(self, n: int) -> None:
        self.log.append(("shrink_capacity", str(n)))
        self.target.shrink_capacity(n)

    def indicate_send_backlog(self, conn: Any, value: int) -> None:
        """Make the target indicate TcpIndicateSendBacklogChange(``value``) for ``conn`` (b.14:
        EventSpecificInformation = the new preferred number of outstanding send bytes).

        ``value`` may be any ULONG (0 .. 0xFFFFFFFF), whatever the target would prefer itself:
        it tests how a host reacts to a tiny, zero or huge backlog.  The indication is made
        from a work item (never inside a handler) once the connection is offloaded, and is
        dropped if the connection is terminating or aborted by then (it is a per-connection
        event of an offloaded connection, V10).  The target's own evaluation goes on and
        indicates its value again at its next meaningful change; call
        ``auto_send_backlog(False)`` first to make the forced value stick.
        """
        obj = self.target.find(conn)
        self.log.append(("indicate_send_backlog", obj.label, str(int(value))))
        log.warning("fault: %s TcpIndicateSendBacklogChange %d forced", obj.label, int(value))
        self.target.indicate_send_backlog(obj, value)

    def auto_send_backlog(self, enabled: bool) -> None:
        """Turn the target's own TcpIndicateSendBacklogChange indications on (the default) or
        off (a target that never indicates a change; queries still return SendBacklogSize)."""
        self.log.append(("auto_send_backlog", str(bool(enabled))))
        self.target.send_backlog_auto = bool(enabled)

    # -- data-integrity faults (oracle tests of the capture verifier) ----------------------------------
    def wrong_rcv_nxt(self, conn: Any, delta: int) -> None:
        """At the next terminate of ``conn`` return RcvNxt + ``delta`` (mod 2**32)."""
        obj = self.target.find(conn)
        self.log.append(("wrong_rcv_nxt", obj.label, str(delta)))
        self._rcv_nxt_delta[obj.handle] = delta

    def drop_buffered_data(self, conn: Any) -> None:
        """At the next terminate of ``conn`` return no BufferedData (the bytes are lost)."""
        obj = self.target.find(conn)
        self.log.append(("drop_buffered_data", obj.label))
        self._drop_buffered.add(obj.handle)

    def duplicate_delivery(self, conn: Any) -> None:
        """Deliver the next data taken for the host on ``conn`` twice."""
        obj = self.target.find(conn)
        self.log.append(("duplicate_delivery", obj.label))
        self._duplicate.add(obj.handle)

    def take_rcv_nxt_delta(self, obj: Any) -> int:
        return self._rcv_nxt_delta.pop(obj.handle, 0)

    def take_drop_buffered(self, obj: Any) -> bool:
        if obj.handle in self._drop_buffered:
            self._drop_buffered.discard(obj.handle)
            log.warning("fault: %s buffered data dropped at terminate", obj.label)
            return True
        return False

    def take_duplicate(self, obj: Any) -> bool:
        if self._duplicate and obj.handle in self._duplicate:
            self._duplicate.discard(obj.handle)
            log.warning("fault: %s data delivered twice", obj.label)
            return True
        return False
