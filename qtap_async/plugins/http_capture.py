"""http_capture: record each transaction at a capture level chosen by rules (first match wins).

``summary`` sends an ``http_transaction`` event (metadata, query values masked) to the event stores;
``details`` and ``full`` also store the transaction (headers; headers and bodies) as an object, whose
digest the event names. ``none`` records nothing.
"""

from __future__ import annotations

from qtap_async.config import CaptureLevel, HttpCaptureConfig, OutputFormat
from qtap_async.plugins.anonymize import masked_target
from qtap_async.plugins.base import Compile, FirstMatch
from qtap_async.plugins.events import Emission, HttpTransactionEvent
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.payload import render_object

__all__ = ["HttpCapture", "transaction_event"]


def transaction_event(ex: HttpExchange, level: str = "summary", rule: str = "",
                      object_digest: str = "") -> HttpTransactionEvent:
    tx, c = ex.tx, ex.conn
    ttfb = 0
    if tx.response_start_ns and tx.request_start_ns:
        ttfb = max(0, tx.response_start_ns - tx.request_start_ns)
    grpc = tx.grpc
    return HttpTransactionEvent(
        id=f"{ex.id}-tx",
        ts=ex.ts,
        conn_id=c.conn_id,
        transaction_id=ex.id,
        direction=c.direction,
        protocol=tx.protocol,
        method=tx.method or "",
        scheme=ex.scheme,
        host=ex.host,
        path=masked_target(tx.path or ""),
        status=tx.status or 0,
        duration_ns=ex.duration_ns,
        ttfb_ns=ttfb,
        req_bytes=tx.request_body_size,
        resp_bytes=tx.response_body_size,
        pid=c.pid,
        exe=c.exe,
        comm=c.comm,
        container_id=c.container_id,
        container_name=c.container_name,
        container_image=c.container_image,
        container_labels=c.container_labels,
        pod_name=c.pod_name,
        pod_namespace=c.pod_namespace,
        pod_uid=c.pod_uid,
        src_ip=c.src_ip,
        src_port=c.src_port,
        dst_ip=c.dst_ip,
        dst_port=c.dst_port,
        tls=c.tls,
        level=level,
        rule=rule,
        object_digest=object_digest,
        grpc_service=grpc.service if grpc else "",
        grpc_method=grpc.method if grpc else "",
        grpc_status=grpc.grpc_status if grpc and grpc.grpc_status is not None else -1,
        incomplete=tx.incomplete,
        reason=tx.reason or "",
        pushed=tx.pushed,
        promised_by=tx.promised_by or 0,
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
