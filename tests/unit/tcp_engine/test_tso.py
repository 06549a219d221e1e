"""Segmentation offload (TcpConfig.tso_max): new data leaves in MSS multiples, resends stay MSS."""

from __future__ import annotations

from tcpip.tcp_segment import TcpFlags
from tests.unit.tcp_engine.conftest import (
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    SEND,
    WINDOW,
    config,
    established,
    recv,
)


def _bulk(tso_max: int, nbytes: int = 40_000):
    cfg = config(tso_max=tso_max, send_buffer=1 << 20, initial_window=64)
    conn = established(cfg=cfg, snd_wnd=WINDOW, cwnd=1 << 20)
    assert conn.send(bytes(nbytes)) == nbytes
    return conn, recv(conn)


def test_without_offload_every_segment_is_at_most_one_mss() -> None:
    _, out = _bulk(0)
    assert out and all(len(s.payload) <= MSS for s in out)


def test_with_offload_segments_are_whole_mss_multiples_up_to_tso_max() -> None:
    tso_max = 10 * MSS + 100  # not a multiple: the engine rounds down to 10 MSS
    conn, out = _bulk(tso_max)
    sizes = [len(s.payload) for s in out]
    assert sizes[0] == 10 * MSS
    assert all(n <= 10 * MSS for n in sizes)
    assert sum(sizes) == 40_000  # everything the windows allow went out, nothing twice
    seqs = [s.seq for s in out]
    assert seqs == sorted(seqs) and seqs[0] == LOCAL_SEQ + 1
    assert out[-1].flags & TcpFlags.PSH


def test_with_offload_a_timeout_resends_from_snd_una() -> None:
    conn, out = _bulk(4 * MSS, nbytes=8 * MSS)
    assert [len(s.payload) for s in out] == [4 * MSS, 4 * MSS]
    deadline = conn.next_deadline()
    assert deadline is not None
    resent = recv(conn, deadline)
    assert resent and resent[0].seq == LOCAL_SEQ + 1
    # the peer ACKs everything: nothing is outstanding afterwards
    conn.on_segment(SEND(seq=REMOTE_SEQ + 1, ack=LOCAL_SEQ + 1 + 8 * MSS, window=WINDOW), deadline)
    assert conn.snd_una == LOCAL_SEQ + 1 + 8 * MSS
