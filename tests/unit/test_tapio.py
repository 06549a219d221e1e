"""vnic._tapio: the TX/RX frame rings and their C threads, over an AF_UNIX SOCK_SEQPACKET pair
(whole messages, like a TAP).  No timing assertions: waits have only a generous hang guard.

Also run under AddressSanitizer + UndefinedBehaviorSanitizer by ``scripts/asan-tests.sh``.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

_tapio = pytest.importorskip("vnic._tapio")
TxRing = _tapio.TxRing
RxRing = _tapio.RxRing

MAX_FRAME = 65536 + 10
HANG_GUARD = 60.0  # seconds: only to turn a hang into a failure, never a measurement


def wait_until(pred: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + HANG_GUARD
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(a, b): both non-blocking, room for several 64 KiB messages in flight."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield a, b
    a.close()
    b.close()


def make_frames(seed: int, n: int, *, max_size: int = MAX_FRAME) -> list[bytes]:
    """Random sizes 1..max_size (mostly MTU-sized, some up to the maximum, the extremes
    included), each frame tagged with its index so a mix-up is easy to read."""
    rnd = random.Random(seed)
    sizes = [1, 2, 3, 4, 5, max_size, max_size - 1]
    while len(sizes) < n:
        r = rnd.random()
        sizes.append(rnd.randint(1, 1514) if r < 0.6 else rnd.randint(1, max_size))
    rnd.shuffle(sizes)
    frames = []
    for i, size in enumerate(sizes[:n]):
        tag = i.to_bytes(4, "big")
        body = (tag * (size // 4 + 1))[:size]
        frames.append(body if rnd.random() < 0.5 else rnd.randbytes(size))
    return frames


def recv_all(sock: socket.socket, count: int) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + HANG_GUARD
    while len(got) < count:
        assert time.monotonic() < end, f"received {len(got)} of {count}"
        if not readable(sock.fileno(), 0.5):
            continue
        while True:
            try:
                got.append(sock.recv(MAX_FRAME + 100))
            except BlockingIOError:
                break
    return got


def take_all(rx: RxRing, count: int) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + HANG_GUARD
    while len(got) < count:
        assert time.monotonic() < end, f"took {len(got)} of {count}"
        readable(rx.fileno(), 0.5)
        got += rx.take(1000)
    return got


def ring_threads() -> int:
    """Threads of this process named by _tapio ("vnic-tapio-tx" / "vnic-tapio-rx"); a
    thread names itself as it starts, and the kernel lists it for a moment after join()."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                n += f.read().startswith("vnic-tapio-")
        except FileNotFoundError:
            pass
    return n


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- order, nothing lost or duplicated ---------------------------------------------------------


def test_tx_ring_writes_every_frame_in_order(pair) -> None:
    a, b = pair
    frames = make_frames(1, 600)
    tx = TxRing(a.fileno(), 1 << 20)
    try:
        sender = threading.Thread(target=lambda: [tx.submit(frames[i:i + 17])
                                                  for i in range(0, len(frames), 17)])
        sender.start()
        got = recv_all(b, len(frames))
        sender.join()
        assert tx.flush(HANG_GUARD)
        assert got == frames
        st = tx.stats()
        assert st["frames"] == st["submitted"] == len(frames)
        assert st["bytes"] == sum(map(len, frames))
        assert st["errors"] == 0 and st["errno"] == {}
        assert st["pending_frames"] == st["pending_bytes"] == 0
    finally:
        tx.close()


def test_rx_ring_reads_every_frame_in_order(pair) -> None:
    a, b = pair
    frames = make_frames(2, 600)
    rx = RxRing(b.fileno(), 1 << 20, MAX_FRAME)
    try:
        a.setblocking(True)  # the writer end: a plain blocking sender
        sender = threading.Thread(target=lambda: [a.send(f) for f in frames])
        sender.start()
        got = take_all(rx, len(frames))
        sender.join()
        assert got == frames
        st = rx.stats()
        assert st["frames"] == st["taken"] == len(frames)
        assert st["bytes"] == sum(map(len, frames))
        assert st["pending_frames"] == st["pending_bytes"] == 0 and st["errors"] == 0
    finally:
        rx.close()


@pytest.mark.parametrize("seed", [3, 4])
def test_long_run_through_both_rings(pair, seed: int) -> None:
    """TX ring -> socket -> RX ring, small rings so both wrap many times and both fill up:
    exactly the frames sent, once each, in order."""
    a, b = pair
    frames = make_frames(seed, 2500)
    total = sum(map(len, frames))
    tx = TxRing(a.fileno(), 256 << 10)
    rx = RxRing(b.fileno(), 3 * (MAX_FRAME + 4) + 1000, MAX_FRAME)
    rnd = random.Random(seed)
    try:
        def produce() -> None:
            i = 0
            while i < len(frames):
                k = rnd.randint(1, 40)
                tx.submit(frames[i:i + k])
                i += k

        sender = threading.Thread(target=produce)
        sender.start()
        # nothing taken yet: the RX ring fills, its reader waits, the socket and then the TX
        # ring fill behind it (the frames are far more than all three hold)
        wait_until(lambda: rx.stats()["full_waits"] > 0, "the RX ring fills")
        got: list[bytes] = []
        end = time.monotonic() + HANG_GUARD * 2
        while len(got) < len(frames):
            assert time.monotonic() < end, f"took {len(got)} of {len(frames)}"
            readable(rx.fileno(), 0.5)
            got += rx.take(rnd.randint(1, 50))
        sender.join()
        assert len(got) == len(frames)
        for i, (g, f) in enumerate(zip(got, frames, strict=True)):
            assert g == f, f"frame {i}: {len(g)} bytes, expected {len(f)}"
        assert tx.flush(HANG_GUARD)
        assert tx.stats()["bytes"] == rx.stats()["bytes"] == total
        assert rx.take() == [] and not readable(rx.fileno())
    finally:
        tx.close()
        rx.close()


def test_frames_as_pieces_and_buffer_types(pair) -> None:
    a, b = pair
    tx = TxRing(a.fileno(), 4096)
    try:
        frames = [
            b"plain",
            bytearray(b"array"),
            memoryview(b"xxviewxx")[2:6],
            (b"he", bytearray(b"ad"), memoryview(b"er")),
            (b"only",),
            (b"", b"empty-first"),
        ]
        assert tx.submit(frames) == len(frames)
        assert tx.submit(()) == 0
        assert tx.submit((b"tuple-of-frames",)) == 1
        assert recv_all(b, 7) == [b"plain", b"array", b"view", b"header", b"only",
                                  b"empty-first", b"tuple-of-frames"]
    finally:
        tx.close()


def test_rx_truncates_at_max_frame(pair) -> None:
    a, b = pair
    rx = RxRing(b.fileno(), 4096, 100)
    try:
        a.send(b"y" * 150)
        a.send(b"z" * 100)
        assert take_all(rx, 2) == [b"y" * 100, b"z" * 100]
        assert rx.stats()["max_frame"] == 100
    finally:
        rx.close()


# ---- backpressure --------------------------------------------------------------------------


def test_full_tx_ring_makes_submit_wait_and_loses_nothing(pair) -> None:
    """Nobody reads: the socket fills (EAGAIN in the writer, which then polls for POLLOUT),
    then the ring: submit waits instead of dropping.  A slow reader then gets everything."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
    frames = make_frames(5, 400, max_size=8000)
    tx = TxRing(a.fileno(), 16 << 10)
    done = threading.Event()
    # far more than the ring and the socket can hold together
    assert sum(map(len, frames)) > 10 * ((16 << 10) + a.getsockopt(socket.SOL_SOCKET,
                                                                   socket.SO_SNDBUF))

    def produce() -> None:
        for i in range(0, len(frames), 10):
            tx.submit(frames[i:i + 10])
        done.set()

    sender = threading.Thread(target=produce)
    sender.start()
    try:
        wait_until(lambda: tx.stats()["full_waits"] > 0, "submit waits for room")
        assert not done.is_set()  # it cannot have finished: nothing was read yet
        st = tx.stats()
        assert st["errors"] == 0 and st["frames"] < len(frames)
        got: list[bytes] = []
        end = time.monotonic() + HANG_GUARD
        while len(got) < len(frames):  # a slow consumer: a few frames at a time
            assert time.monotonic() < end
            readable(b.fileno(), 0.5)
            for _ in range(3):
                try:
                    got.append(b.recv(MAX_FRAME))
                except BlockingIOError:
                    break
            time.sleep(0.0005)
        sender.join()
        assert got == frames
        st = tx.stats()
        assert st["frames"] == st["submitted"] == len(frames) and st["errors"] == 0
    finally:
        tx.close()
        sender.join()


def test_full_rx_ring_makes_the_reader_wait(pair) -> None:
    """The ring holds two frames; the reader waits for take() and leaves the rest queued in
    the socket (as the kernel queues at a TAP for a slow NIC)."""
    a, b = pair
    max_frame = 2000
    rx = RxRing(b.fileno(), 2 * (max_frame + 4) + 10, max_frame)
    rnd = random.Random(6)
    frames = [rnd.randbytes(max_frame) for _ in range(100)]
    try:
        for f in frames:
            a.send(f)
        wait_until(lambda: rx.stats()["full_waits"] > 0, "the reader waits for room")
        st = rx.stats()
        assert st["pending_frames"] == st["frames"] == 2  # the rest waits in the socket
        got = take_all(rx, len(frames))
        assert got == frames
        assert rx.stats()["errors"] == 0
    finally:
        rx.close()


def test_second_caller_while_submit_waits_is_refused(pair) -> None:
    a, b = pair
    tx = TxRing(a.fileno(), 4096)
    big = [b"q" * 4000] * 2000  # far more than ring + socket
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            tx.submit(big)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sender = threading.Thread(target=produce)
    sender.start()
    try:
        wait_until(lambda: tx.stats()["full_waits"] > 0, "submit waits")
        with pytest.raises(RuntimeError, match="in use"):
            tx.submit([b"x"])
        with pytest.raises(RuntimeError, match="in use"):
            tx.flush(0)
    finally:
        tx.close()  # wakes the waiting submit: ValueError there
        sender.join()
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors


# ---- close, dealloc, threads -----------------------------------------------------------------


def test_close_while_busy_stops_the_threads(pair) -> None:
    a, b = pair
    assert ring_threads() == 0
    tx = TxRing(a.fileno(), 8192)
    rx = RxRing(b.fileno(), 2 * (MAX_FRAME + 4), MAX_FRAME)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            tx.submit([b"w" * 8000] * 5000)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    sender = threading.Thread(target=produce)
    sender.start()
    try:
        wait_until(lambda: ring_threads() == 2, "both ring threads run")
        wait_until(lambda: tx.stats()["full_waits"] > 0, "submit waits")
        wait_until(lambda: rx.stats()["full_waits"] > 0, "reader waits for room")
    finally:
        tx.close()
        rx.close()
        sender.join()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    wait_until(lambda: ring_threads() == 0, "the ring threads are gone")
    st = tx.stats()
    assert st["closed"] and st["pending_frames"] == 0
    # every frame queued was written, dropped on an error or discarded at close
    assert st["submitted"] == st["frames"] + st["errors"] + st["discarded"] > 0
    assert rx.stats()["closed"]
    tx.close()  # idempotent
    rx.close()


def test_close_idle_rings_and_dealloc_without_close(pair) -> None:
    a, b = pair
    assert ring_threads() == 0
    fds = fd_count()
    for _ in range(20):
        tx = TxRing(a.fileno())
        rx = RxRing(b.fileno())
        tx.submit([b"frame"])
        del tx, rx  # dealloc stops and joins the threads (one of them may be mid-frame)
    gc.collect()
    wait_until(lambda: ring_threads() == 0, "every ring thread is gone")
    assert fd_count() == fds
    for _ in range(20):
        tx = TxRing(a.fileno())
        rx = RxRing(b.fileno())
        tx.close()
        rx.close()
    wait_until(lambda: ring_threads() == 0, "every ring thread is gone")
    assert fd_count() == fds


def test_closed_ring_raises_value_error(pair) -> None:
    a, b = pair
    tx = TxRing(a.fileno())
    rx = RxRing(b.fileno())
    tx.close()
    rx.close()
    assert tx.closed and rx.closed
    for call in (lambda: tx.submit([b"x"]), lambda: tx.flush(), lambda: rx.take(),
                 rx.fileno):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert tx.stats()["closed"] and rx.stats()["closed"]
    assert "closed" in repr(tx) and "closed" in repr(rx)


def test_forked_child_cannot_use_the_rings(pair) -> None:
    a, b = pair
    tx = TxRing(a.fileno())
    rx = RxRing(b.fileno())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 0
            try:
                for call in (lambda: tx.submit([b"x"]), lambda: rx.take(), tx.stats):
                    try:
                        call()
                        code |= 1
                    except RuntimeError:
                        pass
                tx.close()  # must not try to join a thread that is not in this process
                rx.close()
            except BaseException:
                code |= 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        # the parent's rings still work (a -> TX ring -> socket -> RX ring on b)
        tx.submit([b"after fork"])
        assert take_all(rx, 1) == [b"after fork"]
    finally:
        tx.close()
        rx.close()


# ---- errors from the device ---------------------------------------------------------------


def test_write_errors_are_counted_per_errno_and_dropped(pair) -> None:
    a, b = pair
    b.close()  # a dead link: every write fails with EPIPE
    tx = TxRing(a.fileno())
    try:
        assert tx.submit([b"one", b"two", b"three"]) == 3
        assert tx.flush(HANG_GUARD)
        st = tx.stats()
        assert st["frames"] == 0 and st["errors"] == 3 and st["pending_frames"] == 0
        # one errno, counted per frame (EPIPE: the peer end is gone)
        assert st["errno"] == {errno.EPIPE: 3}, {errno.errorcode.get(e, e): n
                                                 for e, n in st["errno"].items()}
    finally:
        tx.close()


def test_end_of_file_stops_the_reader(pair) -> None:
    a, b = pair
    rx = RxRing(b.fileno())
    try:
        a.send(b"last")
        a.close()
        wait_until(lambda: rx.stats()["eof"], "eof seen")
        assert rx.take() == [b"last"]
        assert rx.stats()["errors"] == 0
    finally:
        rx.close()


# ---- the eventfd ------------------------------------------------------------------------------


def test_fileno_is_readable_exactly_while_frames_wait(pair) -> None:
    a, b = pair
    rx = RxRing(b.fileno(), 1 << 16, 2000)
    try:
        fd = rx.fileno()
        assert fd not in (a.fileno(), b.fileno()) and fd == rx.fileno()
        assert not readable(fd)
        assert rx.take() == []
        for i in range(5):
            a.send(bytes([i]) * 10)
        assert readable(fd, HANG_GUARD)
        wait_until(lambda: rx.stats()["pending_frames"] == 5, "five frames in the ring")
        assert rx.take(0) == [] and readable(fd)
        assert rx.take(2) == [bytes([0]) * 10, bytes([1]) * 10]
        assert readable(fd)  # three still waiting
        assert rx.take(10) == [bytes([i]) * 10 for i in (2, 3, 4)]
        assert not readable(fd)
        a.send(b"again")
        assert readable(fd, HANG_GUARD)
        assert take_all(rx, 1) == [b"again"] and not readable(fd)
    finally:
        rx.close()


# ---- bad arguments ----------------------------------------------------------------------------


def test_bad_constructor_arguments(pair) -> None:
    a, b = pair
    blocking_a, blocking_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for cls in (TxRing, RxRing):
            with pytest.raises(TypeError):
                cls("3")
            with pytest.raises(TypeError):
                cls()
            with pytest.raises(ValueError):
                cls(-1)
            with pytest.raises(ValueError, match="non-blocking"):
                cls(blocking_a.fileno())
            with pytest.raises(TypeError, match="capacity_bytes"):
                cls(a.fileno(), 1.5)
            with pytest.raises(ValueError, match="capacity_bytes"):
                cls(a.fileno(), 10)
            with pytest.raises(ValueError, match="capacity_bytes"):
                cls(a.fileno(), 1 << 40)
            with pytest.raises(TypeError):
                cls(a.fileno(), 4096, 100, 7)
        # a closed descriptor
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(OSError):
            TxRing(r)
        with pytest.raises(ValueError, match="max_frame"):
            RxRing(b.fileno(), 1 << 20, 0)
        with pytest.raises(ValueError, match="max_frame"):
            RxRing(b.fileno(), 1 << 20, 1 << 30)
        with pytest.raises(ValueError, match="hold one frame"):
            RxRing(b.fileno(), 1000, 2000)
        # an object with fileno() is accepted like its descriptor
        TxRing(a).close()
    finally:
        blocking_a.close()
        blocking_b.close()


def test_bad_submit_arguments_queue_nothing(pair) -> None:
    a, b = pair
    tx = TxRing(a.fileno(), 4096)
    try:
        with pytest.raises(TypeError, match="list or tuple"):
            tx.submit(b"abc")
        with pytest.raises(TypeError, match="list or tuple"):
            tx.submit(iter([b"abc"]))
        with pytest.raises(TypeError, match=r"frames\[1\]"):
            tx.submit([b"ok", 5])
        with pytest.raises(TypeError, match=r"frames\[0\]\[1\]"):
            tx.submit([(b"ok", "text")])
        with pytest.raises(ValueError, match="do not fit"):
            tx.submit([b"ok", b"x" * 4093])
        with pytest.raises(ValueError, match="at most"):
            tx.submit([tuple([b"p"] * (_tapio.MAX_PARTS + 1))])
        with pytest.raises(TypeError):
            tx.submit()
        assert tx.stats()["submitted"] == 0
        assert tx.submit([b"x" * 4092]) == 1  # exactly the ring, with its 4-byte header
        assert recv_all(b, 1) == [b"x" * 4092]
        with pytest.raises(ValueError, match="timeout"):
            tx.flush(-1)
        with pytest.raises(TypeError):
            tx.flush("soon")
        with pytest.raises(TypeError):
            tx.flush(1, 2)
        assert tx.flush() is True and tx.flush(timeout=0) is True
    finally:
        tx.close()


def test_bad_take_arguments(pair) -> None:
    a, b = pair
    rx = RxRing(b.fileno())
    try:
        with pytest.raises(ValueError, match="max_frames"):
            rx.take(-1)
        with pytest.raises(TypeError, match="max_frames"):
            rx.take("2")
        with pytest.raises(TypeError):
            rx.take(1, 2)
        with pytest.raises(OverflowError):
            rx.take(1 << 70)
    finally:
        rx.close()


def test_flush_times_out_while_the_device_is_full(pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
    tx = TxRing(a.fileno(), 1 << 20)
    try:
        # 800 KB fit the ring, not the socket: the writer gets EAGAIN and waits in poll
        assert tx.submit([b"f" * 8000] * 100) == 100
        assert 100 * 8000 > 10 * a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert tx.stats()["pending_frames"] > 0
        assert tx.flush(0.01) is False
        got = recv_all(b, 100)
        assert tx.flush(HANG_GUARD) is True and got == [b"f" * 8000] * 100
    finally:
        tx.close()


# ---- leaks -----------------------------------------------------------------------------------


def test_type_references_are_released(pair) -> None:
    a, b = pair
    for cls in (TxRing, RxRing):
        before = sys.getrefcount(cls)
        rings = [cls(a.fileno(), 1 << 17) for _ in range(50)]
        assert sys.getrefcount(cls) == before + 50
        for r in rings[::2]:
            r.close()
        del rings, r
        assert sys.getrefcount(cls) == before


def test_ring_memory_is_freed(pair) -> None:
    """tracemalloc sees PyMem_RawMalloc: every ring's buffer goes away with the ring."""
    import tracemalloc

    a, b = pair
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            tx = TxRing(a.fileno(), 1 << 20)
            rx = RxRing(b.fileno(), 1 << 20)
            assert tracemalloc.get_traced_memory()[0] - base >= 2 << 20
            tx.submit([b"m" * 1000] * 10)
            take_all(rx, 10)
            tx.close()
            del tx, rx
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - base < 64 * 1024
    finally:
        tracemalloc.stop()


def test_taken_frames_are_plain_bytes_owned_by_the_caller(pair) -> None:
    a, b = pair
    rx = RxRing(b.fileno())
    try:
        a.send(b"abc")
        (frame,) = take_all(rx, 1)
        assert type(frame) is bytes and sys.getrefcount(frame) == 2  # `frame` + the argument
    finally:
        rx.close()


# ---- scheduling and the heap ------------------------------------------------------------------


def ring_thread_policies() -> dict[str, int]:
    """{"vnic-tapio-tx": policy, ...} of this process's ring threads (os.SCHED_*)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            if name.startswith("vnic-tapio-"):
                out[name] = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def fifo_allowed() -> bool:
    """Whether a thread of this process may switch itself to SCHED_FIFO (root is not enough:
    a container without CAP_SYS_NICE, or without real-time runtime, may not)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # (0: this thread)
        except PermissionError:
            result.append(False)
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


def test_priority_runs_the_threads_sched_fifo_when_allowed(pair) -> None:
    a, b = pair
    # the reader: SCHED_FIFO all the time; the writer: only while it writes a burst
    for cls, fd, name, idle in ((TxRing, a.fileno(), "vnic-tapio-tx", os.SCHED_OTHER),
                                (RxRing, b.fileno(), "vnic-tapio-rx", os.SCHED_FIFO)):
        ring = cls(fd, priority=1)
        try:
            wait_until(lambda n=name: n in ring_thread_policies(), f"{name} named itself")
            realtime = ring.stats()["realtime"]
            # what the ring reports is what the kernel says (without the privilege: normal)
            assert ring_thread_policies()[name] == (idle if realtime else os.SCHED_OTHER)
            if fifo_allowed():
                assert realtime
        finally:
            ring.close()
        plain = cls(fd)
        try:
            wait_until(lambda n=name: n in ring_thread_policies(), f"{name} named itself")
            assert plain.stats()["realtime"] is False
            assert ring_thread_policies()[name] == os.SCHED_OTHER
        finally:
            plain.close()
    # a boosted writer and a SCHED_FIFO reader still move every frame, in order
    frames = make_frames(11, 200, max_size=1514)
    tx, rx = TxRing(a, priority=1), RxRing(b, priority=1)
    try:
        tx.submit(frames)
        assert take_all(rx, len(frames)) == frames
        assert tx.flush(HANG_GUARD)
        st = tx.stats()
        # 200 frames (far more than 32 KiB) went in one submit: at least one boosted burst
        assert st["boosts"] >= 1 if st["realtime"] else st["boosts"] == 0
        # back to normal scheduling once the ring is empty
        wait_until(lambda: ring_thread_policies().get("vnic-tapio-tx") == os.SCHED_OTHER,
                   "the writer is back at normal scheduling")
    finally:
        tx.close()
        rx.close()
    plain = TxRing(a)
    try:
        plain.submit(frames)
        assert plain.flush(HANG_GUARD)  # (300 KB at most: the socket buffer holds them)
        assert plain.stats()["boosts"] == 0
    finally:
        plain.close()


def test_bad_priority(pair) -> None:
    a, _ = pair
    for cls in (TxRing, RxRing):
        for bad in (-1, 100, 1 << 40):
            with pytest.raises((ValueError, OverflowError)):
                cls(a.fileno(), priority=bad)
        with pytest.raises(TypeError):
            cls(a.fileno(), priority="1")


def test_set_priority_turns_the_burst_boost_off_and_on(pair) -> None:
    a, b = pair
    frames = make_frames(12, 200, max_size=1514)
    tx, rx = TxRing(a, priority=1), RxRing(b)
    try:
        wait_until(lambda: "vnic-tapio-tx" in ring_thread_policies(), "the writer named itself")
        tx.set_priority(0)  # (what vnic.kernel_view.PeerCapture does while tcpdump runs)
        tx.submit(frames)
        assert take_all(rx, len(frames)) == frames
        assert tx.flush(HANG_GUARD)
        assert tx.stats()["boosts"] == 0
        tx.set_priority(1)
        tx.submit(frames)
        assert take_all(rx, len(frames)) == frames
        assert tx.flush(HANG_GUARD)
        st = tx.stats()
        assert st["boosts"] >= 1 if st["realtime"] else st["boosts"] == 0
        for bad in (-1, 100):
            with pytest.raises(ValueError):
                tx.set_priority(bad)
        with pytest.raises(TypeError):
            tx.set_priority("1")
    finally:
        tx.close()
        rx.close()


# -------------------------------------------------- vnet_header: checksums completed in C ----

def _vnet_cases(rng: random.Random, count: int) -> list[bytes]:
    """What a TAP with IFF_VNET_HDR hands over (header + frame): TCP frames of many sizes (odd
    ones too), flagged NEEDS_CSUM (the field holding the pseudo-header sum, as
    vnet.outbound_header leaves it), GSO with and without NEEDS_CSUM (a stale IPv4 header
    checksum), plain; non-IPv4 frames flagged GSO; a checksum field past the end; runts."""
    from tcpip.ethernet import build_ethernet
    from tcpip.ipv4 import build_ipv4
    from tcpip.tcp_segment import TcpFlags, TcpOptions, TcpSegment, build_tcp
    from vnic import vnet

    src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    out = []
    for _ in range(count):
        payload = rng.randbytes(rng.randrange(0, 3000))
        seg = TcpSegment(40000, 5001, rng.getrandbits(32), rng.getrandbits(32),
                         TcpFlags.ACK, 512, TcpOptions(timestamp=(1, 2)), payload)
        frame = bytearray(build_ethernet(b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02", 0x0800,
                                         build_ipv4(src, dst, 6, build_tcp(seg, src, dst))))
        kind = rng.randrange(7)
        if kind == 0:
            header = vnet.PLAIN_HEADER
        elif kind in (1, 2):   # checksum left to the device, GSO or not
            vnet.outbound_header(frame, 100)  # rewrites the field (frames over 114 bytes)
            gso = vnet.VIRTIO_NET_HDR_GSO_TCPV4 if kind == 1 else vnet.VIRTIO_NET_HDR_GSO_NONE
            header = vnet.VNET_HDR.pack(vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, 0, 0, 34, 16)
            if kind == 1:
                frame[24:26] = rng.randbytes(2)      # a stale IPv4 header checksum
        elif kind == 3:        # GSO, checksum already complete: only the IPv4 header
            frame[24:26] = rng.randbytes(2)
            header = vnet.VNET_HDR.pack(0, vnet.VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 0, 0)
        elif kind == 4:        # not IPv4: nothing to fix in the IP header
            frame[12:14] = b"\x86\xdd"
            header = vnet.VNET_HDR.pack(0, vnet.VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 0, 0)
        elif kind == 5:        # a checksum field beyond the frame: left alone
            header = vnet.VNET_HDR.pack(vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0,
                                        len(frame) - 1, 16)
        else:                  # a checksum anywhere in the frame (odd start, odd length)
            start = rng.randrange(0, len(frame) - 2)
            header = vnet.VNET_HDR.pack(vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start,
                                        rng.randrange(0, len(frame) - start - 1))
        out.append(header + bytes(frame))
    return out


def test_vnet_header_ring_completes_checksums_like_complete_inbound(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Differential: every frame take() returns equals vnet.complete_inbound of what was read,
    on a ring small enough (and of an odd size) that entries wrap at every kind of offset."""
    from vnic import vnet

    a, b = pair
    rng = random.Random(5)
    raws = _vnet_cases(rng, 400) + [b"\x01" * 9, bytes(10)]
    # room for two entries of max_frame: the reader waits for a take() when two are pending
    rx = RxRing(b.fileno(), 3 * 3200 + 37, 3200, vnet_header=True)
    try:
        got: list[bytes] = []
        for i, raw in enumerate(raws):
            if rx.stats()["pending_frames"] >= 2 or rng.random() < 0.3:
                got += rx.take(rng.randrange(1, 3))
            a.send(raw)
            wait_until(lambda: rx.stats()["frames"] == i + 1, f"read {i}")  # noqa: B023
        while len(got) < len(raws):
            got += rx.take(1000)
    finally:
        rx.close()
    want = [vnet.complete_inbound(raw[:10], raw[10:]) if len(raw) >= 10 else b"" for raw in raws]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"frame {i} ({len(raws[i])} bytes read) differs"


def test_without_vnet_header_the_ring_returns_what_was_read(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    raws = _vnet_cases(random.Random(6), 20)
    rx = RxRing(b.fileno(), 1 << 20, 3200)
    try:
        for raw in raws:
            a.send(raw)
        wait_until(lambda: rx.stats()["frames"] == len(raws), "every read")
        assert rx.take(100) == raws
    finally:
        rx.close()
