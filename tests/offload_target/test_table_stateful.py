"""Differential state machine: the C table, the Python twin and a dict model, driven together.

Every rule runs the same call on all tables and compares what came back (value or exception
class).  The dict model says what the answer must be: key -> handle for live connections, a
per-handle dict for the fields, and the set of every handle that was ever removed (stale).
Keys come from a small pool and tables are small (capacity 0..8, index 2..16 buckets), so
duplicates, a full table, probe collisions, wrap-around and backward-shift deletion all
happen often.  When the extension is not built, the twin runs against the model alone.
"""

from __future__ import annotations

from types import ModuleType

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from offload_target import pytable
from tests.offload_target.frames import ipv4_tcp_frame

try:
    from offload_target import _ctable
except ImportError:
    _ctable = None

IPS = [bytes([198, 18, 0, 1]), bytes([198, 19, 0, 2]), bytes([198, 19, 0, 3])]
PORTS = [80, 443, 4000, 65535]
keys = st.tuples(st.sampled_from(IPS), st.sampled_from(PORTS), st.sampled_from(IPS),
                 st.sampled_from(PORTS))
# A fresh connection: every timer stopped, everything else zero.
DEFAULTS = {name: (pytable.TIMER_STOPPED if name.endswith("_deadline") else
                   0xFFFFFFFF if name.endswith("TimeoutDelta") else 0)
            for name in pytable.FIELDS}
FIELD_NAMES = st.sampled_from(pytable.FIELDS + ("NoSuchField",))


def field_value(name: str) -> st.SearchStrategy[object]:
    top = pytable.FIELD_MAX.get(name, 10)
    return st.one_of(st.integers(0, top), st.sampled_from([top + 1, -1, 1 << 64]),
                     st.just("1"))


class Outcome:
    """What a call did: ("ok", value) or ("raise", exception class name)."""

    @staticmethod
    def of(fn, *args, **kw):
        try:
            return ("ok", fn(*args, **kw))
        except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
            return ("raise", type(e).__name__)


class TableMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.impls: list[ModuleType] = [pytable] + ([_ctable] if _ctable is not None else [])
        self.tables: list = []
        self.model: dict[tuple, int] = {}
        self.fields: dict[int, dict[str, int]] = {}
        self.stale: set[int] = set()
        self.capacity = 0

    def call(self, method: str, *args, **kw):
        """Run a method on every table; all must agree; return the common outcome."""
        outcomes = [Outcome.of(getattr(t, method), *args, **kw) for t in self.tables]
        assert all(o == outcomes[0] for o in outcomes), (method, args, kw, outcomes)
        return outcomes[0]

    @initialize(capacity=st.integers(0, 8), seed=st.sampled_from([0, 1, (1 << 64) - 1]))
    def make(self, capacity, seed):
        self.capacity = capacity
        self.tables = [m.ConnectionTable(capacity, hash_seed=seed) for m in self.impls]

    @rule(target=handles, k=keys)
    def insert(self, k):
        kind, value = self.call("insert", *k)
        if k in self.model:
            assert (kind, value) == ("raise", "DuplicateConnectionError")
            return multiple()
        if len(self.model) == self.capacity:
            assert (kind, value) == ("raise", "TableFullError")
            return multiple()
        assert kind == "ok"
        assert value not in self.model.values() and value not in self.stale
        self.model[k] = value
        self.fields[value] = dict(DEFAULTS)
        return value

    @rule(k=keys)
    def lookup(self, k):
        assert self.call("lookup", *k) == ("ok", self.model.get(k))

    @rule(k=keys, payload=st.binary(max_size=8), reverse=st.booleans())
    def lookup_frame(self, k, payload, reverse):
        local_ip, local_port, remote_ip, remote_port = k
        if reverse:   # a frame this connection would send, not one it receives
            frame = ipv4_tcp_frame(local_ip, local_port, remote_ip, remote_port, payload=payload)
            expect = self.model.get((remote_ip, remote_port, local_ip, local_port))
        else:
            frame = ipv4_tcp_frame(remote_ip, remote_port, local_ip, local_port, payload=payload)
            expect = self.model.get(k)
        assert self.call("lookup_frame", frame) == ("ok", expect)
        assert self.call("lookup_frames", [frame, frame[14:]]) == ("ok", [expect, None])
        assert self.call("lookup_frames", [frame[14:]], 0) == ("ok", [expect])

    @rule(h=consumes(handles))
    def remove(self, h):
        outcome = self.call("remove", h)
        if h in self.fields:
            assert outcome == ("ok", None)
            del self.fields[h]
            del self.model[next(k for k, v in self.model.items() if v == h)]
            self.stale.add(h)
        else:
            assert outcome == ("raise", "StaleHandleError")

    @rule(h=handles)
    def remove_again_is_stale_or_removes(self, h):
        # handles stay in the bundle after this rule: later uses of them are stale
        self.remove(h)

    @rule(h=handles, name=FIELD_NAMES, data=st.data())
    def set_field(self, h, name, data):
        value = data.draw(field_value(name))
        outcome = self.call("set_fields", h, **{name: value})
        if h not in self.fields:
            assert outcome == ("raise", "StaleHandleError")
        elif name not in pytable.FIELD_MAX:
            assert outcome == ("raise", "KeyError")
        elif not isinstance(value, int):
            assert outcome == ("raise", "TypeError")
        elif not 0 <= value <= pytable.FIELD_MAX[name]:
            assert outcome == ("raise", "OverflowError")
        else:
            assert outcome == ("ok", None)
            self.fields[h][name] = value

    @rule(h=handles)
    def get_state(self, h):
        outcome = self.call("get_state", h)
        if h in self.fields:
            assert outcome == ("ok", self.fields[h])
        else:
            assert outcome == ("raise", "StaleHandleError")

    @rule(h=handles)
    def get_key_and_validity(self, h):
        live = h in self.fields
        assert self.call("is_valid", h) == ("ok", live)
        key = next((k for k, v in self.model.items() if v == h), None)
        expect = ("ok", key) if live else ("raise", "StaleHandleError")
        assert self.call("get_key", h) == expect

    @rule(h=st.one_of(st.integers(-2, 1 << 65), st.integers(0, 8).map(lambda i: 1 << 32 | i)))
    def arbitrary_handle(self, h):
        assert self.call("is_valid", h) == ("ok", h in self.fields)

    @precondition(lambda self: self.model)
    @rule()
    def clear(self):
        assert self.call("clear") == ("ok", None)
        self.stale.update(self.fields)
        self.model.clear()
        self.fields.clear()

    @invariant()
    def same_contents(self):
        if not self.tables:
            return
        assert self.call("__len__") == ("ok", len(self.model))
        listed = [list(t.handles()) for t in self.tables]
        assert all(x == listed[0] for x in listed)
        assert sorted(listed[0]) == sorted(self.model.values())
        for t in self.tables:
            validate = getattr(t, "_validate", None)
            if validate is not None:
                validate()


TableMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                          deadline=None)
TestTableMachine = TableMachine.TestCase
