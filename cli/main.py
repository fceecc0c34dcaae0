"""`qtap`: the command line. Events go to stdout, logs to stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

app = typer.Typer(
    name="qtap",
    help="eBPF agent that sees HTTP, HTTPS, HTTP/2 and gRPC traffic in plaintext, per process.",
    no_args_is_help=True,
    add_completion=True,  # qtap --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, as other CLIs print it (no boxes, no <bool> beside flags)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"qtap: {msg}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from qtap_async import __version__

        typer.echo(f"qtap {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", help="print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """eBPF agent that sees HTTP, HTTPS, HTTP/2 and gRPC traffic in plaintext, per process."""


_CFG = "also with --config"
_NO_CFG = "refused with --config"


@app.command(epilog="With --config, the config's plugins and stores decide what is kept and where it goes: "
             "--level and --format are refused; every other flag applies on top of the config (the filters "
             "narrow what it captures, --output takes the place of stdout).")
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="FILE",
            help="YAML config (default: local-only); reloaded on SIGHUP/change")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", metavar="FORMAT",
            help=f"auto | console | text | json; auto: console on a terminal, "
                          f"JSON on a pipe, a file or in a container ({_NO_CFG})")
    ] = "auto",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE",
            help=f"write events to FILE (appended) instead of stdout ({_CFG})")
    ] = None,
    level: Annotated[
        str | None, typer.Option(metavar="LEVEL",
            help=f"HTTP detail: summary | details (+headers, default) | full (+bodies) "
                                 f"({_NO_CFG})")
    ] = None,
    port: Annotated[
        list[int] | None, typer.Option("--port", metavar="PORT",
            help=f"only connections with this port at either end (repeat; {_CFG})")
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", metavar="HOST",
            help=f"only this host, *.example.com for subdomains (repeat; {_CFG})")
    ] = None,
    exe: Annotated[
        list[str] | None, typer.Option("--exe", metavar="PROGRAM",
            help=f"only this program: curl, /usr/bin/curl, /opt/app/ (repeat; {_CFG})")
    ] = None,
    direction: Annotated[
        str | None, typer.Option(metavar="DIRECTION",
            help=f"all | ingress | egress | egress-internal | egress-external ({_CFG})")
    ] = None,
    container: Annotated[
        list[str] | None, typer.Option("--container", metavar="ID",
            help=f"only this container id or id prefix (repeat; {_CFG})")
    ] = None,
    pid: Annotated[int, typer.Option(metavar="PID", help=f"trace only this process, 0: all ({_CFG})")] = 0,
    no_payload: Annotated[bool, typer.Option("--no-payload", help=f"count bytes only, no payloads ({_CFG})")] = False,
    no_tls: Annotated[bool, typer.Option("--no-tls", help=f"do not attach uprobes to TLS libraries ({_CFG})")] = False,
    ring_buffer_mib: Annotated[int, typer.Option(metavar="MIB",
        help=f"ring buffer size in MiB, a power of two ({_CFG})")] = 16,
    max_connections: Annotated[
        int, typer.Option(metavar="N", help=f"connections tracked at once, oldest evicted and counted ({_CFG})")
    ] = 65536,
    idle_timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help=f"seconds without traffic before a connection is evicted ({_CFG})")
    ] = 300.0,
    cpu_priority: Annotated[str, typer.Option("--cpu-priority", metavar="PRIORITY",
        help="normal | low (nice 19) | idle (SCHED_IDLE): how the agent's user space yields the CPU to the "
             f"workloads it traces; low and idle keep their latency, a host with no idle CPU drops records ({_CFG})")
    ] = "normal",
    metrics_interval: Annotated[float, typer.Option(metavar="SECONDS",
        help=f"log counters to stderr every N s, 0: off ({_CFG})")] = 0.0,
    stats: Annotated[bool, typer.Option("--stats", help="at stop, also print every counter as JSON on stderr")] = False,
    log_level: Annotated[str | None, typer.Option(
        metavar="LEVEL", help="stderr log level: debug | info | warning | error "
        "(default: warning on a terminal, where the start and stop lines say what matters; info otherwise)")] = None,
    status_listen: Annotated[
        str | None, typer.Option("--status-listen", metavar="HOST:PORT",
            help="serve /healthz /readyz /metrics there, or `off` (default 127.0.0.1:10001; a taken default port "
                 f"is logged and skipped, an explicit one must bind; {_CFG})")
    ] = None,
    state_dir: Annotated[str, typer.Option(metavar="DIR",
        help="TLS analysis cache kept across restarts, '' keeps it in memory (tap.tls.state_dir)")] = "/var/lib/qtap",
    hold_exec: Annotated[bool, typer.Option("--hold-exec", help="stop never-analysed executables at exec until "
                                            "their TLS probes are attached (tap.tls.hold_exec)")] = False,
    java: Annotated[bool, typer.Option("--java", help="load qtap's Java agent into running JVMs for their "
                                       "JSSE plaintext (tap.tls.java)")] = False,
    no_preattach: Annotated[bool, typer.Option("--no-preattach", help="do not pre-attach the executables in PATH "
                                               "at start-up (tap.tls.preattach_path)")] = False,
    control: Annotated[
        str | None, typer.Option("--control", metavar="URL",
            help="control plane URL: the config comes from there (excludes --config; --level and --format refused)")
    ] = None,
    registration_token: Annotated[
        str | None,
        typer.Option("--registration-token", metavar="TOKEN", envvar="QTAP_REGISTRATION_TOKEN",
                     help="joins the control plane once"),
    ] = None,
    control_state: Annotated[
        Path, typer.Option("--control-state", metavar="DIR",
                           help="identity + last good config from the control plane (0600)")
    ] = Path("/var/lib/qtap/control"),
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="print credentials (Authorization, cookies, tokens) in clear; "
                           "logs a warning at start")
    ] = False,
) -> None:
    """Capture traffic until Ctrl-C: access lines on a terminal, JSON lines otherwise."""
    from cli.run_cmd import RunFlags, run_command
    from qtap_async.errors import ConfigError, QtapError

    flags = RunFlags(config=config, pid=pid, no_payload=no_payload, ring_buffer_mib=ring_buffer_mib,
                     metrics_interval=metrics_interval, level=level, no_tls=no_tls, max_connections=max_connections,
                     idle_timeout=idle_timeout, log_level=log_level or "auto", format=fmt, output=output, stats=stats,
                     ports=port or [], domains=domain or [], exes=exe or [], direction=direction,
                     containers=container or [], control=control, registration_token=registration_token,
                     control_state=control_state, status_listen=status_listen, state_dir=state_dir,
                     hold_exec=hold_exec, no_preattach=no_preattach, show_secrets=show_secrets, java=java,
                     cpu_priority=cpu_priority, allocator_reexec=_CONSOLE_SCRIPT)
    try:
        code = run_command(flags)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except (QtapError, OSError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def inspect(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    state_dir: Annotated[str, typer.Option(help="the agent's state dir (TLS analysis cache)")] = "/var/lib/qtap",
) -> None:
    """Why capture would or would not work here: kernel, BTF, hooks, BPF objects, TLS libraries."""
    from qtap_async.inspect import gather, render

    report = gather(state_dir)
    if as_json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    else:
        typer.echo(render(report))
    raise typer.Exit(0 if report.capture_possible else 1)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="YAML config to check")],
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


def _mount_control() -> None:
    from cli.control import control_app

    app.add_typer(control_app, name="control", help="Control plane: users, SSO, agents, versioned configs, audit.")


_mount_control()


def _click_exceptions() -> Any:
    # typer >= 0.20 carries its own copy of click; older ones use click itself.
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def _plain_metavars(command: Any) -> None:
    """Option values shown as NAME (``--data-dir DATA_DIR``) instead of typer's ``<path>``/``<str>``."""
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "argument":
            if hasattr(param, "display_type_rich"):  # its NAME says enough, no "<path>" beside it
                param.display_type_rich = lambda ctx: None
        elif not (getattr(param, "is_flag", False) or getattr(param, "metavar", None) or not param.name):
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


#: True in the `qtap` console script, where `qtap run` may replace the process to preload its allocator;
#: never in a caller's process (tests invoking ``app`` in-process, embedding programs).
_CONSOLE_SCRIPT = False


def main() -> None:
    """The console script: usage errors are one line (exit 2), never a usage block or a traceback."""
    global _CONSOLE_SCRIPT
    _CONSOLE_SCRIPT = True
    cx = _click_exceptions()
    command = typer.main.get_command(app)
    _plain_metavars(command)
    try:
        code = command.main(prog_name="qtap", standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        sys.exit(0)
    except cx.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "qtap"
        typer.echo(f"{where}: {exc.format_message()} (see `{where} -h`)", err=True)
        sys.exit(2)
    except cx.ClickException as exc:
        typer.echo(f"qtap: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("qtap: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
