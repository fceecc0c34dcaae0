"""The otel event store against a real OpenTelemetry Collector (built by scripts/otelcol): the agent's
own event structs go through the store's runner over OTLP/HTTP and OTLP/gRPC, and the spans, log
records and RED metrics the Collector's file exporter wrote are checked; then outages (the Collector
stopped while events flow, then started again: nothing lost, the spool and counters show it) and the
drop counters of a store that cannot deliver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtap_async.config import store_types
from qtap_async.errors import SinkError
from qtap_async.events import ConnectionEvent, DnsAnswer, DnsMessageEvent, GapEvent, HttpTransactionEvent
from qtap_async.events.http import GrpcInfo
from qtap_async.sinks import BufferConfig, RetryConfig, SpoolConfig, build_event_runner
from qtap_async.sinks.config import EventStoreConfig
from qtap_async.sinks.otel import OtelEventStore
from qtap_async.sinks.runner import EventSinkRunner
from tests.sinks.otel_collector import Collector, collector_binary, latest_points

pytestmark = pytest.mark.timeout(240)

OUTAGE_S = 30  # as long as the Kafka and S3 outage tests' (tests/sinks/test_outage.py)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
T0 = "2026-12-02T15:00:00.250000Z"
T0_NS = 1796223600_250000000


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(collector_binary(), tmp_path / "otelcol")
    c.dir.mkdir()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def ctx(direction: str = "ingress", pid: int = 4242, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "conn_id": 77, "direction": direction, "tls": False, "src_ip": "10.1.2.3", "src_port": 51000,
        "dst_ip": "10.1.2.4", "dst_port": 8080, "pid": pid, "exe": "/usr/local/bin/api-server", "comm": "api-server",
        "container_id": "c0ffee" * 10, "container_name": "api", "container_image": "registry.local/api:1.4",
        "pod_name": "api-7d9f", "pod_namespace": "shop", "pod_uid": "uid-1",
    }
    return base | kw


def http_event(i: int = 0, *, direction: str = "ingress", status: int = 200, method: str = "GET",
               path: str = "/users/1234/orders?token=[masked]", traceparent: str = "",
               **kw: Any) -> HttpTransactionEvent:
    return HttpTransactionEvent(
        id=f"tx{i}-tx", ts=T0, **ctx(direction, **kw), protocol="http/1.1", method=method, scheme="http",
        authority="api.shop.svc:8080", host="api.shop.svc", path=path, status=status, request_body_size=10,
        response_body_size=2500, duration_ns=12_000_000, ttfb_ns=9_000_000, transaction_id=f"tx{i}",
        traceparent=traceparent)


def store(endpoint: str, **kw: Any) -> OtelEventStore:
    kw.setdefault("buffer", BufferConfig(linger=0.01))
    return OtelEventStore(endpoint=endpoint, metrics_interval=0.5, **kw)


async def run_events(runner: EventSinkRunner, events: list[Any]) -> dict[str, int | float]:
    await runner.start()
    task = asyncio.create_task(runner.run())
    for e in events:
        assert runner.channel.send_nowait(e)
    runner.channel.close()
    await asyncio.wait_for(task, 60)
    return runner.stats()


def test_otel_is_a_known_event_store_type() -> None:
    assert store_types("event")["otel"] is OtelEventStore
    cfg = msgspec.convert({"type": "otel", "endpoint": "http://collector:4318", "routes": ["/users/{id}"],
                           "headers": {"authorization": {"type": "env", "value": "OTLP_TOKEN"}}}, EventStoreConfig)
    assert isinstance(cfg, OtelEventStore) and cfg.routes == ["/users/{id}"]
    with pytest.raises(msgspec.ValidationError, match="protocol"):
        msgspec.convert({"type": "otel", "protocol": "thrift"}, EventStoreConfig)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_logs_and_red_metrics_reach_the_collector(collector: Collector, protocol: str) -> None:
    endpoint = collector.http_endpoint if protocol == "http/protobuf" else collector.grpc_endpoint
    events = [
        http_event(0, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01"),
        http_event(1, direction="egress", status=404, method="POST", path="/v1/pay", pid=4243),
        http_event(2, status=503, path="/users/99/orders"),
        HttpTransactionEvent(
            id="g-tx", ts=T0, **ctx(), protocol="h2", method="POST", scheme="http", authority="grpc.svc:50051",
            host="grpc.svc", path="/shop.Cart/Add", status=200, request_body_size=5, response_body_size=7,
            duration_ns=3_000_000, grpc=GrpcInfo(service="shop.Cart", method="Add", grpc_status=13)),
        ConnectionEvent(id="c1", ts=T0, ts_ns=1, event="close", family="ipv4", bytes_sent=100, bytes_received=2600,
                        duration_ns=50_000_000, protocol="http1", reason="closed", **ctx(domain="api.shop.svc")),
        DnsMessageEvent(id="d1", ts=T0, dns_id=7, is_response=True, opcode=0, rcode="NOERROR", truncated=False,
                        qname="api.shop.svc", qtype="A", qdcount=1, transport="udp",
                        answers=[DnsAnswer(name="api.shop.svc", type="A", ttl=30, data="10.1.2.4")],
                        **ctx("egress", dst_port=53)),
        GapEvent(id="g1", ts=T0, conn_id=77, stream="recv", source="kernel", bytes=10, pid=4242, exe="/x"),
    ]
    runner = build_event_runner(store(endpoint, protocol=protocol))
    stats = await run_events(runner, events)
    assert stats["qtap_sink_delivered_events_total"] == len(events)
    assert stats["qtap_sink_dropped_events_total"] == 0
    assert stats["qtap_otel_spans_total"] == 4 and stats["qtap_otel_log_records_total"] == 2
    assert stats["qtap_otel_skipped_events_total"] == 1  # the gap: no OTLP shape for it

    spans = collector.wait_for("spans", lambda s: len(s) >= 4)
    assert len(spans) == 4
    by_tx = {s["attrs"].get("qtap.transaction.id", "grpc"): s for s in spans}
    server = by_tx["tx0"]
    assert server["name"] == "GET /users/{id}/orders"
    assert server["kind"] == 2  # SPAN_KIND_SERVER: the process accepted the connection
    assert server["traceId"] == TRACE_ID and server["parentSpanId"] == PARENT_ID  # joined the caller's trace
    assert int(server["startTimeUnixNano"]) == T0_NS
    assert int(server["endTimeUnixNano"]) == T0_NS + 12_000_000
    a = server["attrs"]
    assert a["http.request.method"] == "GET" and a["url.path"] == "/users/1234/orders"
    assert a["url.query"] == "token=[masked]" and a["url.scheme"] == "http"
    assert a["server.address"] == "api.shop.svc" and a["server.port"] == 8080
    assert a["client.address"] == "10.1.2.3" and a["http.response.status_code"] == 200
    assert a["network.protocol.version"] == "1.1" and a["http.route"] == "/users/{id}/orders"
    assert a["http.response.body.size"] == 2500
    assert "error.type" not in a and server.get("status", {}).get("code", 0) == 0
    res = server["resource"]
    assert res["process.pid"] == 4242 and res["process.executable.path"] == "/usr/local/bin/api-server"
    assert res["service.name"] == "api" and res["container.id"] == "c0ffee" * 10
    assert res["container.image.name"] == "registry.local/api" and res["container.image.tags"] == ["1.4"]
    assert res["k8s.pod.name"] == "api-7d9f" and res["k8s.namespace.name"] == "shop" and res["host.name"]
    assert server["scope"]["name"] == "qtap-async"

    client = by_tx["tx1"]
    assert client["kind"] == 3 and client["name"] == "POST /v1/pay"  # SPAN_KIND_CLIENT
    assert client["attrs"]["error.type"] == "404" and client["status"]["code"] == 2  # a client's 4xx fails
    assert client["resource"]["process.pid"] == 4243
    assert len(client["traceId"]) == 32 and not client.get("parentSpanId")  # no trace context: a new trace
    assert by_tx["tx2"]["attrs"]["error.type"] == "503"  # a server's 5xx
    g = by_tx["grpc"]
    assert g["name"] == "shop.Cart/Add" and g["attrs"]["rpc.system"] == "grpc"
    assert g["attrs"]["rpc.grpc.status_code"] == 13 and g["attrs"]["network.protocol.version"] == "2"
    assert g["status"]["code"] == 2  # INTERNAL is the server's fault

    logs = collector.wait_for("logs", lambda r: len(r) >= 2)
    by_name = {r["eventName"]: r for r in logs}
    conn = by_name["qtap.connection.close"]
    assert conn["attrs"]["qtap.connection.bytes_received"] == 2600 and conn["attrs"]["network.type"] == "ipv4"
    assert conn["attrs"]["network.peer.address"] == "10.1.2.3"  # ingress: the peer opened it
    assert int(conn["timeUnixNano"]) == T0_NS and conn["resource"]["process.pid"] == 4242
    dns = by_name["qtap.dns.response"]
    assert dns["attrs"]["dns.question.name"] == "api.shop.svc" and dns["attrs"]["dns.answers"] == ["10.1.2.4"]

    # Metrics: the final export at close carries every transaction, as cumulative histograms.
    points = latest_points(collector.wait_for("metrics", lambda p: any(
        x["name"] == "http.server.request.duration" for x in p)))
    dur = [p for p in points if p["name"] == "http.server.request.duration"]
    assert sum(p["count"] for p in dur) == 3  # tx0, tx2 and the gRPC call were served here
    assert all(p["unit"] == "s" and p["temporality"] == 2 for p in dur)  # CUMULATIVE
    failing = [p for p in dur if p["attrs"].get("error.type") == "503"]
    assert len(failing) == 1 and failing[0]["attrs"]["http.route"] == "/users/{id}/orders"
    assert failing[0]["sum"] == pytest.approx(0.012)
    ok = [p for p in dur if p["attrs"].get("http.response.status_code") == 200 and "rpc" not in str(p)]
    assert ok and "process.pid" not in ok[0]["resource"]  # metrics are per service, not per process
    client_dur = [p for p in points if p["name"] == "http.client.request.duration"]
    assert [p["count"] for p in client_dur] == [1] and client_dur[0]["attrs"]["http.request.method"] == "POST"


async def test_route_cardinality_folds_into_other_and_counts_it(collector: Collector) -> None:
    events = [http_event(i, path=f"/static/file-{i}.css") for i in range(30)]
    runner = build_event_runner(store(collector.http_endpoint, max_series=5, traces=False))
    stats = await run_events(runner, events)
    assert stats["qtap_otel_metric_folded_total"] == 25
    points = latest_points(collector.wait_for("metrics", lambda p: len(p) > 0))
    dur = [p for p in points if p["name"] == "http.server.request.duration"]
    routes = {p["attrs"].get("http.route", ""): p["count"] for p in dur}
    assert routes.pop("other") == 25 and len(routes) == 5 and sum(routes.values()) == 5
    assert collector.spans() == []  # traces: false


async def test_collector_down_then_up_loses_nothing(collector: Collector, tmp_path: Path) -> None:
    runner = build_event_runner(store(
        collector.http_endpoint, timeout=2.0, retry=RetryConfig(initial=0.1, maximum=1.0, spool_after=0.5),
        spool=SpoolConfig(dir=str(tmp_path / "spool"))))
    await runner.start()
    task = asyncio.create_task(runner.run())
    sent = 0

    async def flow(seconds: float) -> None:
        nonlocal sent
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(10):
                assert runner.channel.send_nowait(http_event(sent))
                sent += 1
            await asyncio.sleep(0.05)

    await flow(1.5)
    collector.stop()
    await flow(OUTAGE_S)  # the Collector is down meanwhile
    during = runner.stats()
    assert during["qtap_sink_up"] == 0 and during["qtap_sink_spooled_events_total"] > 0
    assert during["qtap_sink_spool_depth_events"] > 0 and during["qtap_sink_dropped_events_total"] == 0
    assert during["qtap_otel_metric_export_errors_total"] > 0
    collector.start()
    await flow(1.5)
    runner.channel.close()
    await asyncio.wait_for(task, 60)
    stats = runner.stats()
    assert stats["qtap_sink_dropped_events_total"] == 0
    assert stats["qtap_sink_unspooled_events_total"] == stats["qtap_sink_spooled_events_total"] > 0
    assert stats["qtap_sink_delivered_events_total"] == sent
    spans = collector.wait_for("spans", lambda s: len({x["attrs"]["qtap.transaction.id"] for x in s}) >= sent,
                               timeout=60)
    assert {x["attrs"]["qtap.transaction.id"] for x in spans} == {f"tx{i}" for i in range(sent)}
    assert len(spans) == sent  # retries never sent a span twice
    points = latest_points(collector.wait_for("metrics", lambda p: sum(
        x["count"] for x in latest_points(p) if x["name"] == "http.server.request.duration") >= sent))
    assert sum(p["count"] for p in points if p["name"] == "http.server.request.duration") == sent


async def test_every_drop_is_counted_when_the_collector_stays_down(collector: Collector) -> None:
    collector.stop()
    runner = build_event_runner(store(
        collector.http_endpoint, timeout=1.0, check_on_start=False, shutdown_timeout=1.0,
        buffer=BufferConfig(max_events=50, when_full="drop_newest", linger=0.01, batch_max_events=20),
        retry=RetryConfig(initial=0.1, maximum=0.5)))
    stats = await run_events_nowait(runner, [http_event(i) for i in range(300)])
    assert stats["qtap_sink_delivered_events_total"] == 0
    assert stats["qtap_sink_dropped_queue_full_events_total"] > 0
    assert stats["qtap_sink_dropped_queue_full_events_total"] + stats["qtap_sink_dropped_shutdown_events_total"] == 300
    assert stats["qtap_sink_dropped_events_total"] == 300


async def run_events_nowait(runner: EventSinkRunner, events: list[Any]) -> dict[str, int | float]:
    """Like run_events, but a full channel drops (and counts) instead of failing the test."""
    await runner.start()
    task = asyncio.create_task(runner.run())
    for e in events:
        runner.channel.send_nowait(e)
    runner.channel.close()
    await asyncio.wait_for(task, 60)
    return runner.stats()


async def test_a_refused_batch_is_dropped_and_counted(collector: Collector) -> None:
    # The Collector answers 404 for a path that is not an OTLP one: permanent, so dropped, not retried.
    runner = build_event_runner(store(collector.http_endpoint + "/not-otlp", check_on_start=False))
    stats = await run_events(runner, [http_event(i) for i in range(5)])
    assert stats["qtap_sink_dropped_rejected_events_total"] == 5 and stats["qtap_sink_retried_total"] == 0
    assert collector.spans() == []


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_check_names_the_endpoint_when_nothing_listens(collector: Collector, protocol: str) -> None:
    collector.stop()
    endpoint = collector.http_endpoint if protocol == "http/protobuf" else collector.grpc_endpoint
    runner = build_event_runner(store(endpoint, protocol=protocol, timeout=2.0))
    with pytest.raises(SinkError, match=str(collector.grpc_port if protocol == "grpc" else collector.http_port)):
        await runner.start()


def test_the_docs_config_loads_with_an_otel_store() -> None:
    import re

    from qtap_async.config import loads_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "otel.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.startswith("version: 2")]
    assert blocks
    for text in blocks:
        config = loads_config(text, "docs/otel.md")
        store = config.services.event_stores[0]
        assert store.type == "otel" and isinstance(store.options, OtelEventStore)
        assert store.options.routes == ["/api/v1/users/{id}", "/static/*"]


def test_grpc_cannot_pretend_to_skip_certificate_checks() -> None:
    from qtap_async.errors import ConfigError

    with pytest.raises(ConfigError, match="insecure is not supported with protocol grpc"):
        build_event_runner(OtelEventStore(endpoint="https://collector:4317", protocol="grpc", insecure=True))


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_tls_to_the_collector_with_its_ca(tmp_path: Path, protocol: str) -> None:
    import subprocess

    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    await asyncio.to_thread(
        subprocess.run, ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                         str(crt), "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    c = Collector(collector_binary(), tmp_path / "otelcol", tls=(str(crt), str(key)))
    c.dir.mkdir()
    c.start()
    try:
        endpoint = c.http_endpoint if protocol == "http/protobuf" else f"https://127.0.0.1:{c.grpc_port}"
        # Without the CA the certificate is refused, and start-up says so.
        with pytest.raises(SinkError, match=str(c.http_port if protocol == "http/protobuf" else c.grpc_port)):
            await build_event_runner(store(endpoint, protocol=protocol, timeout=3.0)).start()
        runner = build_event_runner(store(endpoint, protocol=protocol, ca_file=str(crt)))
        stats = await run_events(runner, [http_event(i) for i in range(3)])
        assert stats["qtap_otel_spans_total"] == 3
        assert len(c.wait_for("spans", lambda s: len(s) >= 3)) == 3
    finally:
        c.stop()
