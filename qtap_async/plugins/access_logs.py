"""access_logs: one line per transaction in the agent's log (stderr), for people watching it.

``summary``: method, URL, status, duration, process; ``details`` adds the headers, ``full`` the bodies.
The log stays on the host, so it shows the URL as sent; nothing here reaches the stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from qtap_async.events.http import Headers
from qtap_async.plugins.base import Compile, Emission, FirstMatch, PluginSettings, RuleSettings
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.settings import Settings

__all__ = [
    "AccessLogFormat",
    "AccessLogMode",
    "AccessLogs",
    "AccessLogsConfig",
    "AccessLogsPlugin",
    "AccessLogsRule",
    "format_console",
    "format_json",
]

AccessLogMode = Literal["summary", "details", "full"]
AccessLogFormat = Literal["json", "console"]


class AccessLogsRule(RuleSettings, frozen=True):
    """When ``expr`` matches a transaction, log it in ``mode`` (the first matching rule wins)."""

    field_hints: ClassVar[dict[str, str]] = {"level": "access_logs rules use 'mode'"}

    mode: AccessLogMode


class AccessLogsConfig(Settings, frozen=True):
    field_hints: ClassVar[dict[str, str]] = {"level": "access_logs uses 'mode'"}

    mode: AccessLogMode = "summary"
    format: AccessLogFormat = "console"
    rules: list[AccessLogsRule] = msgspec.field(default_factory=list)


class AccessLogsPlugin(PluginSettings, frozen=True, tag="access_logs"):
    """``type: access_logs`` in a stack (docs/config.md)."""

    config: AccessLogsConfig = msgspec.field(default_factory=AccessLogsConfig)

    def rules(self) -> Sequence[AccessLogsRule]:
        return self.config.rules

log = logging.getLogger("qtap.access")
_encode = msgspec.json.Encoder().encode
_MAX_LOGGED_BODY = 4096  # a log line is for reading: longer bodies are cut (the object store has them)


def _body_text(data: bytes, decoded: bytes | None) -> str:
    body = decoded if decoded is not None else data
    cut = body[:_MAX_LOGGED_BODY]
    try:
        text = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A character split by the cut is not binary data; anything earlier is.
        if len(body) <= _MAX_LOGGED_BODY or exc.start < len(cut) - 3:
            return f"[{len(body)} bytes of binary data]"
        text = cut[: exc.start].decode("utf-8")
    return text + ("..." if len(body) > _MAX_LOGGED_BODY else "")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f}ms"


def format_console(ex: HttpExchange, mode: AccessLogMode) -> str:
    tx, c = ex.tx, ex.conn
    status = str(tx.status) if tx.status is not None else "---"
    proc = f"{c.exe.rsplit('/', 1)[-1] or c.comm}[{c.pid}]"
    line = (f"{tx.method or '-'} {ex.shown_url} {status} {_ms(ex.duration_ns)} "
            f"{tx.response_body_size}B {proc} {c.traffic}")
    if tx.pushed:  # the server pushed it: no client sent this request
        line += f" pushed(promised by stream {tx.promised_by})"
    if tx.incomplete:
        line += f" incomplete({tx.reason})"
    if mode == "summary":
        return line
    parts = [line]

    def headers(prefix: str, hs: Headers) -> None:
        parts.extend(f"  {prefix} {k}: {v}" for k, v in ex.redactor.headers(hs))

    headers(">", tx.request_headers)
    if mode == "full" and (tx.request_body or tx.request_body_decoded):
        parts.append("  > " + _body_text(tx.request_body, tx.request_body_decoded))
    headers("<", tx.response_headers)
    if mode == "full" and (tx.response_body or tx.response_body_decoded):
        parts.append("  < " + _body_text(tx.response_body, tx.response_body_decoded))
    return "\n".join(parts)


def format_json(ex: HttpExchange, mode: AccessLogMode) -> str:
    tx, c = ex.tx, ex.conn
    doc: dict[str, Any] = {
        "ts": ex.ts,
        "method": tx.method,
        "url": ex.shown_url,
        "status": tx.status,
        "duration_ms": round(ex.duration_ns / 1e6, 3),
        "resp_bytes": tx.response_body_size,
        "pid": c.pid,
        "exe": c.exe,
        "direction": c.traffic,
    }
    if mode in ("details", "full"):
        doc["request_headers"] = ex.redactor.headers(tx.request_headers)
        doc["response_headers"] = ex.redactor.headers(tx.response_headers)
    if mode == "full":
        doc["request_body"] = _body_text(tx.request_body, tx.request_body_decoded)
        doc["response_body"] = _body_text(tx.response_body, tx.response_body_decoded)
    return _encode(doc).decode()


class AccessLogs:
    name = "access_logs"

    def __init__(self, config: AccessLogsConfig, compile: Compile,
                 write: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._rules: FirstMatch[AccessLogMode] = FirstMatch(
            [(r.name, compile(r.expr), r.mode) for r in config.rules], config.mode)
        self._format = format_json if config.format == "json" else format_console
        #: Where lines go: the ``qtap.access`` logger (stderr) unless a test or embedder says otherwise.
        self.write = write or log.info
        self.lines = 0

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        _, mode = self._rules.decide(ex)
        self.write(self._format(ex, mode))
        self.lines += 1
        return []
