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
``otel.metric.overflow=true`` (the OpenTelemetry SDK's overflow attribute). Each fold is counted.
"""

from __future__ import annotations

import time
from bisect import bisect_left

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

from qtap_async.sinks.otel_convert import KNOWN_METHODS, SCOPE, Converter, HttpRead, error_type, protocol_version
from qtap_async.sinks.otel_convert import _host_port as host_port

__all__ = ["DURATION_BUCKETS", "SIZE_BUCKETS", "RedMetrics"]

#: The HTTP semantic conventions' advice for request duration histograms (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SIZE_BUCKETS = (0.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
_ATTR_NAMES = ("http.request.method", "http.response.status_code", "http.route", "server.address", "url.scheme",
               "network.protocol.version", "error.type")
_OVERFLOW_KEY: tuple[str, ...] = ("overflow",)


class _Hist:
    __slots__ = ("counts", "max", "min", "n", "sum")

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.n = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1  # buckets are (prev, bound]: bisect_left puts bound in it
        self.n += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value


class _Series:
    __slots__ = ("duration", "request_size", "response_size")

    def __init__(self) -> None:
        self.duration = _Hist(len(DURATION_BUCKETS))
        self.request_size = _Hist(len(SIZE_BUCKETS))
        self.response_size = _Hist(len(SIZE_BUCKETS))


class RedMetrics:
    def __init__(self, converter: Converter, *, max_series: int = 2000) -> None:
        self.converter = converter
        self.max_series = max_series
        self.start_ns = time.time_ns()
        # (resource key, is_server) -> attribute values -> series
        self._series: dict[tuple[tuple[str, ...], bool], dict[tuple[str | int, ...], _Series]] = {}
        self._conns: dict[tuple[object, ...], tuple[tuple[tuple[str, ...], bool], str, str, str]] = {}
        self.count = 0
        self.folded = 0  # observations that went to a folded series (route/address "other" or overflow)
        self.observed = 0

    def _conn(self, e: HttpRead) -> tuple[tuple[tuple[str, ...], bool], str, str, str]:
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
        rkey, host, scheme, version = self._conn(e)
        server = rkey[1]
        method = e.method or ""
        path = (e.path or "").partition("?")[0]
        route = self.converter.routes.route(path) if path else ""
        attrs: tuple[str | int, ...] = (method if method in KNOWN_METHODS else "_OTHER", e.status or 0, route, host,
                                        scheme, version, error_type(e))
        group = self._series.get(rkey)
        series = group.get(attrs) if group is not None else None
        if series is None:
            if self.count >= self.max_series:
                self.folded += 1
                attrs = (*attrs[:2], "other", "other", *attrs[4:])
                series = group.get(attrs) if group is not None else None
                if series is None and self.count >= 2 * self.max_series:
                    rkey, attrs = (_OVERFLOW_KEY, server), ()
                    group = self._series.get(rkey)
                    series = group.get(attrs) if group is not None else None
            if series is None:
                series = _Series()
                if group is None:
                    group = self._series[rkey] = {}
                group[attrs] = series
                self.count += 1
        self.observed += 1
        seconds = (e.duration_ns or e.ttfb_ns) / 1e9
        series.duration.add(DURATION_BUCKETS, seconds)
        series.request_size.add(SIZE_BUCKETS, float(e.request_body_size))
        series.response_size.add(SIZE_BUCKETS, float(e.response_body_size))

    def request(self) -> ExportMetricsServiceRequest | None:
        """Every series' cumulative totals (None before the first observation)."""
        if not self._series:
            return None
        now = time.time_ns()
        out = ExportMetricsServiceRequest()
        by_resource: dict[tuple[str, ...], dict[bool, dict[tuple[str | int, ...], _Series]]] = {}
        for (rkey, server), group in self._series.items():
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

    def _point(self, attrs: tuple[str | int, ...], h: _Hist, bounds: tuple[float, ...], now: int) -> HistogramDataPoint:
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
