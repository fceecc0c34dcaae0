"""RED metrics of the HTTP transactions the otel store delivered, computed in the agent and exported as
OTLP histograms with cumulative temporality (a failed export loses nothing: the next one carries the
totals).

Names follow the OpenTelemetry HTTP metric conventions: ``http.server.request.duration`` and
``http.client.request.duration`` (seconds, the conventions' bucket boundaries), plus the request and
response body size histograms. Rate is a histogram's count, errors its count where ``error.type`` is
set. The resource is the observed service (executable, container, pod; not the pid, so short-lived
processes do not multiply series).

Cardinality is bounded: once ``max_series`` series exist, a new one folds its ``http.route`` and
``server.address`` into ``other``; past twice that, everything new folds into one series marked
``otel.metric.overflow=true`` (the OpenTelemetry SDK's overflow attribute). Each fold is counted. The
aggregation itself (histograms, the bounded series table, route templates) is qtap_async.telemetry.red,
which the ``http_metrics`` plugin uses for /metrics too.
"""

from __future__ import annotations

import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)

from qtap_async.sinks.otel_convert import SCOPE, Converter, HttpRead, error_type, protocol_version
from qtap_async.sinks.otel_convert import _host_port as host_port
from qtap_async.telemetry.red import DURATION_BUCKETS, KNOWN_METHODS, SIZE_BUCKETS, Attrs, Hist, RedSeries, SeriesTable

__all__ = ["DURATION_BUCKETS", "SIZE_BUCKETS", "RedMetrics"]

_ATTR_NAMES = ("http.request.method", "http.response.status_code", "http.route", "server.address", "url.scheme",
               "network.protocol.version", "error.type")
_OVERFLOW_KEY: tuple[str, ...] = ("overflow",)
_Group = tuple[tuple[str, ...], bool]  # (resource key, is_server)


def _overflow(group: _Group) -> tuple[_Group, Attrs]:
    return (_OVERFLOW_KEY, group[1]), ()


class RedMetrics:
    def __init__(self, converter: Converter, *, max_series: int = 2000) -> None:
        self.converter = converter
        self.max_series = max_series
        self.start_ns = time.time_ns()
        # route (2) and server.address (3) fold into "other" past max_series
        self.table: SeriesTable[_Group] = SeriesTable(max_series, (2, 3), _overflow)
        self._conns: dict[tuple[object, ...], tuple[_Group, str, str, str]] = {}

    @property
    def count(self) -> int:
        return self.table.count

    @property
    def folded(self) -> int:
        return self.table.folded

    @property
    def observed(self) -> int:
        return self.table.observed

    def _conn(self, e: HttpRead) -> tuple[_Group, str, str, str]:
        """What every transaction of a connection shares: the series group (service, side), server address,
        scheme and protocol version; worked out once per connection."""
        key = (e.conn_id, e.src_port, e.authority, e.scheme, e.protocol, e.direction, e.pid)
        hit = self._conns.get(key)
        if hit is None:
            server = e.direction == "ingress"
            host, _ = host_port(e.authority)
            hit = ((self.converter.resource_key(e, with_pid=False), server),
                   host or e.host or e.domain or (e.dst_ip if not server else ""),
                   e.scheme or ("https" if e.tls else "http"), protocol_version(e.protocol))
            if len(self._conns) >= 4096:
                self._conns.clear()
            self._conns[key] = hit
        return hit

    def observe(self, e: HttpRead) -> None:
        group, host, scheme, version = self._conn(e)
        method = e.method or ""
        path = (e.path or "").partition("?")[0]
        route = self.converter.routes.route(path) if path else ""
        attrs: Attrs = (method if method in KNOWN_METHODS else "_OTHER", e.status or 0, route, host, scheme, version,
                        error_type(e))
        self.table.observe(group, attrs, (e.duration_ns or e.ttfb_ns) / 1e9, e.request_body_size,
                           e.response_body_size)

    def request(self) -> ExportMetricsServiceRequest | None:
        """Every series' cumulative totals (None before the first observation)."""
        if not self.table.groups:
            return None
        now = time.time_ns()
        out = ExportMetricsServiceRequest()
        by_resource: dict[tuple[str, ...], dict[bool, dict[Attrs, RedSeries]]] = {}
        for (rkey, server), group in self.table.groups.items():
            by_resource.setdefault(rkey, {})[server] = group
        for rkey, kinds in by_resource.items():
            rm = ResourceMetrics()
            rm.resource.CopyFrom(self.converter.resource(() if rkey == _OVERFLOW_KEY else rkey))
            sm = ScopeMetrics(scope=SCOPE)
            for server, group in kinds.items():
                side = "server" if server else "client"
                for suffix, unit, bounds, pick in (
                        ("request.duration", "s", DURATION_BUCKETS, "duration"),
                        ("request.body.size", "By", SIZE_BUCKETS, "request_size"),
                        ("response.body.size", "By", SIZE_BUCKETS, "response_size")):
                    points = [self._point(attrs, getattr(s, pick), bounds, now) for attrs, s in group.items()]
                    desc = ("Duration of HTTP requests seen by the agent" if pick == "duration"
                            else f"Size of HTTP {pick.split('_')[0]} bodies seen by the agent")
                    sm.metrics.append(Metric(
                        name=f"http.{side}.{suffix}", unit=unit, description=desc,
                        histogram=Histogram(aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                                            data_points=points)))
            rm.scope_metrics.append(sm)
            out.resource_metrics.append(rm)
        return out

    def _point(self, attrs: Attrs, h: Hist, bounds: tuple[float, ...], now: int) -> HistogramDataPoint:
        kvs: list[KeyValue] = []
        if not attrs:
            kvs.append(KeyValue(key="otel.metric.overflow", value=AnyValue(bool_value=True)))
        for name, value in zip(_ATTR_NAMES, attrs, strict=False):
            if isinstance(value, int):
                if value:
                    kvs.append(KeyValue(key=name, value=AnyValue(int_value=value)))
            elif value:
                kvs.append(KeyValue(key=name, value=AnyValue(string_value=value)))
        return HistogramDataPoint(attributes=kvs, start_time_unix_nano=self.start_ns, time_unix_nano=now, count=h.n,
                                  sum=h.sum, bucket_counts=h.counts, explicit_bounds=bounds,
                                  min=h.min if h.n else 0.0, max=h.max if h.n else 0.0)
