"""The connection table: one test class, run against the C extension and the Python twin.

``BaseTableTests`` holds every behavioural test against ``self.mod`` (an implementation module:
``offload_target._ctable`` or ``offload_target.pytable``) -- the immutables ``BaseMapTest``
pattern.  Tests that compare the two implementations or look at C internals are at the end.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_target import pytable, table
from tests.offload_target.frames import fix_ip_checksum, ipv4_tcp_frame

try:
    from offload_target import _ctable
except ImportError:  # the extension is not built
    _ctable = None

ROOT = Path(__file__).resolve().parents[2]
NOT_BUILT = ("offload_target._ctable is not built: run "
             "`.venv/bin/python setup.py build_ext --inplace` (or `pip install -e .`)")

LOCAL = bytes([198, 18, 0, 1])
PEER = bytes([198, 19, 0, 2])
U64 = (1 << 64) - 1


def fuzz_settings(n: int):
    # The same @given test runs in the C and the Python subclass: hypothesis calls that
    # "differing executors"; sharing the example database between them is what we want.
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.differing_executors])


def key(i: int) -> tuple[bytes, int, bytes, int]:
    """A distinct 4-tuple per i (the local side fixed, like a server)."""
    return (LOCAL, 80, bytes([198, 19, (i >> 8) & 0xFF, i & 0xFF]), 1024 + (i >> 16))


def colliding_keys(mod: ModuleType, capacity: int, n: int, bucket: int = 3) -> list[tuple]:
    """n keys whose probe sequences all start at ``bucket`` of a table of this capacity."""
    index_size = 2
    while index_size < 2 * capacity:
        index_size *= 2
    found = []
    for i in itertools.count():
        k = (LOCAL, 80, PEER, i)
        if pytable.hash_key(*k) & (index_size - 1) == bucket:
            found.append(k)
            if len(found) == n:
                return found
    raise AssertionError("unreachable")


class BaseTableTests:
    mod: ModuleType

    def make(self, capacity: int = 8, **kw):
        return self.mod.ConnectionTable(capacity, **kw)

    def check(self, t) -> None:
        """Invariant check where the implementation has one (the C table)."""
        validate = getattr(t, "_validate", None)
        if validate is not None:
            validate()

    # ----------------------------------------------------------------- basics

    def test_empty_table(self):
        t = self.make(5)
        assert t.capacity == 5
        assert len(t) == 0
        assert list(t.handles()) == []
        assert repr(t) == "<ConnectionTable capacity=5 len=0>"
        assert t.slot_size == type(t).slot_size == 200
        assert t.lookup(*key(0)) is None
        self.check(t)

    def test_insert_then_lookup(self):
        t = self.make()
        h = t.insert(*key(1))
        assert isinstance(h, int)
        assert len(t) == 1
        assert t.lookup(*key(1)) == h
        assert t.lookup(*key(2)) is None
        assert t.is_valid(h)
        assert t.get_key(h) == key(1)
        self.check(t)

    def test_key_is_ordered(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        # the same endpoints the other way round are another connection
        assert t.lookup(PEER, 4000, LOCAL, 80) is None
        assert t.lookup(LOCAL, 4000, PEER, 80) is None
        h2 = t.insert(PEER, 4000, LOCAL, 80)
        assert h2 != h
        assert t.lookup(LOCAL, 80, PEER, 4000) == h

    def test_handles_are_generation_and_slot(self):
        t = self.make(4)
        hs = [t.insert(*key(i)) for i in range(4)]
        assert hs == [1 << 32 | i for i in range(4)]     # slot 0 first, generation 1

    def test_bytes_like_addresses(self):
        t = self.make()
        h = t.insert(bytearray(LOCAL), 80, memoryview(PEER), 4000)
        assert t.lookup(LOCAL, 80, PEER, 4000) == h
        assert t.lookup(memoryview(LOCAL), 80, bytearray(PEER), 4000) == h
        assert t.get_key(h) == (LOCAL, 80, PEER, 4000)
        assert type(t.get_key(h)[0]) is bytes

    def test_bool_and_int_subclass_ports(self):
        class Port(int):
            pass

        t = self.make()
        h = t.insert(LOCAL, True, PEER, Port(4000))
        assert t.lookup(LOCAL, 1, PEER, 4000) == h
        assert t.get_key(h) == (LOCAL, 1, PEER, 4000)

    def test_port_bounds(self):
        t = self.make()
        h0 = t.insert(LOCAL, 0, PEER, 0)
        h1 = t.insert(LOCAL, 65535, PEER, 65535)
        assert t.lookup(LOCAL, 0, PEER, 0) == h0
        assert t.lookup(LOCAL, 65535, PEER, 65535) == h1

    # ------------------------------------------------------- duplicates, full

    def test_duplicate_insert(self):
        t = self.make()
        h = t.insert(*key(1))
        with pytest.raises(self.mod.DuplicateConnectionError) as ei:
            t.insert(*key(1))
        assert isinstance(ei.value, KeyError)
        assert isinstance(ei.value, self.mod.TableError)
        assert ei.value.args == (key(1),)
        assert len(t) == 1 and t.lookup(*key(1)) == h
        self.check(t)

    def test_full_table(self):
        t = self.make(3)
        hs = [t.insert(*key(i)) for i in range(3)]
        with pytest.raises(self.mod.TableFullError, match="capacity 3"):
            t.insert(*key(3))
        assert isinstance(self.mod.TableFullError("x"), self.mod.TableError)
        assert len(t) == 3
        # a duplicate is reported as such even when the table is full
        with pytest.raises(self.mod.DuplicateConnectionError):
            t.insert(*key(0))
        t.remove(hs[1])
        h = t.insert(*key(3))
        assert h & 0xFFFFFFFF == 1                     # the freed slot
        assert h >> 32 == 2                            # with a new generation
        assert [t.lookup(*key(i)) for i in range(4)] == [hs[0], None, hs[2], h]
        self.check(t)

    def test_zero_capacity(self):
        t = self.make(0)
        with pytest.raises(self.mod.TableFullError):
            t.insert(*key(0))
        assert t.lookup(*key(0)) is None
        assert not t.is_valid(1 << 32)

    def test_fill_empty_fill(self):
        t = self.make(64)
        for rnd in range(3):
            hs = {t.insert(*key(i + rnd * 1000)): i for i in range(64)}
            assert len(t) == 64
            for h, i in hs.items():
                assert t.lookup(*key(i + rnd * 1000)) == h
            self.check(t)
            for h in hs:
                t.remove(h)
            assert len(t) == 0
            self.check(t)

    # ------------------------------------------------------------- collisions

    def test_colliding_keys(self):
        t = self.make(8)
        ks = colliding_keys(self.mod, 8, 6)
        hs = [t.insert(*k) for k in ks]
        self.check(t)
        assert [t.lookup(*k) for k in ks] == hs
        # remove from the middle of the probe run: the rest must stay reachable
        t.remove(hs[2])
        self.check(t)
        assert t.lookup(*ks[2]) is None
        assert [t.lookup(*k) for i, k in enumerate(ks) if i != 2] == hs[:2] + hs[3:]
        t.remove(hs[0])
        t.remove(hs[5])
        self.check(t)
        assert [t.lookup(*k) for k in (ks[1], ks[3], ks[4])] == [hs[1], hs[3], hs[4]]
        h = t.insert(*ks[2])
        assert t.lookup(*ks[2]) == h
        self.check(t)

    def test_probe_run_wraps_around_the_index(self):
        # keys homed in the last bucket spill over to bucket 0, 1, ...
        t = self.make(8)
        ks = colliding_keys(self.mod, 8, 5, bucket=15)
        others = colliding_keys(self.mod, 8, 2, bucket=0)
        hs = [t.insert(*k) for k in ks + others]
        self.check(t)
        for victim in (0, 3, 5):
            t.remove(hs[victim])
            self.check(t)
        survivors = [i for i in range(7) if i not in (0, 3, 5)]
        assert [t.lookup(*(ks + others)[i]) for i in survivors] == [hs[i] for i in survivors]

    def test_random_churn(self):
        rng = random.Random(1234)
        t = self.make(50)
        model: dict[tuple, int] = {}
        pool = [key(i) for i in range(120)]
        for _ in range(3000):
            k = rng.choice(pool)
            if k in model and rng.random() < 0.5:
                t.remove(model.pop(k))
            elif k not in model and len(model) < 50:
                model[k] = t.insert(*k)
            else:
                assert t.lookup(*k) == model.get(k)
        self.check(t)
        assert len(t) == len(model)
        assert sorted(t.handles()) == sorted(model.values())
        for k in pool:
            assert t.lookup(*k) == model.get(k)

    # --------------------------------------------------------- stale handles

    def test_stale_after_remove(self):
        t = self.make()
        h = t.insert(*key(1))
        t.remove(h)
        assert len(t) == 0
        assert not t.is_valid(h)
        assert t.lookup(*key(1)) is None
        for call in (t.remove, t.get_state, t.get_key, lambda x: t.get_field(x, "SndUna"),
                     lambda x: t.set_fields(x, SndUna=1)):
            with pytest.raises(self.mod.StaleHandleError):
                call(h)
        err = self.mod.StaleHandleError("x")
        assert isinstance(err, LookupError) and isinstance(err, self.mod.TableError)

    def test_stale_after_slot_reuse(self):
        t = self.make(1)
        old = t.insert(*key(1))
        t.remove(old)
        new = t.insert(*key(2))
        assert new & 0xFFFFFFFF == old & 0xFFFFFFFF    # same slot
        assert new != old
        assert not t.is_valid(old) and t.is_valid(new)
        with pytest.raises(self.mod.StaleHandleError):
            t.remove(old)
        with pytest.raises(self.mod.StaleHandleError):
            t.set_fields(old, SndNxt=5)
        assert t.get_state(new)["SndNxt"] == 0        # the old handle changed nothing
        assert t.lookup(*key(2)) == new

    def test_generations_count_up(self):
        t = self.make(1)
        seen = set()
        for i in range(1, 301):
            h = t.insert(*key(i))
            assert h == i << 32
            seen.add(h)
            t.remove(h)
        assert len(seen) == 300

    @pytest.mark.parametrize("handle", [0, 1, -1, 7, (1 << 32) | 8, (2 << 32) | 0, 1 << 63,
                                        U64, U64 + 1, 1 << 200, -(1 << 200)])
    def test_invalid_handles(self, handle):
        t = self.make(8)
        t.insert(*key(0))
        assert t.is_valid(handle) is False
        with pytest.raises(self.mod.StaleHandleError):
            t.remove(handle)
        with pytest.raises(self.mod.StaleHandleError):
            t.get_state(handle)
        assert len(t) == 1

    @pytest.mark.parametrize("handle", [1.0, "4294967296", None, b"\x00", [1], object()])
    def test_non_int_handles(self, handle):
        t = self.make()
        t.insert(*key(0))
        for call in (t.remove, t.is_valid, t.get_state, t.get_key,
                     lambda x: t.set_fields(x, SndUna=1), lambda x: t.get_field(x, "SndUna")):
            with pytest.raises(TypeError):
                call(handle)
        assert len(t) == 1

    # ---------------------------------------------------------- bad arguments

    @pytest.mark.parametrize("args, exc", [
        (("198.18.0.1", 80, PEER, 1), TypeError),
        ((LOCAL, 80, 0xC6130002, 1), TypeError),
        ((None, 80, PEER, 1), TypeError),
        ((LOCAL, 80, [198, 19, 0, 2], 1), TypeError),
        ((LOCAL, 80.0, PEER, 1), TypeError),
        ((LOCAL, "80", PEER, 1), TypeError),
        ((LOCAL, 80, PEER, None), TypeError),
        ((LOCAL[:3], 80, PEER, 1), ValueError),
        ((LOCAL, 80, PEER + b"\x00", 1), ValueError),
        ((b"", 80, PEER, 1), ValueError),
        ((bytes(16), 80, PEER, 1), ValueError),
        ((LOCAL, -1, PEER, 1), ValueError),
        ((LOCAL, 80, PEER, 65536), ValueError),
        ((LOCAL, 1 << 64, PEER, 1), ValueError),
        ((LOCAL, 80, PEER, -(1 << 100)), ValueError),
        ((LOCAL, 80, PEER), TypeError),
        ((LOCAL, 80, PEER, 1, 2), TypeError),
        ((), TypeError),
    ])
    def test_bad_key_arguments(self, args, exc):
        t = self.make()
        for call in (t.insert, t.lookup):
            with pytest.raises(exc):
                call(*args)
        assert len(t) == 0
        self.check(t)

    def test_non_contiguous_buffer_address(self):
        t = self.make()
        with pytest.raises(BufferError):
            t.insert(memoryview(bytes(8))[::2], 80, PEER, 1)

    @pytest.mark.parametrize("cap, exc", [("4", TypeError), (4.0, TypeError), (None, TypeError),
                                          (-1, ValueError), (1 << 24 | 1, ValueError),
                                          (1 << 100, ValueError)])
    def test_bad_capacity(self, cap, exc):
        with pytest.raises(exc):
            self.mod.ConnectionTable(cap)

    def test_constructor_arguments(self):
        t = self.mod.ConnectionTable(capacity=3, hash_seed=U64)
        assert t.capacity == 3 and t.hash_seed == U64
        with pytest.raises(TypeError):
            self.mod.ConnectionTable(3, 5)                  # hash_seed is keyword-only
        with pytest.raises(TypeError):
            self.mod.ConnectionTable(3, hash_seed="x")
        with pytest.raises(ValueError):
            self.mod.ConnectionTable(3, hash_seed=-1)
        with pytest.raises(ValueError):
            self.mod.ConnectionTable(3, hash_seed=1 << 64)
        with pytest.raises(TypeError):
            self.mod.ConnectionTable()
        try:    # ~4 GiB of address space, never touched: fine unless overcommit is off
            biggest = self.mod.ConnectionTable(self.mod.MAX_CAPACITY)
        except MemoryError:
            pytest.skip("no address space for a MAX_CAPACITY table here")
        assert biggest.capacity == self.mod.MAX_CAPACITY

    def test_hash_seed_does_not_change_results(self):
        a, b = self.make(20, hash_seed=0), self.make(20, hash_seed=0xDEADBEEF)
        for i in range(20):
            assert a.insert(*key(i)) == b.insert(*key(i))
        for i in range(25):
            assert a.lookup(*key(i)) == b.lookup(*key(i))
        self.check(b)

    # --------------------------------------------------------- per-slot state

    def test_fields_list(self):
        fields = self.mod.FIELDS
        assert len(fields) == len(set(fields))
        for name in ("State", "RcvNxt", "RcvWnd", "SndUna", "SndNxt", "SndMax", "SndWnd",
                     "MaxSndWnd", "SendWL1", "CWnd", "SsThresh", "SRtt", "RttVar", "TsRecent",
                     "TsRecentAge", "TsTime", "TotalRT", "DupAckCount", "SndWndProbeCount",
                     "KeepAliveProbeCount", "KeepAliveTimeoutDelta", "RetransmitCount",
                     "RetransmitTimeoutDelta", "ConstFlags", "RemoteMss", "SndWindScale",
                     "RcvWindScale", "CachedFlags", "InitialRcvWnd", "KaProbeCount", "KaTimeout",
                     "KaInterval", "MaxRT", "TtlOrHopLimit", "TosOrTrafficClass", "path_id",
                     "neighbor_id", "context", "retransmit_deadline", "persist_deadline",
                     "keepalive_deadline", "delayed_ack_deadline", "fin_wait_2_deadline",
                     "send_buffer_offset", "receive_buffer_offset"):
            assert name in fields
        fm = self.mod.FIELD_MAX
        assert set(fm) == set(fields)
        assert fm["SRtt"] == 0xFFFF and fm["DupAckCount"] == 0xFF and fm["SndUna"] == 0xFFFFFFFF
        assert fm["SndWindScale"] == 15 and fm["UserPriority"] == 7 and fm["context"] == U64
        with pytest.raises(TypeError):
            fm["SRtt"] = 1                                  # read-only mapping

    def test_defaults(self):
        t = self.make()
        h = t.insert(*key(0))
        s = t.get_state(h)
        assert list(s) == list(self.mod.FIELDS)
        stopped = {"retransmit_deadline", "persist_deadline", "keepalive_deadline",
                   "delayed_ack_deadline", "fin_wait_2_deadline"}
        for name, v in s.items():
            if name in stopped:
                assert v == self.mod.TIMER_STOPPED == U64
            elif name in ("KeepAliveTimeoutDelta", "RetransmitTimeoutDelta"):
                assert v == 0xFFFFFFFF
            else:
                assert v == 0, name

    def test_set_every_field_to_its_max_and_back(self):
        t = self.make()
        h = t.insert(*key(0))
        other = t.insert(*key(1))
        before = t.get_state(other)
        t.set_fields(h, **self.mod.FIELD_MAX)
        assert t.get_state(h) == dict(self.mod.FIELD_MAX)
        assert t.get_state(other) == before                # slots do not overlap
        for name in self.mod.FIELDS:
            assert t.get_field(h, name) == self.mod.FIELD_MAX[name]
        zeros = dict.fromkeys(self.mod.FIELDS, 0)
        t.set_fields(h, **zeros)
        assert t.get_state(h) == zeros
        t.set_fields(h)                                     # nothing to set is fine
        assert t.get_state(h) == zeros

    def test_state_round_trips(self):
        t = self.make()
        h = t.insert(*key(0))
        t.set_fields(h, State=4, RcvNxt=0xFFFFFFFF, SndUna=123456789, SRtt=800, RttVar=400,
                     context=1 << 63, path_id=7, neighbor_id=9, retransmit_deadline=1 << 40)
        s = t.get_state(h)
        t2 = self.make()
        h2 = t2.insert(*key(0))
        t2.set_fields(h2, **s)
        assert t2.get_state(h2) == s

    def test_reused_slot_starts_from_defaults(self):
        t = self.make(1)
        h = t.insert(*key(0))
        fresh = t.get_state(h)
        t.set_fields(h, **self.mod.FIELD_MAX)
        t.remove(h)
        h2 = t.insert(*key(1))
        assert t.get_state(h2) == fresh

    def test_unknown_field(self):
        t = self.make()
        h = t.insert(*key(0))
        with pytest.raises(KeyError, match="NoSuchField"):
            t.set_fields(h, NoSuchField=1)
        with pytest.raises(KeyError, match="sndUna"):
            t.get_field(h, "sndUna")
        with pytest.raises(TypeError):
            t.get_field(h, 5)
        with pytest.raises(KeyError):
            t.set_fields(h, local_ip=1)                     # the key is not a field

    @pytest.mark.parametrize("name, value, exc", [
        ("SndUna", 1 << 32, OverflowError),
        ("SndUna", -1, OverflowError),
        ("SRtt", 0x10000, OverflowError),
        ("DupAckCount", 256, OverflowError),
        ("SndWindScale", 16, OverflowError),
        ("UserPriority", 8, OverflowError),
        ("context", 1 << 64, OverflowError),
        ("context", -(1 << 200), OverflowError),
        ("SndUna", 1.0, TypeError),
        ("SndUna", "1", TypeError),
        ("SndUna", None, TypeError),
    ])
    def test_bad_field_values(self, name, value, exc):
        t = self.make()
        h = t.insert(*key(0))
        before = t.get_state(h)
        with pytest.raises(exc):
            t.set_fields(h, RcvNxt=77, **{name: value})     # all or nothing
        assert t.get_state(h) == before

    def test_set_fields_positional_misuse(self):
        t = self.make()
        h = t.insert(*key(0))
        with pytest.raises(TypeError):
            t.set_fields()
        with pytest.raises(TypeError):
            t.set_fields(h, 5)
        with pytest.raises(TypeError):
            t.get_field(h)

    def test_field_name_that_removes_the_connection(self):
        """A str subclass whose __eq__ removes the connection while the name is looked up."""
        t = self.make()
        h = t.insert(*key(0))

        class Evil(str):
            def __hash__(self):
                return str.__hash__(self)

            def __eq__(self, other):
                if t.is_valid(h):
                    t.remove(h)
                return str.__eq__(self, other)

        with pytest.raises(self.mod.StaleHandleError):
            t.set_fields(h, **{Evil("SndUna"): 5})
        h = t.insert(*key(0))
        with pytest.raises(self.mod.StaleHandleError):
            t.get_field(h, Evil("SndUna"))
        self.check(t)

    # ------------------------------------------------------- handles(), clear()

    def test_handles_in_slot_order_and_snapshot(self):
        t = self.make(6)
        hs = [t.insert(*key(i)) for i in range(6)]
        t.remove(hs[2])
        t.remove(hs[4])
        assert list(t.handles()) == [hs[0], hs[1], hs[3], hs[5]]
        for h in t.handles():                               # removing while iterating is safe
            t.remove(h)
        assert len(t) == 0

    def test_clear(self):
        t = self.make(4)
        hs = [t.insert(*key(i)) for i in range(3)]
        t.clear()
        assert len(t) == 0
        assert not any(t.is_valid(h) for h in hs)
        assert all(t.lookup(*key(i)) is None for i in range(3))
        self.check(t)
        h = t.insert(*key(9))
        assert h == (2 << 32 | 0)                          # slot 0 again, next generation
        assert [t.insert(*key(i)) for i in range(3)] == [2 << 32 | 1, 2 << 32 | 2, 1 << 32 | 3]
        self.check(t)

    # ------------------------------------------------------------ lookup_frame

    def test_lookup_frame_classifies_received_frames(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        frame = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=b"hello")
        assert t.lookup_frame(frame) == h
        assert t.lookup_frame(frame, 14) == h
        assert t.lookup_frame(frame, offset_of_ipv4_header=14) == h
        assert t.lookup_frame(bytearray(frame)) == h
        assert t.lookup_frame(memoryview(frame)) == h
        assert t.lookup_frame(memoryview(b"xx" + frame)[2:]) == h
        # the frame we would send (local -> peer) is not a received frame of this connection
        assert t.lookup_frame(ipv4_tcp_frame(LOCAL, 80, PEER, 4000)) is None
        assert t.lookup_frame(ipv4_tcp_frame(PEER, 4001, LOCAL, 80)) is None

    def test_lookup_frame_offsets(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        frame = ipv4_tcp_frame(PEER, 4000, LOCAL, 80)
        assert t.lookup_frame(frame[14:], 0) == h              # bare IPv4 packet
        tagged = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, vlan=5)
        assert t.lookup_frame(tagged, 18) == h                 # 802.1Q: inner type is 0x0800
        assert t.lookup_frame(tagged) is None                  # 0x8100 is not IPv4
        assert t.lookup_frame(b"\x00\x00\x08\x00" + frame[14:], 4) == h   # TUN PI header
        assert t.lookup_frame(frame, len(frame)) is None
        assert t.lookup_frame(frame, len(frame) + 1) is None
        assert t.lookup_frame(frame, 1 << 80) is None
        assert t.lookup_frame(frame, 15) is None

    def test_lookup_frame_ip_options_padding_payload(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        opts = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, ip_options=b"\x01\x01\x01\x00" * 10,
                              tcp_options=b"\x02\x04\x05\xb4\x01\x03\x03\x07")
        assert t.lookup_frame(opts) == h
        assert t.lookup_frame(ipv4_tcp_frame(PEER, 4000, LOCAL, 80, padding=bytes(6))) == h
        big = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=bytes(1460))
        assert t.lookup_frame(big) == h
        no_df = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, flags_frag=0)
        assert t.lookup_frame(no_df) == h

    @pytest.mark.parametrize("kw", [
        {"ethertype": 0x86DD},            # not IPv4
        {"ethertype": 0x0806},
        {"proto": 17},                    # UDP
        {"proto": 1},
        {"flags_frag": 0x2000},           # first fragment (MF)
        {"flags_frag": 0x0001},           # later fragment
        {"flags_frag": 0x4000 | 0x2000},
        {"version": 6},
    ])
    def test_lookup_frame_rejects_non_tcp_ipv4(self, kw):
        t = self.make()
        t.insert(LOCAL, 80, PEER, 4000)
        assert t.lookup_frame(ipv4_tcp_frame(PEER, 4000, LOCAL, 80, **kw)) is None

    def test_lookup_frame_rejects_malformed_headers(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        good = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=b"abcd")
        assert t.lookup_frame(good) == h

        def edit(offset: int, value: int, fix: bool = True) -> bytes:
            b = bytearray(good)
            b[offset] = value
            return fix_ip_checksum(b) if fix else bytes(b)

        assert t.lookup_frame(edit(24, good[24] ^ 0x01, fix=False)) is None   # bad checksum
        assert t.lookup_frame(edit(14, 0x44)) is None          # IHL 4 < 5
        assert t.lookup_frame(edit(14, 0x4F)) is None          # IHL 15 > total length
        short_total = fix_ip_checksum(good[:16] + (39).to_bytes(2, "big") + good[18:])
        assert t.lookup_frame(short_total) is None             # Total Length < IP + TCP
        long_total = fix_ip_checksum(good[:16] + (len(good) - 14 + 1).to_bytes(2, "big")
                                     + good[18:])
        assert t.lookup_frame(long_total) is None              # Total Length > buffer
        assert t.lookup_frame(edit(14 + 20 + 12, 0x40)) is None   # TCP data offset 4
        assert t.lookup_frame(edit(14 + 20 + 12, 0xF0)) is None   # TCP header > packet

    def test_lookup_frame_truncated_at_every_length(self):
        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        frame = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=b"xy")
        for n in range(len(frame)):
            assert t.lookup_frame(frame[:n]) is None, n
            assert t.lookup_frame(bytearray(frame[:n])) is None, n
        assert t.lookup_frame(frame) == h

    def test_lookup_frame_garbage(self):
        t = self.make()
        t.insert(LOCAL, 80, PEER, 4000)
        rng = random.Random(7)
        for n in (0, 1, 13, 14, 20, 33, 34, 53, 54, 60, 1514):
            assert t.lookup_frame(bytes(n)) is None
            assert t.lookup_frame(b"\xff" * n) is None
            assert t.lookup_frame(rng.randbytes(n)) is None

    @pytest.mark.parametrize("frame, offset, exc", [
        ("not bytes", 14, TypeError),
        (None, 14, TypeError),
        (12345, 14, TypeError),
        (b"\x00" * 60, -1, ValueError),
        (b"\x00" * 60, -(1 << 100), ValueError),
        (b"\x00" * 60, "14", TypeError),
        (b"\x00" * 60, 14.0, TypeError),
        (memoryview(bytes(120))[::2], 14, BufferError),
    ])
    def test_lookup_frame_bad_arguments(self, frame, offset, exc):
        t = self.make()
        with pytest.raises(exc):
            t.lookup_frame(frame, offset)

    def test_lookup_frame_call_forms(self):
        t = self.make()
        frame = ipv4_tcp_frame(PEER, 4000, LOCAL, 80)
        with pytest.raises(TypeError):
            t.lookup_frame()
        with pytest.raises(TypeError):
            t.lookup_frame(frame, 14, 0)
        with pytest.raises(TypeError):
            t.lookup_frame(frame, offset=14)
        with pytest.raises(TypeError):
            t.lookup_frame(frame, 14, offset_of_ipv4_header=14)
        with pytest.raises(TypeError):
            t.lookup_frame(frame=frame)

    def test_lookup_frames_burst(self):
        t = self.make()
        h1 = t.insert(LOCAL, 80, PEER, 4000)
        h2 = t.insert(LOCAL, 80, PEER, 4001)
        burst = [ipv4_tcp_frame(PEER, 4000, LOCAL, 80), b"", bytes(60),
                 bytearray(ipv4_tcp_frame(PEER, 4001, LOCAL, 80)),
                 ipv4_tcp_frame(PEER, 4002, LOCAL, 80),
                 memoryview(ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=b"x"))]
        assert t.lookup_frames(burst) == [h1, None, None, h2, None, h1]
        assert t.lookup_frames(burst) == [t.lookup_frame(f) for f in burst]
        assert t.lookup_frames(iter(burst)) == t.lookup_frames(tuple(burst))
        assert t.lookup_frames([]) == []
        bare = [f[14:] for f in burst[:1]]
        assert t.lookup_frames(bare, 0) == [h1]
        assert t.lookup_frames(bare, offset_of_ipv4_header=0) == [h1]
        assert t.lookup_frames(burst, 1 << 80) == [None] * len(burst)

    @pytest.mark.parametrize("frames, offset, exc", [
        (5, 14, TypeError),
        (None, 14, TypeError),
        ([b"", "x"], 14, TypeError),
        ([b"", None], 14, TypeError),
        ([], -1, ValueError),
        ([], "14", TypeError),
        ([memoryview(bytes(120))[::2]], 14, BufferError),
    ])
    def test_lookup_frames_bad_arguments(self, frames, offset, exc):
        t = self.make()
        with pytest.raises(exc):
            t.lookup_frames(frames, offset)
        with pytest.raises(TypeError):
            t.lookup_frames()
        with pytest.raises(TypeError):
            t.lookup_frames([], 14, offset_of_ipv4_header=14)

    def test_lookup_frame_with_other_buffer_types(self):
        import array

        t = self.make()
        h = t.insert(LOCAL, 80, PEER, 4000)
        frame = ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=b"ab")   # even length
        assert t.lookup_frame(array.array("H", frame)) == h
        assert t.lookup_frame(memoryview(frame).cast("H")) == h

    @fuzz_settings(300)
    @given(data=st.binary(max_size=200), offset=st.integers(0, 220))
    def test_fuzz_lookup_frame_random(self, data, offset):
        t = self.make(4)
        t.insert(LOCAL, 80, PEER, 4000)
        r = t.lookup_frame(data, offset)
        assert r is None or t.is_valid(r)

    @fuzz_settings(400)
    @given(payload=st.binary(max_size=40),
           edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
           cut=st.integers(0, 130), fix=st.booleans(), offset=st.sampled_from([14, 0, 12, 18]))
    def test_fuzz_lookup_frame_mutated(self, payload, edits, cut, fix, offset):
        t = self.make(4)
        h = t.insert(LOCAL, 80, PEER, 4000)
        frame = bytearray(ipv4_tcp_frame(PEER, 4000, LOCAL, 80, payload=payload))
        for pos, value in edits:
            if pos < len(frame):
                frame[pos] = value
        ihl = (frame[14] & 0x0F) * 4
        if fix and ihl >= 20 and 14 + ihl <= len(frame):
            frame = bytearray(fix_ip_checksum(frame))
        intact = not edits and cut >= len(frame)
        frame = frame[:cut]
        r = t.lookup_frame(bytes(frame), offset)
        assert r is None or r == h
        if intact and offset == 14:
            assert r == h

    # ------------------------------------------------------------------ memory

    def test_memory_bytes(self):
        small = self.make(10)
        big = self.make(10_000)
        assert 0 < small.memory_bytes() < big.memory_bytes()
        t = self.make(10)
        before = t.memory_bytes()
        for i in range(10):
            t.insert(*key(i))
        assert t.memory_bytes() >= before


class TestPythonTable(BaseTableTests):
    mod = pytable


@pytest.mark.skipif(_ctable is None, reason=NOT_BUILT)
class TestCTable(BaseTableTests):
    mod = _ctable

    def test_memory_per_connection_at_one_million(self):
        # The block is calloc'ed: pages that are never written are never touched, so this
        # costs little; the figure is what the table allocated for a million slots.
        t = self.mod.ConnectionTable(1_000_000)
        per_connection = t.memory_bytes() / 1_000_000
        assert per_connection <= 256
        assert t._index_size == 1 << 21
        assert per_connection >= t.slot_size

    def test_home_bucket_matches_the_documented_hash(self):
        rng = random.Random(3)
        for seed in (0, 1, U64, 0x0123456789ABCDEF):
            t = self.mod.ConnectionTable(100, hash_seed=seed)
            mask = t._index_size - 1
            assert t._index_size == 256
            for _ in range(200):
                k = (rng.randbytes(4), rng.randrange(65536), rng.randbytes(4), rng.randrange(65536))
                assert t._home_bucket(*k) == pytable.hash_key(*k, seed) & mask

    @pytest.mark.parametrize("capacity, index_size", [(0, 2), (1, 2), (2, 4), (3, 8), (4, 8),
                                                      (5, 16), (1000, 2048), (1024, 2048)])
    def test_index_size(self, capacity, index_size):
        assert self.mod.ConnectionTable(capacity)._index_size == index_size

    def test_not_subclassable_and_immutable_type(self):
        with pytest.raises(TypeError):
            type("Sub", (self.mod.ConnectionTable,), {})
        with pytest.raises(TypeError):
            self.mod.ConnectionTable.slot_size = 1
        assert self.mod.ConnectionTable.__module__ == "offload_target._ctable"

    def test_type_refcount_is_balanced(self):
        tp = self.mod.ConnectionTable
        before = sys.getrefcount(tp)
        tables = [tp(16) for _ in range(100)]
        assert sys.getrefcount(tp) == before + 100
        del tables
        assert sys.getrefcount(tp) == before

    def test_block_is_freed(self):
        """tracemalloc sees PyMem_Calloc: every table's block goes away with the table."""
        import gc
        import tracemalloc

        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            t = self.mod.ConnectionTable(50_000)
            assert tracemalloc.get_traced_memory()[0] - base >= t.memory_bytes() - 4096
            del t
            for i in range(20):
                t = self.mod.ConnectionTable(50_000)
                t.set_fields(t.insert(*key(i)), SndUna=i)
                del t
            assert tracemalloc.get_traced_memory()[0] - base < 64 * 1024
        finally:
            tracemalloc.stop()

    def test_module_state_per_module(self):
        """Multi-phase init: a second copy of the module has its own types and exceptions."""
        import importlib.util

        spec = importlib.util.find_spec("offload_target._ctable")
        second = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(second)
        assert second.ConnectionTable is not self.mod.ConnectionTable
        assert second.TableFullError is not self.mod.TableFullError
        t = second.ConnectionTable(0)
        with pytest.raises(second.TableFullError):
            t.insert(*key(0))


# ----------------------------------------------- both implementations side by side


@pytest.mark.skipif(_ctable is None, reason=NOT_BUILT)
class TestTwinMatchesC:
    def test_same_constants(self):
        assert _ctable.FIELDS == pytable.FIELDS
        assert dict(_ctable.FIELD_MAX) == dict(pytable.FIELD_MAX)
        assert _ctable.SLOT_SIZE == pytable.SLOT_SIZE == _ctable.ConnectionTable.slot_size
        assert _ctable.TIMER_STOPPED == pytable.TIMER_STOPPED
        assert _ctable.MAX_CAPACITY == pytable.MAX_CAPACITY
        for name in ("TableError", "TableFullError", "DuplicateConnectionError",
                     "StaleHandleError"):
            c, p = getattr(_ctable, name), getattr(pytable, name)
            assert [b.__name__ for b in c.__mro__] == [b.__name__ for b in p.__mro__]

    def test_same_signatures(self):
        import inspect

        for name in ("insert", "lookup", "lookup_frame", "lookup_frames", "remove", "is_valid",
                     "get_key",
                     "get_state", "get_field", "set_fields", "handles", "clear",
                     "memory_bytes"):
            c = inspect.signature(getattr(_ctable.ConnectionTable, name))
            p = inspect.signature(getattr(pytable.ConnectionTable, name))
            assert [(x.name, x.kind, x.default) for x in c.parameters.values()] == \
                   [(x.name, x.kind, x.default) for x in p.parameters.values()], name

    @settings(max_examples=500, deadline=None)
    @given(ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
           payload=st.binary(max_size=40), garbage=st.binary(max_size=80),
           edits=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=3),
           fix=st.booleans(), cut=st.integers(0, 140), offset=st.integers(0, 30))
    def test_fuzz_lookup_frame_same_answer(self, ports, payload, garbage, edits, fix, cut,
                                           offset):
        """C and twin classify mutated, truncated and random frames identically."""
        c, p = _ctable.ConnectionTable(4), pytable.ConnectionTable(4)
        for t in (c, p):
            t.insert(LOCAL, 80, PEER, 4000)
            if ports != (80, 4000):
                t.insert(LOCAL, ports[0], PEER, ports[1])
        frame = bytearray(ipv4_tcp_frame(PEER, ports[1], LOCAL, ports[0], payload=payload))
        for pos, value in edits:
            if pos < len(frame):
                frame[pos] = value
        ihl = (frame[14] & 0x0F) * 4
        if fix and ihl >= 20 and 14 + ihl <= len(frame):
            frame = bytearray(fix_ip_checksum(frame))
        candidates = [bytes(frame[:cut]), bytes(frame), garbage, bytearray(frame)]
        for d in candidates:
            assert c.lookup_frame(d, offset) == p.lookup_frame(d, offset)
            assert c.lookup_frame(d) == p.lookup_frame(d)
        assert c.lookup_frames(candidates, offset) == p.lookup_frames(candidates, offset)
        assert c.lookup_frames(candidates) == [c.lookup_frame(d) for d in candidates]

    def test_scapy_built_frames(self):
        scapy = pytest.importorskip("scapy.all")
        c, p = _ctable.ConnectionTable(4), pytable.ConnectionTable(4)
        hc, hp = c.insert(LOCAL, 80, PEER, 4000), p.insert(LOCAL, 80, PEER, 4000)
        pkts = [
            scapy.Ether() / scapy.IP(src="198.19.0.2", dst="198.18.0.1")
            / scapy.TCP(sport=4000, dport=80, flags="PA") / b"data",
            scapy.Ether() / scapy.IP(src="198.19.0.2", dst="198.18.0.1",
                                     options=[scapy.IPOption_RR(routers=["1.2.3.4"])])
            / scapy.TCP(sport=4000, dport=80, options=[("MSS", 1460), ("NOP", None),
                                                       ("WScale", 7)]),
            scapy.Ether() / scapy.Dot1Q(vlan=3) / scapy.IP(src="198.19.0.2", dst="198.18.0.1")
            / scapy.TCP(sport=4000, dport=80),
        ]
        raw = [bytes(x) for x in pkts]
        assert c.lookup_frame(raw[0]) == hc and p.lookup_frame(raw[0]) == hp
        assert c.lookup_frame(raw[1]) == hc and p.lookup_frame(raw[1]) == hp
        assert c.lookup_frame(raw[2], 18) == hc and p.lookup_frame(raw[2], 18) == hp
        udp = bytes(scapy.Ether() / scapy.IP(src="198.19.0.2", dst="198.18.0.1")
                    / scapy.UDP(sport=4000, dport=80))
        frag = bytes(scapy.Ether() / scapy.IP(src="198.19.0.2", dst="198.18.0.1", flags="MF")
                     / scapy.TCP(sport=4000, dport=80))
        for t in (c, p):
            assert t.lookup_frame(udp) is None and t.lookup_frame(frag) is None


# ------------------------------------------------------------- the selector module


def test_table_selects_c_when_built():
    expected = "c" if _ctable is not None and not os.environ.get("VNIC_PURE_PYTHON") else "python"
    assert table.IMPLEMENTATION == expected
    mod = table.implementation_module()
    assert table.ConnectionTable is mod.ConnectionTable
    assert table.TableFullError is mod.TableFullError
    assert table.StaleHandleError is mod.StaleHandleError
    assert table.DuplicateConnectionError is mod.DuplicateConnectionError
    assert table.FIELDS == pytable.FIELDS


def test_vnic_pure_python_selects_the_twin():
    env = dict(os.environ, VNIC_PURE_PYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", "from offload_target import table; "
         "print(table.IMPLEMENTATION, table.ConnectionTable.__module__)"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "offload_target.pytable"]
