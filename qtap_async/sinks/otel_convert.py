"""The agent's events as OTLP: spans for HTTP/gRPC transactions, log records for connection, DNS and issue
events, and the resource (the observed process, its container and pod) each one belongs to.

Stores receive events as the JSON the agent wrote (``EventRecord``: the same bytes Kafka and the spool
hold), so each record is read back here into small Structs holding only the fields OTLP needs: msgspec
skips the rest without building it. The event's tag comes first in msgspec's output, so the type is read
from the record's first bytes; a record written some other way falls back to a decode of ``type``.

Attribute names follow the OpenTelemetry semantic conventions (HTTP spans and metrics are stable; DNS
and connection logs use ``network.*``/``dns.*`` where names exist, ``qtap.*`` otherwise).
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Callable

import msgspec
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from qtap_async.events.http import GrpcInfo
from qtap_async.events.times import parse_ns
from qtap_async.sinks import otel_wire as wire
from qtap_async.telemetry.red import KNOWN_METHODS, RouteMatcher

__all__ = ["SCOPE", "SCOPE_BYTES", "Converted", "Converter", "RouteMatcher", "parse_traceparent"]

_TAG = re.compile(rb'\{\s*"type"\s*:\s*"([a-z_]+)"')
# gRPC codes that make a server span an error (semantic conventions for RPC: the server's fault).
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_OTLP_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs", "/opentelemetry.proto.collector.")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SPAN_FLAGS_HAS_IS_REMOTE = 0x100
_SPAN_FLAGS_IS_REMOTE = 0x200
_SEVERITY = {"info": (SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
             "warning": (SeverityNumber.SEVERITY_NUMBER_WARN, "WARN"),
             "error": (SeverityNumber.SEVERITY_NUMBER_ERROR, "ERROR"),
             "critical": (SeverityNumber.SEVERITY_NUMBER_FATAL, "FATAL")}
_INFO = SeverityNumber.SEVERITY_NUMBER_INFO


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qtap-async")
    except PackageNotFoundError:
        return "0"


SCOPE = InstrumentationScope(name="qtap-async", version=_version())
SCOPE_BYTES = SCOPE.SerializeToString()


# ------------------------------------------------------------------------------- what is read back
class _Ctx(msgspec.Struct, kw_only=True, gc=False):
    """The ConnContext fields a resource or an attribute needs."""

    conn_id: int = 0
    direction: str = "unknown"
    tls: bool = False
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    pid: int = 0
    exe: str = ""
    comm: str = ""
    container_id: str = ""
    container_name: str = ""
    container_image: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    user: str = ""
    domain: str = ""


class HttpRead(_Ctx, kw_only=True, gc=False):
    ts: str
    protocol: str = ""
    method: str | None = None
    scheme: str = ""
    authority: str | None = None
    host: str = ""
    path: str | None = None
    status: int | None = None
    request_body_size: int = 0
    response_body_size: int = 0
    duration_ns: int = 0
    ttfb_ns: int = 0
    grpc: GrpcInfo | None = None
    incomplete: bool = False
    reason: str | None = None
    transaction_id: str = ""
    object_digest: str = ""
    traceparent: str = ""


class _ConnRead(_Ctx, kw_only=True, gc=False):
    ts: str
    event: str = ""
    family: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_ns: int = 0
    protocol: str = ""
    transport: str = "tcp"
    reason: str = ""


class _DnsAnswerRead(msgspec.Struct, gc=False):
    type: str = ""
    data: str = ""


class _DnsRead(_Ctx, kw_only=True, gc=False):
    ts: str
    dns_id: int = 0
    is_response: bool = False
    rcode: str = "NOERROR"
    qname: str | None = None
    qtype: str | None = None
    answers: list[_DnsAnswerRead] = []
    transport: str = "udp"


class _IssueRead(msgspec.Struct, kw_only=True, gc=False):
    ts: str | int
    conn_id: int = 0
    rule: str = ""
    severity: str = ""
    summary: str = ""
    status: str = ""
    duration_ns: int = 0
    object_digest: str = ""


class _TypeOnly(msgspec.Struct, gc=False):
    type: str = ""


def ts_ns(ts: str | int) -> int:
    """Epoch nanoseconds of an event time: the agent's RFC 3339 text or nanoseconds already (events.times)."""
    if isinstance(ts, int):
        return ts
    try:
        return parse_ns(ts)
    except ValueError:
        return time.time_ns()  # not a time: now is the best guess left


# ----------------------------------------------------------------------------------------- helpers
# Resources are built once each, with the generated classes; spans and logs go through otel_wire.
def _s(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _i(key: str, value: int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value))


_as, _ai, _ab = wire.attr_s, wire.attr_i, wire.attr_b


def _host_port(authority: str | None) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) as (host, port or 0)."""
    if not authority:
        return "", 0
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return authority, 0


def protocol_version(protocol: str) -> str:
    """ALPN id -> ``network.protocol.version`` ("1.1", "2")."""
    if protocol in ("h2", "h2c"):
        return "2"
    if protocol.startswith("http/"):
        return protocol[5:]
    return ""


def parse_traceparent(value: str) -> tuple[bytes, bytes, int] | None:
    """A W3C ``traceparent`` as (trace id, parent span id, trace flags); None when malformed or all zero."""
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3))
    if not any(trace_id) or not any(span_id):
        return None
    return trace_id, span_id, int(m.group(4), 16)


class Converted(msgspec.Struct, gc=False):
    """What one batch turned into: spans and log records grouped by resource key, with the index of the
    record each came from (a partial rejection names records), and what was not exported."""

    spans: dict[tuple[str, ...], list[bytes]]
    span_records: list[int]
    logs: dict[tuple[str, ...], list[bytes]]
    log_records: list[int]
    transactions: list[HttpRead]
    skipped: dict[str, int]


def split_path(path: str | None) -> tuple[str, str]:
    if not path:
        return "", ""
    p, _, q = path.partition("?")
    return p, q


class Converter:
    """Turns event records into spans and log records; keeps the resources it built (by process,
    container and pod) so each is made once."""

    def __init__(self, *, routes: RouteMatcher, traces: bool = True, logs: bool = True,
                 resource_attributes: dict[str, str] | None = None, host_name: str | None = None,
                 max_resources: int = 4096, own_port: int = 0) -> None:
        self.routes = routes
        # The port this store exports to: the receiver's side of our own exports is captured too (the
        # agent skips only its own process), and each export would become a span in the next export,
        # round and round. Those transactions are skipped (counted as "own_export").
        self.own_port = own_port
        self.traces = traces
        self.logs = logs
        self.host_name = host_name or socket.gethostname()
        self.extra = dict(resource_attributes or {})
        self.max_resources = max_resources
        self._resources: dict[tuple[str, ...], Resource] = {}
        self._resource_bytes: dict[tuple[str, ...], bytes] = {}
        self._conn_cache: dict[tuple[object, ...], bytes] = {}
        self._decoders: dict[bytes, tuple[msgspec.json.Decoder[object], Callable[..., None]]] = {
            b"http_transaction": (msgspec.json.Decoder(HttpRead), self._http),
            b"connection": (msgspec.json.Decoder(_ConnRead), self._conn),
            b"dns_message": (msgspec.json.Decoder(_DnsRead), self._dns),
            b"issue": (msgspec.json.Decoder(_IssueRead), self._issue),
        }
        self._type_only = msgspec.json.Decoder(_TypeOnly)
        self._rand = random.Random(int.from_bytes(os.urandom(16), "big"))
        self.decode_errors = 0

    # ------------------------------------------------------------------------------------ resources
    @staticmethod
    def resource_key(c: _Ctx | None, with_pid: bool = True) -> tuple[str, ...]:
        if c is None:
            return ()
        return (str(c.pid) if with_pid else "", c.exe, c.comm, c.container_id, c.container_name,
                c.container_image, c.pod_name, c.pod_namespace, c.pod_uid, c.user)

    def resource(self, key: tuple[str, ...]) -> Resource:
        res = self._resources.get(key)
        if res is not None:
            return res
        attrs = [_s("host.name", self.host_name)]
        if key:
            pid, exe, comm, cid, cname, image, pod, ns, pod_uid, user = key
            attrs.append(_s("service.name", cname or os.path.basename(exe) or comm or "unknown_service"))
            if pid:
                attrs.append(_i("process.pid", int(pid)))
            if exe:
                attrs.append(_s("process.executable.path", exe))
                attrs.append(_s("process.executable.name", os.path.basename(exe)))
            if user:
                attrs.append(_s("process.owner", user))
            if cid:
                attrs.append(_s("container.id", cid))
            if cname:
                attrs.append(_s("container.name", cname))
            if image:
                name, tag = image, ""
                if ":" in image.rsplit("/", 1)[-1] and "@" not in image:
                    name, tag = image.rsplit(":", 1)
                attrs.append(_s("container.image.name", name))
                if tag:
                    attrs.append(KeyValue(key="container.image.tags",
                                          value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=tag)]))))
            if pod:
                attrs.append(_s("k8s.pod.name", pod))
            if ns:
                attrs.append(_s("k8s.namespace.name", ns))
            if pod_uid:
                attrs.append(_s("k8s.pod.uid", pod_uid))
        else:
            attrs.append(_s("service.name", "qtap"))
        attrs.extend(_s(k, v) for k, v in self.extra.items())
        res = Resource(attributes=attrs)
        if len(self._resources) >= self.max_resources:  # processes come and go: forget, rebuild if needed
            self._resources.clear()
            self._resource_bytes.clear()
        self._resources[key] = res
        return res

    def resource_bytes(self, key: tuple[str, ...]) -> bytes:
        raw = self._resource_bytes.get(key)
        if raw is None:
            raw = self._resource_bytes[key] = self.resource(key).SerializeToString()
        return raw

    # --------------------------------------------------------------------------------------- batches
    def convert(self, values: list[bytes]) -> Converted:
        out = Converted({}, [], {}, [], [], {})
        for index, value in enumerate(values):
            m = _TAG.match(value)
            tag = m.group(1) if m else None
            if tag is None:
                try:
                    tag = self._type_only.decode(value).type.encode()
                except msgspec.DecodeError:
                    tag = b""
            entry = self._decoders.get(tag)
            if entry is None:
                name = tag.decode() or "unknown"
                out.skipped[name] = out.skipped.get(name, 0) + 1
                continue
            decoder, handle = entry
            try:
                event = decoder.decode(value)
            except msgspec.DecodeError:
                self.decode_errors += 1
                out.skipped["undecodable"] = out.skipped.get("undecodable", 0) + 1
                continue
            handle(event, index, out)
        return out

    # ----------------------------------------------------------------------------------------- spans
    def _http(self, e: HttpRead, index: int, out: Converted) -> None:
        if e.dst_port == self.own_port and e.path is not None and (
                e.path.startswith(_OTLP_PATHS)) and e.direction == "ingress":
            out.skipped["own_export"] = out.skipped.get("own_export", 0) + 1
            return
        out.transactions.append(e)
        if not self.traces:
            return
        out.spans.setdefault(self.resource_key(e), []).append(self.span(e))
        out.span_records.append(index)

    def span(self, e: HttpRead) -> bytes:
        start = ts_ns(e.ts)
        end = start + (e.duration_ns or e.ttfb_ns)
        server = e.direction == "ingress"
        kind = Span.SPAN_KIND_SERVER if server else (
            Span.SPAN_KIND_CLIENT if e.direction == "egress" else Span.SPAN_KIND_INTERNAL)
        method = e.method or ""
        path, query = split_path(e.path)
        route = self.routes.route(path) if path else ""
        c = wire.attr_c
        attrs = [c("http.request.method", method if method in KNOWN_METHODS else "_OTHER")]
        if method and method not in KNOWN_METHODS:
            attrs.append(_as("http.request.method_original", method))
        if path:
            attrs.append(_as("url.path", path))
        if query:
            attrs.append(_as("url.query", query))  # masked by http_capture: names only, values hidden
        if route:
            attrs.append(c("http.route", route))
        if e.status is not None:
            attrs.append(c("http.response.status_code", e.status))
        attrs.append(_ai("http.request.body.size", e.request_body_size))
        attrs.append(_ai("http.response.body.size", e.response_body_size))
        error = error_type(e)
        g = e.grpc
        if g is not None:
            attrs.append(_as("rpc.system", "grpc"))
            attrs.append(_as("rpc.service", g.service))
            attrs.append(_as("rpc.method", g.method))
            if g.grpc_status is not None:
                attrs.append(_ai("rpc.grpc.status_code", g.grpc_status))
            name = f"{g.service}/{g.method}"
        else:
            name = f"{method} {route}" if method and route else (method or "HTTP")
        if error:
            attrs.append(_as("error.type", error))
        if e.transaction_id:
            attrs.append(_as("qtap.transaction.id", e.transaction_id))
        if e.object_digest:
            attrs.append(_as("qtap.object.digest", e.object_digest))
        rnd = self._rand.getrandbits
        parent = parse_traceparent(e.traceparent) if e.traceparent else None
        if parent is not None:
            trace_id, parent_id, flags = parent
            flags |= _SPAN_FLAGS_HAS_IS_REMOTE | _SPAN_FLAGS_IS_REMOTE
        else:
            trace_id, parent_id, flags = rnd(128).to_bytes(16, "big"), b"", 0x01 | _SPAN_FLAGS_HAS_IS_REMOTE
        span_id = (rnd(64) | 1).to_bytes(8, "big")  # never all zero (invalid)
        return wire.span(trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, flags=flags, name=name,
                         kind=kind, start=start, end=end, attributes=attrs, encoded=self._conn_attrs(e, server),
                         status_code=Status.STATUS_CODE_ERROR if error else 0, status_message=error)

    def _conn_attrs(self, e: HttpRead, server: bool) -> bytes:
        """The attributes every transaction of a connection shares (scheme, server, peer, version), encoded
        once per connection and authority: most connections carry many transactions."""
        key = (e.conn_id, e.src_port, e.authority, e.scheme, e.protocol, e.direction)
        hit = self._conn_cache.get(key)
        if hit is not None:
            return hit
        c = wire.attr_c
        host, port = _host_port(e.authority)
        if not host:
            host = e.host or e.domain or (e.dst_ip if not server else "")
        if not port:
            port = e.dst_port
        attrs = [c("url.scheme", e.scheme or ("https" if e.tls else "http"))]
        if host:
            attrs.append(c("server.address", host))
        if port:
            attrs.append(c("server.port", port))
        version = protocol_version(e.protocol)
        if version:  # (network.protocol.name is "http" by default: not written)
            attrs.append(c("network.protocol.version", version))
        if server:  # the peer is the client: client.* says it (network.peer.* would repeat it)
            attrs.append(c("client.address", e.src_ip))
            attrs.append(_ai("client.port", e.src_port))
        else:
            attrs.append(c("network.peer.address", e.dst_ip))
            attrs.append(c("network.peer.port", e.dst_port))
        attrs.append(_ai("qtap.conn_id", e.conn_id))
        hit = wire.wrap_span_attributes(attrs)
        if len(self._conn_cache) >= 4096:
            self._conn_cache.clear()
        self._conn_cache[key] = hit
        return hit

    # ------------------------------------------------------------------------------------------- logs
    def _add_log(self, key: tuple[str, ...], rec: bytes, index: int, out: Converted) -> None:
        out.logs.setdefault(key, []).append(rec)
        out.log_records.append(index)

    def _conn(self, e: _ConnRead, index: int, out: Converted) -> None:
        if not self.logs:
            return
        local_ip, local_port, peer_ip, peer_port = ((e.dst_ip, e.dst_port, e.src_ip, e.src_port)
                                                    if e.direction == "ingress" else
                                                    (e.src_ip, e.src_port, e.dst_ip, e.dst_port))
        attrs = [
            _as("network.transport", e.transport or "tcp"),
            _as("network.type", e.family),
            _as("network.local.address", local_ip),
            _ai("network.local.port", local_port),
            _as("network.peer.address", peer_ip),
            _ai("network.peer.port", peer_port),
            _as("qtap.connection.direction", e.direction),
            _ab("qtap.connection.tls", e.tls),
            _ai("qtap.conn_id", e.conn_id),
        ]
        if e.domain:
            attrs.append(_as("server.address", e.domain))
        if e.event == "close":
            attrs.append(_ai("qtap.connection.bytes_sent", e.bytes_sent))
            attrs.append(_ai("qtap.connection.bytes_received", e.bytes_received))
            attrs.append(_ai("qtap.connection.duration_ns", e.duration_ns))
            if e.protocol:
                attrs.append(_as("qtap.connection.protocol", e.protocol))
            if e.reason:
                attrs.append(_as("qtap.connection.close_reason", e.reason))
        arrow = "<-" if e.direction == "ingress" else "->"
        body = f"connection {e.event} {local_ip}:{local_port} {arrow} {peer_ip}:{peer_port}"
        rec = wire.log_record(time_ns=ts_ns(e.ts), observed_ns=time.time_ns(), severity_number=_INFO,
                              severity_text="INFO", event_name=f"qtap.connection.{e.event}", body=body,
                              attributes=attrs)
        self._add_log(self.resource_key(e), rec, index, out)

    def _dns(self, e: _DnsRead, index: int, out: Converted) -> None:
        if not self.logs:
            return
        attrs = [_as("network.transport", e.transport), _ai("qtap.dns.id", e.dns_id), _ai("qtap.conn_id", e.conn_id)]
        if e.qname is not None:
            attrs.append(_as("dns.question.name", e.qname))
        if e.qtype is not None:
            attrs.append(_as("qtap.dns.question.type", e.qtype))
        if e.is_response:
            attrs.append(_as("qtap.dns.response_code", e.rcode))
            if e.answers:
                attrs.append(wire.attr_strs("dns.answers", [a.data for a in e.answers]))
            if e.rcode != "NOERROR":
                attrs.append(_as("error.type", e.rcode))
        what = "response" if e.is_response else "query"
        body = f"dns {what} {e.qtype or '?'} {e.qname or '?'}" + (f" {e.rcode}" if e.is_response else "")
        rec = wire.log_record(time_ns=ts_ns(e.ts), observed_ns=time.time_ns(), severity_number=_INFO,
                              severity_text="INFO", event_name=f"qtap.dns.{what}", body=body, attributes=attrs)
        self._add_log(self.resource_key(e), rec, index, out)

    def _issue(self, e: _IssueRead, index: int, out: Converted) -> None:
        if not self.logs:
            return
        number, text = _SEVERITY.get(e.severity, _SEVERITY["warning"])
        attrs = [_as("qtap.issue.rule", e.rule), _ai("qtap.conn_id", e.conn_id)]
        if e.status:
            attrs.append(_as("qtap.issue.status", e.status))
        if e.duration_ns:
            attrs.append(_ai("qtap.issue.duration_ns", e.duration_ns))
        if e.object_digest:
            attrs.append(_as("qtap.object.digest", e.object_digest))
        rec = wire.log_record(time_ns=ts_ns(e.ts), observed_ns=time.time_ns(), severity_number=number,
                              severity_text=text, event_name="qtap.issue", body=e.summary or e.rule, attributes=attrs)
        self._add_log((), rec, index, out)


def error_type(e: HttpRead) -> str:
    """``error.type`` of a transaction: the status code for a server's 5xx (a client's 4xx and 5xx), the
    gRPC status name's number for a failed call, the parser's reason for a cut exchange; "" when fine."""
    server = e.direction == "ingress"
    g = e.grpc
    if g is not None and g.grpc_status and (not server or g.grpc_status in _GRPC_SERVER_ERRORS):
        return str(g.grpc_status)
    if e.status is not None and (e.status >= 500 or (not server and e.status >= 400)):
        return str(e.status)
    if e.incomplete or e.status is None:
        return e.reason or "incomplete"
    return ""
