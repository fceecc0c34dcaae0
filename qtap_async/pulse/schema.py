"""The event schema Pulse accepts, as msgspec Structs tagged by a ``type`` field.

These types are the only way an event reaches storage: anything that is not a field here (headers,
bodies, cookies, a ``team`` the payload tries to set...) is dropped by the decoder and never stored.
Limits on every string keep one hostile item from bloating a batch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

# Bounded strings: a value over the limit is a per-item validation error, not a truncation, so the
# agent learns about it.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Short = Annotated[str, msgspec.Meta(max_length=64)]
Name = Annotated[str, msgspec.Meta(max_length=255)]
Long = Annotated[str, msgspec.Meta(max_length=2048)]
# The agent keeps at most 32 labels of 256 characters (qtap_async.context).
Labels = Annotated[dict[Name, Long], msgspec.Meta(max_length=32)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Ip = Annotated[str, msgspec.Meta(max_length=45, pattern=r"^[0-9A-Fa-f:.]*$")]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# Event time: epoch nanoseconds, or an RFC 3339 string with an offset.
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[datetime, msgspec.Meta(tz=True)]

# Names the agent writes (directions, protocols, reasons) are short words: bounded, not enumerated, so a
# value a newer agent writes ("unknown" direction, "dns" protocol...) is stored instead of rejecting the event.
Direction = Short
Protocol = Short


class _Event(msgspec.Struct, frozen=True, gc=False, tag_field="type", kw_only=True):
    id: Id
    ts: Timestamp
    conn_id: U64 = 0


class Owner(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    pid: U32 = 0
    exe: Long = ""
    comm: Short = ""
    user: Name = ""
    first_ns: U64 = 0


class ConnectionEvent(_Event, tag="connection", frozen=True, gc=False, kw_only=True, omit_defaults=True):
    # omit_defaults: every default here is its column's default, and an empty ``owners`` must not reach
    # the String column as a JSON array.

    event: Literal["open", "close"]
    direction: Direction = ""
    src_ip: Ip = ""
    src_port: Port = 0
    dst_ip: Ip = ""
    dst_port: Port = 0
    family: Short = ""
    pid: U32 = 0
    exe: Long = ""
    comm: Short = ""
    container_id: Name = ""
    cgroup: Long = ""
    bytes_sent: U64 = 0
    bytes_received: U64 = 0
    duration_ns: U64 = 0
    domain: Name = ""
    protocol: Protocol = ""
    tls: bool = False
    ts_ns: U64 = 0
    user: Name = ""
    uid: Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1)] = -1  # -1: not known
    transport: Short = ""
    midstream: bool = False
    reason: Short = ""
    domain_source: Short = ""
    resumed: bool = False
    io_uring: bool = False
    # Every process that did I/O on the connection, in order (stored as JSON text).
    owners: Annotated[list[Owner], msgspec.Meta(max_length=64)] = []
    # Container and pod metadata from the runtime's API (labels stored as JSON text).
    container_name: Name = ""
    container_image: Long = ""
    container_labels: Labels = {}
    pod_name: Name = ""
    pod_namespace: Name = ""
    pod_uid: Name = ""


class RequestEvent(_Event, tag="request", frozen=True, gc=False, kw_only=True):
    """One HTTP/gRPC transaction (report_usage). ``host`` is an alias of ``domain``."""

    direction: Direction = ""
    method: Short = ""
    domain: Name = ""
    host: Name = ""
    path: Long = ""
    status: Annotated[int, msgspec.Meta(ge=0, le=999)] = 0
    duration_ns: U64 = 0
    req_bytes: U64 = 0
    resp_bytes: U64 = 0
    content_type: Name = ""
    user_agent: Name = ""
    pid: U32 = 0
    exe: Long = ""
    container_id: Name = ""
    protocol: Protocol = ""
    auth_token_hash: Sha256Hex = ""
    grpc_service: Name = ""
    grpc_method: Name = ""
    # -1: not a gRPC call.
    grpc_status: Annotated[int, msgspec.Meta(ge=-1, le=255)] = -1
    tags: Annotated[list[Name], msgspec.Meta(max_length=64)] = []


class IssueEvent(_Event, tag="issue", frozen=True, gc=False, kw_only=True):
    rule: Name
    severity: Short = ""
    summary: Text = ""
    status: Short = ""
    duration_ns: U64 = 0
    object_digest: Name = ""


class ObjectRefEvent(_Event, tag="object_ref", frozen=True, gc=False, kw_only=True):
    transaction_id: Id
    digest: Name
    url: Long = ""
    size: U64 = 0
    content_type: Name = ""
    store: Name = ""  # the agent's object store that holds it


class _Context(_Event, frozen=True, gc=False, kw_only=True):
    """The connection and process context the agent puts on each protocol record."""

    direction: Direction = ""
    tls: bool = False
    src_ip: Ip = ""
    src_port: Port = 0
    dst_ip: Ip = ""
    dst_port: Port = 0
    pid: U32 = 0
    exe: Long = ""
    comm: Short = ""
    container_id: Name = ""
    container_name: Name = ""
    container_image: Long = ""
    container_labels: Labels = {}
    pod_name: Name = ""
    pod_namespace: Name = ""
    pod_uid: Name = ""


class GapEvent(_Event, tag="gap", frozen=True, gc=False, kw_only=True):
    """Bytes of a stream the agent did not capture (see the agent's events.connection.GapEvent)."""

    direction: Short = ""
    source: Short = ""
    bytes: U64 = 0
    reason: Short = ""
    pid: U32 = 0
    exe: Long = ""


class ParseErrorEvent(_Context, tag="parse_error", frozen=True, gc=False, kw_only=True):
    reason: Text = ""
    offset: U64 = 0
    protocol: Short = ""


class TlsClientHelloEvent(_Context, tag="tls_client_hello", frozen=True, gc=False, kw_only=True):
    sni: Name | None = None
    alpn: Annotated[list[Short], msgspec.Meta(max_length=64)] = []
    version: Short = ""
    legacy_version: Short = ""
    supported_versions: Annotated[list[Short], msgspec.Meta(max_length=64)] = []
    cipher_suites: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=65535)]], msgspec.Meta(max_length=512)] = []
    extensions: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=65535)]], msgspec.Meta(max_length=512)] = []


class DnsAnswer(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    name: Name = ""
    type: Short = ""
    ttl: U32 = 0
    data: Long = ""


class DnsMessageEvent(_Context, tag="dns_message", frozen=True, gc=False, kw_only=True):
    dns_id: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    is_response: bool = False
    opcode: Annotated[int, msgspec.Meta(ge=0, le=15)] = 0
    rcode: Short = ""
    truncated: bool = False
    qname: Name | None = None
    qtype: Short | None = None
    qdcount: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    answers: Annotated[list[DnsAnswer], msgspec.Meta(max_length=256)] = []
    transport: Short = ""


class HttpTransactionEvent(_Event, tag="http_transaction", frozen=True, gc=False, kw_only=True):
    """http_capture's metadata record of one transaction (headers and bodies never reach Pulse)."""

    transaction_id: Id
    direction: Direction = ""
    protocol: Short = ""
    method: Short = ""
    scheme: Short = ""
    host: Name = ""
    # http_capture keeps the whole target (query values masked): bounded by the event size limit only.
    path: Annotated[str, msgspec.Meta(max_length=65536)] = ""
    status: Annotated[int, msgspec.Meta(ge=0, le=999)] = 0
    duration_ns: U64 = 0
    ttfb_ns: U64 = 0
    req_bytes: U64 = 0
    resp_bytes: U64 = 0
    pid: U32 = 0
    exe: Long = ""
    comm: Short = ""
    container_id: Name = ""
    container_name: Name = ""
    container_image: Long = ""
    container_labels: Labels = {}
    pod_name: Name = ""
    pod_namespace: Name = ""
    pod_uid: Name = ""
    src_ip: Ip = ""
    src_port: Port = 0
    dst_ip: Ip = ""
    dst_port: Port = 0
    tls: bool = False
    level: Short = ""
    rule: Name = ""
    object_digest: Name = ""
    grpc_service: Name = ""
    grpc_method: Name = ""
    grpc_status: Annotated[int, msgspec.Meta(ge=-1, le=255)] = -1
    incomplete: bool = False
    reason: Text = ""
    pushed: bool = False
    promised_by: U32 = 0


Event = (ConnectionEvent | RequestEvent | IssueEvent | ObjectRefEvent | GapEvent | ParseErrorEvent
         | TlsClientHelloEvent | DnsMessageEvent | HttpTransactionEvent)

# Storage table of each event type. Types without a table of their own (and no query over them yet) go
# to ``records``: the common columns plus the validated event as JSON, so nothing the agent sends is lost.
TABLE_OF: dict[type[_Event], str] = {
    ConnectionEvent: "connections",
    RequestEvent: "requests",
    IssueEvent: "issues",
    ObjectRefEvent: "object_refs",
    GapEvent: "records",
    ParseErrorEvent: "records",
    TlsClientHelloEvent: "records",
    DnsMessageEvent: "records",
    HttpTransactionEvent: "records",
}


class Batch(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=False):
    """The request body of POST /v1/events (a bare JSON array of events is accepted too).

    ``sent_at`` is the agent's clock when it sent the batch: when it is far from the server's clock,
    every event time is shifted by the difference.
    """

    events: list[msgspec.Raw]
    # A float is taken when integral-looking JSON numbers (310.0) arrive: JSON Schema calls them integers.
    sent_at: Timestamp | float | None = None


class ItemError(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    index: int
    error: str
    id: str | None = None


class IngestResult(msgspec.Struct, frozen=True, gc=False):
    accepted: int
    rejected: int
    errors: list[ItemError]
    # Items that carried fields Pulse never stores (headers, bodies...): those fields were dropped.
    stripped: int = 0
    # Items whose time was corrected for clock skew (batch offset or future time clamped).
    skew_corrected: int = 0


class ErrorBody(msgspec.Struct, frozen=True, gc=False):
    error: str
