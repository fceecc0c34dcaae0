"""`qtap validate FILE [--check-services]`: check a config file and say what it will do.

Prints "OK" and a short summary (plus warnings) and returns 0, or prints every problem with its line
and returns 1. With ``check_services`` it also checks what the stores need at run time: secrets from
environment variables, a writable directory for ``dir`` stores, and TCP reachability of the Kafka
brokers, the Pulse URL and the S3 endpoint. Sinks can add checks with ``register_service_check``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import typer

from qtap_async.config import (
    Config,
    StoreConfig,
    config_warnings,
    format_path,
    iter_secrets,
    load_config,
    summarize,
)
from qtap_async.errors import ConfigError

#: One check result: (passed, what was checked).
CheckResult = tuple[bool, str]
ServiceCheck = Callable[[StoreConfig], Iterable[CheckResult]]

CONNECT_TIMEOUT = 3.0

_CHECKS: dict[tuple[str, str], ServiceCheck] = {}


def register_service_check(kind: str, type_name: str, check: ServiceCheck) -> None:
    """Use ``check`` for stores of ``type_name`` (``kind`` "event" or "object") instead of the
    built-in one."""
    _CHECKS[(kind, type_name)] = check


def validate_command(file: Path, check_services: bool) -> int:
    """Validate ``file``; print the result; return the exit code (0 valid, 1 invalid or a check failed)."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        typer.echo(f"INVALID {exc}", err=True)
        return 1
    typer.echo(f"OK {file}")
    for line in summarize(config):
        typer.echo(f"  {line}")
    for warning in config_warnings(config):
        typer.echo(f"warning: {warning}")
    if not check_services:
        return 0
    results = list(check_config_services(config))
    typer.echo("services:")
    if not results:
        typer.echo("  nothing to check")
    for passed, what in results:
        typer.echo(f"  {'ok  ' if passed else 'FAIL'}  {what}")
    return 0 if all(passed for passed, _ in results) else 1


def check_config_services(config: Config) -> Iterable[CheckResult]:
    """Every service check for ``config``: secrets first, then each store."""
    for path, secret in iter_secrets(config):
        if secret.type != "env":
            continue
        if os.environ.get(secret.value) is None:
            yield False, f"{path}: environment variable {secret.value} is not set"
        else:
            yield True, f"{path}: environment variable {secret.value} is set"
    for kind, key, stores in (
        ("event", "event_stores", config.services.event_stores),
        ("object", "object_stores", config.services.object_stores),
    ):
        for index, store in enumerate(stores):
            where = f"{format_path(('services', key, index))} ({store.type})"
            check = _CHECKS.get((kind, store.type), _builtin_check)
            for passed, what in check(store):
                yield passed, f"{where}: {what}"


def _builtin_check(store: StoreConfig) -> Iterable[CheckResult]:
    settings = store.settings
    if store.type == "dir":
        yield from _check_dir(settings.get("path") or settings.get("dir"))
    elif store.type == "kafka":
        brokers = settings.get("brokers") or settings.get("bootstrap_servers") or []
        if isinstance(brokers, str):
            brokers = [b.strip() for b in brokers.split(",") if b.strip()]
        if not brokers:
            yield False, "no brokers configured"
        for broker in brokers:
            yield _check_tcp(str(broker), default_port=9092)
    elif store.type == "pulse":
        url = settings.get("url") or settings.get("endpoint")
        if not url:
            yield False, "no url configured"
        else:
            yield from _check_pulse(str(url), settings.get("token"))
    elif store.type == "s3":
        endpoint = settings.get("endpoint")
        if endpoint:
            scheme = "http" if settings.get("insecure") else "https"
            text = str(endpoint)
            yield _check_url(text if "://" in text else f"{scheme}://{text}")
        if not settings.get("bucket"):
            yield False, "no bucket configured"


def _check_dir(path: Any) -> Iterable[CheckResult]:
    if not path:
        yield False, "no path configured"
        return
    p = Path(str(path))
    target = p if p.exists() else p.parent
    if p.exists() and not p.is_dir():
        yield False, f"{p} exists and is not a directory"
    elif not target.exists():
        yield False, f"{p} does not exist and neither does its parent"
    elif not os.access(target, os.W_OK | os.X_OK):
        yield False, f"{target} is not writable"
    else:
        yield True, f"{p} is writable" if p.exists() else f"{p} can be created"


def _check_url(url: str) -> CheckResult:
    parts = urlsplit(url)
    if not parts.hostname:
        return False, f"invalid url {url!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _connect(parts.hostname, port, url)


def _check_tcp(address: str, default_port: int) -> CheckResult:
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        host, port = address, default_port
    else:
        port = int(port_text)
    host = host.strip("[]")
    return _connect(host, port, address)


def _connect(host: str, port: int, label: str) -> CheckResult:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return True, f"{label} is reachable"
    except OSError as exc:
        return False, f"{label} is not reachable ({exc.strerror or exc})"


def _check_pulse(url: str, token: Any) -> Iterable[CheckResult]:
    """Pulse answers as Pulse: /healthz at the configured base URL (the agent adds /v1/events itself),
    and, when the token can be read here, an empty batch is accepted with it. A port that merely
    accepts TCP connections, or a server answering 404, is not "reachable" Pulse."""
    import httpx

    from qtap_async.config import SecretValue

    base = url.rstrip("/")
    if base.endswith("/v1/events"):
        yield False, (f"{url}: the url is the Pulse server's base address; the agent adds /v1/events itself "
                      f"(use {base[: -len('/v1/events')] or base})")
        return
    try:
        r = httpx.get(f"{base}/healthz", timeout=CONNECT_TIMEOUT)
    except httpx.HTTPError as exc:
        yield False, f"{url} is not reachable ({exc})"
        return
    if r.status_code != 200:
        yield False, f"{url} answers {r.status_code} on /healthz: not a Pulse server at this address"
        return
    yield True, f"{url} is a Pulse server (/healthz 200)"
    secret: str | None = None
    if isinstance(token, dict):
        try:
            secret = msgspec.convert(token, SecretValue).resolve()
        except (msgspec.ValidationError, ConfigError):  # reported by the secrets check above
            secret = None
    if secret is None:
        return
    try:
        r = httpx.post(f"{base}/v1/events", json={"events": []}, timeout=CONNECT_TIMEOUT,
                       headers={"Authorization": f"Bearer {secret}"})
    except httpx.HTTPError as exc:
        yield False, f"{url}: ingestion not reachable ({exc})"
        return
    if r.status_code in (401, 403):
        yield False, f"{url}: the token is refused ({r.status_code}); create one with `qtap pulse token create`"
    elif r.status_code >= 400 and r.status_code != 422:
        yield False, f"{url}: POST /v1/events answers {r.status_code}"
    else:
        yield True, f"{url}: the token is accepted for ingestion"
