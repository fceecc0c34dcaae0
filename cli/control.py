"""`qtap control`: run the control plane and bootstrap it (first admin, tokens, registration tokens).

Mounted by cli/main.py as ``app.add_typer(control_app, name="control")``. The bootstrap commands write
the store directly (the server may be running: it sees the change on its next request) and are recorded
in the audit log with the actor ``cli``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qtap_async.errors import QtapError

if TYPE_CHECKING:
    from qtap_async.control.store import Store

control_app = typer.Typer(help="Control plane: users, SSO, agent registration, versioned configs, audit.",
                          no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
reg_app = typer.Typer(help="Registration tokens (agents join with them).", no_args_is_help=True)
control_app.add_typer(user_app, name="user")
control_app.add_typer(token_app, name="token")
control_app.add_typer(reg_app, name="registration-token")

DataDir = Annotated[Path, typer.Option("--data-dir", help="Control plane data directory (the SQLite store).")]
# With PostgreSQL the bootstrap commands write to that database instead of the data directory's SQLite file.
DatabaseUrl = Annotated[str, typer.Option("--database-url", envvar="QTAP_CONTROL_DATABASE_URL",
                                          help="postgresql://... instead of the SQLite file in --data-dir.")]
_DEFAULT_DIR = Path("control-data")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@control_app.command("serve")
def serve(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory [control-data].")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on [127.0.0.1:8429].")] = None,
    pulse_url: Annotated[str | None, typer.Option(help="Pulse URL, shown to API clients.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file (flags given override it).")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="QTAP_CONTROL_DATABASE_URL", help="postgresql://... (default: SQLite in --data-dir).")
    ] = None,
    insecure_cookies: Annotated[
        bool, typer.Option("--insecure-cookies", help="Session cookies without Secure (plain-HTTP development).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API (/api/v1, /openapi.json, /healthz, /readyz, /metrics)."""
    from qtap_async.control.server import run
    from qtap_async.control.settings import load_settings

    try:
        settings = load_settings(config, data_dir=str(data_dir) if data_dir is not None else None, listen=listen,
                                 pulse_url=pulse_url, cookie_secure=False if insecure_cookies else None,
                                 database_url=database_url)
        run(settings, log_level)
    except QtapError as e:
        _fail(str(e))


def _store(data_dir: Path, database_url: str = "") -> Store:
    from qtap_async.control.store import Store

    try:
        return Store(database_url or data_dir / "control.sqlite3")
    except QtapError as e:
        _fail(str(e))
        raise


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="admin | editor | viewer")],
    team: Annotated[str, typer.Option(help="Team the role applies to.")] = "default",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (first line).")
    ] = False,
    data_dir: DataDir = _DEFAULT_DIR,
    database_url: DatabaseUrl = "",
) -> None:
    """Create a user (or give an existing one a role in another team)."""
    import msgspec

    from qtap_async.control.auth import hash_password
    from qtap_async.control.models import UserIn

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        msgspec.convert({"name": name, "role": role, "team": team, "password": password}, UserIn)
    except msgspec.ValidationError as e:
        _fail(f"{e} (passwords need at least 12 characters)")
    store = _store(data_dir, database_url)
    try:
        row = store.user_row(name)
        if row is None:
            uid = store.create_user(name, "local", hash_password(password) if password else None)
        else:
            uid = row[0]
            if password:
                store.set_password(uid, hash_password(password))
            store.set_disabled(uid, False)
        store.set_membership(uid, team, role)
        store.audit("cli", "", team, "user.create", name, {"role": role, "password": bool(password)})
    except QtapError as e:
        _fail(str(e))
    finally:
        store.close()
    typer.echo(f"user {name}: {role} in team {team}")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="The user the token acts as.")],
    scope: Annotated[list[str] | None, typer.Option(help="read | write | admin (repeat); default: admin.")] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "cli",
    expires_in: Annotated[float, typer.Option(help="Seconds until it expires (0: never).")] = 0,
    data_dir: DataDir = _DEFAULT_DIR,
    database_url: DatabaseUrl = "",
) -> None:
    """Create an API token and print it (shown once; only its hash is stored)."""
    from qtap_async.control.auth import hash_secret, make_token

    scopes = sorted(set(scope or ["admin"]))
    bad = [s for s in scopes if s not in ("read", "write", "admin")]
    if bad:
        _fail(f"--scope {bad[0]!r}: choose read, write or admin")
    store = _store(data_dir, database_url)
    try:
        row = store.user_row(user)
        if row is None or row[3]:
            _fail(f"no user {user!r}")
        assert row is not None
        token_id, token = make_token("qct")
        store.create_api_token(token_id, hash_secret(token), name, row[0], scopes,
                               time.time() + expires_in if expires_in > 0 else None)
        for team in sorted(store.memberships(row[0])) or [""]:
            store.audit("cli", "", team, "token.create", token_id, {"user": user, "scopes": scopes})
    finally:
        store.close()
    typer.echo(f"token id {token_id} (user {user}, scopes {','.join(scopes)})", err=True)
    typer.echo(token)


@reg_app.command("create")
def registration_token_create(
    team: Annotated[str, typer.Option(help="Team the agents join.")] = "default",
    group: Annotated[str, typer.Option(help="Agent group (configs can be activated per group).")] = "",
    expires_in: Annotated[float, typer.Option(help="Seconds until it expires (0: never).")] = 0,
    max_uses: Annotated[int, typer.Option(help="Agents that may join with it (0: no limit).")] = 0,
    data_dir: DataDir = _DEFAULT_DIR,
    database_url: DatabaseUrl = "",
) -> None:
    """Create a registration token and print it: `qtap run --control URL --registration-token T`."""
    import msgspec

    from qtap_async.control.auth import hash_secret, make_token
    from qtap_async.control.models import RegistrationTokenIn, UserIn

    try:
        msgspec.convert({"group": group}, RegistrationTokenIn)
        msgspec.convert({"name": team, "role": "viewer"}, UserIn)  # the same rule for team names
    except msgspec.ValidationError as e:
        _fail(f"team or group: {e}")
    store = _store(data_dir, database_url)
    try:
        token_id, token = make_token("qcr")
        store.create_registration_token(token_id, hash_secret(token), team, group, "cli",
                                        time.time() + expires_in if expires_in > 0 else None, max_uses or None)
        store.audit("cli", "", team, "registration_token.create", token_id, {"group": group})
    finally:
        store.close()
    typer.echo(f"registration token id {token_id} (team {team}, group {group or '-'})", err=True)
    typer.echo(token)
