"""http_metrics: RED metrics (rate, errors, duration) of the transactions routed to a stack, served on the
agent's /metrics as Prometheus histograms under the OpenTelemetry HTTP metric names
(``http_client_request_duration_seconds`` for egress, ``http_server_request_duration_seconds`` for ingress,
and the request and response body sizes). The rate is a histogram's ``_count``, errors are the
``status_class`` 4xx/5xx series.

Labels are chosen in the config from method, status class, domain, route template, direction, process
and container. Cardinality is bounded (qtap_async.telemetry.red): ``max_values`` caps the distinct
values of one label, ``max_series`` the series of the plugin; what goes past reads ``other`` and is
counted (``HTTP_METRICS_FOLDED``). The plugin emits no events: it only counts.

The aggregation is the one the otel store exports as OTLP metrics (``metrics: true``), so both read the
same numbers. A config reload builds a new plugin: its counts restart from zero, which Prometheus reads as
a counter reset (``rate()`` and ``increase()`` handle it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Annotated, Literal, TypeAlias

import msgspec

from qtap_async.plugins.base import Emission, PluginSettings
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.settings import FieldPath, Settings
from qtap_async.telemetry import metrics
from qtap_async.telemetry.red import (
    DURATION_BUCKETS,
    KNOWN_METHODS,
    OTHER,
    SIZE_BUCKETS,
    Attrs,
    LabelLimit,
    RouteMatcher,
    SeriesTable,
    status_class,
)

__all__ = ["LABELS", "HttpMetrics", "HttpMetricsConfig", "HttpMetricsPlugin"]

Label: TypeAlias = Literal["method", "status_class", "domain", "route", "direction", "process", "container"]
#: Every label, in the order samples carry them (the config's order does not matter).
LABELS: tuple[Label, ...] = ("method", "status_class", "domain", "route", "direction", "process", "container")
#: The labels whose values come from the traffic (anyone can make up a path or a Host): they fold first.
_FOLDABLE = frozenset({"domain", "route", "process", "container"})
_REQUEST_LABELS = frozenset({"method", "status_class", "domain", "route"})
_MAX_VALUE = 256  # a label value longer than this is cut: a flood of long paths must not grow the scrape
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class HttpMetricsConfig(Settings, frozen=True):
    """The labels to keep, the cardinality limits, route templates and histogram buckets (docs/config.md)."""

    labels: list[Label] = msgspec.field(default_factory=lambda: list(LABELS))
    max_series: PositiveInt = 2000  # series of this plugin before the traffic-made labels fold into "other"
    max_values: dict[Label, PositiveInt] = {}  # distinct values of one label before the rest read "other"
    routes: list[str] = []  # route templates, first match wins: "/users/{id}", "/static/*"
    route_heuristic: bool = True  # no template matched: id-like path segments become {id}
    duration_buckets: list[float] = msgspec.field(default_factory=lambda: list(DURATION_BUCKETS))  # seconds


class HttpMetricsPlugin(PluginSettings, frozen=True, tag="http_metrics"):
    """``type: http_metrics`` in a stack (docs/config.md); it has no rules."""

    config: HttpMetricsConfig = msgspec.field(default_factory=HttpMetricsConfig)

    def problems(self) -> Iterable[tuple[FieldPath, str]]:
        c = self.config
        seen: dict[str, int] = {}
        for i, label in enumerate(c.labels):
            if label in seen:
                yield ("labels", i), f"label '{label}' is listed twice (also labels[{seen[label]}])"
            seen.setdefault(label, i)
        for label in c.max_values:
            if label not in seen:
                yield ("max_values", label), f"'{label}' is not one of the labels kept ({', '.join(c.labels)})"
        b = c.duration_buckets
        if not b:
            yield ("duration_buckets",), "needs at least one bucket bound"
        for i, bound in enumerate(b):
            if not bound > 0 or bound != bound or bound == float("inf"):
                yield ("duration_buckets", i), f"bucket bound {bound} must be a finite number of seconds above 0"
            elif i and bound <= b[i - 1]:
                yield ("duration_buckets", i), f"bucket bounds must increase: {bound} follows {b[i - 1]}"


def _remember(cache: dict[tuple[object, ...], tuple[str, ...]], key: tuple[object, ...],
              value: tuple[str, ...]) -> tuple[str, ...]:
    if len(cache) >= 4096:  # a flood of new shapes costs a recomputation, never memory
        cache.clear()
    cache[key] = value
    return value


def _process(exe: str, comm: str) -> str:
    return os.path.basename(exe) or comm


class HttpMetrics:
    name = "http_metrics"

    def __init__(self, config: HttpMetricsConfig, stack: str = "") -> None:
        self.config = config
        self.stack = stack
        self.labels: tuple[Label, ...] = tuple(label for label in LABELS if label in config.labels)
        self._pos = {label: i for i, label in enumerate(self.labels)}
        self.routes = RouteMatcher(config.routes, config.route_heuristic)
        self.duration_bounds = tuple(config.duration_buckets)
        fold = tuple(i for i, label in enumerate(self.labels) if label in _FOLDABLE)
        everything_other: Attrs = (OTHER,) * len(self.labels)
        self.table: SeriesTable[bool] = SeriesTable(config.max_series, fold, lambda server: (server, everything_other),
                                                    duration_bounds=self.duration_bounds)
        self.limits = {label: LabelLimit(n) for label, n in config.max_values.items() if label in self._pos}
        # LABELS lists the request's labels first, then the connection's: a sample's values are both halves.
        self._request_labels = tuple(label for label in self.labels if label in _REQUEST_LABELS)
        self._conn_labels = tuple(label for label in self.labels if label not in _REQUEST_LABELS)
        self._requests: dict[tuple[object, ...], tuple[str, ...]] = {}
        self._conns: dict[tuple[object, ...], tuple[str, ...]] = {}

    @property
    def folded(self) -> int:
        return self.table.folded + sum(lim.folded for lim in self.limits.values())

    def values(self, ex: HttpExchange) -> Attrs:
        """The label values of a transaction, in ``self.labels`` order, limited by ``max_values``. Most
        transactions repeat a request shape and a connection seen just before, so both halves are looked up
        first (safe with max_values: a LabelLimit's answer for a value never changes once given)."""
        tx, c = ex.tx, ex.conn
        rkey = (tx.method, tx.status, tx.path, ex.host)
        req = self._requests.get(rkey)
        if req is None:
            req = _remember(self._requests, rkey, self._limited(self._request_labels, self._request_values(ex)))
        ckey = (c.conn_id, c.pid, c.direction, c.exe, c.container_id, c.container_name)
        conn = self._conns.get(ckey)
        if conn is None:
            conn = _remember(self._conns, ckey, self._limited(self._conn_labels, self._conn_values(ex)))
        return req + conn

    def _limited(self, labels: tuple[Label, ...], values: list[str]) -> tuple[str, ...]:
        out = []
        for label, v in zip(labels, values, strict=True):
            v = v[:_MAX_VALUE]
            limit = self.limits.get(label)
            out.append(limit(v) if limit is not None else v)
        return tuple(out)

    def _request_values(self, ex: HttpExchange) -> list[str]:
        tx = ex.tx
        out: list[str] = []
        for label in self._request_labels:
            if label == "method":
                m = tx.method or ""
                out.append(m if m in KNOWN_METHODS else ("_OTHER" if m else ""))
            elif label == "status_class":
                out.append(status_class(tx.status))
            elif label == "domain":
                out.append(ex.host.lower())
            else:
                path = (tx.path or "").partition("?")[0]
                out.append(self.routes.route(path) if path else "")
        return out

    def _conn_values(self, ex: HttpExchange) -> list[str]:
        c = ex.conn
        out: list[str] = []
        for label in self._conn_labels:
            if label == "direction":
                out.append(c.direction)
            elif label == "process":
                out.append(_process(c.exe, c.comm))
            else:
                out.append(c.container_name or c.container_id[:12])
        return out

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        tx = ex.tx
        if tx.method is None and tx.status is None:
            return []  # nothing was parsed: no request to count
        start, end = tx.request_start_ns, tx.response_end_ns
        seconds = (end - start) / 1e9 if start and end and end > start else 0.0  # HttpExchange.duration_ns
        self.table.observe(ex.conn.direction == "ingress", self.values(ex), seconds, tx.request_body_size,
                           tx.response_body_size)
        return []

    # -- what /metrics shows ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {metrics.HTTP_METRICS_SERIES.key(stack=self.stack): self.table.count,
                metrics.HTTP_METRICS_OBSERVATIONS.key(stack=self.stack): self.table.observed,
                metrics.HTTP_METRICS_FOLDED.key(stack=self.stack): self.folded}

    def families(self) -> list[metrics.Histograms]:
        """The histograms for /metrics (the registry renders them)."""
        names = ("stack", *self.labels)
        built: dict[tuple[str, str], metrics.Histograms] = {}
        for server, attrs, series in self.table.items():
            side = "server" if server else "client"
            values = (self.stack, *(str(v) for v in attrs))
            for measure, hist, bounds in (("request_duration_seconds", series.duration, self.duration_bounds),
                                          ("request_body_size_bytes", series.request_size, SIZE_BUCKETS),
                                          ("response_body_size_bytes", series.response_size, SIZE_BUCKETS)):
                fam = built.get((side, measure))
                if fam is None:
                    fam = built[(side, measure)] = metrics.Histograms(metrics.HTTP_HISTOGRAMS[(side, measure)], names,
                                                                      bounds, [])
                fam.series.append((values, hist.cumulative(), hist.sum))
        return list(built.values())
