"""RED aggregation of HTTP transactions, shared by the ``http_metrics`` plugin (served on /metrics) and the
``otel`` store (exported as OTLP): route templates, histograms and a series table whose size is bounded.

A series is a histogram triple (duration in seconds, request body bytes, response body bytes) under a
group (the OTLP resource and side, or just the side) and a tuple of label values. The table never holds
more than about ``2 * max_series`` series: once ``max_series`` exist, a new series has its foldable labels
(route, address, process...) replaced by ``other``; past twice that, everything new goes to one overflow
series per side. ``LabelLimit`` caps the distinct values of one label the same way. Every fold is counted,
so a dashboard can tell an ``other`` spike from real traffic.

Histograms keep per-bucket counts (OTLP's form); Prometheus' cumulative buckets are summed at scrape time.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Generic, TypeAlias, TypeVar

__all__ = [
    "DURATION_BUCKETS",
    "KNOWN_METHODS",
    "OTHER",
    "SIZE_BUCKETS",
    "Attrs",
    "Hist",
    "LabelLimit",
    "RedSeries",
    "RouteMatcher",
    "SeriesTable",
    "status_class",
]

#: The HTTP semantic conventions' advice for request duration histograms (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SIZE_BUCKETS = (0.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
#: Methods kept as they are in metric labels; any other becomes ``_OTHER`` (the conventions' rule, which
#: also keeps a client sending random verbs from making series).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER = "other"

Attrs: TypeAlias = tuple[str | int, ...]
G = TypeVar("G")


def status_class(status: int | None) -> str:
    """``2xx`` for 200..299 and so on; "" when there was no (valid) status."""
    if status is None or not 100 <= status <= 599:
        return ""
    return f"{status // 100}xx"


class RouteMatcher:
    """``http.route`` for a path: the first configured template that matches (``{name}`` is one segment,
    a trailing ``*`` the rest), else (``heuristic``) the path with its id-like segments (numbers, UUIDs,
    hex digests, long mixed tokens) replaced by ``{id}``, else nothing. The heuristic keeps the metric
    series bounded for REST-style paths; the cardinality limit catches the rest."""

    _ID = re.compile(r"\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                     r"|[0-9a-fA-F]{12,}|(?=[^/]*\d)[A-Za-z0-9_\-.~=]{16,}")

    def __init__(self, templates: list[str], heuristic: bool = True, max_segments: int = 6) -> None:
        self.templates = templates
        self.heuristic = heuristic
        self.max_segments = max_segments
        self._compiled = [(t, re.compile(self._pattern(t))) for t in templates]
        self._cache: dict[str, str] = {}

    @staticmethod
    def _pattern(template: str) -> str:
        out = []
        for part in re.split(r"(\{[^/{}]*\}|\*$)", template):
            if part == "*":
                out.append(".*")
            elif part.startswith("{") and part.endswith("}"):
                out.append("[^/]+")
            else:
                out.append(re.escape(part))
        return "".join(out)

    def route(self, path: str) -> str:
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        route = ""
        for template, rx in self._compiled:
            if rx.fullmatch(path):
                route = template
                break
        else:
            if self.heuristic and path.startswith("/"):
                segments = path.split("/")[1:]
                if len(segments) > self.max_segments:  # deep paths: keep the head, fold the tail
                    segments = [*segments[: self.max_segments], "*"]
                route = "/" + "/".join("{id}" if self._ID.fullmatch(s) else s for s in segments)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[path] = route
        return route


class Hist:
    """One histogram: per-bucket counts (``counts[i]`` holds values in (bounds[i-1], bounds[i]], the last
    one those above every bound), count, sum, min and max."""

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

    def cumulative(self) -> list[int]:
        """Prometheus' ``le`` counts: each bucket with every one below it (the last is ``+Inf``: ``n``)."""
        out, total = [], 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


class RedSeries:
    __slots__ = ("duration", "request_size", "response_size")

    def __init__(self, duration_buckets: int = len(DURATION_BUCKETS), size_buckets: int = len(SIZE_BUCKETS)) -> None:
        self.duration = Hist(duration_buckets)
        self.request_size = Hist(size_buckets)
        self.response_size = Hist(size_buckets)


class SeriesTable(Generic[G]):
    """RedSeries by (group, label values), bounded (see the module's text). ``fold`` lists the positions of
    the labels that become ``other`` past ``max_series``; ``overflow`` gives the (group, values) of the one
    series a group's new series go to past ``2 * max_series``."""

    def __init__(self, max_series: int, fold: tuple[int, ...], overflow: Callable[[G], tuple[G, Attrs]], *,
                 duration_bounds: tuple[float, ...] = DURATION_BUCKETS,
                 size_bounds: tuple[float, ...] = SIZE_BUCKETS) -> None:
        self.max_series = max_series
        self.fold = frozenset(fold)
        self.overflow = overflow
        self.duration_bounds = duration_bounds
        self.size_bounds = size_bounds
        self.groups: dict[G, dict[Attrs, RedSeries]] = {}
        self.count = 0  # series held
        self.folded = 0  # observations that went to a folded series ("other" labels or the overflow)
        self.observed = 0

    def series(self, group: G, attrs: Attrs) -> RedSeries:
        """The series of (group, attrs), made if there is room, else the folded one it goes to."""
        by_attrs = self.groups.get(group)
        series = by_attrs.get(attrs) if by_attrs is not None else None
        if series is None:
            if self.count >= self.max_series:
                self.folded += 1
                attrs = tuple(OTHER if i in self.fold else v for i, v in enumerate(attrs))
                series = by_attrs.get(attrs) if by_attrs is not None else None
                if series is None and self.count >= 2 * self.max_series:
                    group, attrs = self.overflow(group)
                    by_attrs = self.groups.get(group)
                    series = by_attrs.get(attrs) if by_attrs is not None else None
            if series is None:
                series = RedSeries(len(self.duration_bounds), len(self.size_bounds))
                if by_attrs is None:
                    by_attrs = self.groups[group] = {}
                by_attrs[attrs] = series
                self.count += 1
        return series

    def observe(self, group: G, attrs: Attrs, seconds: float, request_bytes: int, response_bytes: int) -> None:
        series = self.series(group, attrs)
        self.observed += 1
        series.duration.add(self.duration_bounds, seconds)
        series.request_size.add(self.size_bounds, float(request_bytes))
        series.response_size.add(self.size_bounds, float(response_bytes))

    def items(self) -> Iterator[tuple[G, Attrs, RedSeries]]:
        for group, by_attrs in self.groups.items():
            for attrs, series in by_attrs.items():
                yield group, attrs, series


class LabelLimit:
    """At most ``limit`` distinct values of one label; the values past it read ``other`` (``folded``
    counts them). The first values seen keep their names: the usual traffic is seen first."""

    __slots__ = ("folded", "limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.folded = 0

    def __call__(self, value: str) -> str:
        if value in self.seen or not value:
            return value
        if len(self.seen) >= self.limit:
            self.folded += 1
            return OTHER
        self.seen.add(value)
        return value
