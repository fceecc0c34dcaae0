from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from qtap_async.plugins import HttpCapture, HttpTransactionEvent
from qtap_async.plugins.http_capture import HttpCaptureConfig, HttpCaptureRule
from qtap_async.rulekit import compile_rule
from qtap_async.sinks.base import StoredObject
from tests.plugins.helpers import exchange, recorded, tx


def plugin(**kw: Any) -> HttpCapture:
    return HttpCapture(HttpCaptureConfig(**kw), compile_rule)


def split(items: list[Any]) -> tuple[list[HttpTransactionEvent], list[StoredObject]]:
    return ([i for i in items if isinstance(i, HttpTransactionEvent)],
            [i for i in items if isinstance(i, StoredObject)])


def test_none_records_nothing() -> None:
    assert plugin(level="none").on_http(exchange()) == []


def test_summary_is_one_metadata_event_without_an_object() -> None:
    ex = exchange(tx(path="/v1/items?page=2&key=abc"))
    events, objects = split(plugin(level="summary").on_http(ex))
    assert objects == [] and len(events) == 1
    e = events[0]
    assert (e.method, e.host, e.status, e.level, e.transaction_id) == ("GET", "api.example.com", 200, "summary", ex.id)
    assert e.path == "/v1/items?page=*&key=*"
    assert e.duration_ns == 4_000_000 and e.ttfb_ns == 2_000_000
    assert e.exe == "/usr/bin/curl" and e.direction == "egress" and e.traffic == "egress-external"
    assert e.object_digest == ""
    assert b"curl/8.0" not in msgspec.json.encode(e)  # no header values


def test_details_stores_headers_but_no_bodies() -> None:
    ex = exchange(tx(request_body=b"REQBODY", request_body_size=7))
    events, objects = split(plugin(level="details").on_http(ex))
    assert len(events) == 1 and len(objects) == 1
    obj = objects[0]
    doc = msgspec.json.decode(obj.data)
    assert doc["request"]["headers"] == [["Host", "api.example.com"], ["User-Agent", "curl/8.0"]]
    assert "body" not in doc["request"] and "body" not in doc["response"]
    assert b"REQBODY" not in obj.data
    assert obj.digest == hashlib.sha256(obj.data).hexdigest() == events[0].object_digest
    assert (obj.conn_id, obj.transaction_id) == (77, ex.id)
    assert events[0].level == "details"


def test_full_stores_bodies_decoded_when_the_parser_decoded_them() -> None:
    txs = recorded("http1_nginx_gzip", decode_bodies=True)
    gz = next(t for t in txs if t.response_body_decoded is not None)
    _, objects = split(plugin(level="full").on_http(exchange(gz)))
    doc = msgspec.json.decode(objects[0].data)
    assert doc["response"]["body"]["text"].encode() == gz.response_body_decoded
    assert doc["level"] == "full"


def test_binary_body_is_base64_in_json_and_summarized_in_text() -> None:
    t = tx(response_body=b"\xff\x00\xfe", response_body_size=3)
    doc = msgspec.json.decode(split(plugin(level="full").on_http(exchange(t)))[1][0].data)
    assert doc["response"]["body"] == {"base64": "/wD+"}
    text = split(plugin(level="full", format="text").on_http(exchange(t)))[1][0]
    assert b"[3 bytes of binary data]" in text.data and text.content_type.startswith("text/plain")


def test_first_matching_rule_decides_level_and_format() -> None:
    p = plugin(level="summary", rules=[
        HttpCaptureRule(name="errors", expr="http.res.status >= 500", level="full", format="text"),
        HttpCaptureRule(name="client errors", expr="http.res.status >= 400", level="details"),
        HttpCaptureRule(name="never reached for 5xx", expr="http.res.status >= 400", level="none"),
    ])
    ok_events, ok_objects = split(p.on_http(exchange(tx(status=200))))
    assert ok_objects == [] and ok_events[0].rule == ""
    ev5, obj5 = split(p.on_http(exchange(tx(status=502, response_body=b"upstream down", response_body_size=13))))
    assert ev5[0].rule == "errors" and ev5[0].level == "full"
    assert obj5[0].data.startswith(b"# ") and b"HTTP/1.1 502" in obj5[0].data and b"upstream down" in obj5[0].data
    ev4, obj4 = split(p.on_http(exchange(tx(status=404))))
    assert ev4[0].rule == "client errors" and obj4[0].content_type == "application/json"


def test_grpc_recorded_calls_carry_service_and_status() -> None:
    events, _ = split([i for t in recorded("grpc_python") for i in plugin().on_http(exchange(t))])
    assert {(e.grpc.service, e.grpc.method) for e in events if e.grpc} >= {("test.v1.Echo", "Ping")}
    assert {e.grpc.grpc_status for e in events if e.grpc} >= {0, 5}
