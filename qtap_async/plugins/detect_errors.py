"""detect_errors: an ``issue`` event (Pulse's ``issue`` type) for every rule a transaction matches,
with the transaction stored as an object (headers and bodies) that the issue names by digest.

Besides the config's rules (status classes, headers, hosts... anything rulekit can read), the
embedding code may ask for two checks rulekit has no field for: responses slower than
``slow_after_ns`` and empty response bodies on successful (2xx) responses.
"""

from __future__ import annotations

from qtap_async.config import DetectErrorsConfig
from qtap_async.events.issue import IssueEvent
from qtap_async.plugins.base import Compile, Emission
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.payload import render_object

__all__ = ["DetectErrors"]


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
