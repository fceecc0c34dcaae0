"""report_usage: one anonymized ``request`` event per transaction (Pulse's ``request`` type).

The path is a template (ids, UUIDs, numbers, hashes become placeholders), query values are masked
except ``safe_query_params``, and the caller's credential (Authorization, X-API-Key and the other
``mask_headers``) appears only as its SHA-256 hash. Content type and user agent are the only header
values kept: they describe the client software, not the person.
"""

from __future__ import annotations

import msgspec

from qtap_async.events.request import RequestEvent
from qtap_async.plugins.anonymize import auth_token, hash_token, masked_target
from qtap_async.plugins.base import Emission, PluginSettings
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.settings import Settings

__all__ = ["DEFAULT_MASK_HEADERS", "ReportUsage", "ReportUsageConfig", "ReportUsagePlugin", "request_protocol"]

DEFAULT_MASK_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
)


class ReportUsageConfig(Settings, frozen=True):
    """Usage reports: header values named in ``mask_headers`` are masked, and query parameters other
    than ``safe_query_params`` have their values masked; ``tags`` are added to every report."""

    mask_headers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_MASK_HEADERS))
    safe_query_params: list[str] = msgspec.field(default_factory=list)
    tags: list[str] = msgspec.field(default_factory=list)


class ReportUsagePlugin(PluginSettings, frozen=True, tag="report_usage"):
    """``type: report_usage`` in a stack (docs/config.md); it has no rules."""

    config: ReportUsageConfig = msgspec.field(default_factory=ReportUsageConfig)

_MAX_NAME = 255  # Pulse's limit for host, content type and user agent


def request_protocol(protocol: str, grpc: bool) -> str:
    """The ``protocol`` of a request event: ``grpc`` for a gRPC call, else the transaction's own (an ALPN
    identifier: ``http/1.1``, ``h2``...; see qtap_async.events.context), ``unknown`` when not known."""
    if grpc:
        return "grpc"
    return protocol or "unknown"


class ReportUsage:
    name = "report_usage"

    def __init__(self, config: ReportUsageConfig) -> None:
        self.config = config
        self._safe = frozenset(config.safe_query_params)
        self._mask = tuple(h.lower() for h in config.mask_headers)
        self._tags = list(config.tags)

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        tx, c = ex.tx, ex.conn
        if tx.method is None and tx.status is None:
            return []  # nothing was parsed: no request to report
        req = ex.request_headers
        token = auth_token(req, self._mask)
        grpc = tx.grpc
        content_type = ex.response_headers.get("content-type") or req.get("content-type") or ""
        return [
            RequestEvent(
                id=f"{ex.id}-req",
                ts=ex.ts,
                conn_id=c.conn_id,
                direction=c.direction,
                method=(tx.method or "")[:64],
                domain=ex.host[:_MAX_NAME],
                host=ex.host[:_MAX_NAME],
                path=masked_target(tx.path or "", self._safe, template=True)[:2048],
                status=tx.status or 0,
                duration_ns=ex.duration_ns,
                req_bytes=tx.request_body_size,
                resp_bytes=tx.response_body_size,
                content_type=content_type[:_MAX_NAME],
                user_agent=req.get("user-agent", "")[:_MAX_NAME],
                pid=c.pid,
                exe=c.exe[:2048],
                container_id=c.container_id,
                protocol=request_protocol(tx.protocol, grpc is not None),
                auth_token_hash=hash_token(token) if token else "",
                grpc_service=grpc.service[:_MAX_NAME] if grpc else "",
                grpc_method=grpc.method[:_MAX_NAME] if grpc else "",
                grpc_status=grpc.grpc_status if grpc and grpc.grpc_status is not None else -1,
                # A server push is no client request: tagged so usage counts can leave it out.
                tags=[*self._tags, "pushed"] if tx.pushed else self._tags,
            )
        ]
