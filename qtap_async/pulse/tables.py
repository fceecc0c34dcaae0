"""ClickHouse schema: one definition, rendered to the DDL both storage backends run.

Each event type has three objects:
- ``<t>_in``: a Null-engine landing table in the shape Pulse writes (JSONEachRow straight from the
  msgspec Structs: times as integer epoch ns/ms, the ``host`` alias, URLs with query strings);
- ``<t>_mv``: a materialized view that converts and sanitizes those rows into
- ``<t>``: a ReplacingMergeTree, partitioned by day, TTL from the config, whose ORDER BY ends with the
  event id, so an event stored twice (a Kafka batch replayed after a crash, a client retry) collapses to
  one row; queries read it with FINAL. The ORDER BY holds only values fixed by the event itself, so
  two copies of one event always share their sorting key and partition.

With a cluster, ``<t>`` is a Distributed table sharded by cityHash64(id) (copies of an event land on
one shard, so FINAL still collapses them) over ``<t>_local`` ReplicatedReplacingMergeTree tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qtap_async.pulse import rollups
from qtap_async.pulse.config import PulseConfig

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # stored type
    landing: str = ""  # type in <t>_in when it differs
    expr: str = ""  # expression in the view when it differs from the name


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    order_by: str
    indexes: tuple[str, ...] = ()
    landing_only: tuple[Column, ...] = ()  # read by the view, not stored


_STR = "String"
_LC = "LowCardinality(String)"
_STRIP_QUERY = "replaceRegexpOne({c}, '[?#].*$', '')"

_COMMON = (
    Column("team", _LC, landing=_STR),
    Column("agent", _LC, landing=_STR),
    Column(
        "received_at",
        "DateTime64(3, 'UTC')",
        landing="Int64",
        expr="fromUnixTimestamp64Milli(received_at, 'UTC')",
    ),
    Column("id", _STR),
    Column("ts", "DateTime64(9, 'UTC')", landing="Int64", expr="fromUnixTimestamp64Nano(ts, 'UTC')"),
    Column("conn_id", "UInt64"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "connections",
            (
                *_COMMON,
                Column("event", _LC, landing=_STR),
                Column("direction", _LC, landing=_STR),
                Column("src_ip", _STR),
                Column("src_port", "UInt16"),
                Column("dst_ip", _STR),
                Column("dst_port", "UInt16"),
                Column("family", _LC, landing=_STR),
                Column("pid", "UInt32"),
                Column("exe", _STR),
                Column("comm", _STR),
                Column("container_id", _STR),
                Column("cgroup", _STR),
                Column("bytes_sent", "UInt64"),
                Column("bytes_received", "UInt64"),
                Column("duration_ns", "UInt64"),
                Column("domain", _STR),
                Column("protocol", _LC, landing=_STR),
                Column("tls", "Bool"),
                Column("ts_ns", "UInt64"),
                Column("user", _STR),
                Column("uid", "Int64 DEFAULT -1"),  # -1: not known (the agent omits it then)
                Column("transport", _LC, landing=_STR),
                Column("midstream", "Bool"),
                Column("reason", _LC, landing=_STR),
                Column("domain_source", _LC, landing=_STR),
                Column("resumed", "Bool"),
                Column("io_uring", "Bool"),
                Column("owners", _STR),  # JSON array of {pid, exe, comm, user, first_ns, first_ts}
                Column("container_name", _STR),
                Column("container_image", _STR),
                Column("container_labels", _STR),  # JSON object
                Column("pod_name", _STR),
                Column("pod_namespace", _STR),
                Column("pod_uid", _STR),
            ),
            order_by="team, ts, id",
            indexes=(
                "INDEX idx_dst_ip dst_ip TYPE bloom_filter GRANULARITY 4",
                "INDEX idx_domain domain TYPE bloom_filter GRANULARITY 4",
                "INDEX idx_container container_id TYPE bloom_filter GRANULARITY 4",
            ),
        ),
        Table(
            "requests",
            (
                *_COMMON,
                Column("direction", _LC, landing=_STR),
                Column("method", _LC, landing=_STR),
                Column("domain", _STR, expr="if(domain != '', domain, host)"),
                Column("path", _STR, expr=_STRIP_QUERY.format(c="path")),
                Column("status", "UInt16"),
                Column("duration_ns", "UInt64"),
                Column("req_bytes", "UInt64"),
                Column("resp_bytes", "UInt64"),
                Column("content_type", _LC, landing=_STR),
                Column("user_agent", _STR),
                Column("pid", "UInt32"),
                Column("exe", _STR),
                Column("container_id", _STR),
                Column("protocol", _LC, landing=_STR),
                Column("auth_token_hash", _STR),
                Column("grpc_service", _STR),
                Column("grpc_method", _STR),
                Column("grpc_status", "Int16"),
                Column("tags", "Array(String)"),
            ),
            # Top-N by domain/endpoint reads a contiguous range per domain; time ranges prune by day.
            order_by="team, domain, path, ts, id",
            indexes=("INDEX idx_ts ts TYPE minmax GRANULARITY 1",),
            landing_only=(Column("host", _STR),),
        ),
        Table(
            "issues",
            (
                *_COMMON,
                Column("rule", _STR),
                Column("severity", _LC, landing=_STR),
                Column("summary", _STR),
                Column("status", _LC, landing=_STR),
                Column("duration_ns", "UInt64"),
                Column("object_digest", _STR),
            ),
            order_by="team, ts, id",
        ),
        Table(
            "object_refs",
            (
                *_COMMON,
                Column("transaction_id", _STR),
                Column("digest", _STR),
                # No query string, fragment or user:password@ in a stored URL.
                Column(
                    "url",
                    _STR,
                    expr="replaceRegexpOne("
                    + _STRIP_QUERY.format(c="url")
                    + ", '^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@', '\\\\1')",
                ),
                Column("size", "UInt64"),
                Column("content_type", _LC, landing=_STR),
                Column("store", _LC, landing=_STR),
            ),
            order_by="team, transaction_id, id",
        ),
        # Event types with no table of their own (gap, parse_error, tls_client_hello, dns_message,
        # http_transaction): the validated event, whole, as JSON in ``data``.
        Table(
            "records",
            (
                *_COMMON,
                Column("type", _LC, landing=_STR),
                Column("pid", "UInt32"),
                Column("data", _STR),
            ),
            order_by="team, type, ts, id",
        ),
    )
}


def _check_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def ddl(config: PulseConfig) -> list[str]:
    """CREATE statements for every table, in dependency order. Idempotent (IF NOT EXISTS)."""
    db = _check_ident(config.database)
    cluster = _check_ident(config.cluster) if config.cluster else ""
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    out = [f"CREATE DATABASE IF NOT EXISTS {db}{on_cluster}"]
    for t in TABLES.values():
        days = int(getattr(config.retention, t.name))
        cols = ",\n  ".join([f"{c.name} {c.type}" for c in t.columns] + list(t.indexes))
        local = f"{t.name}_local" if cluster else t.name
        engine = (
            f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}')"
            if cluster
            else "ReplacingMergeTree"
        )
        out.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{local}{on_cluster} (\n  {cols}\n) ENGINE = {engine}\n"
            f"PARTITION BY toDate(ts)\nORDER BY ({t.order_by})\n{ttl_clause(days)}"
        )
        if cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS {db}.{t.name}{on_cluster} AS {db}.{local}"
                f" ENGINE = Distributed({cluster}, {db}, {local}, cityHash64(id))"
            )
        out.extend(landing_ddl(config, t))
    if rollups.enabled(config):
        out.extend(rollups.ddl(config, int(config.retention.requests)))  # after requests_in: a view reads it
    return out


def landing_ddl(config: PulseConfig, t: Table) -> list[str]:
    """The landing table and the view of ``t`` (they hold no rows: safe to drop and make again)."""
    db = _check_ident(config.database)
    on_cluster = f" ON CLUSTER {_check_ident(config.cluster)}" if config.cluster else ""
    landing = ", ".join(f"{c.name} {c.landing or c.type}" for c in (*t.columns, *t.landing_only))
    select = ", ".join(f"{c.expr} AS {c.name}" if c.expr else c.name for c in t.columns)
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{t.name}_in{on_cluster} ({landing}) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t.name}_mv{on_cluster} TO {db}.{t.name}"
        f" AS SELECT {select} FROM {db}.{t.name}_in",
    ]


def ttl_clause(days: int) -> str:
    return f"TTL toDateTime(ts) + INTERVAL {int(days)} DAY"


def stored_table(config: PulseConfig, name: str) -> str:
    """The table that holds the rows (where TTL lives)."""
    return f"{name}_local" if config.cluster else name
