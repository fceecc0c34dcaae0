"""The events plugins emit for the event stores, and what a plugin returns.

Field names follow ``qtap_async.pulse.schema`` (``request``, ``issue``) so these events can go to Pulse
as they are; ``http_transaction`` is http_capture's summary record. None of them carries a header
value, a body or a query-string value that was not configured as safe.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from qtap_async.sinks.base import StoredObject

__all__ = ["Emission", "HttpTransactionEvent", "IssueEvent", "RequestEvent", "is_object"]


class HttpTransactionEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="http_transaction",
                           tag_field="type", omit_defaults=True):
    """http_capture's record of one transaction (metadata only; headers/bodies go to the object)."""

    id: str
    ts: str
    conn_id: int
    transaction_id: str
    direction: str
    protocol: str
    method: str = ""
    scheme: str = ""
    host: str = ""
    path: str = ""  # query values masked
    status: int = 0
    duration_ns: int = 0
    ttfb_ns: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    pid: int = 0
    exe: str = ""
    comm: str = ""
    container_id: str = ""
    container_name: str = ""  # the rest from the runtime's API (qtap_async.context), once looked up
    container_image: str = ""
    container_labels: dict[str, str] = {}
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    tls: bool = False
    level: str  # always written: "summary", "details" or "full"
    rule: str = ""  # the http_capture rule that chose the level ("" = the plugin's level)
    object_digest: str = ""  # sha256 of the object holding headers/bodies, when one was made
    grpc_service: str = ""
    grpc_method: str = ""
    grpc_status: int = -1
    incomplete: bool = False
    reason: str = ""
    pushed: bool = False  # HTTP/2 server push: promised by the server on stream promised_by
    promised_by: int = 0


class RequestEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="request", tag_field="type",
                   omit_defaults=True):
    """report_usage's record: Pulse's ``request`` type (path is a template, the token only a hash)."""

    id: str
    ts: str
    conn_id: int = 0
    direction: str = ""
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


class IssueEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="issue", tag_field="type",
                 omit_defaults=True):
    """detect_errors' record: Pulse's ``issue`` type; the transaction itself is the object
    ``object_digest`` names."""

    id: str
    ts: str
    conn_id: int = 0
    rule: str
    severity: str = ""
    summary: str = ""
    status: str = ""
    duration_ns: int = 0
    object_digest: str = ""


#: What plugins return: events (for the event stores) and objects (for the object stores; each stored
#: object's reference event — digest, url, connection and transaction id — is sent to the event stores
#: by the object store's runner once the store has it).
Emission: TypeAlias = HttpTransactionEvent | RequestEvent | IssueEvent | StoredObject


def is_object(item: object) -> bool:
    return isinstance(item, StoredObject)
