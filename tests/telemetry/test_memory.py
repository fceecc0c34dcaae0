"""HeapTrimmer: trims after release-sized drops only, is a no-op without glibc's malloc_trim, and the real
malloc_trim is callable here (the test host runs glibc)."""

from __future__ import annotations

import gc
import platform

import pytest

from qtap_async.telemetry.memory import TRIM_AFTER_BYTES, TRIM_AFTER_CLOSES, HeapTrimmer, load_malloc_trim


def test_trims_after_many_closes_or_bytes_and_once_more_after() -> None:
    calls: list[int] = []
    t = HeapTrimmer(lambda: calls.append(1))
    assert not t.tick(10, 1000)  # small changes: nothing
    assert t.tick(10 + TRIM_AFTER_CLOSES, 1000)  # a burst of closes
    assert t.tick(10 + TRIM_AFTER_CLOSES, 1000)  # the tick after: the release may have been under way
    assert not t.tick(10 + TRIM_AFTER_CLOSES + 1, 1000)
    assert t.tick(11 + TRIM_AFTER_CLOSES, 1000 + TRIM_AFTER_BYTES)  # a burst of payload bytes
    assert t.tick(11 + TRIM_AFTER_CLOSES, 1000 + TRIM_AFTER_BYTES)
    assert not t.tick(11 + TRIM_AFTER_CLOSES, 1000 + TRIM_AFTER_BYTES)
    assert len(calls) == t.trims == 4


def test_the_trim_collects_cycles_first() -> None:
    class Node:
        other: object = None

    freed_at_trim: list[int] = []

    def trim() -> None:
        freed_at_trim.append(sum(isinstance(o, Node) for o in gc.get_objects()))

    gc.disable()  # only the trimmer's collection may free the cycle
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert sum(isinstance(o, Node) for o in gc.get_objects()) == 2
        assert HeapTrimmer(trim).tick(TRIM_AFTER_CLOSES, 0)
    finally:
        gc.enable()
    assert freed_at_trim == [0]


def test_without_malloc_trim_it_does_nothing_and_never_raises() -> None:
    assert load_malloc_trim("no-such-libc-qtap") is None
    t = HeapTrimmer(load=False)
    assert not t.available
    assert not t.tick(10 * TRIM_AFTER_CLOSES, 10 * TRIM_AFTER_BYTES) and t.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = load_malloc_trim()
    assert trim is not None
    junk = [bytes(4096) for _ in range(10_000)]  # 40 MiB through malloc, then freed
    del junk
    trim()
    t = HeapTrimmer()
    assert t.available and t.tick(TRIM_AFTER_CLOSES, 0) and t.trims == 1
