"""The protobuf wire format of the OTLP messages the otel store writes per event (Span, LogRecord, KeyValue,
AnyValue and their envelopes), written directly as bytes.

Building the generated protobuf classes costs about four times as much per span (each KeyValue is an
object, copied again into the span's repeated field, then serialized); spans and log records are the
store's per-event cost, so they are encoded here. Field numbers are those of opentelemetry-proto's
``.proto`` files; tests/sinks/test_otel_wire.py parses what this writes with the generated classes and
compares. Resources and the scope are built once with the generated classes and kept as bytes.
"""

from __future__ import annotations

import struct

__all__ = ["attr_b", "attr_c", "attr_i", "attr_s", "attr_strs", "field", "log_record", "request", "span", "varint",
           "wrap_span_attributes"]

_V1 = [bytes((i,)) for i in range(128)]
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_KEYS: dict[str, bytes] = {}  # attribute name -> its encoded KeyValue.key field


def varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _V1[n]
    if 0 < n < 16384:  # ports, pids, small sizes: two bytes, no loop
        return bytes(((n & 127) | 128, n >> 7))
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the payload."""
    n = len(payload)
    return tag + (_V1[n] if n < 128 else varint(n)) + payload


def _key(name: str) -> bytes:
    k = _KEYS.get(name)
    if k is None:
        k = _KEYS[name] = field(b"\x0a", name.encode())
    return k


# KeyValue{1: key, 2: value AnyValue{1: string, 2: bool, 3: int64, 5: array ArrayValue{1: values}}}
def attr_s(name: str, value: str) -> bytes:
    k = _KEYS.get(name) or _key(name)
    b = value.encode("utf-8", "surrogateescape")
    n = len(b)
    if n < 126:  # the common case, written inline: one-byte lengths
        return k + b"\x12" + _V1[n + 2] + b"\x0a" + _V1[n] + b
    return k + field(b"\x12", field(b"\x0a", b))


def attr_i(name: str, value: int) -> bytes:
    k = _KEYS.get(name) or _key(name)
    v = varint(value)
    return k + b"\x12" + _V1[len(v) + 1] + b"\x18" + v


_CACHE: dict[tuple[str, str | int], bytes] = {}


def attr_c(name: str, value: str | int) -> bytes:
    """``attr_s``/``attr_i`` for values that repeat (methods, statuses, hosts, ports, routes): encoded once,
    then looked up. The cache is bounded; past its size it starts again."""
    key = (name, value)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) >= 8192:
            _CACHE.clear()
        hit = _CACHE[key] = attr_i(name, value) if isinstance(value, int) else attr_s(name, value)
    return hit


def attr_b(name: str, value: bool) -> bytes:
    return _key(name) + (b"\x12\x02\x10\x01" if value else b"\x12\x02\x10\x00")


def attr_strs(name: str, values: list[str]) -> bytes:
    items = b"".join(field(b"\x0a", field(b"\x0a", v.encode("utf-8", "surrogateescape"))) for v in values)
    return _key(name) + field(b"\x12", field(b"\x2a", items))


def wrap_span_attributes(attributes: list[bytes]) -> bytes:
    """Encoded KeyValues as a span's attribute fields (to pass as ``span(encoded=...)``)."""
    return b"".join([b"\x4a" + _V1[len(a)] + a if len(a) < 128 else field(b"\x4a", a) for a in attributes])


def span(*, trace_id: bytes, span_id: bytes, parent_span_id: bytes, flags: int, name: str, kind: int, start: int,
         end: int, attributes: list[bytes], encoded: bytes = b"", status_code: int = 0,
         status_message: str = "") -> bytes:
    """Span{1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start fixed64, 8 end fixed64,
    9 attributes, 15 status{2 message, 3 code}, 16 flags fixed32}. ``encoded`` holds more attributes,
    already wrapped (``wrap_span_attributes``)."""
    parts = [field(b"\x0a", trace_id), field(b"\x12", span_id)]
    if parent_span_id:
        parts.append(field(b"\x22", parent_span_id))
    parts.append(field(b"\x2a", name.encode("utf-8", "surrogateescape")))
    parts.append(b"\x30" + varint(kind))
    parts.append(b"\x39" + _Q.pack(start))
    parts.append(b"\x41" + _Q.pack(end))
    parts.extend([b"\x4a" + _V1[len(a)] + a if len(a) < 128 else field(b"\x4a", a) for a in attributes])
    if encoded:
        parts.append(encoded)
    if status_code:
        status = (field(b"\x12", status_message.encode()) if status_message else b"") + b"\x18" + varint(status_code)
        parts.append(field(b"\x7a", status))
    parts.append(b"\x85\x01" + _I.pack(flags))
    return b"".join(parts)


def log_record(*, time_ns: int, observed_ns: int, severity_number: int, severity_text: str, body: str,
               attributes: list[bytes], event_name: str = "") -> bytes:
    """LogRecord{1 time fixed64, 2 severity_number, 3 severity_text, 5 body AnyValue, 6 attributes,
    11 observed_time fixed64, 12 event_name}."""
    parts = [b"\x09" + _Q.pack(time_ns), b"\x10" + varint(severity_number),
             field(b"\x1a", severity_text.encode()),
             field(b"\x2a", field(b"\x0a", body.encode("utf-8", "surrogateescape")))]
    parts.extend([b"\x32" + _V1[len(a)] + a if len(a) < 128 else field(b"\x32", a) for a in attributes])
    parts.append(b"\x59" + _Q.pack(observed_ns))
    if event_name:
        parts.append(field(b"\x62", event_name.encode()))
    return b"".join(parts)


def request(groups: list[tuple[bytes, list[bytes]]], scope: bytes) -> bytes:
    """Export{Trace,Logs}ServiceRequest{1: Resource{Spans,Logs}{1 resource, 2 Scope{Spans,Logs}{1 scope,
    2 items}}}: both signals have the same shape, so one writer serves both. ``groups`` holds each
    resource's encoded Resource and its encoded spans or log records."""
    out = []
    for resource, items in groups:
        scoped = field(b"\x0a", scope) + b"".join([field(b"\x12", i) for i in items])
        out.append(field(b"\x0a", field(b"\x0a", resource) + field(b"\x12", scoped)))
    return b"".join(out)
