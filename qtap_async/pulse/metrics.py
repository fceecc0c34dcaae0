"""Counters and summaries for GET /metrics, in the Prometheus text format. Thread-safe."""

from __future__ import annotations

import threading
from collections import defaultdict

_HELP = {
    "pulse_http_requests_total": "HTTP requests by route and status",
    "pulse_events_accepted_total": "events that passed validation",
    "pulse_events_rejected_total": "events rejected with a per-item error",
    "pulse_events_stripped_total": "events that carried header/body fields (dropped, never stored)",
    "pulse_events_skew_corrected_total": "events whose time was corrected for clock skew",
    "pulse_auth_failures_total": "requests refused for a missing, invalid, revoked or under-scoped token",
    "pulse_insert_rows_total": "rows written to storage",
    "pulse_insert_batches_total": "INSERT statements run",
    "pulse_insert_errors_total": "INSERT rounds that failed",
    "pulse_insert_seconds": "time per INSERT",
    "pulse_query_seconds": "time per query API call",
    "pulse_kafka_messages_total": "Kafka messages consumed",
    "pulse_kafka_rejected_total": "Kafka messages dropped (undecodable or unauthenticated)",
    "pulse_kafka_commits_total": "Kafka offset commits after a stored batch",
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """``help`` replaces the HELP texts (the control plane reuses this class with its own names)."""

    def __init__(self, help: dict[str, str] | None = None) -> None:
        self._help = _HELP if help is None else help
        self._lock = threading.Lock()
        self._counters: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self._summaries: defaultdict[tuple[str, Labels], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        if value:
            key = (name, tuple(sorted(labels.items())))
            with self._lock:
                self._counters[key] += value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            s = self._summaries[key]
            s[0] += 1
            s[1] += seconds

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            counters = sorted(self._counters.items())
            summaries = sorted(self._summaries.items())
        from qtap_async import __version__

        # Which build answers: the same version `qtap --version` prints.
        lines: list[str] = ["# HELP pulse_build_info the running version", "# TYPE pulse_build_info gauge",
                            f'pulse_build_info{{version="{__version__}"}} 1']
        seen: set[str] = set()

        def head(name: str, kind: str) -> None:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {self._help.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")

        def fmt(labels: Labels) -> str:
            if not labels:
                return ""
            esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
            return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, esc, strict=True)) + "}"

        for (name, labels), value in counters:
            head(name, "counter")
            lines.append(f"{name}{fmt(labels)} {value:g}")
        for (name, labels), (count, total) in summaries:
            head(name, "summary")
            lines.append(f"{name}_count{fmt(labels)} {count:g}")
            lines.append(f"{name}_sum{fmt(labels)} {total:.6f}")
        return "\n".join(lines) + "\n"
