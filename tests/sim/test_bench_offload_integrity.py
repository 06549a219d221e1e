"""``vnic bench offload --sim`` still verifies every stream although it hashes after the timed
phases: one wrong byte, or one missing chunk, reaching an application while the connection is
offloaded makes the direction "not intact"."""

from __future__ import annotations

from typing import Any

import pytest

from offload_target import table as table_mod
from tcpip.offload import OffloadedConnection
from vnic import bench_offload

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")

SIZE = 256 * 1024


def _tamper(monkeypatch: pytest.MonkeyPatch, how: str) -> list[int]:
    """Spoil the 3rd non-empty read an application makes from an offloaded connection."""
    real = OffloadedConnection.receive
    reads = [0]

    def receive(self: OffloadedConnection, max_bytes: int = -1) -> bytes:
        data: bytes = real(self, max_bytes)
        if data:
            reads[0] += 1
            if reads[0] == 3:
                if how == "flip":
                    return data[:7] + bytes([data[7] ^ 0x20]) + data[8:]
                return b""  # "drop": the bytes vanish
        return data

    monkeypatch.setattr(OffloadedConnection, "receive", receive)
    return reads


@pytest.mark.parametrize("direction", ["up", "down"])
def test_intact_when_nothing_is_spoiled(direction: str) -> None:
    r: dict[str, Any] = bench_offload._sim_direction(SIZE, direction)
    assert r["intact"] is True
    assert r["host"]["bytes"] >= SIZE and r["offloaded"]["bytes"] > 0


@pytest.mark.parametrize("how", ["flip", "drop"])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_spoiled_stream_is_not_intact(monkeypatch: pytest.MonkeyPatch, direction: str,
                                        how: str) -> None:
    reads = _tamper(monkeypatch, how)
    try:
        r = bench_offload._sim_direction(SIZE, direction)
    except RuntimeError:
        assert how == "drop"  # a phase waiting for bytes that never come may give up instead
        return
    assert reads[0] >= 3
    assert r["intact"] is False
