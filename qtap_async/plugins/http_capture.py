"""http_capture: record each transaction at a capture level chosen by rules (first match wins).

``summary`` sends an ``http_transaction`` event (metadata, query values masked) to the event stores;
``details`` and ``full`` also store the transaction (headers; headers and bodies) as an object, whose
digest the event names. ``none`` records nothing.
"""

from __future__ import annotations

import re

import msgspec

from qtap_async.config import CaptureLevel, HttpCaptureConfig, OutputFormat
from qtap_async.events.http import HttpTransactionEvent
from qtap_async.plugins.anonymize import masked_target
from qtap_async.plugins.base import Compile, Emission, FirstMatch
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.payload import render_object

__all__ = ["HttpCapture", "transaction_event"]

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def _traceparent(ex: HttpExchange) -> str:
    """The request's ``traceparent`` when well formed; the redactor has its say (a deployment that lists
    it as a secret header gets a redacted value, which does not match, so nothing is passed on)."""
    for name, raw in ex.tx.request_headers:  # a scan: cheaper than building the joined header dict
        if len(name) == 11 and name.lower() == "traceparent":
            value = ex.redactor.header_value(name, raw.strip())
            return value if _TRACEPARENT.fullmatch(value) else ""
    return ""


def transaction_event(ex: HttpExchange, level: str = "summary", rule: str = "",
                      object_digest: str = "") -> HttpTransactionEvent:
    tx, c = ex.tx, ex.conn
    ttfb = 0
    if tx.response_start_ns and tx.request_start_ns:
        ttfb = max(0, tx.response_start_ns - tx.request_start_ns)
    return HttpTransactionEvent(
        id=f"{ex.id}-tx",
        ts=ex.ts,
        **msgspec.structs.asdict(c),
        protocol=tx.protocol,
        method=tx.method,
        scheme=ex.scheme,
        authority=tx.authority,
        host=ex.host,
        path=masked_target(tx.path) if tx.path is not None else None,
        status=tx.status,
        request_body_size=tx.request_body_size,
        response_body_size=tx.response_body_size,
        duration_ns=ex.duration_ns,
        ttfb_ns=ttfb,
        stream_id=tx.stream_id,
        pushed=tx.pushed,
        promised_by=tx.promised_by,
        grpc=tx.grpc,
        upgrade=tx.upgrade,
        informational=tx.informational,
        incomplete=tx.incomplete,
        reason=tx.reason,
        transaction_id=ex.id,
        level=level,
        rule=rule,
        object_digest=object_digest,
        traceparent=_traceparent(ex),
    )


class HttpCapture:
    name = "http_capture"

    def __init__(self, config: HttpCaptureConfig, compile: Compile) -> None:
        self.config = config
        self._rules: FirstMatch[tuple[CaptureLevel, OutputFormat]] = FirstMatch(
            [(r.name, compile(r.expr), (r.level, r.format or config.format)) for r in config.rules],
            (config.level, config.format),
        )

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        rule, (level, fmt) = self._rules.decide(ex)
        if level == "none":
            return []
        if level == "summary":
            return [transaction_event(ex, level, rule)]
        obj = render_object(ex, level, fmt, rule)
        return [obj, transaction_event(ex, level, rule, obj.digest)]
