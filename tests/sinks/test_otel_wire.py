"""The otel store's pieces without a Collector: the hand-written protobuf encoding parses, with the
generated opentelemetry-proto classes, into the messages it claims to be; trace context, routes, event
times, the metric cardinality bound; and http_capture's trace context obeying the redaction rules."""

from __future__ import annotations

import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from qtap_async.events import HttpTransaction, HttpTransactionEvent
from qtap_async.events.context import ConnContext
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.http_capture import transaction_event
from qtap_async.plugins.redact import Redactor
from qtap_async.sinks import otel_wire as wire
from qtap_async.sinks.base import to_record
from qtap_async.sinks.otel_convert import SCOPE_BYTES, Converter, RouteMatcher, parse_traceparent, ts_ns
from qtap_async.sinks.otel_metrics import RedMetrics
from tests.sinks.test_otel import T0_NS, ctx, http_event


def test_span_encoding_parses_back() -> None:
    raw = wire.span(trace_id=bytes(range(16)), span_id=b"\x01" * 8, parent_span_id=b"\x02" * 8, flags=0x301,
                    name="GET /x", kind=Span.SPAN_KIND_SERVER, start=T0_NS, end=T0_NS + 5, status_code=2,
                    status_message="503", attributes=[
                        wire.attr_s("s", "é" * 200), wire.attr_i("i", 2**40), wire.attr_i("neg", -3),
                        wire.attr_b("t", True), wire.attr_b("f", False), wire.attr_strs("a", ["x", "y"])])
    span = Span.FromString(raw)
    assert span.trace_id == bytes(range(16)) and span.span_id == b"\x01" * 8 and span.parent_span_id == b"\x02" * 8
    assert span.flags == 0x301 and span.name == "GET /x" and span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == T0_NS and span.end_time_unix_nano == T0_NS + 5
    assert span.status.code == 2 and span.status.message == "503"
    got = {kv.key: kv.value for kv in span.attributes}
    assert got["s"].string_value == "é" * 200 and got["i"].int_value == 2**40 and got["neg"].int_value == -3
    assert got["t"].bool_value is True and got["f"].HasField("bool_value") and not got["f"].bool_value
    assert [v.string_value for v in got["a"].array_value.values] == ["x", "y"]


def test_log_and_request_encoding_parse_back() -> None:
    rec = wire.log_record(time_ns=5, observed_ns=6, severity_number=9, severity_text="INFO", body="hello",
                          attributes=[wire.attr_s("k", "v")], event_name="qtap.dns.query")
    parsed = LogRecord.FromString(rec)
    assert (parsed.time_unix_nano, parsed.observed_time_unix_nano, parsed.severity_number) == (5, 6, 9)
    assert parsed.body.string_value == "hello" and parsed.event_name == "qtap.dns.query"
    conv = Converter(routes=RouteMatcher([]))
    key = conv.resource_key(conv.convert([to_record(http_event()).value]).transactions[0])
    logs = ExportLogsServiceRequest.FromString(wire.request([(conv.resource_bytes(key), [rec, rec])], SCOPE_BYTES))
    assert len(logs.resource_logs) == 1 and len(logs.resource_logs[0].scope_logs[0].log_records) == 2
    assert logs.resource_logs[0].scope_logs[0].scope.name == "qtap-async"
    out = conv.convert([to_record(http_event(i)).value for i in range(3)])
    traces = ExportTraceServiceRequest.FromString(
        wire.request([(conv.resource_bytes(k), v) for k, v in out.spans.items()], SCOPE_BYTES))
    spans = traces.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 3 and len({s.span_id for s in spans}) == 3 and len({s.trace_id for s in spans}) == 3
    res = {kv.key: kv.value for kv in traces.resource_spans[0].resource.attributes}
    assert res["process.pid"].int_value == 4242


def test_traceparent() -> None:
    tid, pid, flags = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") or (b"", b"", 0)
    assert tid.hex() == "0af7651916cd43dd8448eb211c80319c" and pid.hex() == "b7ad6b7169203331" and flags == 1
    for bad in ("", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
                "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
                "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01"):
        assert parse_traceparent(bad) is None, bad


def test_routes() -> None:
    r = RouteMatcher(["/users/{id}", "/static/*"])
    assert r.route("/users/42") == "/users/{id}" and r.route("/static/a/b.css") == "/static/*"
    assert r.route("/orders/1234/items/5") == "/orders/{id}/items/{id}"
    assert r.route("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301") == "/o/{id}"
    assert r.route("/blob/9b74c9897bac770ffc029102a200c5de") == "/blob/{id}"
    assert r.route("/api/v1/health") == "/api/v1/health"  # v1 is a word, not an id
    assert r.route("/a/b/c/d/e/f/g/h") == "/a/b/c/d/e/f/*"
    assert RouteMatcher([], heuristic=False).route("/users/42") == ""


def test_event_times() -> None:
    assert ts_ns("2026-12-02T15:00:00.250000Z") == T0_NS
    assert ts_ns("2026-12-02T15:00:00.250000Z") == T0_NS  # from the per-second cache
    assert ts_ns("2026-12-02T15:00:00Z") == T0_NS - 250_000_000
    assert ts_ns("2026-12-02T16:00:00.25+01:00") == T0_NS
    assert ts_ns(123) == 123


def test_metric_series_are_bounded() -> None:
    conv = Converter(routes=RouteMatcher([]))  # "/p1", "/p2"...: words, each its own route
    m = RedMetrics(conv, max_series=3)
    txs = conv.convert([to_record(http_event(i, path=f"/p{i}", pid=1000 + i)).value for i in range(20)]).transactions
    for tx in txs:
        m.observe(tx)
    # 3 series by route, then one "other" series (the pid is not part of a metric's resource).
    assert m.count == 4 and m.folded == 17 and m.observed == 20
    req = m.request()
    assert req is not None
    points = req.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points
    assert sorted(p.count for p in points) == [1, 1, 1, 17]
    m2 = RedMetrics(conv, max_series=1)
    for i, tx in enumerate(txs):  # distinct methods too: past twice the limit, one overflow series
        m2.observe(msgspec.structs.replace(tx, method=["GET", "PUT", "POST", "DELETE"][i % 4]))
    assert m2.count <= 3 and m2.observed == 20
    req2 = m2.request()
    assert req2 is not None
    names = [kv.key for rm in req2.resource_metrics for p in rm.scope_metrics[0].metrics[0].histogram.data_points
             for kv in p.attributes]
    assert "otel.metric.overflow" in names


def _exchange(headers: list[tuple[str, str]], redactor: Redactor | None = None) -> HttpTransactionEvent:
    tx = HttpTransaction("http/1.1", 1, "GET", "/", "h", "http", 200, request_headers=headers,
                         request_start_ns=1, response_end_ns=2)
    conn = ConnContext(**ctx())
    return transaction_event(HttpExchange(tx, conn, id="x", ts="2026-12-02T15:00:00.000000Z", ts_ns=0,
                                          redactor=redactor))


@pytest.mark.parametrize(("headers", "want"), [
    ([("TraceParent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ([("traceparent", "garbage")], ""),
    ([("x-other", "1")], ""),
])
def test_http_capture_passes_the_trace_context_on(headers: list[tuple[str, str]], want: str) -> None:
    assert _exchange(headers).traceparent == want


def test_a_redacted_traceparent_is_not_passed_on() -> None:
    headers = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    assert _exchange(headers, Redactor(headers=["traceparent"])).traceparent == ""


def test_the_receivers_side_of_our_own_exports_is_not_exported() -> None:
    conv = Converter(routes=RouteMatcher([]), own_port=4318)
    out = conv.convert([to_record(http_event(0, path="/v1/traces", method="POST", dst_port=4318)).value,
                        to_record(http_event(1, path="/v1/traces", method="POST", dst_port=8080)).value,
                        to_record(http_event(2, path="/users", dst_port=4318)).value])
    assert out.skipped == {"own_export": 1} and len(out.transactions) == 2
