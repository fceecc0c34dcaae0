"""`qtap run`: check every flag, start the agent (with or without a config), tell the person what it
does, and summarize what it saw when it stops.

Every bad value ends in one line on stderr and exit code 2 before anything is loaded. Which flags
apply with ``--config`` is decided here (``CONFIG_REFUSED``): the others act as overrides.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import typer

from cli.filters_cli import FocusGate, build_focus
from cli.formats import FORMATS, FormatWriter, choose_format
from qtap_async.errors import ConfigError

__all__ = ["CONFIG_REFUSED", "LOG_LEVELS", "RunFlags", "check_flags", "run_command", "summary_line"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
LEVELS = ("summary", "details", "full")

#: Flags that make no sense with a config, and why (the config's plugins and stores decide).
CONFIG_REFUSED = {
    "--level": "the http_capture plugin's `level` (and its rules) in the config decide what is kept",
    "--format": "the config's stores write JSON; console lines come from the access_logs plugin (format: console)",
}

log = logging.getLogger("qtap.run")


@dataclass
class RunFlags:
    config: Path | None = None
    pid: int = 0
    no_payload: bool = False
    ring_buffer_mib: int = 16
    metrics_interval: float = 0.0
    level: str | None = None  # None: not given (details without a config)
    no_tls: bool = False
    max_connections: int = 65536
    idle_timeout: float = 300.0
    log_level: str = "auto"  # warning when stderr is a terminal, info otherwise
    format: str | None = None  # None: not given (auto)
    output: Path | None = None
    stats: bool = False
    ports: list[int] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)
    direction: str | None = None
    containers: list[str] = field(default_factory=list)
    control: str | None = None  # control plane URL: the config comes from there
    registration_token: str | None = None
    control_state: Path = Path("/var/lib/qtap/control")
    status_listen: str | None = None  # None: the default address, and a taken default port is not fatal
    state_dir: str = "/var/lib/qtap"  # TLS analysis cache ("" : memory only)
    hold_exec: bool = False
    java: bool = False  # the Java agent into running JVMs (tap.tls.java)
    no_preattach: bool = False
    show_secrets: bool = False  # credentials in clear in every output (a warning is logged at start)
    cpu_priority: str = "normal"  # qtap_async.cpu_priority: normal | low | idle
    allocator_reexec: bool = False  # the console script: re-execute onto mimalloc (qtap_async.telemetry.allocator)


def check_flags(f: RunFlags) -> None:
    """Raise ConfigError naming the first bad flag and why; nothing is started before this passes."""
    if f.log_level != "auto" and f.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"--log-level {f.log_level}: expected one of debug, info, warning, error, critical")
    if f.ring_buffer_mib < 1 or f.ring_buffer_mib & (f.ring_buffer_mib - 1):
        raise ConfigError(f"--ring-buffer-mib {f.ring_buffer_mib}: expected a power of two >= 1 (1, 2, 4, ... 16)")
    if f.ring_buffer_mib > 1024:
        raise ConfigError(f"--ring-buffer-mib {f.ring_buffer_mib}: at most 1024 (1 GiB of locked kernel memory)")
    from qtap_async import cpu_priority

    cpu_priority.check(f.cpu_priority)
    if f.level is not None and f.level not in LEVELS:
        raise ConfigError(f"--level {f.level}: expected summary, details or full")
    if f.format is not None and f.format not in FORMATS:
        raise ConfigError(f"--format {f.format}: expected {', '.join(FORMATS)}")
    if f.pid < 0:
        raise ConfigError(f"--pid {f.pid}: expected a process id (0: every process)")
    if f.pid > 0 and not Path(f"/proc/{f.pid}").is_dir():
        raise ConfigError(f"--pid {f.pid}: no such process")
    if f.max_connections < 1:
        raise ConfigError(f"--max-connections {f.max_connections}: expected at least 1")
    # isfinite: "nan" and "inf" parse as floats; nan passes every comparison's negation and inf overflows
    # the nanosecond conversions further down.
    if not (math.isfinite(f.idle_timeout) and f.idle_timeout > 0):
        raise ConfigError(f"--idle-timeout {f.idle_timeout}: expected a finite number of seconds > 0")
    if not (math.isfinite(f.metrics_interval) and f.metrics_interval >= 0):
        raise ConfigError(f"--metrics-interval {f.metrics_interval}: expected a finite number of seconds >= 0 (0: off)")
    from qtap_async.errors import QtapError
    from qtap_async.telemetry.server import DEFAULT_LISTEN, parse_listen

    try:
        parse_listen(f.status_listen or DEFAULT_LISTEN)
    except QtapError as exc:
        raise ConfigError(f"--status-listen {f.status_listen}: {exc}") from exc
    if f.output is not None:
        target = f.output if f.output.exists() else f.output.parent
        if f.output.is_dir():
            raise ConfigError(f"--output {f.output}: is a directory, expected a file")
        if not target.exists():
            raise ConfigError(f"--output {f.output}: directory {target} does not exist")
        if not os.access(target, os.W_OK):
            raise ConfigError(f"--output {f.output}: not writable")
    if f.control is not None and f.config is not None:
        raise ConfigError("--control and --config exclude each other: with --control the config comes from there")
    if f.config is not None or f.control is not None:
        source = "--config" if f.config is not None else "--control"
        given = {"--level": f.level is not None, "--format": f.format not in (None, "auto", "json")}
        for flag, why in CONFIG_REFUSED.items():
            if given[flag]:
                raise ConfigError(f"{flag} does not apply with {source}: {why}")
    if f.control is not None and (f.ports or f.domains or f.exes or f.direction or f.containers or f.output):
        raise ConfigError("--port/--domain/--exe/--direction/--container/--output do not apply with --control: "
                          "the control plane's config decides what is captured and where it goes")
    build_focus(ports=f.ports, domains=f.domains, exes=f.exes, direction=f.direction, containers=f.containers)


def _log_level(requested: str) -> str:
    if requested == "auto":
        return "WARNING" if sys.stderr.isatty() else "INFO"
    return "WARNING" if requested.upper() == "WARN" else requested.upper()


def _lost_record_metrics() -> tuple[str, ...]:
    """The counters of records and events lost on the way out, each loss counted at exactly one of them.

    Named, not matched by "drop" in the key: a store's drops are counted in its total and again per
    reason, so a substring match counted every store drop twice.
    """
    from qtap_async.telemetry import metrics  # imported late like the rest of the agent: `--help` stays fast

    return (metrics.KERNEL["drop_ringbuf"].name, metrics.KERNEL["drop_inflight"].name,
            metrics.SOURCE_DROPPED_RECORDS.name, *(m.name for m in metrics.CHANNEL_DROPPED.values()),
            metrics.STAGE_DROPPED_AT_STOP.name, metrics.SINK_DROPPED_EVENTS.name)


def _dropped(snapshot: dict[str, int]) -> int:
    """Records and events lost anywhere (kernel ring buffer, channels, stores), not bytes."""
    names = _lost_record_metrics()
    return sum(v for k, v in snapshot.items() if k.split("{", 1)[0] in names)


def summary_line(requests: int, connections: int, dropped: int, seconds: float) -> str:
    def plural(n: int, word: str) -> str:
        return f"{n:,} {word}{'' if n == 1 else 's'}"

    return (f"qtap: stopped after {seconds:.0f}s: {plural(requests, 'request')} on "
            f"{plural(connections, 'connection')}, {dropped:,} dropped")


def _where(fmt: str, output: Path | None) -> str:
    target = str(output) if output is not None else "stdout"
    return {"console": f"an access line per request on {target}",
            "text": f"readable lines on {target}",
            "json": f"JSON lines on {target}"}.get(fmt, target)


def _what(f: RunFlags) -> str:
    parts = []
    if f.pid:
        parts.append(f"process {f.pid}")
    if f.exes:
        parts.append("exe " + ",".join(f.exes))
    if f.ports:
        parts.append("port " + ",".join(map(str, f.ports)))
    if f.domains:
        parts.append("domain " + ",".join(f.domains))
    if f.direction and f.direction != "all":
        parts.append(f"direction {f.direction}")
    if f.containers:
        parts.append("container " + ",".join(f.containers))
    return " and ".join(parts) if parts else "every process on this host"


async def _announce(agent: Any, f: RunFlags, where: str, out: IO[str]) -> None:
    """The start message, once the BPF programs are attached (stderr: stdout stays data)."""
    # agent.attached is a threading.Event (other threads read it too): there is nothing to await, so poll it.
    while not agent.attached.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    capture = agent.capture
    hooks = sum(len(o.links) for o in capture.objects) if capture is not None else 0
    tls = ""
    if agent.tls is not None:
        tls = f", TLS plaintext from {len(agent.tls.probes.files)} libraries"
    elif f.no_tls:
        tls = ", TLS probes off"
    print(f"qtap: capturing TCP traffic of {_what(f)} ({hooks} hooks attached{tls}); {where}. Ctrl-C to stop.",
          file=out, flush=True)


def run_command(f: RunFlags) -> int:
    """Run the agent until SIGINT/SIGTERM; returns the exit code. Raises ConfigError for bad flags."""
    import time

    from qtap_async.telemetry.allocator import active, choice, reexec_onto_mimalloc

    check_flags(f)
    # Before the agent's modules are imported: when it re-executes, this process is replaced here (same PID).
    allocator_note = reexec_onto_mimalloc() if f.allocator_reexec else None
    choice()  # QTAP_ALLOCATOR is checked in-process too

    import uvloop

    from qtap_async.bpf.loader import CaptureSettings
    from qtap_async.telemetry import metrics, setup_logging
    from qtap_async.topology import Agent, AgentOptions

    setup_logging(_log_level(f.log_level))
    if f.log_level == "auto" and sys.stderr.isatty():
        # Access lines (access_logs plugin, format: console) are what a person watches: keep them.
        logging.getLogger("qtap.access").setLevel(logging.INFO)
        if f.metrics_interval > 0:  # asked for: the periodic counter lines are INFO records
            logging.getLogger("qtap.agent").setLevel(logging.INFO)
    cfg = None
    if f.config is not None:
        from qtap_async.config import load_config

        cfg = load_config(f.config)  # before the capability check: a bad file is reported to anyone
    from qtap_async.bpf.kernelfs import ensure, states
    from qtap_async.capabilities import report

    caps = report()
    if not caps.bpf:
        # Say everything that is missing at once: the capabilities and the kernel filesystems nobody mounted.
        missing = "".join(f"; {fs.error}" for fs in states(mount=True) if not fs.mounted)
        raise PermissionError(f"{caps.problems[0]}; see `qtap inspect`{missing}")
    if allocator_note:  # mimalloc was asked for and is not what runs
        log.warning("allocator: %s (%s)", active(), allocator_note)
    else:
        log.info("allocator: %s", active())
    from qtap_async import cpu_priority

    # Before the agent starts a thread: new threads inherit the creating thread's nice value and policy.
    priority = cpu_priority.check(f.cpu_priority)
    if priority != "normal":
        log.info("cpu priority: %s", cpu_priority.apply(priority))
    from qtap_async.telemetry.server import DEFAULT_LISTEN

    for fs in ensure():  # tracefs/bpffs: mounted here when missing, else an error naming the fix
        if fs.action:
            typer.echo(f"qtap: {fs.name} was not mounted; {fs.action} it at {fs.path}", err=True)
    focus = build_focus(ports=f.ports, domains=f.domains, exes=f.exes, direction=f.direction,
                        containers=f.containers)
    gate = FocusGate(focus) if not focus.empty else None
    out_file = f.output.open("ab") if f.output is not None else None
    out = out_file if out_file is not None else sys.stdout.buffer
    opts = AgentOptions(
        tls=not f.no_tls,
        http_level=(f.level or "details"),  # type: ignore[arg-type]
        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=f.pid, capture_payload=not f.no_payload,
                                ring_buffer_bytes=f.ring_buffer_mib << 20),
        metrics_interval_s=f.metrics_interval,
        max_connections=f.max_connections,
        idle_timeout_s=f.idle_timeout,
        status_listen=f.status_listen or DEFAULT_LISTEN,
        # The default port may be taken (another agent on the host): then run without; an explicit one must bind.
        status_required=f.status_listen is not None,
        show_secrets=f.show_secrets,
    )
    from qtap_async.tls.manager import TlsOptions

    if cfg is not None:
        t = cfg.tap.tls
        opts.tls_options = TlsOptions(state_dir=t.state_dir or None, preattach_path=t.preattach_path,
                                      hold_exec=t.hold_exec, max_hold_s=t.max_hold_s, java=t.java)
    else:
        opts.tls_options = TlsOptions(state_dir=f.state_dir or None, preattach_path=not f.no_preattach,
                                      hold_exec=f.hold_exec, java=f.java)
    if f.control is not None:
        from qtap_async.control_client import run_with_control

        return run_with_control(f.control, f.registration_token, f.control_state, opts)
    started = time.monotonic()

    # One graph either way: without a file it is the default config's, with the local output in --format.
    fmt = choose_format(f.format or "auto", out) if cfg is None else "json"
    writer = FormatWriter(fmt, out) if cfg is None else None
    counted = {"connections": 0}
    agent = Agent(opts, config=cfg, writer=writer, focus=gate, path=f.config)
    if cfg is not None:
        def counting_keep(item: Any) -> bool:
            if getattr(item, "event", None) == "open" and type(item).__name__ == "ConnectionEvent":
                counted["connections"] += 1
            return True

        agent.writer.keep = counting_keep
        where = f"output to the config's stores ({_stores(cfg)})"
    else:
        where = _where(fmt, f.output)

    async def main() -> int:
        announce = asyncio.create_task(_announce(agent, f, where, sys.stderr))
        try:
            return await agent.run()
        finally:
            announce.cancel()

    saved_stdout = None
    if out_file is not None and cfg is not None:  # the config's stdout stores write to sys.stdout: point it at the file
        saved_stdout = os.dup(1)
        os.dup2(out_file.fileno(), 1)
    try:
        code = uvloop.run(main())
    finally:
        if saved_stdout is not None:
            sys.stdout.flush()
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)
        if out_file is not None:
            out_file.close()
    snapshot = agent.snapshot()
    if writer is not None:
        requests, connections = writer.counter.requests, writer.counter.connections
    else:
        requests = sum(v for k, v in snapshot.items() if k.startswith(metrics.STACK_TRANSACTIONS.name))
        connections = counted["connections"]
    typer.echo(summary_line(requests, connections, _dropped(snapshot), time.monotonic() - started), err=True)
    if f.stats:
        typer.echo(msgspec.json.encode(snapshot).decode(), err=True)
    return code


def _stores(cfg: Any) -> str:
    names = [s.type for s in cfg.services.event_stores if s.type != "disabled"]
    names += [f"{s.type} (objects)" for s in cfg.services.object_stores if s.type != "disabled"]
    return ", ".join(names) or "none"


