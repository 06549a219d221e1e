"""Seeded random schedules of chimney operations over several live connections: offload (one
or several in a tree), terminate, query, update, target upload requests (mandatory and
optional), UPLOAD_ALL / OFFLOAD_RESUME, neighbor invalidation, slow completions.  The strict ConformanceChecker must
see no violation of the host obligations (Appendix V 12-16, c.3) and every byte stream must
arrive exactly."""

from __future__ import annotations

import random

import pytest

from ndis.driver import NDIS_STATUS_INDICATION
from ndis.state import TCP_UPLOAD_REASON
from ndis.status import NdisStatus
from tcpip.offload_socket import OffloadState
from tests.offload_host.rig import Rig
from tests.offload_host.test_e2e_handoff import App, _spawn


@pytest.mark.parametrize("seed", range(1, 61))
def test_random_operation_schedule(seed: int) -> None:
    rng = random.Random(seed)
    rig = Rig(seed, bandwidth=20e6, latency=0.0003, ims=seed % 3)
    apps = []
    socks = []
    for _ in range(rng.randrange(2, 5)):
        hr, hw, pr, pw = rig.connect()
        host_data = rng.randbytes(rng.randrange(20_000, 120_000))
        peer_data = rng.randbytes(rng.randrange(20_000, 120_000))
        ha, pa = App(), App()
        _spawn(rig, rig.host, hr, hw, host_data, rng.choice([1000, 4096, 20000]),
               rng.choice([0.0, 0.001]), ha, rng.choice([0.0005, 0.002]))
        _spawn(rig, rig.peer, pr, pw, peer_data, rng.choice([1000, 4096, 20000]),
               0.0, pa, rng.choice([0.0005, 0.002]))
        apps.append((ha, pa, host_data, peer_data))
        socks.append(rig.sock(hw))
    ops = 0
    for _ in range(40):
        rig.run_for(rng.uniform(0.0, 0.01))
        choice = rng.random()
        s = rng.choice(socks)
        rec = rig.chimney.records.get(s.key)
        if choice < 0.3:
            if rng.random() < 0.5:
                rig.chimney.offload_many(rng.sample(socks, k=rng.randrange(1, len(socks) + 1)))
            else:
                rig.chimney.offload(s)
        elif choice < 0.5:
            rig.chimney.terminate(s)
        elif choice < 0.6:
            rig.chimney.query(s)
        elif choice < 0.7:
            rig.chimney.update(s, keepalive=rng.random() < 0.5, keepalive_idle=rng.uniform(10, 100))
        elif choice < 0.8:
            if rec is not None and rec.phase is OffloadState.OFFLOADED and rec.handle.label in rig.target.objects:
                rig.target.request_upload(rec.handle.label, rng.choice(list(TCP_UPLOAD_REASON)[:-1]))
        elif choice < 0.85:
            rig.target.indicate_status(NdisStatus.UPLOAD_ALL)
            rig.run_for(rng.uniform(0.0, 0.01))
            rig.target.ndis.NdisMIndicateStatusEx(NDIS_STATUS_INDICATION(NdisStatus.OFFLOAD_RESUME))
        elif choice < 0.95:
            rig.target.hold = True
            rig.run_for(rng.uniform(0.0, 0.01))
            rig.target.hold = False
            rig.target.release()
        else:
            rig.chimney.invalidate_neighbor(rig.peer.ip)
        ops += 1
    rig.target.hold = False
    rig.target.release()
    rig.chimney.terminate_all()
    rig.run_until(lambda: all(s.offload_state is OffloadState.IN_HOST or s.closed for s in socks), 10.0)
    rig.run_until(
        lambda: all(a[0].eof and a[1].eof for a in apps) or any(a[0].error or a[1].error for a in apps),
        300.0,
    )
    for ha, pa, host_data, peer_data in apps:
        assert ha.error is None and pa.error is None
        assert bytes(ha.got) == peer_data
        assert bytes(pa.got) == host_data
    assert rig.node.rst_out == 0 and rig.peer_node.rst_out == 0
    rig.settle()
    assert rig.target.objects == {}
    rig.checker.assert_clean()
    assert ops == 40
