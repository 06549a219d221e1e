"""Throughput of the C data path for a bulk transfer: process_frame + poll, frames per second.

    .venv/bin/python -m tests.offload_target.test_datapath_bench        # the measurement

Two directions, one offloaded connection, timestamps on, MSS 1448, in-order, no loss:

* receive: the peer's full-sized data frames go into ``process_frame``; ``poll`` after every
  frame returns the ACKs (one per ``ack_frequency`` = 2 segments); the application takes the
  data every 64 frames.  frames/s = (data frames in + ACK frames out) / wall time.
* send: ``send_append`` queues the data; ``poll`` returns the data frames the window allows;
  the peer's ACK for every second frame goes into ``process_frame``.  frames/s = (data frames
  out + ACK frames in) / wall time.

The frames are prepared before the clock starts, so the figure is the data path's cost plus
the Python calls into it (one process_frame call per frame, one poll call per frame).  The test
below runs a small version so that the benchmark itself stays correct.
"""

from __future__ import annotations

import time

import pytest

from offload_target import table as table_mod
from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment

from .test_datapath import LOCAL_IP, LOCAL_MAC, LPORT, REMOTE_IP, REMOTE_MAC, RPORT, frame_of

pytestmark = pytest.mark.skipif(not table_mod.HAS_DATAPATH,
                                reason="the C data path is not built")

MSS = 1448
RCV0, SND0 = 1_000_000, 2_000_000


def _table(send_buffer: int):
    t = table_mod.ConnectionTable(16)
    t.configure(receive_buffer=1 << 22, send_buffer=send_buffer)
    h = t.insert(LOCAL_IP, LPORT, REMOTE_IP, RPORT)
    t.set_fields(h, State=4, RcvNxt=RCV0, RcvWnd=1 << 22, SndUna=SND0, SndNxt=SND0, SndMax=SND0,
                 SndWnd=1 << 30, MaxSndWnd=1 << 30, SendWL1=RCV0, CWnd=1 << 30,
                 SsThresh=0xFFFFFFFF, ConstFlags=0x05, RemoteMss=MSS + 12, SndWindScale=14,
                 RcvWindScale=7, TsRecent=1, TsTime=1)
    t.activate(h, local_mac=LOCAL_MAC, remote_mac=REMOTE_MAC, now_ticks=0)
    t.poll(0)
    return t, h


def bench_receive(nframes: int) -> tuple[int, float]:
    t, h = _table(4096)
    payload = bytes(MSS)
    frames = [frame_of(TcpSegment(RPORT, LPORT, RCV0 + i * MSS, SND0, TcpFlags.ACK, 0xFFFF,
                                  TcpOptions(timestamp=(5, 1)), payload))
              for i in range(nframes)]
    process, poll, take = t.process_frame, t.poll, t.receive_take
    out = 0
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        process(f, i)
        out += len(poll(i))
        if i % 64 == 63:
            take(h)
    dt = time.perf_counter() - t0
    assert out == nframes // 2                  # one ACK per two full-sized segments
    assert t.get_field(h, "RcvNxt") == RCV0 + nframes * MSS
    return nframes + out, dt


def bench_send(nframes: int) -> tuple[int, float]:
    t, h = _table(nframes * MSS)
    t.send_append(h, bytes(nframes * MSS))
    acks = [frame_of(TcpSegment(RPORT, LPORT, RCV0, SND0 + (i + 1) * MSS, TcpFlags.ACK, 0xFFFF,
                                TcpOptions(timestamp=(5, 1))))
            for i in range(1, nframes, 2)]
    process, poll = t.process_frame, t.poll
    sent = 0
    t0 = time.perf_counter()
    sent += len(poll(1))
    for i, a in enumerate(acks):
        process(a, 2 + i)
        sent += len(poll(2 + i))
    dt = time.perf_counter() - t0
    assert sent == nframes and t.acked_total(h) == len(acks) * 2 * MSS
    t.events()
    return sent + len(acks), dt


def test_bench_small():
    n, dt = bench_receive(2000)
    assert n == 3000 and dt > 0
    n, dt = bench_send(2000)
    assert n == 3000 and dt > 0


if __name__ == "__main__":
    for name, fn in (("receive", bench_receive), ("send", bench_send)):
        best = 0.0
        for _ in range(5):
            n, dt = fn(50_000)
            best = max(best, n / dt)
        print(f"{name:8s} bulk: {best:12,.0f} frames/s (process_frame + poll, best of 5 x "
              f"50,000 data frames, MSS {MSS}, timestamps on)")
