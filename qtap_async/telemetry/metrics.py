"""The one metric registry: every counter the agent keeps, in Prometheus text format (prometheus-client).

The stages keep plain integer counters (cheap on the hot path) and publish them as a flat
``{"qtap_name{label=\"v\"}": value}`` snapshot (``Agent.snapshot``). A custom collector turns that snapshot into
metric families at scrape time, so nothing is copied or locked while the agent drains the ring buffer: a name
ending in ``_total`` is a counter, anything else a gauge.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Snapshot = Mapping[str, int | float]
SnapshotSource = Callable[[], Snapshot]

_KEY = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_key(key: str) -> tuple[str, dict[str, str]] | None:
    """``name{a="x",b="y"}`` -> (name, labels); None for a key that is not a valid metric name."""
    m = _KEY.match(key)
    if m is None:
        return None
    labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
    return m.group(1), labels


def version() -> str:
    try:
        return metadata.version("qtap-async")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_info() -> dict[str, str]:
    from qtap_async.bpf.loader import objects_dir

    objects = ""
    try:
        import json

        manifest = json.loads((objects_dir() / "manifest.json").read_text())
        objects = str(manifest["objects"]["socket.bpf.o"])[:12]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # an agent without a manifest still serves its metrics
    return {"version": version(), "python": platform.python_version(), "kernel": platform.release(),
            "implementation": sys.implementation.name, "bpf_objects": objects}


class SnapshotCollector(Collector):
    """Metric families built from the snapshot sources at each scrape."""

    def __init__(self, sources: Iterable[SnapshotSource], info: Mapping[str, str] | None = None) -> None:
        self.sources = list(sources)
        self.info = dict(info if info is not None else build_info())
        self.failed_sources = 0  # a source that raised during a scrape (counted; the scrape goes on)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, int | float] = {}
        for source in self.sources:
            try:
                merged.update(source())
            except Exception:
                self.failed_sources += 1
        families: dict[str, Metric] = {}
        for key, value in merged.items():
            parsed = parse_key(key)
            if parsed is None:
                continue
            name, labels = parsed
            if name.endswith("_total"):
                base, kind, sample = name[: -len("_total")], "counter", name
            else:
                base, kind, sample = name, "gauge", name
            fam = families.get(base)
            if fam is not None and fam.type != kind:
                # A gauge whose name is a counter's stem: keep both, under distinct family names.
                base = f"{base}_{kind}"
                sample = base if kind == "gauge" else f"{base}_total"
                fam = families.get(base)
            if fam is None:
                fam = families[base] = Metric(base, _help(base), kind)
            fam.add_sample(sample, labels, float(value))
        info = Metric("qtap_build", "Build and runtime of this agent (value is always 1).", "info")
        info.add_sample("qtap_build_info", self.info, 1.0)
        yield info
        errors = Metric("qtap_metrics_source_errors", "Snapshot sources that failed during a scrape.", "counter")
        errors.add_sample("qtap_metrics_source_errors_total", {}, float(self.failed_sources))
        yield errors
        yield from families.values()


def _help(base: str) -> str:
    return base.removeprefix("qtap_").replace("_", " ") + " (see docs/deploy.md)"


class MetricRegistry:
    """What /metrics serves. A process may hold several (tests run agents side by side)."""

    def __init__(self, sources: Iterable[SnapshotSource] = (), info: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector(sources, info)
        self.registry.register(self.collector)

    def add_source(self, source: SnapshotSource) -> None:
        self.collector.sources.append(source)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
