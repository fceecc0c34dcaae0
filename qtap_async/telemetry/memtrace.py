"""Debugging aid, off by default: where the agent's Python heap grows, by allocating traceback.

Set ``QTAP_DEBUG_TRACEMALLOC=/path/file`` before ``qtap run``; the agent then starts ``tracemalloc`` and,
every ``QTAP_DEBUG_TRACEMALLOC_INTERVAL`` seconds (default 60), appends to the file the traced size and the
top ``QTAP_DEBUG_TRACEMALLOC_TOP`` (default 25) differences by traceback (``QTAP_DEBUG_TRACEMALLOC_FRAMES``
frames, default 8), against the first report's snapshot (what grew since: the first interval is the warm-up of
caches and buffers, so a steady leak is what keeps growing after it; the first report itself is against the
start) and against the previous report's (what grew in the last interval). tracemalloc slows allocation
several times and takes its own memory: this is for finding a leak on a test machine, never for production.
The soak benchmark passes it with ``--tracemalloc``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("qtap.memtrace")

ENV = "QTAP_DEBUG_TRACEMALLOC"


@dataclass(frozen=True, slots=True)
class MemTraceSettings:
    path: Path
    interval_s: float = 60.0
    top: int = 25
    frames: int = 8

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MemTraceSettings | None:
        env = os.environ if environ is None else environ
        path = env.get(ENV, "").strip()
        if not path:
            return None
        return cls(
            Path(path),
            interval_s=float(env.get(f"{ENV}_INTERVAL", "60")),
            top=int(env.get(f"{ENV}_TOP", "25")),
            frames=int(env.get(f"{ENV}_FRAMES", "8")),
        )


def _take() -> tracemalloc.Snapshot:
    # The tracer's own bookkeeping and the import machinery are noise for a leak hunt.
    return tracemalloc.take_snapshot().filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        )
    )


def _diff(new: tracemalloc.Snapshot, old: tracemalloc.Snapshot, top: int) -> list[str]:
    lines: list[str] = []
    for st in new.compare_to(old, "traceback")[:top]:
        lines.append(f"  {st.size_diff / 1024:+10.1f} KiB {st.count_diff:+8d} blocks (now {st.size / 1024:.1f} KiB)")
        # The most recent frame (the allocating line) first, then its callers.
        lines.extend(f"      {frame.filename}:{frame.lineno}" for frame in reversed(st.traceback))
    return lines


class MemTrace:
    """Writes tracemalloc differences to a file every interval (see the module docstring)."""

    def __init__(self, settings: MemTraceSettings) -> None:
        self.settings = settings
        self.reports = 0
        self._first: tracemalloc.Snapshot | None = None
        self._first_t = 0.0
        self._prev: tracemalloc.Snapshot | None = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.settings.frames)
        self._t0 = time.monotonic()
        self._first = self._prev = _take()
        log.warning("tracemalloc on (%s=%s): allocation is slower; for debugging only", ENV, self.settings.path)

    def report(self) -> None:
        """Append one report: the traced size, then the top differences since the first report and since the
        last one."""
        assert self._first is not None and self._prev is not None, "start() first"
        snap = _take()
        t = time.monotonic() - self._t0
        current, peak = tracemalloc.get_traced_memory()
        top = self.settings.top
        lines = [
            f"=== t={t:.0f}s traced {current / 1048576:.1f} MiB (peak {peak / 1048576:.1f} MiB)",
            f"--- since t={self._first_t:.0f}s (top {top})",
            *_diff(snap, self._first, top),
            f"--- since last report (top {top})",
            *_diff(snap, self._prev, top),
            "",
        ]
        with self.settings.path.open("a") as f:
            f.write("\n".join(lines) + "\n")
        if not self.reports:  # the base of the later reports: past the warm-up
            self._first, self._first_t = snap, t
        self._prev = snap
        self.reports += 1

    async def run(self) -> None:
        self.start()
        try:
            while True:
                await asyncio.sleep(self.settings.interval_s)
                self.report()
        finally:
            self.report()  # the state at stop: what the last partial interval added
            tracemalloc.stop()
