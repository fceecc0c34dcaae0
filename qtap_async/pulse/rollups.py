"""Hourly rollups of the requests table, so the dashboard and the dependency map read thousands of rows
for a day instead of a million.

Three tables (single server or chDB; a cluster keeps none and its queries read the raw table):
- ``requests_rollup``: per (team, hour) one row per key of each grouping set the dashboard and the map
  show (the total, domain, endpoint, process, container, minute, edge), with the counts and mergeable
  aggregate states: ``quantilesDD`` (DDSketch, 1 % relative accuracy) for latency, ``uniqExact`` for the
  distinct domains and sources. Percentiles over any set of hours are the merged sketches, never an
  average of percentiles. A ReplacingMergeTree on ``built_at``: rebuilding an hour replaces its rows
  (an hour only gains keys, so no old row outlives a rebuild).
- ``requests_touched``: the newest insert time of each (team, hour) that received rows, written by a
  materialized view on ``requests_in``, so it survives restarts and sees every ingestion path.
- ``requests_rollup_built``: when each (team, hour) was last built, and from what.

An hour is *clean* when it was built after its last insert; queries read clean hours from the rollup and
everything else in the range (the partial hours at both ends, hours with new rows since their build)
from the raw table with FINAL, then merge both sides' states in one statement. A copy of an event (a
replayed batch) touches its hour too: the rebuild reads the raw table with FINAL, where copies collapse,
so rollups count an event once, like the raw queries.

Builds happen in Pulse's background (``refresh``), for hours that have been quiet for ``GRACE_S``:
``built_at`` is the build's start minus the grace, so an insert whose view ran before that instant has
committed before the build reads (inserts take far less than the grace), and a later one marks the hour
stale again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from qtap_async.pulse.config import PulseConfig

if TYPE_CHECKING:
    from qtap_async.pulse.storage import Storage

GRACE_S = 10
HOUR_S = 3600
DD_ARGS = "(0.01, 0.5, 0.95, 0.99)"  # relative accuracy, then the levels
# How many hours one refresh builds at most, so a restart on a month of data does not hold the engine
# for minutes: the rest come in the next rounds, and queries read them raw until then.
MAX_HOURS_PER_REFRESH = 48

# The key columns of a rollup row; each grouping set keeps some, the others hold their type's default.
KEYS = ("domain", "method", "path", "pid", "exe", "container_id", "direction", "minute")
SETS: dict[str, tuple[str, ...]] = {
    "total": (),
    "domain": ("domain",),
    "endpoint": ("domain", "method", "path"),
    "process": ("pid", "exe", "container_id"),
    "container": ("container_id",),
    "bucket": ("minute",),
    "edge": ("exe", "container_id", "domain", "direction"),
}


def enabled(config: PulseConfig) -> bool:
    # A Distributed rollup would need its hours built per shard; a cluster reads the raw table.
    return not config.cluster


def ddl(config: PulseConfig, ttl_days: int) -> list[str]:
    db = config.database
    ttl = f"TTL hour + INTERVAL {int(ttl_days)} DAY"
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.requests_rollup (team LowCardinality(String), hour DateTime('UTC'),"
        " grp LowCardinality(String), minute DateTime('UTC'), domain String, method LowCardinality(String),"
        " path String, pid UInt32, exe String, container_id String, direction LowCardinality(String),"
        f" r UInt64, e UInt64, ce UInt64, q AggregateFunction(quantilesDD{DD_ARGS}, UInt64),"
        " d AggregateFunction(uniqExact, String), s AggregateFunction(uniqExact, String, String),"
        " built_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree(built_at) PARTITION BY toDate(hour)"
        f" ORDER BY (team, hour, grp, minute, domain, method, path, pid, exe, container_id, direction) {ttl}",
        f"CREATE TABLE IF NOT EXISTS {db}.requests_touched (team LowCardinality(String), hour DateTime('UTC'),"
        " touched_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))) ENGINE = AggregatingMergeTree"
        f" PARTITION BY toDate(hour) ORDER BY (team, hour) {ttl}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_touched_mv TO {db}.requests_touched AS"
        " SELECT team, toStartOfHour(toDateTime(intDiv(ts, 1000000000), 'UTC')) AS hour,"
        f" max(now64(3, 'UTC')) AS touched_at FROM {db}.requests_in GROUP BY team, hour",
        f"CREATE TABLE IF NOT EXISTS {db}.requests_rollup_built (team LowCardinality(String),"
        " hour DateTime('UTC'), built_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree(built_at)"
        f" PARTITION BY toDate(hour) ORDER BY (team, hour) {ttl}",
    ]


def _grouping_id(keys: tuple[str, ...], used: tuple[str, ...]) -> int:
    # grouping(used...): one bit per argument, the first the highest, set when the argument is NOT a key.
    return sum(1 << (len(used) - 1 - i) for i, k in enumerate(used) if k not in keys)


_DEFAULTS = {"domain": "''", "method": "''", "path": "''", "pid": "toUInt32(0)", "exe": "''",
             "container_id": "''", "direction": "''"}


ERRORS = "status >= 500 OR grpc_status > 0"
CLIENT_ERRORS = "status >= 400 AND status < 500"


def raw_states(db: str, where: str, sets: tuple[str, ...], minute: str) -> str:
    """A SELECT of the raw rows matching ``where`` in the rollup's row shape (without team, hour and
    built_at): one row per key of each of ``sets``, with aggregate states. ``minute`` is the expression
    that keys the bucket set (toStartOfMinute for a rollup, the query's own bucket otherwise)."""
    used = tuple(k for k in KEYS if any(k in SETS[s] for s in sets))
    name = "multiIf(" + ", ".join(f"g = {_grouping_id(SETS[s], used)}, '{s}'" for s in sets) + ", '')"
    grouping = ", ".join("(" + ", ".join(SETS[s]) + ")" for s in sets)
    minute_sql = f"toDateTime({minute}, 'UTC')" if "minute" in used else "toDateTime(0, 'UTC')"
    # Columns no set keys are constants (a SELECT may not name a column outside every grouping set).
    cols = ", ".join(f"{k}" if k in used else f"{_DEFAULTS[k]} AS {k}" for k in KEYS if k != "minute")
    return (
        f"SELECT {name} AS grp, {cols}, {minute_sql} AS minute, count() AS r, countIf({ERRORS}) AS e,"
        f" countIf({CLIENT_ERRORS}) AS ce, quantilesDDState{DD_ARGS}(duration_ns) AS q,"
        " uniqExactState(domain) AS d, uniqExactState(exe, container_id) AS s,"
        f" grouping({', '.join(used)}) AS g"
        f" FROM {db}.requests FINAL WHERE {where} GROUP BY GROUPING SETS ({grouping})"
    )


def stale_hours(storage: Storage, cutoff_ms: int, limit: int = MAX_HOURS_PER_REFRESH) -> list[dict[str, Any]]:
    """(team, hour) pairs touched after their last build and quiet since ``cutoff_ms``, newest first."""
    db = storage.database
    return storage.query(
        "SELECT t.team AS team, toUnixTimestamp(t.hour) AS hour FROM"
        f" (SELECT team, hour, max(touched_at) AS touched FROM {db}.requests_touched GROUP BY team, hour) AS t"
        f" LEFT JOIN (SELECT team, hour, max(built_at) AS built FROM {db}.requests_rollup_built"
        " GROUP BY team, hour) AS b ON t.team = b.team AND t.hour = b.hour"
        " WHERE t.touched > b.built AND t.touched <= fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')"
        " ORDER BY hour DESC, team LIMIT {limit:UInt32}",
        {"cutoff": cutoff_ms, "limit": limit},
    )


def build_hour(storage: Storage, team: str, hour_s: int, built_at_ms: int) -> None:
    db = storage.database
    where = (
        "team = {team:String} AND ts >= fromUnixTimestamp64Nano({start:Int64}, 'UTC')"
        " AND ts < fromUnixTimestamp64Nano({end:Int64}, 'UTC')"
    )
    params = {"team": team, "start": hour_s * 10**9, "end": (hour_s + HOUR_S) * 10**9, "hour": hour_s,
              "built": built_at_ms}
    inner = raw_states(db, where, tuple(SETS), "toStartOfMinute(ts)")
    storage.query(
        f"INSERT INTO {db}.requests_rollup SELECT {{team:String}}, toDateTime({{hour:UInt32}}, 'UTC'), grp,"
        " minute, domain, method, path, pid, exe, container_id, direction, r, e, ce, q, d, s,"
        f" fromUnixTimestamp64Milli({{built:Int64}}, 'UTC') FROM ({inner})",
        params,
    )
    storage.query(
        f"INSERT INTO {db}.requests_rollup_built SELECT {{team:String}}, toDateTime({{hour:UInt32}}, 'UTC'),"
        " fromUnixTimestamp64Milli({built:Int64}, 'UTC')",
        params,
    )


def refresh(storage: Storage, now_ms: int | None = None, grace_s: int = GRACE_S) -> int:
    """Build every stale hour that has been quiet for ``grace_s`` (at most MAX_HOURS_PER_REFRESH);
    returns how many were built."""
    if not enabled(storage.config):
        return 0
    start_ms = now_ms if now_ms is not None else time.time_ns() // 10**6
    built_at = start_ms - grace_s * 1000
    todo = stale_hours(storage, built_at)
    for row in todo:
        build_hour(storage, str(row["team"]), int(row["hour"]), built_at)
    return len(todo)


def clean_hours(storage: Storage, team: str, start_ns: int, end_ns: int) -> list[int]:
    """The hours (epoch seconds) wholly inside [start, end) whose rollup is up to date."""
    first = -(-start_ns // (HOUR_S * 10**9)) * HOUR_S
    last = end_ns // (HOUR_S * 10**9) * HOUR_S  # exclusive
    if last <= first or not enabled(storage.config):
        return []
    db = storage.database
    rows = storage.query(
        "SELECT toUnixTimestamp(b.hour) AS hour FROM"
        f" (SELECT hour, max(built_at) AS built FROM {db}.requests_rollup_built WHERE team = {{team:String}}"
        "  AND hour >= toDateTime({first:UInt32}, 'UTC') AND hour < toDateTime({last:UInt32}, 'UTC')"
        "  GROUP BY hour) AS b"
        f" LEFT JOIN (SELECT hour, max(touched_at) AS touched FROM {db}.requests_touched"
        "  WHERE team = {team:String} AND hour >= toDateTime({first:UInt32}, 'UTC')"
        "  AND hour < toDateTime({last:UInt32}, 'UTC') GROUP BY hour) AS t ON b.hour = t.hour"
        " WHERE t.touched <= b.built ORDER BY hour",
        {"team": team, "first": first, "last": last},
    )
    return [int(r["hour"]) for r in rows]


def raw_intervals(start_ns: int, end_ns: int, hours: list[int]) -> list[tuple[int, int]]:
    """[start, end) minus the clean hours, as a few contiguous intervals of epoch ns."""
    out: list[tuple[int, int]] = []
    cursor = start_ns
    for h in sorted(hours):
        lo, hi = h * 10**9, (h + HOUR_S) * 10**9
        if lo > cursor:
            out.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < end_ns:
        out.append((cursor, end_ns))
    return out


def merged_states(storage: Storage, team: str, start_ns: int, end_ns: int, sets: tuple[str, ...],
                  raw_filter: str, bucket_s: int, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A subquery in the rollup's row shape for [start, end): the clean hours' rollup rows of ``sets``
    and the raw rows' states of everything else (``raw_filter``: extra conditions on the raw rows, the
    same as the rollup rows must meet; they may only name key columns). Callers GROUP BY and merge."""
    db = storage.database
    minute_ok = bucket_s % 60 == 0  # a minute lies in one bucket only when buckets are whole minutes
    hours = clean_hours(storage, team, start_ns, end_ns) if minute_ok else []
    params = dict(params, team=team)
    parts: list[str] = []
    if hours:
        params["rollup_hours"] = hours
        sets_sql = ", ".join(f"'{s}'" for s in sets)
        parts.append(
            "SELECT grp, domain, method, path, pid, exe, container_id, direction, minute, r, e, ce, q, d, s"
            f" FROM {db}.requests_rollup FINAL WHERE team = {{team:String}}"
            f" AND toUnixTimestamp(hour) IN {{rollup_hours:Array(UInt32)}} AND grp IN ({sets_sql}){raw_filter}"
        )
    intervals = raw_intervals(start_ns, end_ns, hours)
    if intervals:
        ors = []
        for i, (lo, hi) in enumerate(intervals):
            params[f"lo{i}"], params[f"hi{i}"] = lo, hi
            ors.append(f"(ts >= fromUnixTimestamp64Nano({{lo{i}:Int64}}, 'UTC')"
                       f" AND ts < fromUnixTimestamp64Nano({{hi{i}:Int64}}, 'UTC'))")
        where = "team = {team:String} AND (" + " OR ".join(ors) + ")" + raw_filter
        inner = raw_states(db, where, sets, "toStartOfInterval(ts, toIntervalSecond({bucket:UInt32}))")
        params["bucket"] = bucket_s
        parts.append(
            "SELECT grp, domain, method, path, pid, exe, container_id, direction, minute, r, e, ce, q, d, s"
            f" FROM ({inner})"
        )
    return " UNION ALL ".join(parts), params


STATS = (
    "sum(r) AS requests, sum(e) AS errors, sum(ce) AS client_errors,"
    " if(requests = 0, 0, errors / requests) AS error_rate,"
    f" quantilesDDMerge{DD_ARGS}(q) AS qq,"  # an empty sketch answers nan: 0, like quantilesExact
    " if(isFinite(qq[1]), toUInt64(round(qq[1])), 0) AS p50_ns,"
    " if(isFinite(qq[2]), toUInt64(round(qq[2])), 0) AS p95_ns,"
    " if(isFinite(qq[3]), toUInt64(round(qq[3])), 0) AS p99_ns,"
    " uniqExactMerge(d) AS domains, uniqExactMerge(s) AS sources"
)
