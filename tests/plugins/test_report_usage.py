from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from qtap_async.plugins import ReportUsage, RequestEvent
from qtap_async.plugins.report_usage import ReportUsageConfig
from qtap_async.pulse.bounds import Event as PulseEvent
from qtap_async.pulse.bounds import bounded
from tests.plugins.helpers import SECRET, conn, exchange, recorded, secret_transaction, tx


def report(t: Any = None, c: Any = None, **kw: Any) -> RequestEvent:
    (ev,) = ReportUsage(ReportUsageConfig(**kw)).on_http(exchange(t, c))
    assert isinstance(ev, RequestEvent)
    return ev


def as_pulse(ev: RequestEvent) -> Any:
    """Decode the event the way Pulse does, refusing fields Pulse does not know."""
    raw = msgspec.json.decode(msgspec.json.encode(ev))
    known = set(bounded(RequestEvent).__struct_fields__) | {"type"}
    assert set(raw) <= known, set(raw) - known
    decoded = msgspec.json.decode(msgspec.json.encode(ev), type=PulseEvent)
    assert isinstance(decoded, bounded(RequestEvent))
    return decoded


def test_request_event_is_pulse_compatible() -> None:
    ev = report(tx(path="/v1/users/42/orders/550e8400-e29b-41d4-a716-446655440000?page=3"))
    p = as_pulse(ev)
    assert p.path == "/v1/users/{id}/orders/{uuid}?page=*"
    assert (p.method, p.host, p.domain, p.status, p.direction) == ("GET", "api.example.com", "api.example.com", 200,
                                                                  "egress")
    assert p.duration_ns == 4_000_000 and p.resp_bytes == 2
    assert p.content_type == "application/json" and p.user_agent == "curl/8.0"
    assert p.exe == "/usr/bin/curl" and p.pid == 4242 and p.protocol == "http/1.1"
    assert p.auth_token_hash == ""


def test_credentials_only_as_a_hash() -> None:
    ev = report(secret_transaction())
    assert ev.auth_token_hash == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET.encode() not in msgspec.json.encode(ev)
    assert ev.path == "/v1/users/{id}/reset?token=*&page=*"


def test_x_api_key_and_safe_query_params_and_tags() -> None:
    t = tx(path="/search?page=2&q=private", request_headers=[("X-API-Key", "k-123"), ("Host", "h")])
    ev = report(t, safe_query_params=["page"], tags=["team-a"])
    assert ev.auth_token_hash == hashlib.sha256(b"k-123").hexdigest()
    assert ev.path == "/search?page=2&q=*"
    assert ev.tags == ["team-a"]


def test_ingress_and_grpc_recorded() -> None:
    events = [report(t, conn(direction="ingress")) for t in recorded("grpc_python")]
    p = [as_pulse(e) for e in events]
    assert {e.protocol for e in p} == {"grpc"} and {e.direction for e in p} == {"ingress"}
    assert {(e.grpc_service, e.grpc_method) for e in p} >= {("test.v1.Echo", "Ping")}
    assert {e.grpc_status for e in p} >= {0, 5}


def test_http2_recorded_and_nothing_for_an_empty_transaction() -> None:
    p = [as_pulse(report(t)) for t in recorded("h2c_nghttp_two")]
    assert [(e.protocol, e.status, e.path) for e in p] == [("h2c", 200, "/index.html"), ("h2c", 404, "/missing")]
    assert ReportUsage(ReportUsageConfig()).on_http(exchange(tx(method=None, status=None))) == []


def test_server_push_is_tagged_not_a_client_request() -> None:
    ev = report(tx(path="/style.css", stream_id=2, pushed=True, promised_by=1))
    assert ev.tags == ["pushed"] and ev.path == "/style.css"
    assert report(tx(path="/index.html")).tags == []
    as_pulse(ev)  # Pulse takes it
