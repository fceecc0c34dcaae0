"""The query API: parameter and result Structs, and the parameterized SQL behind each endpoint.

Every statement is confined to the caller's team and takes its values as ClickHouse ``{name:Type}``
parameters; only identifiers from the fixed filter tables below are ever written into SQL text.
Statistics read the tables with FINAL so an event stored twice counts once. Row searches filter first
and keep one row per id (``LIMIT 1 BY id``; copies of an event are identical), so skip indexes and
PREWHERE apply, which FINAL would prevent for columns outside the sorting key.

An error is a response with status >= 500 or a gRPC status other than OK; ``client_errors`` counts
4xx. Latency percentiles are exact (quantilesExact over duration_ns), except in the dashboard and the
dependency edges, which read hourly rollups: their percentiles come from log histograms, within 1 %.

Times in results are what the agent's events carry (``qtap_async.events.times``): ``ts`` (and
``bucket_start``) as RFC 3339 UTC text with nanoseconds, beside ``ts_ns`` (``bucket_start_ns``) in epoch
nanoseconds. Storage keeps ``ts`` as DateTime64(9): statements select it as epoch nanoseconds and the text
is made here, at the edge, so the stored columns stay as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from qtap_async.errors import QueryError
from qtap_async.events.times import Timestamp, format_ns
from qtap_async.pulse import rollups
from qtap_async.pulse.ingest import to_ns
from qtap_async.pulse.storage import Storage

Time = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[datetime, msgspec.Meta(tz=True)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Str = Annotated[str, msgspec.Meta(max_length=2048)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
MAX_BUCKETS = 10_000
DEFAULT_RANGE_NS = 24 * 3600 * 10**9


# ---- parameters -------------------------------------------------------------------------------------


class _Range(msgspec.Struct, frozen=True, gc=False, kw_only=True, forbid_unknown_fields=True):
    # Epoch nanoseconds or RFC 3339 with offset; default: the 24 hours before ``end`` (default now).
    start: Time | None = None
    end: Time | None = None


class TopParams(_Range, frozen=True, gc=False, kw_only=True):
    limit: Limit = 20
    domain: Str | None = None
    direction: Literal["ingress", "egress"] | None = None


class TimeseriesParams(_Range, frozen=True, gc=False, kw_only=True):
    bucket: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    domain: Str | None = None
    path: Str | None = None
    method: Str | None = None
    pid: U32 | None = None
    exe: Str | None = None
    container_id: Str | None = None


class ProcessParams(_Range, frozen=True, gc=False, kw_only=True):
    group_by: Literal["process", "container"] = "process"
    limit: Limit = 20
    domain: Str | None = None


class ConnectionSearch(_Range, frozen=True, gc=False, kw_only=True):
    limit: Limit = 100
    offset: Offset = 0
    conn_id: U64 | None = None
    event: Literal["open", "close"] | None = None
    direction: Literal["ingress", "egress"] | None = None
    src_ip: Str | None = None
    dst_ip: Str | None = None
    dst_port: Port | None = None
    domain: Str | None = None
    pid: U32 | None = None
    exe: Str | None = None
    container_id: Str | None = None
    protocol: Str | None = None


class IssueSearch(_Range, frozen=True, gc=False, kw_only=True):
    limit: Limit = 100
    offset: Offset = 0
    rule: Str | None = None
    severity: Str | None = None
    conn_id: U64 | None = None


StatusClass = Literal["1xx", "2xx", "3xx", "4xx", "5xx", "error"]


class RequestSearch(_Range, frozen=True, gc=False, kw_only=True):
    """The traffic explorer's filters; ``q`` is free text matched anywhere in the path (case-insensitive)."""

    limit: Limit = 50
    offset: Offset = 0
    id: Str | None = None
    domain: Str | None = None
    method: Str | None = None
    status_class: StatusClass | None = None
    direction: Literal["ingress", "egress"] | None = None
    pid: U32 | None = None
    exe: Str | None = None
    container_id: Str | None = None
    q: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class SummaryParams(_Range, frozen=True, gc=False, kw_only=True):
    domain: Str | None = None
    direction: Literal["ingress", "egress"] | None = None


class DashboardParams(_Range, frozen=True, gc=False, kw_only=True):
    bucket: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    limit: Limit = 10


class EdgeParams(_Range, frozen=True, gc=False, kw_only=True):
    limit: Limit = 200
    direction: Literal["ingress", "egress"] | None = None


class ObjectParams(msgspec.Struct, frozen=True, gc=False, kw_only=True, forbid_unknown_fields=True):
    transaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    limit: Limit = 1000


# ClickHouse type of each column a filter may name.
_FILTER_TYPES = {
    "conn_id": "UInt64",
    "event": "String",
    "direction": "String",
    "src_ip": "String",
    "dst_ip": "String",
    "dst_port": "UInt16",
    "domain": "String",
    "path": "String",
    "method": "String",
    "pid": "UInt32",
    "exe": "String",
    "container_id": "String",
    "protocol": "String",
    "rule": "String",
    "severity": "String",
    "id": "String",
}

# ---- results ----------------------------------------------------------------------------------------


class _Stats(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    requests: int
    errors: int
    client_errors: int
    error_rate: float
    p50_ns: int
    p95_ns: int
    p99_ns: int


class DomainStats(_Stats, frozen=True, gc=False, kw_only=True):
    domain: str


class EndpointStats(_Stats, frozen=True, gc=False, kw_only=True):
    domain: str
    method: str
    path: str


class BucketStats(_Stats, frozen=True, gc=False, kw_only=True):
    bucket_start: Timestamp
    bucket_start_ns: int


class ProcessStats(_Stats, frozen=True, gc=False, kw_only=True):
    pid: int
    exe: str
    container_id: str


class Summary(_Stats, frozen=True, gc=False, kw_only=True):
    domains: int
    sources: int  # distinct (exe, container) pairs that made or served requests


class DashboardRow(_Stats, frozen=True, gc=False, kw_only=True):
    """One row of the dashboard's answer; ``set`` says which: the range's total, a domain, an endpoint, a
    process, a container, or a time bucket. The keys of other sets are empty."""

    set: Literal["total", "domain", "endpoint", "process", "container", "bucket"]
    domain: str
    method: str
    path: str
    pid: int
    exe: str
    container_id: str
    bucket_start: Timestamp  # the keys of other sets are empty: bucket_start_ns 0
    bucket_start_ns: int
    domains: int
    sources: int


class Edge(_Stats, frozen=True, gc=False, kw_only=True):
    """Traffic from one process (or container) to one domain."""

    exe: str
    container_id: str
    domain: str


class RequestRow(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: str
    ts: Timestamp
    ts_ns: int
    agent: str
    conn_id: int
    direction: str
    method: str
    domain: str
    path: str
    status: int
    duration_ns: int
    req_bytes: int
    resp_bytes: int
    content_type: str
    user_agent: str
    pid: int
    exe: str
    container_id: str
    protocol: str
    grpc_service: str
    grpc_method: str
    grpc_status: int


class ConnectionRow(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: str
    ts: Timestamp
    ts_ns: int
    agent: str
    conn_id: int
    event: str
    direction: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    family: str
    pid: int
    exe: str
    comm: str
    container_id: str
    cgroup: str
    bytes_sent: int
    bytes_received: int
    duration_ns: int
    domain: str
    protocol: str
    tls: bool
    domain_source: str
    user: str
    uid: int  # -1: not known
    transport: str
    midstream: bool
    resumed: bool
    io_uring: bool
    reason: str
    owners: str  # JSON array of {pid, exe, comm, user, first_ns, first_ts}; "" when one process did all the I/O


class IssueRow(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: str
    ts: Timestamp
    ts_ns: int
    agent: str
    conn_id: int
    rule: str
    severity: str
    summary: str
    status: str
    duration_ns: int
    object_digest: str


class ObjectRefRow(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: str
    ts: Timestamp
    ts_ns: int
    agent: str
    conn_id: int
    transaction_id: str
    digest: str
    url: str
    size: int
    content_type: str


# ---- SQL --------------------------------------------------------------------------------------------

_STATS = (
    "count() AS requests, countIf(status >= 500 OR grpc_status > 0) AS errors,"
    " countIf(status >= 400 AND status < 500) AS client_errors,"
    " if(requests = 0, 0, errors / requests) AS error_rate,"
    " quantilesExact(0.5, 0.95, 0.99)(duration_ns) AS q, q[1] AS p50_ns, q[2] AS p95_ns, q[3] AS p99_ns"
)
_RANGE = (
    "team = {team:String} AND ts >= fromUnixTimestamp64Nano({start:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Nano({end:Int64}, 'UTC')"
)


def _range(p: _Range) -> tuple[int, int]:
    end = to_ns(p.end) if p.end is not None else time.time_ns()
    start = to_ns(p.start) if p.start is not None else end - DEFAULT_RANGE_NS
    if end <= start:
        raise QueryError("end must be after start")
    return start, end


def _where(p: msgspec.Struct, team: str, names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"team": team}
    if isinstance(p, _Range):
        params["start"], params["end"] = _range(p)
        sql = _RANGE
    else:
        sql = "team = {team:String}"
    for name in names:
        value = getattr(p, name)
        if value is not None:
            sql += f" AND {name} = {{{name}:{_FILTER_TYPES[name]}}}"
            params[name] = value
    return sql, params


def _select(storage: Storage, result: type[Any], sql: str, params: dict[str, Any]) -> list[Any]:
    rows = storage.query(sql, params)
    for time_field in ("ts", "bucket_start"):
        if f"{time_field}_ns" in result.__struct_fields__:
            for row in rows:
                row[f"{time_field}_ns"] = ns = int(row[f"{time_field}_ns"])  # 64-bit ints may come quoted
                row[time_field] = format_ns(ns)
    out: list[Any] = msgspec.convert(rows, list[result])  # type: ignore[valid-type]
    return out


def top_domains(storage: Storage, team: str, p: TopParams) -> list[DomainStats]:
    where, params = _where(p, team, ("domain", "direction"))
    params["limit"] = p.limit
    return _select(
        storage,
        DomainStats,
        f"SELECT domain, {_STATS} FROM {storage.database}.requests FINAL WHERE {where}"
        " GROUP BY domain ORDER BY requests DESC, domain LIMIT {limit:UInt32}",
        params,
    )


def top_endpoints(storage: Storage, team: str, p: TopParams) -> list[EndpointStats]:
    where, params = _where(p, team, ("domain", "direction"))
    params["limit"] = p.limit
    return _select(
        storage,
        EndpointStats,
        f"SELECT domain, method, path, {_STATS} FROM {storage.database}.requests FINAL WHERE {where}"
        " GROUP BY domain, method, path ORDER BY requests DESC, domain, method, path LIMIT {limit:UInt32}",
        params,
    )


def timeseries(storage: Storage, team: str, p: TimeseriesParams) -> list[BucketStats]:
    where, params = _where(p, team, ("domain", "path", "method", "pid", "exe", "container_id"))
    if (params["end"] - params["start"]) // (p.bucket * 10**9) > MAX_BUCKETS:
        raise QueryError(f"more than {MAX_BUCKETS} buckets: widen bucket or narrow the range")
    params["bucket"] = p.bucket
    return _select(
        storage,
        BucketStats,
        "SELECT toUnixTimestamp64Nano(toDateTime64(toStartOfInterval(ts, toIntervalSecond({bucket:UInt32})), 9,"
        f" 'UTC')) AS bucket_start_ns, {_STATS} FROM {storage.database}.requests FINAL WHERE {where}"
        " GROUP BY bucket_start_ns ORDER BY bucket_start_ns",
        params,
    )


def processes(storage: Storage, team: str, p: ProcessParams) -> list[ProcessStats]:
    where, params = _where(p, team, ("domain",))
    params["limit"] = p.limit
    keys = "pid, exe, container_id" if p.group_by == "process" else "0 AS pid, '' AS exe, container_id"
    group = "pid, exe, container_id" if p.group_by == "process" else "container_id"
    return _select(
        storage,
        ProcessStats,
        f"SELECT {keys}, {_STATS} FROM {storage.database}.requests FINAL WHERE {where}"
        f" GROUP BY {group} ORDER BY requests DESC, {group} LIMIT {{limit:UInt32}}",
        params,
    )


_STATUS_CLASS = {
    "1xx": "status >= 100 AND status < 200",
    "2xx": "status >= 200 AND status < 300",
    "3xx": "status >= 300 AND status < 400",
    "4xx": "status >= 400 AND status < 500",
    "5xx": "status >= 500",
    "error": "(status >= 500 OR grpc_status > 0)",
}


def summary(storage: Storage, team: str, p: SummaryParams) -> list[Summary]:
    """One row: the totals of the range (what the dashboard's headline numbers show)."""
    where, params = _where(p, team, ("domain", "direction"))
    return _select(
        storage,
        Summary,
        f"SELECT {_STATS}, uniqExact(domain) AS domains, uniqExact(exe, container_id) AS sources"
        f" FROM {storage.database}.requests FINAL WHERE {where}",
        params,
    )


_DASH_SETS = ("total", "domain", "endpoint", "process", "container", "bucket")
_DASH_KEYS = "domain, method, path, pid, exe, container_id"
_EDGE_KEYS = "exe, container_id, domain"


def _rolled_up(storage: Storage, team: str, start: int, end: int, sets: tuple[str, ...], ranked: tuple[str, ...],
               keys: str, select: str, group: str, bucket: int, limit: int, raw_filter: str = "",
               params: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """Rows of ``sets`` per ``keys`` over [start, end), from the clean hours' rollups and the rest's raw rows.

    Two statements: the ``ranked`` sets' keys are ranked by their request counts (cheap: no histogram is
    read), then histograms are merged for the top ``limit`` keys of each ranked set and every key of the
    others (the total, the time buckets). Ties rank by the keys, as the single queries order them."""
    hours = rollups.clean(storage, team, start, end)
    if not hours[0] or bucket % 60:
        return None  # no hour to read from the rollups: the caller's exact query over the raw rows
    params = params or {}
    where, bound = rollups.raw_where(team, start, end, hours[0], raw_filter, params)
    with rollups.raw_scratch(storage, where, bound) as scratch:
        inner, bound = rollups.merged_states(storage, team, hours, start, end, ranked, raw_filter, bucket, params,
                                             counts_only=True, scratch=scratch)
        bound["limit"] = limit
        top = storage.query(
            f"SELECT cityHash64(grp, {keys}) AS h, sum(r) AS n FROM ({inner}) GROUP BY grp, {keys}"
            f" ORDER BY n DESC, {keys} LIMIT {{limit:UInt32}} BY grp",
            bound,
        )
        others = ", ".join(f"'{s}'" for s in sets if s not in ranked)
        keep = f"cityHash64(grp, {keys}) IN {{keep:Array(UInt64)}}" + (f" OR grp IN ({others})" if others else "")
        inner, bound = rollups.merged_states(storage, team, hours, start, end, sets, raw_filter, bucket,
                                             dict(params, keep=[int(r["h"]) for r in top]), keep, scratch=scratch)
        bound["bucket"] = bucket
        return storage.query(f"SELECT grp, {select}, {rollups.STATS} FROM ({inner}) GROUP BY grp, {group}", bound)


_EXACT_SETS = {"total": "()", "domain": "(domain)", "endpoint": "(domain, method, path)",
               "process": "(pid, exe, container_id)", "container": "(container_id)", "bucket": "(bucket_start_ns)"}


def _dashboard_exact(storage: Storage, team: str, start: int, end: int, bucket: int) -> list[dict[str, Any]]:
    # One pass over the raw rows (GROUPING SETS), exact percentiles: for ranges with no whole clean hour.
    params: dict[str, Any] = {"team": team, "start": start, "end": end, "bucket": bucket}
    keys = ("domain", "method", "path", "pid", "exe", "container_id", "bucket_start_ns")
    rows = storage.query(
        f"SELECT grouping({', '.join(keys)}) AS g, {_DASH_KEYS},"
        " toUnixTimestamp64Nano(toDateTime64(toStartOfInterval(ts, toIntervalSecond({bucket:UInt32})), 9, 'UTC'))"
        f" AS bucket_start_ns, {_STATS}, uniqExact(domain) AS domains, uniqExact(exe, container_id) AS sources"
        f" FROM {storage.database}.requests FINAL WHERE {_RANGE}"
        f" GROUP BY GROUPING SETS ({', '.join(_EXACT_SETS.values())})",
        params,
    )
    ids = {sum(1 << (len(keys) - 1 - i) for i, k in enumerate(keys) if k not in v.strip("()").split(", ")): name
           for name, v in _EXACT_SETS.items()}
    for r in rows:
        r["grp"] = ids[int(r.pop("g"))]
        if r["grp"] != "total":  # as from the rollups: distinct domains and sources on the total only
            r["domains"] = r["sources"] = 0
    return rows


def dashboard(storage: Storage, team: str, p: DashboardParams) -> list[DashboardRow]:
    """What the dashboard shows: the total, the top ``limit`` domains, endpoints, processes and containers
    by requests, and every non-empty time bucket, from the hourly rollups (pulse/rollups.py) for the
    range's whole, up-to-date hours and from the raw rows for the rest. The counts are those of summary,
    top_domains, top_endpoints, processes and timeseries; the percentiles come from merged histograms,
    within 1 % of a duration at their rank (exact, as those queries answer, when the range holds no whole
    clean hour or buckets are not whole minutes: one pass over the raw rows then); ``domains`` and
    ``sources`` are the total's (0 in other rows)."""
    start, end = _range(p)
    if (end - start) // (p.bucket * 10**9) > MAX_BUCKETS:
        raise QueryError(f"more than {MAX_BUCKETS} buckets: widen bucket or narrow the range")
    select = (f"{_DASH_KEYS}, toUnixTimestamp64Nano(toDateTime64(toStartOfInterval(minute,"
              " toIntervalSecond({bucket:UInt32})), 9, 'UTC')) AS bucket_start_ns")
    rows = _rolled_up(storage, team, start, end, _DASH_SETS, ("domain", "endpoint", "process", "container"),
                      _DASH_KEYS, select, f"{_DASH_KEYS}, bucket_start_ns", p.bucket, p.limit)
    if rows is None:
        rows = _dashboard_exact(storage, team, start, end, p.bucket)
    for r in rows:
        r["set"] = r.pop("grp")
        r.pop("qb", None)
        r.pop("q", None)
        r["bucket_start_ns"] = ns = int(r["bucket_start_ns"])  # 64-bit ints may come quoted
        r["bucket_start"] = format_ns(ns)
    out: list[DashboardRow] = msgspec.convert(rows, list[DashboardRow])
    # The same order and ties as the single queries: requests, then the keys.
    sort_keys = {"domain": ("domain",), "endpoint": ("domain", "method", "path"),
                 "process": ("pid", "exe", "container_id"), "container": ("container_id",)}
    by_set: dict[str, list[DashboardRow]] = {}
    for row in out:
        by_set.setdefault(row.set, []).append(row)
    result: list[DashboardRow] = []
    for name in _DASH_SETS:
        group = by_set.get(name, [])
        if name == "bucket":
            result += sorted(group, key=lambda r: r.bucket_start_ns)
        elif name == "total":
            # No row at all when the range is empty: answer the zeros summary() answers.
            result += group or [DashboardRow(set="total", domain="", method="", path="", pid=0, exe="",
                                             container_id="", bucket_start=format_ns(0), bucket_start_ns=0,
                                             domains=0, sources=0, requests=0,
                                             errors=0, client_errors=0, error_rate=0.0, p50_ns=0, p95_ns=0,
                                             p99_ns=0)]
        else:
            ks = sort_keys[name]
            result += sorted(group, key=lambda r: (-r.requests, *(getattr(r, k) for k in ks)))[:p.limit]
    return result


def edges(storage: Storage, team: str, p: EdgeParams) -> list[Edge]:
    """The dependency map: one edge per (process executable, container) -> domain, busiest first, from the
    rollups and the raw rows like the dashboard (percentiles from merged histograms, within 1 %; exact when
    the range holds no whole clean hour)."""
    start, end = _range(p)
    raw_filter, params = "", {}
    if p.direction is not None:
        raw_filter, params = " AND direction = {direction:String}", {"direction": p.direction}
    rows = _rolled_up(storage, team, start, end, ("edge",), ("edge",), _EDGE_KEYS, _EDGE_KEYS, _EDGE_KEYS, 60,
                      p.limit, raw_filter, params)
    if rows is None:  # no whole clean hour: the exact query over the raw rows
        where = _RANGE + raw_filter
        rows = storage.query(
            f"SELECT {_EDGE_KEYS}, {_STATS} FROM {storage.database}.requests FINAL WHERE {where}"
            " GROUP BY exe, container_id, domain ORDER BY requests DESC, exe, container_id, domain"
            " LIMIT {limit:UInt32}",
            dict(params, team=team, start=start, end=end, limit=p.limit),
        )
    rows.sort(key=lambda r: (-int(r["requests"]), r["exe"], r["container_id"], r["domain"]))
    out: list[Edge] = msgspec.convert(rows[:p.limit], list[Edge])
    return out


def requests(storage: Storage, team: str, p: RequestSearch) -> list[RequestRow]:
    """Requests matching the explorer's filters, newest first (one row per id)."""
    where, params = _where(p, team, ("id", "domain", "method", "direction", "pid", "exe", "container_id"))
    if p.status_class is not None:
        where += f" AND {_STATUS_CLASS[p.status_class]}"
    if p.q:
        where += " AND positionCaseInsensitiveUTF8(path, {q:String}) > 0"
        params["q"] = p.q
    params["limit"], params["offset"] = p.limit, p.offset
    # The newest rows come from a plain top-N (ClickHouse reads only ts and the sort keys for it); a second
    # pass drops copies of one event (a retried batch before its parts merged: same id, same ts, so they
    # sort side by side). The inner window is twice the page so pages stay full unless half the rows are copies.
    params["window"] = 2 * (p.limit + p.offset) + 100
    return _select(
        storage,
        RequestRow,
        f"SELECT * FROM (SELECT {_columns(RequestRow)} FROM {storage.database}.requests WHERE {where}"
        " ORDER BY ts DESC, id LIMIT {window:UInt32})"
        " ORDER BY ts_ns DESC, id LIMIT 1 BY id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        params,
    )


def _columns(row: type[msgspec.Struct]) -> str:
    # ts is read as epoch ns (ts_ns) and formatted by _select; the connections table's own ts_ns column
    # holds the same instant, but an older agent may have left it 0.
    return ", ".join("toUnixTimestamp64Nano(ts) AS ts_ns" if f == "ts" else f
                     for f in row.__struct_fields__ if f != "ts_ns")


def connections(storage: Storage, team: str, p: ConnectionSearch) -> list[ConnectionRow]:
    names = (
        "conn_id",
        "event",
        "direction",
        "src_ip",
        "dst_ip",
        "dst_port",
        "domain",
        "pid",
        "exe",
        "container_id",
        "protocol",
    )
    where, params = _where(p, team, names)
    params["limit"], params["offset"] = p.limit, p.offset
    return _select(
        storage,
        ConnectionRow,
        f"SELECT {_columns(ConnectionRow)} FROM {storage.database}.connections WHERE {where}"
        " ORDER BY ts DESC, id LIMIT 1 BY id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        params,
    )


def issues(storage: Storage, team: str, p: IssueSearch) -> list[IssueRow]:
    where, params = _where(p, team, ("rule", "severity", "conn_id"))
    params["limit"], params["offset"] = p.limit, p.offset
    return _select(
        storage,
        IssueRow,
        f"SELECT {_columns(IssueRow)} FROM {storage.database}.issues WHERE {where}"
        " ORDER BY ts DESC, id LIMIT 1 BY id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        params,
    )


def objects(storage: Storage, team: str, p: ObjectParams) -> list[ObjectRefRow]:
    params: dict[str, Any] = {"team": team, "tx": p.transaction_id, "limit": p.limit}
    return _select(
        storage,
        ObjectRefRow,
        f"SELECT {_columns(ObjectRefRow)} FROM {storage.database}.object_refs"
        " WHERE team = {team:String} AND transaction_id = {tx:String} ORDER BY ts, id LIMIT 1 BY id"
        " LIMIT {limit:UInt32}",
        params,
    )


@dataclass(frozen=True)
class QuerySpec:
    path: str
    params: type[msgspec.Struct]
    result: type[msgspec.Struct]
    run: Callable[[Storage, str, Any], list[Any]]
    summary: str


QUERIES: tuple[QuerySpec, ...] = (
    QuerySpec(
        "/v1/query/top/domains",
        TopParams,
        DomainStats,
        top_domains,
        "Top domains by requests, with error rate and latency percentiles",
    ),
    QuerySpec(
        "/v1/query/top/endpoints",
        TopParams,
        EndpointStats,
        top_endpoints,
        "Top endpoints (domain, method, path template) by requests, with error rate and latency",
    ),
    QuerySpec(
        "/v1/query/timeseries",
        TimeseriesParams,
        BucketStats,
        timeseries,
        "Requests, error rate and latency p50/p95/p99 per time bucket, optionally filtered",
    ),
    QuerySpec(
        "/v1/query/processes",
        ProcessParams,
        ProcessStats,
        processes,
        "Requests, error rate and latency per process or per container",
    ),
    QuerySpec(
        "/v1/query/connections",
        ConnectionSearch,
        ConnectionRow,
        connections,
        "Connection events in a time range matching the filters, newest first",
    ),
    QuerySpec(
        "/v1/query/summary",
        SummaryParams,
        Summary,
        summary,
        "Totals of a time range: requests, error rate, latency p50/p95/p99, distinct domains and sources",
    ),
    QuerySpec(
        "/v1/query/dashboard",
        DashboardParams,
        DashboardRow,
        dashboard,
        "One pass for a dashboard: the total, top domains, endpoints, processes and containers, and the time"
        " buckets (rows tagged by set)",
    ),
    QuerySpec(
        "/v1/query/edges",
        EdgeParams,
        Edge,
        edges,
        "Dependency edges: requests, error rate and latency from each process/container to each domain",
    ),
    QuerySpec(
        "/v1/query/requests",
        RequestSearch,
        RequestRow,
        requests,
        "Requests in a time range matching the filters (domain, method, status class, process, container,"
        " direction, text in the path), newest first",
    ),
    QuerySpec("/v1/query/issues", IssueSearch, IssueRow, issues, "Issues in a time range, newest first"),
    QuerySpec(
        "/v1/query/transactions/{transaction_id}/objects",
        ObjectParams,
        ObjectRefRow,
        objects,
        "Object references (stored bodies) of one transaction",
    ),
)
