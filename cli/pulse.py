"""`qtap pulse`: run the Pulse ingestion + query service and manage its tokens.

Mounted by cli/main.py as ``app.add_typer(pulse_app, name="pulse")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qtap_async.errors import QtapError

if TYPE_CHECKING:  # imported when used: every `qtap` command loads this module, few need httpx
    from qtap_async.pulse.tokens import TokenStore

pulse_app = typer.Typer(help="Pulse: self-hosted ingestion and query service (ClickHouse/chDB).", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens: create, list, revoke.", no_args_is_help=True)
pulse_app.add_typer(token_app, name="token")


def _mount_query() -> None:
    from cli.pulse_query import query_app

    pulse_app.add_typer(query_app, name="query")


_mount_query()

DataDir = Annotated[Path, typer.Option("--data-dir", help="Pulse data directory (tokens, embedded chDB).")]


@pulse_app.command("serve")
def serve(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Pulse data directory (tokens, embedded chDB) [pulse-data].")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on [127.0.0.1:8428].")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file (flags given override it).")] = None,
    clickhouse_url: Annotated[
        str | None, typer.Option(help="ClickHouse DSN (http://user:pass@host:8123); default: embedded chDB.")
    ] = None,
    kafka: Annotated[bool | None, typer.Option("--kafka/--no-kafka", help="Consume the agents' Kafka topic.")] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    kafka_topic: Annotated[str | None, typer.Option(help="Kafka topic.")] = None,
    kafka_group: Annotated[str | None, typer.Option(help="Kafka consumer group.")] = None,
    kafka_team: Annotated[str | None, typer.Option(help="Team of Kafka messages without a token header.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the HTTP API (ingestion, queries, /healthz, /metrics, /openapi.json)."""
    from qtap_async.pulse.config import load_config
    from qtap_async.pulse.server import run

    if log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        typer.echo(f"error: --log-level {log_level}: expected critical, error, warning, info, debug or trace", err=True)
        raise typer.Exit(2)
    log_level = log_level.lower()
    try:
        cfg = load_config(
            config,
            data_dir=str(data_dir) if data_dir is not None else None,
            listen=listen,
            clickhouse_url=clickhouse_url,
            kafka__enabled=kafka,
            kafka__bootstrap=kafka_bootstrap,
            kafka__topic=kafka_topic,
            kafka__group_id=kafka_group,
            kafka__team=kafka_team,
        )
        run(cfg, log_level)
    except QtapError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def _store(data_dir: Path) -> TokenStore:
    from qtap_async.pulse.tokens import TokenStore

    return TokenStore(data_dir / "tokens.sqlite3")


@token_app.command("create")
def token_create(
    team: Annotated[str, typer.Option(help="Team the token writes and reads as.")],
    data_dir: DataDir = Path("pulse-data"),
    agent: Annotated[str, typer.Option(help="Agent name stored with every event sent with the token.")] = "",
    scope: Annotated[list[str] | None, typer.Option(help="ingest and/or query (repeat); default both.")] = None,
) -> None:
    """Create a token and print it (shown once; only its hash is stored)."""
    store = _store(data_dir)
    try:
        token_id, token = store.create(team, agent, tuple(scope or ("ingest", "query")))
    except QtapError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    finally:
        store.close()
    typer.echo(f"token id {token_id} (team {team})", err=True)
    typer.echo(token)


@token_app.command("list")
def token_list(
    data_dir: DataDir = Path("pulse-data"),
    team: Annotated[str | None, typer.Option(help="Only this team.")] = None,
) -> None:
    """List tokens (never the secrets)."""
    import datetime as dt

    store = _store(data_dir)
    try:
        infos = store.list(team)
    finally:
        store.close()
    typer.echo(f"{'ID':<14}{'TEAM':<20}{'AGENT':<20}{'SCOPES':<14}{'CREATED':<22}STATE")
    for t in infos:
        created = dt.datetime.fromtimestamp(t.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        state = "revoked" if t.revoked_at is not None else "active"
        typer.echo(f"{t.token_id:<14}{t.team:<20}{t.agent or '-':<20}{','.join(t.scopes):<14}{created:<22}{state}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id from `token list`.")],
    data_dir: DataDir = Path("pulse-data"),
) -> None:
    """Revoke a token: the server refuses it (403) from its next request on."""
    store = _store(data_dir)
    try:
        ok = store.revoke(token_id)
    finally:
        store.close()
    if not ok:
        typer.echo(f"error: no active token {token_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}")
