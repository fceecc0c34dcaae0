"""The tracemalloc debugging hook (QTAP_DEBUG_TRACEMALLOC): off unless set, and when set its report names
the line whose allocations grew."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest

from qtap_async.telemetry.memtrace import ENV, MemTrace, MemTraceSettings

KEPT: list[bytes] = []


def _grow(n: int) -> None:
    KEPT.extend(bytes(1000) + bytes([i % 256]) for i in range(n))  # the line the report must name


def test_off_unless_the_variable_names_a_file(tmp_path: Path) -> None:
    assert MemTraceSettings.from_env({}) is None
    assert MemTraceSettings.from_env({ENV: "  "}) is None
    s = MemTraceSettings.from_env({ENV: str(tmp_path / "t.txt"), f"{ENV}_INTERVAL": "5", f"{ENV}_TOP": "3"})
    assert s == MemTraceSettings(tmp_path / "t.txt", interval_s=5.0, top=3, frames=8)


def test_the_report_names_what_grew(tmp_path: Path) -> None:
    if tracemalloc.is_tracing():
        pytest.skip("another tracer runs (pytest -X tracemalloc): this test starts and stops its own")
    out = tmp_path / "trace.txt"

    async def main() -> int:
        trace = MemTrace(MemTraceSettings(out, interval_s=0.05, top=5, frames=4))
        task = asyncio.create_task(trace.run())
        for _ in range(4):
            await asyncio.sleep(0.06)
            _grow(500)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return trace.reports

    try:
        reports = asyncio.run(main())
    finally:
        KEPT.clear()
    assert not tracemalloc.is_tracing()  # stopped with the task
    text = out.read_text()
    assert text.count("=== t=") == reports >= 2  # the intervals and the one at stop
    since_start = text.rsplit("=== t=", 1)[1].split("--- since last report", 1)[0]
    grow_line = next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if "KEPT.extend" in line)
    # ~2000 kept objects of ~1 KiB each: the top entry since the start, about 2 MiB, allocated on that line
    # (its most recent frame, listed first).
    lines = since_start.splitlines()
    top = next(i for i, line in enumerate(lines) if line.strip().endswith("KiB)"))
    assert float(lines[top].split()[0]) > 1500
    assert lines[top + 1].strip() == f"{Path(__file__)}:{grow_line}"
