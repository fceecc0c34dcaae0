"""CPU cost per HTTP transaction of the otel event store, next to the stdout store, in the same run.

Each variant pushes the same N ``http_transaction`` events (the agent's own Struct, as http_capture makes
them) through a SinkRunner and measures this process's CPU time (user + system) from the first send to
the runner's exit, so the Collector's own work (another process) is not counted:

- ``stdout``: the stdout store writing JSON lines to /dev/null (the baseline: encode + write);
- ``otel``: spans + RED metrics over OTLP/HTTP to a real Collector (scripts/otelcol) that drops them
  (its debug exporter, basic verbosity), then ``otel_grpc`` the same over gRPC;
- ``otel_metrics_only``: ``traces: false``, i.e. the cost of the RED metrics alone;
- ``convert``: the span conversion alone (no runner, no network), per event;
- ``http_metrics``: the http_metrics plugin's ``on_http`` on the same transactions (as ``HttpExchange``,
  which the stack builds once for all its plugins, so it is not counted), then ``http_metrics_scrape``: one
  /metrics rendering of what it aggregated (the registry's exposition of its histograms).

Without a built Collector (``scripts/otelcol path`` fails) the otel variants are left out and the rest runs.

Prints one JSON line and a summary; writes benchmarks/results/otel.json (otel_no_collector.json without
the Collector). Never gates anything.
Usage: .venv/bin/python benchmarks/bench_otel.py [--events N] [--rounds R]   (otel variants: `scripts/otelcol build`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtap_async.events import ConnContext, HttpTransactionEvent  # noqa: E402
from qtap_async.events.http import HttpTransaction  # noqa: E402
from qtap_async.plugins.exchange import HttpExchange  # noqa: E402
from qtap_async.plugins.http_metrics import HttpMetrics, HttpMetricsConfig  # noqa: E402
from qtap_async.sinks import BufferConfig, StdoutEventStore, build_event_runner  # noqa: E402
from qtap_async.sinks.base import to_record  # noqa: E402
from qtap_async.sinks.otel import OtelEventStore  # noqa: E402
from qtap_async.sinks.otel_convert import Converter, RouteMatcher  # noqa: E402
from qtap_async.sinks.stdout import StdoutEventSink  # noqa: E402
from qtap_async.telemetry.metrics import MetricRegistry  # noqa: E402
from tests.sinks.otel_collector import free_port  # noqa: E402


def event(i: int) -> HttpTransactionEvent:
    return HttpTransactionEvent(
        id=f"b-{i}-tx", ts="2026-12-02T15:00:00.250000Z", conn_id=1 + i % 64,
        direction="ingress" if i % 2 else "egress",
        tls=False, src_ip="10.0.0.1", src_port=40000 + i % 64, dst_ip="10.0.0.2", dst_port=8080, pid=4242,
        exe="/usr/local/bin/api", comm="api", container_id="c" * 64, container_name="api", pod_name="api-1",
        pod_namespace="shop", protocol="http/1.1", method="GET", scheme="http", authority="api:8080", host="api",
        path=f"/api/v1/items/{i % 500}?q=[masked]", status=200 if i % 10 else 503, request_body_size=0,
        response_body_size=512, duration_ns=1_234_567, ttfb_ns=1_000_000, transaction_id=f"b-{i}",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" if i % 3 == 0 else "")


def exchange(i: int) -> HttpExchange:
    """The transaction of ``event(i)`` as the stack hands it to its plugins."""
    e = event(i)
    tx = HttpTransaction(protocol=e.protocol, client_direction=0, method=e.method, path=e.path,
                         authority=e.authority, status=e.status, request_body_size=e.request_body_size,
                         response_body_size=e.response_body_size, request_start_ns=1_000,
                         response_start_ns=1_000 + e.ttfb_ns, response_end_ns=1_000 + e.duration_ns)
    conn = ConnContext(conn_id=e.conn_id, direction=e.direction, tls=e.tls, src_ip=e.src_ip, src_port=e.src_port,
                       dst_ip=e.dst_ip, dst_port=e.dst_port, pid=e.pid, exe=e.exe, comm=e.comm,
                       container_id=e.container_id, container_name=e.container_name, pod_name=e.pod_name,
                       pod_namespace=e.pod_namespace)
    return HttpExchange(tx, conn, id=e.id, ts=e.ts, ts_ns=0)


def bench_http_metrics(n: int, rounds: int) -> dict[str, float]:
    exchanges = [exchange(i) for i in range(n)]
    best_obs, best_scrape, series = float("inf"), float("inf"), 0
    for _ in range(rounds + 1):  # round 0 warms up (and is not counted: min over all rounds is no worse)
        plugin = HttpMetrics(HttpMetricsConfig(), "bench")
        c0 = cpu()
        for ex in exchanges:
            plugin.on_http(ex)
        c1 = cpu()
        reg = MetricRegistry([plugin.stats], info={})
        reg.add_families(plugin.families)
        body = reg.exposition()
        c2 = cpu()
        best_obs, best_scrape = min(best_obs, c1 - c0), min(best_scrape, c2 - c1)
        series = plugin.table.count
    return {"http_metrics_cpu_us_per_event": round(best_obs / n * 1e6, 2),
            "http_metrics_scrape_ms": round(best_scrape * 1e3, 2), "http_metrics_series": series,
            "http_metrics_scrape_bytes": len(body)}


def cpu() -> float:
    return time.process_time()  # every thread of this process (gRPC's included), nanosecond resolution


async def through(runner: Any, events: list[Any]) -> tuple[float, dict[str, Any]]:
    await runner.start()
    task = asyncio.create_task(runner.run())
    c0, w0 = cpu(), time.perf_counter()
    for e in events:
        # A full channel drops rather than waits (the store's policy), and it has no "room again" event to
        # await: retry the same event after letting the runner catch up, so nothing is dropped.
        while not runner.channel.send_nowait(e):  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    runner.channel.close()
    await task
    c1, w1 = cpu(), time.perf_counter()
    st = runner.stats()
    assert st["qtap_sink_delivered_events_total"] == len(events), st
    return (c1 - c0), {"wall_s": round(w1 - w0, 3)}


def start_collector(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc = free_port(), free_port()
    cfg = workdir / "bench-otelcol.yaml"
    cfg.write_text(f"""receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
exporters:
  debug: {{verbosity: basic}}
service:
  telemetry: {{metrics: {{level: none}}, logs: {{level: error}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [debug]}}
    metrics: {{receivers: [otlp], exporters: [debug]}}
    logs: {{receivers: [otlp], exporters: [debug]}}
""")
    proc = subprocess.Popen([binary, "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", http), timeout=0.5).close()
            socket.create_connection(("127.0.0.1", grpc), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, http, grpc


async def main_async(n: int, rounds: int) -> dict[str, Any]:
    found = await asyncio.to_thread(subprocess.run, ["bash", str(ROOT / "scripts" / "otelcol"), "path"],
                                    capture_output=True, text=True)
    binary = found.stdout.strip() if found.returncode == 0 else ""
    events = [event(i) for i in range(n)]
    buf = BufferConfig(max_events=n + 1, max_bytes=1 << 30, batch_max_events=500)
    out: dict[str, Any] = {"events": n, "rounds": rounds}
    # The stdout store's output goes nowhere; opening /dev/null does not block.
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "wb") as devnull:  # noqa: ASYNC230
        proc, http, grpc = start_collector(binary, Path(tmp)) if binary else (None, 0, 0)
        try:
            variants: list[tuple[str, Any]] = [("stdout", None)]
            if binary:
                variants += [
                    ("otel", OtelEventStore(endpoint=f"http://127.0.0.1:{http}", buffer=buf, metrics_interval=1.0)),
                    ("otel_grpc", OtelEventStore(endpoint=f"127.0.0.1:{grpc}", protocol="grpc", buffer=buf,
                                                 metrics_interval=1.0)),
                    ("otel_metrics_only", OtelEventStore(endpoint=f"http://127.0.0.1:{http}", buffer=buf,
                                                         traces=False, metrics_interval=1.0)),
                ]
            # Round 0 warms caches and the Collector up; of the next ones, each variant's best counts
            # (the machine is shared: the least disturbed round is the closest to the real cost).
            best: dict[str, float] = {}
            for rnd in range(rounds + 1):
                for name, cfg in variants:
                    if cfg is None:
                        from qtap_async.sinks.runner import EventSinkRunner

                        runner: Any = EventSinkRunner(StdoutEventSink(stream=devnull),
                                                      buffer=buf, **_kw(StdoutEventStore()))
                    else:
                        runner = build_event_runner(cfg)
                    spent, extra = await through(runner, events)
                    if rnd and spent < best.get(name, float("inf")):
                        best[name] = spent
                        out[f"{name}_cpu_us_per_event"] = round(spent / n * 1e6, 2)
                        out[f"{name}_wall_s"] = extra["wall_s"]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    out.update(bench_http_metrics(n, rounds))
    conv = Converter(routes=RouteMatcher([]))
    values = [to_record(e).value for e in events]
    converting: list[float] = []
    for _ in range(rounds + 1):
        c0 = cpu()
        conv.convert(values)
        converting.append(cpu() - c0)
    out["convert_cpu_us_per_event"] = round(min(converting[1:]) / n * 1e6, 2)
    base = out["stdout_cpu_us_per_event"]
    if binary:
        out["otel_extra_cpu_us_per_event"] = round(out["otel_cpu_us_per_event"] - base, 2)
        out["red_metrics_extra_cpu_us_per_event"] = round(out["otel_metrics_only_cpu_us_per_event"] - base, 2)
    out["http_metrics_vs_stdout"] = round(out["http_metrics_cpu_us_per_event"] / base, 3)
    return out


def _kw(cfg: StdoutEventStore) -> dict[str, Any]:
    return {"retry": cfg.retry, "spool": None, "shutdown_timeout": cfg.shutdown_timeout, "check_on_start": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    res = asyncio.run(main_async(args.events, args.rounds))
    line = json.dumps(res)
    print(line)
    # A run without the Collector has no otel numbers: it must not replace a full run's file.
    name = "otel.json" if "otel_cpu_us_per_event" in res else "otel_no_collector.json"
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    otel = (f", otel/http {res['otel_cpu_us_per_event']} us, otel/grpc {res['otel_grpc_cpu_us_per_event']} us, "
            f"RED metrics only {res['otel_metrics_only_cpu_us_per_event']} us" if "otel_cpu_us_per_event" in res
            else " (otel variants left out: no Collector built)")
    print(f"CPU per transaction: stdout {res['stdout_cpu_us_per_event']} us{otel}, span conversion "
          f"{res['convert_cpu_us_per_event']} us, http_metrics {res['http_metrics_cpu_us_per_event']} us "
          f"(one scrape of {res['http_metrics_series']} series: {res['http_metrics_scrape_ms']} ms)", file=sys.stderr)


if __name__ == "__main__":
    main()
