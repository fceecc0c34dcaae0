"""Event store ``otel``: the agent's events as OpenTelemetry traces, metrics and logs, over OTLP (HTTP/protobuf
to :4318 or gRPC to :4317), to a Collector or any backend that takes OTLP.

- each HTTP/gRPC transaction becomes a span (client for egress, server for ingress, timed from the capture;
  joined to the caller's trace when the request carried a W3C ``traceparent``);
- RED metrics (``http.server.request.duration`` / ``http.client.request.duration`` histograms and body
  sizes, by service, method, status, route, server) are computed from the delivered transactions and
  exported every ``metrics_interval`` seconds;
- connection, DNS and issue events become log records.

Batching, retries with backoff, the spool and the drop counters are the runner's, as for every store:
``send`` either delivers a batch's spans and logs or raises. A batch whose spans went but whose logs did
not is retried for its logs only (the runner retries the same list), so a retry never duplicates spans.
Built with the OTLP protobuf messages alone (``opentelemetry-proto``): no SDK, no per-event objects
beyond the protobuf messages themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.sinks import otel_wire as wire
from qtap_async.sinks.base import EventRecord, PartialRejection
from qtap_async.sinks.config import OtelEventStore, resolve
from qtap_async.sinks.otel_convert import SCOPE_BYTES, Converted, Converter, RouteMatcher
from qtap_async.sinks.otel_metrics import RedMetrics
from qtap_async.sinks.otel_transport import GrpcTransport, HttpTransport, OtlpTransport
from qtap_async.telemetry.metrics import (
    OTEL_LOG_RECORDS,
    OTEL_METRIC_EXPORT_ERRORS,
    OTEL_METRIC_EXPORTS,
    OTEL_METRIC_FOLDED,
    OTEL_METRIC_OBSERVATIONS,
    OTEL_METRIC_REJECTED_POINTS,
    OTEL_METRIC_SERIES,
    OTEL_REJECTED_LOG_RECORDS,
    OTEL_REJECTED_SPANS,
    OTEL_SKIPPED_EVENTS,
    OTEL_SPANS,
)

__all__ = ["OtelEventSink", "OtelEventStore", "build_otel_sink"]

log = logging.getLogger("qtap.sinks.otel")


class OtelEventSink:
    def __init__(self, transport: OtlpTransport, converter: Converter, *, metrics: RedMetrics | None = None,
                 metrics_interval: float = 10.0, name: str = "otel") -> None:
        self.name = name
        self.transport = transport
        self.converter = converter
        self.metrics = metrics
        self.metrics_interval = metrics_interval
        self._where = transport.where
        self._metrics_task: asyncio.Task[None] | None = None
        # A batch whose spans were delivered but whose logs were not: (its first record, its length,
        # the signals done). The runner retries the very same list, so identity recognizes it.
        self._partial: tuple[EventRecord, int, set[str]] | None = None
        self.c_spans = 0
        self.c_logs = 0
        self.c_rejected_spans = 0
        self.c_rejected_logs = 0
        self.c_skipped: dict[str, int] = {}
        self.c_metric_exports = 0
        self.c_metric_export_errors = 0
        self.c_metric_rejected_points = 0

    # ------------------------------------------------------------------------------------------ life
    async def start(self) -> None:
        if self.metrics is not None and self._metrics_task is None:
            self._metrics_task = asyncio.create_task(self._metrics_loop(), name=f"sink-{self.name}-metrics")

    async def check(self) -> None:
        """An empty export proves the endpoint answers OTLP and takes our headers."""
        try:
            await self.transport.export("traces", ExportTraceServiceRequest().SerializeToString())
        except SinkTransientError as exc:
            raise SinkError(str(exc)) from exc

    async def close(self) -> None:
        task, self._metrics_task = self._metrics_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The last totals, so a short run's metrics reach the Collector too (best effort).
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(3):
                    await self.export_metrics()
        await self.transport.close()

    # ----------------------------------------------------------------------------------------- events
    async def send(self, batch: list[EventRecord]) -> PartialRejection | None:
        done: set[str] = set()
        p = self._partial
        if p is not None and batch and p[0] is batch[0] and p[1] == len(batch):
            done = p[2]
        self._partial = None
        conv = self.converter.convert([r.value for r in batch])
        for kind, n in conv.skipped.items():
            self.c_skipped[kind] = self.c_skipped.get(kind, 0) + n
        rejected: list[int] = []
        reasons: list[str] = []
        try:
            if conv.spans and "traces" not in done:
                n, why = await self._export_spans(conv)
                rejected += conv.span_records[:n]
                reasons += [why] * n
            done.add("traces")
            if self.metrics is not None and "metrics" not in done:
                for tx in conv.transactions:  # counted once: when the batch's spans were delivered
                    self.metrics.observe(tx)
                done.add("metrics")
            if conv.logs and "logs" not in done:
                n, why = await self._export_logs(conv)
                rejected += conv.log_records[:n]
                reasons += [why] * n
        except BaseException:
            if done and batch:
                self._partial = (batch[0], len(batch), done)
            raise
        return PartialRejection(rejected, reasons) if rejected else None

    async def _export_spans(self, conv: Converted) -> tuple[int, str]:
        res = self.converter.resource_bytes
        payload = wire.request([(res(key), spans) for key, spans in conv.spans.items()], SCOPE_BYTES)
        raw = await self.transport.export("traces", payload)
        self.c_spans += len(conv.span_records)
        if not raw:
            return 0, ""
        resp = ExportTraceServiceResponse.FromString(raw)
        n = int(resp.partial_success.rejected_spans)
        if n:
            self.c_rejected_spans += n
            self.c_spans -= n
            log.warning("%s: the receiver rejected %d of %d spans: %s", self._where, n, len(conv.span_records),
                        resp.partial_success.error_message)
        return n, resp.partial_success.error_message or "rejected by the receiver"

    async def _export_logs(self, conv: Converted) -> tuple[int, str]:
        res = self.converter.resource_bytes
        payload = wire.request([(res(key), records) for key, records in conv.logs.items()], SCOPE_BYTES)
        raw = await self.transport.export("logs", payload)
        self.c_logs += len(conv.log_records)
        if not raw:
            return 0, ""
        resp = ExportLogsServiceResponse.FromString(raw)
        n = int(resp.partial_success.rejected_log_records)
        if n:
            self.c_rejected_logs += n
            self.c_logs -= n
            log.warning("%s: the receiver rejected %d of %d log records: %s", self._where, n,
                        len(conv.log_records), resp.partial_success.error_message)
        return n, resp.partial_success.error_message or "rejected by the receiver"

    # ---------------------------------------------------------------------------------------- metrics
    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval)
            try:
                await self.export_metrics()
            except Exception:  # a bug here must not end the exports for the rest of the run
                self.c_metric_export_errors += 1
                log.exception("%s: metrics export failed", self._where)

    async def export_metrics(self) -> bool:
        """Export the RED metrics' cumulative totals now; False (and counted) when the receiver failed."""
        if self.metrics is None:
            return True
        req = self.metrics.request()
        if req is None:
            return True
        try:
            raw = await self.transport.export("metrics", req.SerializeToString())
        except (SinkError, SinkTransientError) as exc:
            self.c_metric_export_errors += 1
            log.debug("%s: metrics export failed (the next one carries the totals): %s", self._where, exc)
            return False
        self.c_metric_exports += 1
        if raw:
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

            self.c_metric_rejected_points += int(ExportMetricsServiceResponse.FromString(raw)
                                                 .partial_success.rejected_data_points)
        return True

    def stats(self) -> dict[str, int]:
        """The store's own counters (the runner adds them to its qtap_sink_* ones, labelled by store)."""
        m = self.metrics
        out = {
            OTEL_SPANS.name: self.c_spans,
            OTEL_LOG_RECORDS.name: self.c_logs,
            OTEL_REJECTED_SPANS.name: self.c_rejected_spans,
            OTEL_REJECTED_LOG_RECORDS.name: self.c_rejected_logs,
            OTEL_SKIPPED_EVENTS.name: sum(self.c_skipped.values()),
            OTEL_METRIC_EXPORTS.name: self.c_metric_exports,
            OTEL_METRIC_EXPORT_ERRORS.name: self.c_metric_export_errors,
            OTEL_METRIC_REJECTED_POINTS.name: self.c_metric_rejected_points,
            OTEL_METRIC_SERIES.name: m.count if m else 0,
            OTEL_METRIC_FOLDED.name: m.folded if m else 0,
            OTEL_METRIC_OBSERVATIONS.name: m.observed if m else 0,
        }
        return out


def _port_of(endpoint: str, protocol: str) -> int:
    """The endpoint's port (the scheme's, or gRPC's 443, when it names none)."""
    from urllib.parse import urlsplit

    url = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    try:
        port = url.port
    except ValueError:
        port = None
    if port:
        return port
    return 80 if url.scheme == "http" else 443


def build_otel_sink(cfg: OtelEventStore, name: str) -> OtelEventSink:
    """The sink for an ``otel`` store config; header secrets are resolved here (ConfigError when missing)."""
    headers = {k: resolve(v, f"event store {name}: headers.{k}") or "" for k, v in cfg.headers.items()}
    timeout, compression = cfg.timeout, cfg.compression
    transport: OtlpTransport = (
        GrpcTransport(cfg.endpoint, headers=headers, compression=compression, timeout=timeout, ca_file=cfg.ca_file,
                      insecure=cfg.insecure, name=name) if cfg.protocol == "grpc" else
        HttpTransport(cfg.endpoint, headers=headers, compression=compression, timeout=timeout, ca_file=cfg.ca_file,
                      insecure=cfg.insecure, name=name))
    converter = Converter(routes=RouteMatcher(cfg.routes, cfg.route_heuristic), traces=cfg.traces, logs=cfg.logs,
                          resource_attributes=cfg.resource_attributes, own_port=_port_of(cfg.endpoint, cfg.protocol))
    metrics = RedMetrics(converter, max_series=cfg.max_series) if cfg.metrics else None
    return OtelEventSink(transport, converter, metrics=metrics, metrics_interval=cfg.metrics_interval, name=name)
