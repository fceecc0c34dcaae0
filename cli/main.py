"""`qtap`: the command line. Events go to stdout, logs to stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer

app = typer.Typer(
    name="qtap",
    help="eBPF agent that sees HTTP, HTTPS, HTTP/2 and gRPC traffic in plaintext, per process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"qtap: {msg}", err=True)
    raise typer.Exit(code)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (default: local-only); reloaded on SIGHUP/change")
    ] = None,
    pid: Annotated[int, typer.Option(help="trace only this process (0: all)")] = 0,
    no_payload: Annotated[bool, typer.Option("--no-payload", help="count bytes only, no payloads")] = False,
    ring_buffer_mib: Annotated[int, typer.Option(help="ring buffer size in MiB (power of two)")] = 16,
    metrics_interval: Annotated[float, typer.Option(help="log metrics to stderr every N s (0: off)")] = 0.0,
    level: Annotated[str, typer.Option(help="HTTP detail: summary | details (+headers) | full (+bodies)")] = "details",
    no_tls: Annotated[bool, typer.Option("--no-tls", help="do not attach uprobes to TLS libraries")] = False,
    max_connections: Annotated[int, typer.Option(help="connections tracked at once (oldest evicted, counted)")] = 65536,
    idle_timeout: Annotated[float, typer.Option(help="seconds without traffic before a connection is evicted")] = 300.0,
    log_level: Annotated[str, typer.Option(help="stderr log level")] = "INFO",
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="print credentials (Authorization, cookies, tokens) in clear")
    ] = False,
) -> None:
    """Capture traffic: JSON lines on stdout, one object per line with a `type` field."""
    from qtap_async.agent import AgentOptions, run_agent
    from qtap_async.bpf.loader import CaptureSettings
    from qtap_async.errors import QtapError
    from qtap_async.telemetry import setup_logging

    setup_logging(log_level)
    cfg = None
    if config is not None:
        from qtap_async.config import load_config

        try:
            cfg = load_config(config)  # before the root check: a bad file is reported to anyone
        except QtapError as exc:
            _fail(str(exc), 2)
    if os.geteuid() != 0:
        _fail("must run as root (BPF needs CAP_BPF/CAP_PERFMON); see `qtap inspect`")
    size = ring_buffer_mib << 20
    if size & (size - 1):
        _fail(f"--ring-buffer-mib must be a power of two, got {ring_buffer_mib}", 2)
    if level not in ("summary", "details", "full"):
        _fail(f"--level must be summary, details or full, got {level!r}", 2)
    opts = AgentOptions(
        tls=not no_tls,
        http_level=level,  # type: ignore[arg-type]
        capture=CaptureSettings(
            self_tgid=os.getpid(), target_tgid=pid, capture_payload=not no_payload, ring_buffer_bytes=size
        ),
        metrics_interval_s=metrics_interval,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout,
        show_secrets=show_secrets,
    )
    if max_connections < 1 or idle_timeout <= 0:
        _fail("--max-connections must be >= 1 and --idle-timeout > 0", 2)
    try:
        if cfg is not None:
            # With a config, --level does not apply: the stacks' plugins decide what is kept.
            import uvloop

            from qtap_async.pipeline_config import run_with_config

            code = uvloop.run(run_with_config(cfg, opts, path=config))
        else:
            code = run_agent(opts)
    except QtapError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def inspect(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Why capture would or would not work here: kernel, BTF, hooks, BPF objects, TLS libraries."""
    from qtap_async.inspect import gather, render

    report = gather()
    if as_json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    else:
        typer.echo(render(report))
    raise typer.Exit(0 if report.capture_possible else 1)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="YAML config to check")],
    check_services: Annotated[
        bool, typer.Option("--check-services", help="also check that the configured stores answer")
    ] = False,
) -> None:
    """Check a config file without running: every problem with its field path and line."""
    from cli.validate import validate_command

    raise typer.Exit(validate_command(file, check_services))


def _mount_record() -> None:
    # cli/record.py imports only typer and msgspec at module level: registering it costs nothing at startup.
    from cli.record import record_command, replay_command

    app.command(name="record")(record_command)
    app.command(name="replay")(replay_command)


_mount_record()


def _mount_pulse() -> None:
    from cli.pulse import pulse_app

    app.add_typer(pulse_app, name="pulse", help="Pulse: the self-hosted ingestion and query service.")


_mount_pulse()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
