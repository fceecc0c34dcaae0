"""Counters and summaries for GET /metrics of Pulse and the control plane, in the Prometheus text format.

Thread-safe. The metrics are the declarations in ``qtap_async.telemetry.metrics`` (``PULSE``, ``CONTROL``): a
call names a ``MetricDef``, never a string, and labels must be among the declared ones.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from qtap_async.telemetry.metrics import PULSE, Catalog, MetricDef, format_labels

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """``catalog`` is the set of declarations served (Pulse's by default; the control plane passes CONTROL)."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self._catalog = PULSE if catalog is None else catalog
        self._lock = threading.Lock()
        self._counters: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self._summaries: defaultdict[tuple[str, Labels], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def _key(self, metric: MetricDef | str, kind: str, labels: dict[str, str]) -> tuple[str, Labels]:
        decl = self._catalog[metric if isinstance(metric, str) else metric.name]
        if decl.kind != kind or not set(labels) <= set(decl.labels):
            raise ValueError(f"{decl.name} is a {decl.kind} labelled {list(decl.labels)}, not a {kind} with "
                             f"{sorted(labels)}")
        return decl.name, tuple(sorted(labels.items()))

    def inc(self, metric: MetricDef, value: float = 1, **labels: str) -> None:
        if value:
            key = self._key(metric, "counter", labels)
            with self._lock:
                self._counters[key] += value

    def observe(self, metric: MetricDef, seconds: float, **labels: str) -> None:
        key = self._key(metric, "summary", labels)
        with self._lock:
            s = self._summaries[key]
            s[0] += 1
            s[1] += seconds

    def get(self, metric: MetricDef | str, **labels: str) -> float:
        """A counter's value (by declaration or by its name, as a scraper would ask)."""
        key = self._key(metric, "counter", labels)
        with self._lock:
            return self._counters.get(key, 0.0)

    def render(self) -> str:
        with self._lock:
            counters = sorted(self._counters.items())
            summaries = sorted(self._summaries.items())
        from qtap_async import __version__

        # Which build answers: the same version `qtap --version` prints.
        build = next(m for m in self._catalog.values() if m.name.endswith("_build_info"))
        lines: list[str] = [f"# HELP {build.name} {build.help}", f"# TYPE {build.name} gauge",
                            build.key(version=__version__) + " 1"]
        seen: set[str] = set()

        def head(name: str) -> None:
            if name not in seen:
                seen.add(name)
                decl = self._catalog[name]
                lines.append(f"# HELP {name} {decl.help}")
                lines.append(f"# TYPE {name} {decl.kind}")

        for (name, labels), value in counters:
            head(name)
            lines.append(f"{name}{format_labels(labels)} {value:g}")
        for (name, labels), (count, total) in summaries:
            head(name)
            lines.append(f"{name}_count{format_labels(labels)} {count:g}")
            lines.append(f"{name}_sum{format_labels(labels)} {total:.6f}")
        return "\n".join(lines) + "\n"
