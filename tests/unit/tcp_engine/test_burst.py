"""TcpConfig.burst_segments: one poll() sends at most that many data segments; the rest
follows on the next poll (and the connection says so through next_deadline)."""

from __future__ import annotations

from tests.unit.tcp_engine.conftest import LOCAL_SEQ, MSS, WINDOW, config, established, recv


def _loaded(burst: int, nbytes: int):
    cfg = config(burst_segments=burst, send_buffer=1 << 20, initial_window=64)
    conn = established(cfg=cfg, snd_wnd=WINDOW, cwnd=1 << 20)
    assert conn.send(bytes(nbytes)) == nbytes
    return conn


def test_a_poll_sends_at_most_the_budget_and_the_next_poll_goes_on() -> None:
    conn = _loaded(4, 10 * MSS)
    first = recv(conn, 0.0)
    assert [len(s.payload) for s in first] == [MSS] * 4
    assert conn.next_deadline() == 0.0  # more is sendable now: poll again at once
    second = recv(conn, 0.0)
    third = recv(conn, 0.0)
    assert [len(s.payload) for s in second] == [MSS] * 4
    assert [len(s.payload) for s in third] == [MSS] * 2
    seqs = [s.seq for s in first + second + third]
    assert seqs == [LOCAL_SEQ + 1 + i * MSS for i in range(10)]  # in order, nothing twice
    assert recv(conn, 0.0) == []  # all ten sent


def test_zero_means_no_limit() -> None:
    conn = _loaded(0, 30 * MSS)
    assert len(recv(conn, 0.0)) == 30


def test_the_budget_counts_segments_not_bytes_with_segmentation_offload() -> None:
    cfg = config(burst_segments=2, tso_max=4 * MSS, send_buffer=1 << 20, initial_window=64)
    conn = established(cfg=cfg, snd_wnd=WINDOW, cwnd=1 << 20)
    conn.send(bytes(16 * MSS))
    assert [len(s.payload) for s in recv(conn, 0.0)] == [4 * MSS, 4 * MSS]
    assert [len(s.payload) for s in recv(conn, 0.0)] == [4 * MSS, 4 * MSS]
