"""The real agent (`qtap run`, BPF capture, as root) exports what curl does against a local HTTP server to a
real OpenTelemetry Collector through the otel store: both sides' spans in the trace the request's
``traceparent`` named, with their processes as resources and the capture's timings; the connections as
log records; the RED histogram moving with the traffic."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import start_http_server
from tests.plugins.test_run_config import QtapRun
from tests.sinks.otel_collector import latest_points
from tests.sinks.test_otel import PARENT_ID, TRACE_ID, collector  # noqa: F401 - the fixture

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(300)]
CURL = shutil.which("curl") or "/usr/bin/curl"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "otel.yaml"


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_agent_captures_become_spans_logs_and_metrics(server: int, collector, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    q = QtapRun(tmp_path, f"""
version: 2
services:
  event_stores:
    - id: otel
      type: otel
      endpoint: {collector.http_endpoint}
      metrics_interval: 1
      routes: ["/bytes"]
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: summary
tap:
  direction: all
  ignore_loopback: false
  http:
    stack: default
""")
    t_start = time.time_ns()
    try:
        for n in (11, 22, 33):
            subprocess.run([CURL, "-sS", "-o", "/dev/null", "-H", f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01",
                            f"http://127.0.0.1:{server}/bytes?n={n}&status=200"], check=True, timeout=30)
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}/bytes?n=1&status=503"],
                       check=True, timeout=30)

        def ours(spans: list[dict]) -> list[dict]:  # type: ignore[type-arg]
            return [s for s in spans if s["attrs"].get("server.port") == server]

        spans = ours(collector.wait_for("spans", lambda s: len(ours(s)) >= 8, timeout=60))
        points = collector.wait_for("metrics", lambda p: sum(
            x["count"] for x in latest_points(p)
            if x["name"] == "http.server.request.duration" and x["attrs"].get("http.route") == "/bytes") >= 4,
            timeout=60)
    finally:
        assert q.stop() == 0, q.log()
    t_end = time.time_ns()

    traced = [s for s in spans if s["traceId"] == TRACE_ID]
    # curl's request carried the trace context: both the client (curl) and the server span join it.
    assert len(traced) == 6, [(s["kind"], s["attrs"].get("url.path"), s["traceId"]) for s in spans]
    assert all(s["parentSpanId"] == PARENT_ID for s in traced)
    by_kind = {k: [s for s in traced if s["kind"] == k] for k in (2, 3)}
    assert len(by_kind[2]) == 3 and len(by_kind[3]) == 3  # 3 SERVER (the test server), 3 CLIENT (curl)
    for s in traced:
        a = s["attrs"]
        assert s["name"] == "GET /bytes"
        assert a["http.request.method"] == "GET" and a["url.path"] == "/bytes" and a["http.route"] == "/bytes"
        assert a["http.response.status_code"] == 200 and a["network.protocol.version"] == "1.1"
        assert a["server.address"] == "127.0.0.1" and a["url.scheme"] == "http"
        start, end = int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"])
        assert t_start - 2_000_000_000 <= start <= end <= t_end and end - start < 5_000_000_000
        assert s["resource"]["process.pid"] > 0 and s["resource"]["host.name"]
    assert all(s["resource"]["process.executable.path"].endswith("curl") for s in by_kind[3])
    assert all("python" in s["resource"]["process.executable.path"] for s in by_kind[2])
    assert {s["attrs"]["http.response.body.size"] for s in by_kind[2]} == {11, 22, 33}
    failed = [s for s in spans if s["attrs"].get("http.response.status_code") == 503]
    assert len(failed) == 2 and all(len(s["traceId"]) == 32 and s["traceId"] != TRACE_ID for s in failed)
    server_failed = [s for s in failed if s["kind"] == 2]
    assert server_failed[0]["attrs"]["error.type"] == "503" and server_failed[0]["status"]["code"] == 2

    served = [x for x in latest_points(points) if x["name"] == "http.server.request.duration"
              and x["attrs"].get("http.route") == "/bytes"]
    assert sum(x["count"] for x in served) == 4
    assert {x["attrs"]["http.response.status_code"] for x in served} == {200, 503}
    assert all(x["sum"] > 0 for x in served)

    # The Collector's side of the agent's own exports is captured too; the store leaves those out, or
    # each export would make a span for the next one, for ever.
    assert not [s for s in collector.spans() if s["attrs"].get("server.port") == collector.http_port]

    logs = collector.logs()
    conns = [r for r in logs if r["eventName"].startswith("qtap.connection.")
             and server in (r["attrs"].get("network.peer.port"), r["attrs"].get("network.local.port"))]
    assert conns, f"no connection log record for port {server} among {len(logs)}"


def test_the_otel_example_exports(server: int, collector, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """examples/otel.yaml as shipped, pointed at the test's Collector: a curl becomes client and server spans."""
    text = EXAMPLE.read_text()
    assert "http://127.0.0.1:4318" in text and "/var/lib/qtap/spool" in text  # what the test rewrites
    text = text.replace("http://127.0.0.1:4318", collector.http_endpoint)
    text = text.replace("/var/lib/qtap/spool", str(tmp_path / "spool"))
    q = QtapRun(tmp_path, text)
    try:
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}/bytes?n=7&status=200"],
                       check=True, timeout=30)

        def ours(spans: list[dict]) -> list[dict]:  # type: ignore[type-arg]
            return [s for s in spans if s["attrs"].get("server.port") == server]

        spans = ours(collector.wait_for("spans", lambda s: len(ours(s)) >= 2, timeout=60))
    finally:
        assert q.stop() == 0, q.log()
    assert sorted(s["kind"] for s in spans) == [2, 3]  # the server's and curl's side
    assert all(s["resource"].get("deployment.environment.name") == "production" for s in spans)
    assert all(s["attrs"]["url.path"] == "/bytes" for s in spans)
