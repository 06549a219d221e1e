"""``vnic.simlab``: the simulated lab the pytest plugin hands out as ``vnic_sim_lab``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from offload_target import table as table_mod
from tcpip.offload_socket import OffloadState
from vnic.faults import FaultSpec, WireFaults
from vnic.simlab import SimTimeout, build_sim_lab, open_endpoint
from vnic.verify import verify_capture

pytestmark = pytest.mark.skipif(not getattr(table_mod, "HAS_DATAPATH", False),
                                reason="the C data path is not built")


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_several_connections_offloaded_in_one_tree_both_openers() -> None:
    lab = build_sim_lab(5)
    conns = [lab.connect(), lab.connect(opener="peer"), lab.connect(6000)]
    for i, c in enumerate(conns):
        lab.exchange(c, data(i, 50_000), data(100 + i, 30_000))
    lab.offload(*conns)
    assert all(c.offload_state is OffloadState.OFFLOADED for c in conns)
    assert lab.target.tcp_count == 3
    for i, c in enumerate(conns):
        lab.exchange(c, data(200 + i, 80_000), data(300 + i, 60_000))
        assert lab.watch.conn(c.sock.local_port).out_from_target > 0
    lab.upload(*conns)
    assert lab.target.tcp_count == 0
    for i, c in enumerate(conns):
        lab.close(c)
        assert bytes(c.peer.received) == data(i, 50_000) + data(200 + i, 80_000)
        assert bytes(c.host.received) == data(100 + i, 30_000) + data(300 + i, 60_000)
    assert lab.chimney.counters["offloads"] == 3 and lab.chimney.counters["uploads"] == 3
    lab.assert_clean()


def test_capture_verifies_with_the_application_digests(tmp_path: Path) -> None:
    path = tmp_path / "lab.pcapng"
    spec = FaultSpec(loss=0.01)
    lab = build_sim_lab(2, capture=path, faults=WireFaults.from_specs(spec, spec, seed=2))
    conn = lab.connect()
    up, down = data(1, 400_000), data(2, 300_000)
    conn.host.send(up)
    conn.peer.send(down)
    lab.run_until(lambda: len(conn.peer.received) > 100_000 and len(conn.host.received) > 100_000)
    lab.offload(conn)
    lab.run_for(0.05)
    lab.upload(conn)
    lab.close(conn)
    lab.close_capture()
    assert bytes(conn.peer.received) == up and bytes(conn.host.received) == down
    report = verify_capture(path)
    assert report.ok, [str(f) for f in report.failures]
    (result,) = report.connections.values()
    d = result.as_dict()
    assert "host->peer" in str(d) and "peer->host" in str(d)
    # the verifier compared the streams with the recorded digests: a wrong one fails it
    lab2 = build_sim_lab(3, capture=tmp_path / "bad.pcapng")
    c2 = lab2.connect()
    lab2.exchange(c2, b"abc" * 1000)
    c2.host._queued_hash.update(b"not sent")  # the host claims to have sent more
    lab2.close(c2)
    lab2.close_capture()
    assert not verify_capture(tmp_path / "bad.pcapng").ok


def test_run_until_raises_with_the_state_and_open_endpoint_refused() -> None:
    lab = build_sim_lab()
    conn = lab.connect()
    lab.offload(conn)
    with pytest.raises(SimTimeout, match="virtual seconds .*chimney .*Offloaded"):
        lab.run_until(lambda: False, 0.5)
    assert lab.now >= 0.5
    with pytest.raises(ConnectionRefusedError):
        open_endpoint(lab.host, lab.peer_ip, 7777, lab.try_run_until)


def test_paused_reader_closes_the_window_of_an_offloaded_connection() -> None:
    lab = build_sim_lab(4)
    conn = lab.connect()
    lab.offload(conn)
    conn.peer.pause()
    conn.host.send(data(9, 2_000_000))
    lab.run_for(2.0)
    w = lab.watch.conn(conn.sock.local_port)
    # the NIC runs into the closed window and probes it (a read already waiting when the
    # reader paused may still have taken the first bytes)
    assert w.in_zero_windows > 0 and w.probes_from_target > 0
    held = len(conn.peer.received)
    assert held < 100_000
    lab.run_for(1.0)
    assert len(conn.peer.received) == held
    conn.peer.resume()
    lab.run_until(conn.delivered)
    assert bytes(conn.peer.received) == data(9, 2_000_000)
    lab.upload(conn)
    lab.close(conn)
    lab.assert_clean()
