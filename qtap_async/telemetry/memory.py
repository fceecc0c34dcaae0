"""Giving freed heap back to the operating system after large releases.

CPython returns its own small-object arenas when they empty, but blocks over 512 bytes (dict tables,
payload bytes, parser buffers) come from the C allocator, and glibc keeps freed pages mapped: after 10k
connections close or a burst of large bodies is written, RSS stays at its peak although the memory is
free. ``malloc_trim(0)`` hands those pages back (after a full garbage collection, so that parser state
freed only by the cycle collector is free by then). It walks the heap (milliseconds on a large one), so
``HeapTrimmer`` calls it only after a release worth it, at most once per tick of its caller.
When `qtap run` runs on mimalloc (qtap_async.telemetry.allocator), ``mi_collect(true)`` does the same for it.
Without either (musl, other platforms) trimming is a no-op.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable

from qtap_async.libc import libc
from qtap_async.telemetry.allocator import load_mimalloc_collect

__all__ = ["HeapTrimmer", "load_malloc_trim"]

log = logging.getLogger("qtap.memory")

#: Connections closed (or evicted) between two ticks that make a trim worth it: each held a few KiB.
TRIM_AFTER_CLOSES = 256
#: Payload bytes processed between two ticks that make a trim worth it (large bodies, since freed).
TRIM_AFTER_BYTES = 64 << 20


def load_malloc_trim(lib: str | None = None) -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)`` as a callable, or None when the C library has no such function.
    ``lib``: a library to take it from; by default the C library the process runs on (qtap_async.libc)."""
    try:
        fn = (libc() if lib is None else ctypes.CDLL(lib)).malloc_trim
    except (OSError, AttributeError):  # not loadable, or not glibc (musl has no malloc_trim)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> None:
        fn(0)

    return trim


class HeapTrimmer:
    """Call ``tick(closed, data_bytes)`` periodically with running totals (connections closed, payload
    bytes processed); it trims when the totals moved by a release-sized amount since the last tick, and
    once more on the tick after (the release may still have been under way: events queued, bodies being
    written)."""

    def __init__(self, trim: Callable[[], None] | None = None, *, load: bool = True) -> None:
        if trim is None and load:
            trim = load_mimalloc_collect() or load_malloc_trim()
        self._trim = trim
        self._closed = 0
        self._bytes = 0
        self._again = False
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def tick(self, closed: int, data_bytes: int) -> bool:
        """True when it trimmed."""
        big = closed - self._closed >= TRIM_AFTER_CLOSES or data_bytes - self._bytes >= TRIM_AFTER_BYTES
        self._closed, self._bytes = closed, data_bytes
        if not big and not self._again:
            return False
        self._again = big
        return self.trim()

    def trim(self) -> bool:
        """Collect and trim now (True when there is a trim function)."""
        if self._trim is None:
            return False
        t0 = time.perf_counter()
        # A parser and its per-direction readers point at each other: a closed connection's parser state is
        # a cycle that only a full collection frees, and an idle agent may not run one for a long time.
        gc.collect()
        self._trim()
        self.trims += 1
        log.debug("heap trimmed in %.1f ms (%d so far)", (time.perf_counter() - t0) * 1e3, self.trims)
        return True
