"""detect_errors: an ``issue`` event (Pulse's ``issue`` type) for every rule a transaction matches,
with the transaction stored as an object (headers and bodies) that the issue names by digest.

Besides the config's rules (status classes, headers, hosts... anything rulekit can read), the
embedding code may ask for two checks rulekit has no field for: responses slower than
``slow_after_ns`` and empty response bodies on successful (2xx) responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from qtap_async.events.issue import IssueEvent
from qtap_async.plugins.base import Compile, Emission, PluginSettings, RuleSettings
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.payload import render_object
from qtap_async.settings import Settings

__all__ = ["DetectErrors", "DetectErrorsConfig", "DetectErrorsPlugin", "DetectErrorsRule", "Severity"]

Severity = Literal["info", "warning", "error", "critical"]


class DetectErrorsRule(RuleSettings, frozen=True):
    """A transaction matching ``expr`` is reported as an issue of ``severity`` (every matching rule)."""

    severity: Severity = "error"


def _default_error_rules() -> list[DetectErrorsRule]:
    return [
        DetectErrorsRule(name="server error", expr="http.res.status == 5xx", severity="error"),
        DetectErrorsRule(name="client error", expr="http.res.status == 4xx", severity="warning"),
    ]


class DetectErrorsConfig(Settings, frozen=True):
    rules: list[DetectErrorsRule] = msgspec.field(default_factory=_default_error_rules)


class DetectErrorsPlugin(PluginSettings, frozen=True, tag="detect_errors"):
    """``type: detect_errors`` in a stack (docs/config.md)."""

    config: DetectErrorsConfig = msgspec.field(default_factory=DetectErrorsConfig)

    def rules(self) -> Sequence[DetectErrorsRule]:
        return self.config.rules


class DetectErrors:
    name = "detect_errors"

    def __init__(self, config: DetectErrorsConfig, compile: Compile, *, slow_after_ns: int | None = None,
                 empty_body: bool = False, attach: bool = True) -> None:
        self.config = config
        self._rules = tuple((r.name, compile(r.expr), r.severity) for r in config.rules)
        self.slow_after_ns = slow_after_ns
        self.empty_body = empty_body
        #: Store the transaction (level full) with its issues; off keeps issues to metadata only.
        self.attach = attach

    def _matches(self, ex: HttpExchange) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        ctx = ex.context
        for name, rule, severity in self._rules:
            if rule.evaluate(ctx):
                found.append((name, severity))
        tx = ex.tx
        if self.slow_after_ns is not None and ex.duration_ns > self.slow_after_ns:
            found.append(("slow response", "warning"))
        if (self.empty_body and tx.status is not None and 200 <= tx.status < 300 and tx.status != 204
                and tx.method != "HEAD" and tx.response_body_size == 0):
            found.append(("empty response body", "warning"))
        return found

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        found = self._matches(ex)
        if not found:
            return []
        out: list[Emission] = []
        digest = ""
        if self.attach:
            obj = render_object(ex, "full", "json", found[0][0])
            digest = obj.digest
            out.append(obj)
        tx = ex.tx
        status = str(tx.status) if tx.status is not None else ""
        summary = f"{tx.method or '-'} {ex.host}{_path(tx.path)} -> {status or 'no response'}"
        for index, (name, severity) in enumerate(found):
            out.append(IssueEvent(id=f"{ex.id}-issue{index}", ts=ex.ts, conn_id=ex.conn.conn_id, rule=name[:255],
                                  severity=severity, summary=summary[:4096], status=status,
                                  duration_ns=ex.duration_ns, object_digest=digest))
        return out


def _path(path: str | None) -> str:
    # The summary is an event: the path without its query (query values are never in events).
    return (path or "").partition("?")[0]
