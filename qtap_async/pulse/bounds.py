"""What Pulse accepts of the agent's events: the shared event types (``qtap_async.events``) with Pulse's
bounds applied.

Pulse defines no event of its own. For each event type of ``qtap_async.events`` it derives a decoder
type with the same fields, each constrained by the bound declared here (string lengths, integer
ranges, address and digest patterns), so a value over a limit is a per-item validation error, not a
truncation, and the agent learns about it. Anything that is not a field (a ``team`` the payload tries
to set...) and the fields in ``NOT_STORED`` (headers, bodies) are dropped by the decoder and never
stored. Pulse is lenient about presence: only the fields in ``REQUIRED`` must be there, the rest take
their column's default, so events from an older or newer agent are stored.

A field added to an event type without a bound here fails at import (``derive``): Pulse can no longer
drop a new field silently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from qtap_async.events import EVENT_TYPES, DnsAnswer, GrpcInfo, Owner
from qtap_async.events.times import RFC3339_PATTERN

__all__ = ["NOT_STORED", "REQUIRED", "TABLE_OF", "Event", "PulseEvent", "bounded"]

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
U16 = Annotated[int, msgspec.Meta(ge=0, le=65535)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Status = Annotated[int, msgspec.Meta(ge=0, le=999)]
GrpcStatus = Annotated[int, msgspec.Meta(ge=-1, le=255)]  # -1: not a gRPC call
# A batch's sent_at: epoch nanoseconds, or an RFC 3339 string with an offset.
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[datetime, msgspec.Meta(tz=True)]
# An event's ts: what the agent writes (RFC 3339 UTC with nanoseconds, qtap_async.events.times), any RFC 3339
# offset, or epoch nanoseconds. Kept as text, not datetime, which would round the nanoseconds to microseconds:
# ingest reads it with times.parse_ns.
EventTs = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[str, msgspec.Meta(pattern=RFC3339_PATTERN)]
# Names the agent writes (directions, protocols, reasons) are short words: bounded, not enumerated, so a
# value a newer agent writes ("unknown" direction, "dns" protocol...) is stored instead of rejecting the event.
Word = Short

_ = msgspec.NODEFAULT  # required (only for the fields in REQUIRED)

#: Bound and default of each field, by name; ``_OVERRIDES`` where one event type needs another.
_BOUNDS: dict[str, tuple[Any, Any]] = {
    "id": (Id, _),
    "ts": (EventTs, _),
    "conn_id": (U64, 0),
    # ConnContext
    "direction": (Word, ""),
    "tls": (bool, False),
    "src_ip": (Ip, ""),
    "src_port": (Port, 0),
    "dst_ip": (Ip, ""),
    "dst_port": (Port, 0),
    "pid": (U32, 0),
    "exe": (Long, ""),
    "comm": (Short, ""),
    "container_id": (Name, ""),
    "container_name": (Name, ""),
    "container_image": (Long, ""),
    "container_labels": (Labels, {}),
    "pod_name": (Name, ""),
    "pod_namespace": (Name, ""),
    "pod_uid": (Name, ""),
    "user": (Name, ""),
    "domain": (Name, ""),
    # connection
    "ts_ns": (U64, 0),
    "event": (Literal["open", "close"], _),
    "family": (Short, ""),
    "uid": (Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1)], -1),  # -1: not known
    "cgroup": (Long, ""),
    "bytes_sent": (U64, 0),
    "bytes_received": (U64, 0),
    "duration_ns": (U64, 0),
    "protocol": (Word, ""),
    "domain_source": (Short, ""),
    "transport": (Short, ""),
    "midstream": (bool, False),
    "resumed": (bool, False),
    "io_uring": (bool, False),
    "reason": (Short, ""),
    # gap
    "stream": (Short, ""),
    "source": (Short, ""),
    "bytes": (U64, 0),
    # parse_error
    "offset": (U64, 0),
    # tls_client_hello
    "sni": (Name | None, None),
    "alpn": (Annotated[list[Short], msgspec.Meta(max_length=64)], []),
    "version": (Short, ""),
    "legacy_version": (Short, ""),
    "supported_versions": (Annotated[list[Short], msgspec.Meta(max_length=64)], []),
    "cipher_suites": (Annotated[list[U16], msgspec.Meta(max_length=512)], []),
    "extensions": (Annotated[list[U16], msgspec.Meta(max_length=512)], []),
    # dns_message
    "dns_id": (U16, 0),
    "is_response": (bool, False),
    "opcode": (Annotated[int, msgspec.Meta(ge=0, le=15)], 0),
    "rcode": (Short, ""),
    "truncated": (bool, False),
    "qname": (Name | None, None),
    "qtype": (Short | None, None),
    "qdcount": (U16, 0),
    # http_transaction
    "method": (Short | None, None),
    "scheme": (Short, ""),
    "authority": (Name | None, None),
    "host": (Name, ""),
    # http_capture keeps the whole target (query values masked): bounded by the event size limit only.
    "path": (Annotated[str, msgspec.Meta(max_length=65536)] | None, None),
    "status": (Status | None, None),
    "request_body_size": (U64, 0),
    "response_body_size": (U64, 0),
    "ttfb_ns": (U64, 0),
    "stream_id": (U32 | None, None),
    "pushed": (bool, False),
    "promised_by": (U32 | None, None),
    "upgrade": (Short | None, None),
    "informational": (Annotated[list[Annotated[int, msgspec.Meta(ge=100, le=199)]], msgspec.Meta(max_length=64)], []),
    "incomplete": (bool, False),
    "request_body_truncated": (bool | None, None),
    "response_body_truncated": (bool | None, None),
    "transaction_id": (Annotated[str, msgspec.Meta(max_length=128)], ""),
    "level": (Short, ""),
    "rule": (Name, ""),
    "object_digest": (Name, ""),
    # request
    "req_bytes": (U64, 0),
    "resp_bytes": (U64, 0),
    "content_type": (Name, ""),
    "user_agent": (Name, ""),
    "auth_token_hash": (Sha256Hex, ""),
    "grpc_service": (Name, ""),
    "grpc_method": (Name, ""),
    "grpc_status": (GrpcStatus, -1),
    "tags": (Annotated[list[Name], msgspec.Meta(max_length=64)], []),
    # issue
    "severity": (Short, ""),
    "summary": (Text, ""),
    # object_ref
    "digest": (Name, ""),
    "url": (Long, ""),
    "size": (U64, 0),
    "store": (Name, ""),  # the agent's object store that holds it
    # nested: Owner, DnsAnswer, GrpcInfo
    "first_ns": (U64, 0),
    "first_ts": (Short, ""),  # kept as text inside the owners JSON
    "name": (Name, ""),
    "type": (Short, ""),
    "ttl": (U32, 0),
    "data": (Long, ""),
    "service": (Name, ""),
    "grpc_message": (Text | None, None),
    "grpc_encoding": (Short | None, None),
    "request_messages": (U64, 0),
    "response_messages": (U64, 0),
    "request_compressed_messages": (U64, 0),
    "response_compressed_messages": (U64, 0),
    "streaming": (bool, False),
}

#: (type tag or nested type name, field) -> bound, where a field's general bound does not fit.
_OVERRIDES: dict[tuple[str, str], tuple[Any, Any]] = {
    ("parse_error", "reason"): (Text, ""),
    ("http_transaction", "reason"): (Text | None, None),
    ("request", "path"): (Long, ""),
    ("request", "method"): (Short, ""),
    ("request", "status"): (Status, 0),
    ("issue", "status"): (Short, ""),
    ("issue", "rule"): (Name, _),
    ("object_ref", "transaction_id"): (Id, _),
    ("object_ref", "digest"): (Name, _),
    ("Owner", "user"): (Name, ""),
    ("GrpcInfo", "method"): (Name, ""),
    ("GrpcInfo", "grpc_status"): (Annotated[int, msgspec.Meta(ge=0, le=255)] | None, None),
}

#: Fields Pulse never takes, whatever an agent sends: header values and bodies (and the trace context,
#: which only the otel store uses).
NOT_STORED = frozenset({"request_headers", "response_headers", "request_trailers", "response_trailers",
                        "request_body", "response_body", "traceparent"})

#: The fields an event must have to be stored, by type.
REQUIRED: dict[str, frozenset[str]] = {}  # filled by derive from the _ defaults above


def _bound(scope: str, field: str) -> tuple[Any, Any]:
    try:
        return _OVERRIDES.get((scope, field)) or _BOUNDS[field]
    except KeyError:
        raise TypeError(f"Pulse has no bound for field {field!r} of {scope!r}: declare one in "
                        "qtap_async/pulse/bounds.py (or list it in NOT_STORED)") from None


def _derive(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    cfg = cls.__struct_config__
    tag = cfg.tag if isinstance(cfg.tag, str) else None
    scope = tag or cls.__name__
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    required = set()
    for f in msgspec.structs.fields(cls):
        if f.name in NOT_STORED:
            continue
        typ, default = _bound(scope, f.name)
        if default is _:
            required.add(f.name)
            fields.append((f.name, typ))
        else:
            fields.append((f.name, typ, default))
    if tag is None:
        return msgspec.defstruct(cls.__name__, fields, kw_only=True, frozen=True, gc=False, module=__name__)
    REQUIRED[tag] = frozenset(required)
    # omit_defaults: every default here is its column's default, and an empty ``owners`` must not reach
    # the String column as a JSON array.
    return msgspec.defstruct(cls.__name__, fields, kw_only=True, frozen=True, gc=False, tag=tag,
                             tag_field="type", omit_defaults=True, module=__name__)


# The nested types first: the events' bounds name them.
_Owner = _derive(Owner)
_DnsAnswer = _derive(DnsAnswer)
_GrpcInfo = _derive(GrpcInfo)
_BOUNDS.update({
    # Every process that did I/O on the connection, in order (stored as JSON text).
    "owners": (Annotated[list[_Owner], msgspec.Meta(max_length=64)], []),  # type: ignore[valid-type]
    "answers": (Annotated[list[_DnsAnswer], msgspec.Meta(max_length=256)], []),  # type: ignore[valid-type]
    "grpc": (_GrpcInfo | None, None),
})

#: Pulse's decoder type of each shared event type.
PULSE_TYPE: dict[type[msgspec.Struct], type[msgspec.Struct]] = {cls: _derive(cls) for cls in EVENT_TYPES}
PulseEvent = Any  # one of PULSE_TYPE's values (derived at import: no static type)
Event: Any = None
for _t in PULSE_TYPE.values():
    Event = _t if Event is None else Event | _t


def bounded(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """Pulse's decoder type for the shared event type ``cls``."""
    return PULSE_TYPE[cls]


# Storage table of each event type. Types without a table of their own (and no query over them yet) go
# to ``records``: the common columns plus the validated event as JSON, so nothing the agent sends is lost.
_TABLES = {"connection": "connections", "request": "requests", "issue": "issues", "object_ref": "object_refs"}
TABLE_OF: dict[type[msgspec.Struct], str] = {
    t: _TABLES.get(str(t.__struct_config__.tag), "records") for t in PULSE_TYPE.values()
}
