"""vnic.alloc: glibc's thresholds are set once (the call is idempotent) and the process keeps
working; where there is no glibc mallopt the call says so instead of failing."""

from __future__ import annotations

import ctypes
import platform

import pytest

from vnic import alloc


def test_sets_the_thresholds_once_and_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alloc, "_done", None)
    calls: list[tuple[int, int]] = []

    class FakeLibc:  # mallopt as a plain function: ctypes attributes can be set on it
        def __init__(self) -> None:
            def mallopt(param: int, value: int) -> int:
                calls.append((param, value))
                return 1

            self.mallopt = mallopt

    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: FakeLibc())
    assert alloc.keep_large_buffers_in_heap() is True
    assert alloc.keep_large_buffers_in_heap() is True  # idempotent: no second mallopt
    assert calls == [(alloc.M_MMAP_THRESHOLD, alloc.MMAP_THRESHOLD),
                     (alloc.M_TRIM_THRESHOLD, alloc.TRIM_THRESHOLD),
                     (alloc.M_TOP_PAD, alloc.TOP_PAD)]


def test_the_environment_can_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alloc, "_done", None)
    monkeypatch.setenv(alloc.KEEP_HEAP_ENV, "0")

    def no_call(*_a: object, **_k: object) -> None:
        raise AssertionError("mallopt must not be looked up")

    monkeypatch.setattr(ctypes, "CDLL", no_call)
    assert alloc.keep_large_buffers_in_heap() is False


def test_refused_or_missing_mallopt_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alloc, "_done", None)

    class Refusing:
        def __init__(self) -> None:
            def mallopt(param: int, value: int) -> int:
                return 0

            self.mallopt = mallopt

    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: Refusing())
    assert alloc.keep_large_buffers_in_heap() is False
    monkeypatch.setattr(alloc, "_done", None)

    def no_libc(*_a: object, **_k: object) -> None:
        raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert alloc.keep_large_buffers_in_heap() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_real_glibc_accepts_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alloc, "_done", None)
    assert alloc.keep_large_buffers_in_heap() is True
    big = bytearray(8 << 20)  # allocations keep working
    big[-1] = 1
    assert sum(big) == 1
