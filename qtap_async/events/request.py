"""The ``request`` event: report_usage's anonymized record of one HTTP/gRPC transaction (what Pulse
aggregates). The path is a template, query values are masked and the credential is only a hash."""

from __future__ import annotations

import msgspec

from qtap_async.events.context import Direction, Timestamp

__all__ = ["RequestEvent"]


class RequestEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="request", tag_field="type",
                   omit_defaults=True):
    """One transaction, anonymized. ``host`` is an alias of ``domain`` (Pulse stores either as domain);
    ``grpc_status`` is -1 for a call that is not gRPC."""

    id: str
    ts: Timestamp
    conn_id: int = 0
    direction: Direction | str = ""
    method: str = ""
    domain: str = ""
    host: str = ""
    path: str = ""
    status: int = 0
    duration_ns: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    content_type: str = ""
    user_agent: str = ""
    pid: int = 0
    exe: str = ""
    container_id: str = ""
    protocol: str = ""
    auth_token_hash: str = ""
    grpc_service: str = ""
    grpc_method: str = ""
    grpc_status: int = -1
    tags: list[str] = []
