"""d.9 power: before a low-power OID_PNP_SET_POWER the host uploads every connection; the
target pends the OID while anything is still offloaded and completes it (SUCCESS) once the
last object is gone; in a low-power state nothing is offloaded; D0 allows offloads again."""

from __future__ import annotations

import pytest

from ndis.state import NDIS_DEVICE_POWER_STATE as POWER
from ndis.state import OID_PNP_SET_POWER
from ndis.status import NdisStatus
from offload_target import table as table_mod
from tcpip.offload_socket import OffloadState
from tests.offload_target.test_miniport_e2e import World, payload

needs_datapath = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                    reason="the C data path is not built")

D0, D3 = POWER.NdisDeviceStateD0, POWER.NdisDeviceStateD3


@needs_datapath
def test_host_uploads_everything_then_the_device_sleeps_and_wakes() -> None:
    w = World()
    pairs = [w.connect() for _ in range(3)]
    socks = [w.offload(hw) for _, hw, _, _ in pairs]
    for i, (_, hw, _, _) in enumerate(pairs):
        hw.write(payload(50_000, i))  # in flight while the power change starts
    seen_by_target: list[tuple[int, bool]] = []
    orig = w.target.SetPower

    def spy(state):  # what the target had left when the OID reached it
        seen_by_target.append((int(state), bool(w.target.tcps)))
        return orig(state)

    w.target.SetPower = spy
    done: list[int] = []
    assert w.chimney.set_power(D3, done.append)
    assert not w.chimney.can_offload()
    w.run_until(lambda: bool(done), 10.0)
    assert done == [NdisStatus.SUCCESS]
    assert seen_by_target == [(int(D3), False)]  # d.9: the host uploaded before the OID
    assert all(s.offload_state is OffloadState.IN_HOST for s in socks)
    assert w.target.tcp_count == 0 and w.target.power_state is D3
    for i, (_, _, pr, _) in enumerate(pairs):  # nothing lost across the upload
        assert bytes(w.read_exactly(w.peer, pr, 50_000)) == payload(50_000, i)
    assert w.chimney.offload(pairs[0][1].get_extra_info("connection")) is None  # asleep
    assert w.chimney.set_power(D0, done.append)
    assert done[-1] == NdisStatus.SUCCESS and w.target.power_state is D0
    sock = w.offload(pairs[0][1])  # offloads again
    pairs[0][1].write(b"awake")
    assert bytes(w.read_exactly(w.peer, pairs[0][2], 5)) == b"awake"
    assert sock.offload_state is OffloadState.OFFLOADED
    w.checker.assert_clean()


@needs_datapath
def test_target_pends_the_oid_until_the_last_upload_and_refuses_initiates_meanwhile() -> None:
    w = World()
    pairs = [w.connect() for _ in range(2)]
    socks = [w.offload(hw) for _, hw, _, _ in pairs]
    completions: list[tuple[int, int]] = []
    w.chimney.OidRequestComplete = lambda oid, st: completions.append((oid, st))
    # a protocol that sends the OID without uploading first (against d.9): the target pends
    assert w.chimney.binding.NdisSetPower(D3) == NdisStatus.PENDING
    assert w.chimney.binding.NdisSetPower(D3) == NdisStatus.INVALID_STATE  # one at a time
    w.wire.run_for(0.2)
    assert completions == [] and w.target.power_pending
    # an initiate now fails (the device is going to sleep)
    extra = w.connect()
    sock3 = extra[1].get_extra_info("connection")
    assert w.chimney.offload(sock3) is not None
    w.run_until(lambda: sock3.offload_state is not OffloadState.OFFLOADING, 5.0)
    assert sock3.offload_state is OffloadState.IN_HOST
    w.chimney.terminate(socks[0])
    w.run_until(lambda: socks[0].offload_state is OffloadState.IN_HOST, 5.0)
    w.wire.run_for(0.1)
    assert completions == []  # one connection still offloaded
    w.chimney.terminate_all()
    w.run_until(lambda: bool(completions), 5.0)
    assert completions == [(OID_PNP_SET_POWER, NdisStatus.SUCCESS)]
    assert not w.target._anything_offloaded()
    assert all(s.offload_state is OffloadState.IN_HOST for s in socks)


def test_bad_power_states_are_refused() -> None:
    w = World()
    assert w.chimney.binding.NdisSetPower(0) == NdisStatus.INVALID_DATA
    assert w.chimney.binding.NdisSetPower(9) == NdisStatus.INVALID_DATA
    with pytest.raises(ValueError):
        w.chimney.set_power(0)
