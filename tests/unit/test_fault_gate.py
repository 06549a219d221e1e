"""The runner's wire-fault gate (``[faults] during / after_frames / frames / nth``): synthetic
frames and handoff events fed to each direction's predicate, no stack or target behind them."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tcpip.offload_socket import OffloadState
from vnic.faults import WireFaults
from vnic.runner import ConnRun, Controller, _wire_faults
from vnic.scenario import parse_scenario

IN_HOST, OFFLOADING, OFFLOADED, UPLOADING = (OffloadState.IN_HOST, OffloadState.OFFLOADING,
                                             OffloadState.OFFLOADED, OffloadState.UPLOADING)
# the chimney event that puts a connection in each state (what Controller.watch_handoffs follows)
EVENT = {OFFLOADING: "offload-start", OFFLOADED: "offload-complete", UPLOADING: "terminate-start",
         IN_HOST: "terminate-complete"}
PEER_PORT = 5001


class _Sock:
    def __init__(self, key: Any) -> None:
        self.key = key
        self.offload_state = IN_HOST


class _Chimney:
    def __init__(self) -> None:
        self.observers: list[Any] = []


class _Host:
    def __init__(self) -> None:
        self.chimney = _Chimney()
        self.watch = None


class Rig:
    """A controller over ``n`` connections (host port 40000 + i) with its gates installed."""

    def __init__(self, faults: dict[str, Any], n: int = 2) -> None:
        faults = {"both": {"loss": 1.0}, **faults}
        self.scn = parse_scenario({"flow": [{"count": n}], "faults": faults})
        self.conns = [ConnRun(i, self.scn.flows[0], 1) for i in range(n)]
        self.host = _Host()
        self.ctl = Controller(self.scn, self.host, self.conns, 1, lambda: 0.0, virtual=True,
                              say=lambda _m: None, live=None, live_interval=1.0)
        for i, c in enumerate(self.conns):
            c.sock = _Sock(("conn", i))
            c.local_port, c.remote_port = 40000 + i, PEER_PORT
            self.ctl.by_port[(c.local_port, c.remote_port)] = c
        self.ctl.watch_handoffs()
        self.wire = _wire_faults(self.scn, 1)
        assert isinstance(self.wire, WireFaults)
        self.ctl.install_fault_gates(self.wire)

    def enter(self, conn: int, state: OffloadState) -> None:
        c = self.conns[conn]
        c.sock.offload_state = state
        for ob in self.host.chimney.observers:
            ob(EVENT[state], {"key": c.sock.key})

    def up(self, conn: int = 0, data: bool = True) -> bool:
        """Does the host -> peer gate take this frame of ``conn``?"""
        match = self.wire.a_to_b.spec.match
        assert match is not None
        return match(frame(40000 + conn, PEER_PORT, data))

    def down(self, conn: int = 0, data: bool = True) -> bool:
        match = self.wire.b_to_a.spec.match
        assert match is not None
        return match(frame(PEER_PORT, 40000 + conn, data))

    def ups(self, k: int, conn: int = 0, data: bool = True) -> list[bool]:
        return [self.up(conn, data) for _ in range(k)]


def frame(sport: int, dport: int, data: bool) -> bytes:
    payload = b"x" * 100 if data else b""
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x76\x6e\x00\x01\x02" + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18 if data else 0x10,
                      65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0,
                     bytes([198, 18, 1, 2]), bytes([198, 18, 1, 1]))
    return eth + ip + tcp + payload


def cycle(rig: Rig, conn: int = 0) -> None:
    """Offload and upload ``conn`` without a frame in between."""
    for st in (OFFLOADING, OFFLOADED, UPLOADING, IN_HOST):
        rig.enter(conn, st)


def test_uploading_window_is_the_upload_and_the_first_frames_back_in_the_host() -> None:
    rig = Rig({"during": "uploading", "after_frames": 3})
    assert rig.ups(4) == [False] * 4  # never uploaded yet
    rig.enter(0, OFFLOADING)
    assert not rig.up()
    rig.enter(0, OFFLOADED)
    assert rig.ups(2) == [False, False]
    rig.enter(0, UPLOADING)
    assert rig.ups(5) == [True] * 5  # the whole upload, whatever its length
    rig.enter(0, IN_HOST)
    assert rig.ups(5) == [True, True, True, False, False]
    rig.enter(0, OFFLOADING)  # the next offload: not an upload window
    assert not rig.up()


def test_uploading_window_opens_without_a_frame_during_the_upload() -> None:
    """The window follows the chimney's events, not the state a frame happens to see: an
    upload no frame was sent in still opens it (the first frames back in the host)."""
    rig = Rig({"during": "uploading", "after_frames": 2})
    cycle(rig)
    assert rig.ups(3) == [True, True, False]
    cycle(rig)
    assert rig.ups(3) == [True, True, False]


def test_offloading_window() -> None:
    rig = Rig({"during": "offloading", "after_frames": 1})
    assert not rig.up()
    rig.enter(0, OFFLOADING)
    assert rig.ups(3) == [True] * 3
    rig.enter(0, OFFLOADED)
    assert rig.ups(3) == [True, False, False]
    rig.enter(0, UPLOADING)
    assert not rig.up()
    rig.enter(0, IN_HOST)
    assert not rig.up()


def test_frames_data_and_control_select_and_after_frames_counts_only_those() -> None:
    rig = Rig({"during": "uploading", "after_frames": 2, "frames": "data"})
    cycle(rig)
    assert [rig.up(data=False), rig.up(), rig.up(data=False), rig.up(), rig.up()] == \
        [False, True, False, True, False]
    rig = Rig({"during": "uploading", "after_frames": 2, "frames": "control"})
    cycle(rig)
    assert [rig.up(), rig.up(data=False), rig.up(), rig.up(data=False), rig.up(data=False)] == \
        [False, True, False, True, False]


def test_nth_per_window() -> None:
    rig = Rig({"during": "uploading", "after_frames": 10, "frames": "data", "nth": 2})
    assert rig.ups(3) == [False] * 3
    rig.enter(0, OFFLOADING)
    rig.enter(0, OFFLOADED)
    rig.enter(0, UPLOADING)
    assert [rig.up(data=False), rig.up(), rig.up(data=False), rig.up(), rig.up()] == \
        [False, False, False, True, False]
    rig.enter(0, IN_HOST)  # the same window goes on back in the host
    assert rig.ups(3) == [False] * 3
    cycle(rig)  # a new window: its 2nd data segment again
    assert rig.ups(4) == [False, True, False, False]
    assert rig.ctl.gate_stats["a_to_b"] == {"windows": 2, "targeted": 2}


def test_nth_counts_per_connection_and_direction() -> None:
    rig = Rig({"during": "uploading", "frames": "data", "nth": 1})
    cycle(rig, 0)
    cycle(rig, 1)
    # interleaved: each connection and direction has its own first data segment
    got = [rig.down(0), rig.up(1), rig.up(0), rig.down(1), rig.up(0), rig.down(0), rig.up(1),
           rig.down(1)]
    assert got == [True, True, True, True, False, False, False, False]
    cycle(rig, 1)  # only connection 1 has a new window
    assert [rig.up(0), rig.down(0), rig.up(1), rig.down(1), rig.up(1)] == \
        [False, False, True, True, False]
    assert rig.ctl.gate_stats == {"a_to_b": {"windows": 3, "targeted": 3},
                                  "b_to_a": {"windows": 3, "targeted": 3}}


def test_without_nth_every_frame_of_the_window_is_taken() -> None:
    rig = Rig({"during": "uploading", "after_frames": 4})
    cycle(rig)
    assert rig.ups(5) == [True] * 4 + [False]
    assert rig.ctl.gate_stats["a_to_b"] == {"windows": 1, "targeted": 4}


def test_handoff_gate_unchanged_and_nth_per_handoff() -> None:
    rig = Rig({"during": "handoff", "after_frames": 2})
    assert not rig.up()
    rig.enter(0, OFFLOADING)
    assert rig.ups(3) == [True] * 3
    rig.enter(0, OFFLOADED)
    assert rig.ups(3) == [True, True, False]
    rig.enter(0, UPLOADING)
    assert rig.ups(2) == [True, True]
    rig.enter(0, IN_HOST)
    assert rig.ups(3) == [True, True, False]
    # nth: one frame per Offloading or Uploading entered
    rig = Rig({"during": "handoff", "after_frames": 2, "nth": 1})
    rig.enter(0, OFFLOADING)
    assert rig.ups(2) == [True, False]
    rig.enter(0, OFFLOADED)
    assert rig.ups(2) == [False, False]
    rig.enter(0, UPLOADING)
    assert rig.ups(2) == [True, False]


def test_offloaded_with_frames_and_nth() -> None:
    rig = Rig({"during": "offloaded", "frames": "control", "nth": 2})
    assert not rig.up(data=False)
    rig.enter(0, OFFLOADING)
    rig.enter(0, OFFLOADED)
    assert [rig.up(data=False), rig.up(), rig.up(data=False), rig.up(data=False)] == \
        [False, False, True, False]
    rig.enter(0, UPLOADING)
    assert not rig.up(data=False)
    rig.enter(0, IN_HOST)
    rig.enter(0, OFFLOADING)
    rig.enter(0, OFFLOADED)
    assert [rig.up(data=False), rig.up(data=False)] == [False, True]


@pytest.mark.parametrize("frames", ["any", "data", "control"])
def test_always_with_frames(frames: str) -> None:
    rig = Rig({"frames": frames})
    match = rig.wire.a_to_b.spec.match
    if frames == "any":
        assert match is None and rig.wire.b_to_a.spec.match is None
        return
    assert match is not None and rig.wire.b_to_a.spec.match is match
    want = frames == "data"
    assert match(frame(40000, PEER_PORT, True)) is want
    assert match(frame(40000, PEER_PORT, False)) is not want
    assert not match(b"\xff" * 60)  # not IPv4/TCP: neither kind


def test_frames_outside_the_run_are_not_taken() -> None:
    rig = Rig({"during": "uploading"})
    cycle(rig)
    assert not rig.wire.a_to_b.spec.match(frame(40009, PEER_PORT, True))  # unknown connection
    assert not rig.wire.a_to_b.spec.match(b"\xff" * 60)  # not IPv4/TCP
    assert rig.up()


def test_scenario_keys_parse() -> None:
    scn = parse_scenario({"flow": [{}], "faults": {"both": {"loss": 0.5}}})
    assert (scn.faults.during, scn.faults.frames, scn.faults.nth) == ("always", "any", None)
    for during in ("offloading", "uploading", "handoff", "offloaded"):
        for kind in ("any", "data", "control"):
            scn = parse_scenario({"flow": [{}], "faults": {"during": during, "frames": kind,
                                                           "nth": 3, "up": {"loss": 1.0}}})
            assert (scn.faults.during, scn.faults.frames, scn.faults.nth) == (during, kind, 3)
    scn = parse_scenario({"flow": [{}], "faults": {"frames": "data", "down": {"loss": 1.0}}})
    assert scn.faults.frames == "data" and scn.faults.nth is None


def test_a_next_handoff_closes_the_after_window() -> None:
    # the "after" frames of an uploading window are the resumed connection's in the host: when
    # the next offload starts before after_frames of them went by, the window is over (the
    # NIC's frames are not "after the upload")
    rig = Rig({"during": "uploading", "after_frames": 8})
    rig.enter(0, OFFLOADING)
    rig.enter(0, OFFLOADED)
    rig.enter(0, UPLOADING)
    rig.enter(0, IN_HOST)
    assert rig.ups(2) == [True, True]          # the first frames back in the host
    rig.enter(0, OFFLOADING)
    assert rig.ups(3) == [False] * 3           # a new handoff: window closed
    rig.enter(0, OFFLOADED)
    assert rig.ups(3) == [False] * 3
    rig.enter(0, UPLOADING)                    # the next upload opens a new one
    assert rig.ups(1) == [True]
