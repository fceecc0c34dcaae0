"""Telemetry: logging set-up, the one metric registry (prometheus-client) and the status server."""

from __future__ import annotations

from qtap_async.telemetry.logs import setup_logging
from qtap_async.telemetry.metrics import MetricRegistry, SnapshotCollector, parse_key
from qtap_async.telemetry.readiness import Readiness, ReadinessProbe
from qtap_async.telemetry.server import DEFAULT_LISTEN, StatusServer, parse_listen

__all__ = ["DEFAULT_LISTEN", "MetricRegistry", "Readiness", "ReadinessProbe", "SnapshotCollector", "StatusServer",
           "parse_key", "parse_listen", "setup_logging"]
