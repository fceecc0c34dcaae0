"""`qtap record` and `qtap replay`: raw kernel records to a file, and back through the pipeline."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"qtap: {msg}", err=True)
    raise typer.Exit(code)


def _check_level(level: str) -> None:
    if level not in ("summary", "details", "full"):
        _fail(f"--level must be summary, details or full, got {level!r}", 2)


def record_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="record file to write")],
    duration: Annotated[float | None, typer.Option(help="stop after S seconds (default: until Ctrl-C)")] = None,
    pid: Annotated[int, typer.Option(help="trace only this process (0: all)")] = 0,
    level: Annotated[str, typer.Option(help="HTTP detail of the live output: summary | details | full")] = "details",
    no_tls: Annotated[bool, typer.Option("--no-tls", help="do not attach uprobes to TLS libraries")] = False,
    ring_buffer_mib: Annotated[int, typer.Option(help="ring buffer size in MiB (power of two)")] = 16,
    events: Annotated[bool, typer.Option("--events", help="also print the live events on stdout")] = False,
    embed_events: Annotated[
        bool, typer.Option("--embed-events", help="store the live events in the file's trailer (for tests)")
    ] = False,
    log_level: Annotated[str, typer.Option(help="stderr log level")] = "INFO",
) -> None:
    """Record the raw kernel records (with the ABI version) to a file while the pipeline runs live."""
    import uvloop

    from cli.run_cmd import RunFlags, check_flags
    from qtap_async.bpf.loader import CaptureSettings
    from qtap_async.capabilities import report
    from qtap_async.errors import QtapError
    from qtap_async.replay import Recording, record_for
    from qtap_async.telemetry import setup_logging
    from qtap_async.topology import AgentOptions

    try:  # the same checks as `qtap run`: one line and exit 2 for a bad value
        check_flags(RunFlags(pid=pid, ring_buffer_mib=ring_buffer_mib, level=level, log_level=log_level))
    except QtapError as exc:
        _fail(str(exc), 2)
    if duration is not None and not duration > 0:
        _fail(f"--duration {duration}: expected seconds > 0", 2)
    setup_logging("WARNING" if log_level.upper() == "WARN" else log_level.upper())  # record: INFO by default
    caps = report()
    if not caps.bpf:
        _fail(f"{caps.problems[0]}; see `qtap inspect`")
    size = ring_buffer_mib << 20
    opts = AgentOptions(
        tls=not no_tls,
        http_level=level,  # type: ignore[arg-type]
        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=pid, ring_buffer_bytes=size),
    )
    with out.open("wb") as f:
        rec = Recording(f, opts, events_out=sys.stdout.buffer if events else None, embed_events=embed_events)
        try:
            code = uvloop.run(record_for(rec, duration))
        except QtapError as exc:
            _fail(str(exc))
            return
    typer.echo(f"qtap: recorded {rec.writer.records} records ({rec.writer.bytes} bytes) to {out}", err=True)
    raise typer.Exit(code)


def replay_command(
    file: Annotated[Path, typer.Argument(help="record file written by `qtap record`")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="replay through this config's filters, "
                                                "stacks and stores (as `qtap run --config`)")] = None,
    sink: Annotated[str, typer.Option(help="stdout (JSON lines) | null (encode and drop); not with --config")
                    ] = "stdout",
    level: Annotated[str, typer.Option(help="HTTP detail without --config: summary | details | full")] = "details",
    batch: Annotated[int, typer.Option(help="records per batch, as the ring-buffer drain hands them over")] = 256,
    stats: Annotated[bool, typer.Option("--stats", help="print counters and timings as JSON on stderr")] = False,
) -> None:
    """Run recorded kernel records through the run's graph: decode, conntrack, enrichment, dispatch
    (the config's filters and stacks with --config), and the output (the config's stores with --config)."""
    from qtap_async.replay import RecordFile, RecordFileError, replay

    _check_level(level)
    if batch < 1:
        _fail(f"--batch {batch}: expected at least 1", 2)
    if sink not in ("stdout", "null"):
        _fail(f"--sink must be stdout or null, got {sink!r}", 2)
    try:
        rf = RecordFile.load(file)
    except (OSError, RecordFileError) as exc:
        _fail(str(exc))
        return
    if config is not None:
        _replay_config(rf.records, config, batch, stats)
        return
    result = replay(rf.records, level=level, sink=sys.stdout.buffer if sink == "stdout" else None,  # type: ignore[arg-type]
                    batch_records=batch)
    if stats:
        typer.echo(msgspec.json.encode(result.as_dict()).decode(), err=True)
    raise typer.Exit(1 if result.internal_errors else 0)


def _replay_config(records: list[bytes], path: Path, batch: int, stats: bool) -> None:
    import uvloop

    from qtap_async.config import load_config
    from qtap_async.errors import QtapError
    from qtap_async.replay import replay_with_config
    from qtap_async.telemetry import metrics, setup_logging

    setup_logging("WARNING")
    try:
        cfg = load_config(path)
        rt = uvloop.run(replay_with_config(records, cfg, batch_records=batch))
    except QtapError as exc:
        _fail(str(exc), 2)
        return
    snap = rt.snapshot()
    if stats:
        typer.echo(msgspec.json.encode(snap).decode(), err=True)
    raise typer.Exit(1 if snap.get(metrics.INTERNAL_ERRORS.name) else 0)
