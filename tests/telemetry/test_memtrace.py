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


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(header, lines) of each "---" section of a report file, in order."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("---"):
            out.append((line, []))
        elif out and line.strip():
            out[-1][1].append(line)
    return out


def _top(lines: list[str]) -> tuple[float, str]:
    """KiB of the first (largest) entry of a section and its allocating line."""
    i = next(i for i, line in enumerate(lines) if line.strip().endswith("KiB)"))
    return float(lines[i].split()[0]), lines[i + 1].strip()


@pytest.fixture
def no_tracer() -> None:
    if tracemalloc.is_tracing():
        pytest.skip("another tracer runs (python -X tracemalloc): these tests start and stop their own")


@pytest.mark.usefixtures("no_tracer")
def test_the_report_names_what_grew_since_the_first_report(tmp_path: Path) -> None:
    out = tmp_path / "trace.txt"
    lines = Path(__file__).read_text().splitlines()
    here = f"{Path(__file__)}:{next(i for i, ln in enumerate(lines, 1) if 'KEPT.extend' in ln)}"
    trace = MemTrace(MemTraceSettings(out, top=5, frames=4))
    trace.start()
    try:
        _grow(500)  # the warm-up: in the first report (against the start), not in the later ones' base
        trace.report()
        _grow(1000)
        trace.report()
    finally:
        tracemalloc.stop()
        KEPT.clear()
    (h1, first), (_, _), (h3, since_first), (_, last) = _sections(out.read_text())
    assert h1.startswith("--- since t=0s") and h3.startswith("--- since t=")
    kib, where = _top(first)
    assert where == here and 450 < kib < 600  # 500 objects of ~1 KiB
    kib, where = _top(since_first)
    assert where == here and 900 < kib < 1150  # only the 1000 after the first report
    assert _top(last)[1] == here


@pytest.mark.usefixtures("no_tracer")
def test_the_task_reports_at_stop_and_stops_tracing(tmp_path: Path) -> None:
    out = tmp_path / "trace.txt"

    async def main() -> int:
        trace = MemTrace(MemTraceSettings(out, interval_s=3600))
        task = asyncio.create_task(trace.run())
        await asyncio.sleep(0)  # started
        assert tracemalloc.is_tracing()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return trace.reports

    assert asyncio.run(main()) == 1  # no interval passed: the one report at stop
    assert not tracemalloc.is_tracing()
    assert out.read_text().count("=== t=") == 1
