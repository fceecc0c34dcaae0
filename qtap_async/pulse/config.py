"""Pulse configuration: a msgspec Struct read from YAML, overridden by command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from qtap_async.errors import ConfigError

Days = Annotated[int, msgspec.Meta(ge=1, le=3650)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class Retention(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Days each table keeps its rows (ClickHouse TTL on the event time)."""

    connections: Days = 30
    requests: Days = 30
    issues: Days = 90
    object_refs: Days = 30
    records: Days = 30  # gap, parse_error, tls_client_hello, dns_message, http_transaction


class IngestLimits(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    max_body_bytes: Positive = 16 * 1024 * 1024  # as sent (compressed)
    max_decoded_bytes: Positive = 64 * 1024 * 1024  # after decompression
    max_batch_events: Positive = 10_000
    max_event_bytes: Positive = 64 * 1024
    # An agent clock this far from ours (batch ``sent_at``) is corrected; event times further than
    # this in the future are clamped to the receive time.
    max_clock_skew_s: Positive = 300
    # Hostile clients (docs/security.md). A connection over ``max_connections`` is answered 429 and
    # closed; a request head (request line + headers) must arrive within ``header_timeout_s`` and fit in
    # ``max_header_bytes`` (else 408 / 400); a body must arrive within ``body_timeout_s`` (else 408).
    max_connections: Positive = 256
    header_timeout_s: PositiveFloat = 10.0
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024
    body_timeout_s: PositiveFloat = 30.0
    # Ingest requests decoded at once (each may hold max_body_bytes + max_decoded_bytes): the memory
    # bound. Others wait up to ``ingest_queue_timeout_s``, then get 429 with Retry-After.
    max_concurrent_ingest: Positive = 8
    ingest_queue_timeout_s: PositiveFloat = 5.0
    # An Authorization header longer than this is refused (401) before any lookup.
    max_auth_header_bytes: Positive = 512


class KafkaConfig(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    enabled: bool = False
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "qtap.events"
    group_id: str = "qtap-pulse"
    # Team for messages without an ``authorization: Bearer <token>`` header; empty: reject them.
    team: str = ""
    max_batch: Positive = 5000


class PulseConfig(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    data_dir: str = "pulse-data"
    listen: str = "127.0.0.1:8428"
    # Empty: the embedded chDB engine in <data_dir>/chdb. Else a clickhouse-connect DSN
    # (http://user:pass@host:8123, https://..., chdb:///path).
    clickhouse_url: str = ""
    database: str = "pulse"
    # ClickHouse cluster name: tables become Replicated + Distributed, DDL runs ON CLUSTER.
    cluster: str = ""
    retention: Retention = msgspec.field(default_factory=Retention)
    limits: IngestLimits = msgspec.field(default_factory=IngestLimits)
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    query_threads: Positive = 4

    @property
    def chdb_path(self) -> Path:
        return Path(self.data_dir) / "chdb"

    @property
    def tokens_path(self) -> Path:
        return Path(self.data_dir) / "tokens.sqlite3"


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> PulseConfig:
    """Read YAML (if given), apply non-None ``overrides`` (nested keys with ``__``), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        from qtap_async.config import check_config_permissions

        check_config_permissions(Path(path))
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        raw = dict(loaded or {})
    env_bootstrap = os.environ.get("QTAP_KAFKA_BOOTSTRAP")
    if env_bootstrap:
        raw.setdefault("kafka", {})["bootstrap"] = env_bootstrap
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    raw = _retention_units(raw)
    try:
        return msgspec.convert(raw, PulseConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"pulse config: {e}") from e


def _retention_units(raw: dict[str, Any]) -> dict[str, Any]:
    """``retention`` values may be days (30) or a duration in the agents' object-store units (30d, 36h, 90m);
    ClickHouse's TTL is in whole days, so a duration is rounded up to days, as S3 lifecycle rules are."""
    import re

    from qtap_async.sinks.retention import DURATION_PATTERN, days_ceil

    retention = raw.get("retention")
    if not isinstance(retention, dict):
        return raw
    out = dict(retention)
    for table, value in retention.items():
        if isinstance(value, str):
            if not re.match(DURATION_PATTERN, value):
                raise ConfigError(f"pulse config: retention.{table}: expected days (30) or a duration such as 30d, "
                                  f"12h, 90m; got {value!r}")
            out[table] = days_ceil(value)
    return {**raw, "retention": out}
