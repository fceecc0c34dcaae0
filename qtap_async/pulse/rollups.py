"""Hourly rollups of the requests table, so the dashboard and the dependency map read thousands of rows
for a day instead of a million.

Three tables (single server or chDB; a cluster keeps none and its queries read the raw table):
- ``requests_rollup``: per (team, hour) one row per key of each grouping set the dashboard and the map
  show (the total, domain, endpoint, process, container, minute, edge), with the counts and a latency
  histogram (log buckets 2 % wide: every percentile within 1 % of the exact one), and for the total the
  distinct domains and sources. Percentiles over any set of hours come from the summed histograms, never
  from an average of percentiles. A ReplacingMergeTree on ``built_at``: rebuilding an hour replaces its
  rows (an hour only gains keys, so no old row outlives a rebuild).
- ``requests_touched``: the newest insert time of each (team, hour) that received rows, written by a
  materialized view on ``requests_in``, so it survives restarts and sees every ingestion path.
- ``requests_rollup_built``: when each (team, hour) was last built, and from what.

An hour is *clean* when it was built after its last insert; queries read clean hours from the rollup and
everything else in the range (the partial hours at both ends, hours with new rows since their build)
from the raw table with FINAL, then merge both sides' histograms in one statement. A copy of an event (a
replayed batch) touches its hour too: the rebuild reads the raw table with FINAL, where copies collapse,
so rollups count an event once, like the raw queries.

Builds happen in Pulse's background (``refresh``), for hours that have been quiet for ``GRACE_S``:
``built_at`` is the build's start minus the grace, so an insert whose view ran before that instant has
committed before the build reads (inserts take far less than the grace), and a later one marks the hour
stale again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qtap_async.pulse.config import PulseConfig

if TYPE_CHECKING:
    from qtap_async.pulse.storage import Storage

GRACE_S = 10
HOUR_S = 3600
# Latency histograms: a duration d > 0 counts in bucket 1 + round(log_1.02(d)), whose value 1.02^(b - 1) is
# within 1 % of every duration in it (0 has bucket 0). Stored as sorted (bucket, count) arrays: they read as
# plain columns and merge with sumMap, where ClickHouse's own sketch states (quantilesDD, tdigest) cost a
# few microseconds each to deserialize, which dominated a day's dashboard (measured: ~150 ms for 28k states).
GAMMA = 1.02
BUCKET = f"if(duration_ns = 0, toUInt16(0), toUInt16(1 + round(log(duration_ns) / log({GAMMA}))))"
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


# The earliest and the latest ts (epoch ns) among the hour's rows when it was built. A range that starts
# or ends inside an hour still reads that hour from its rollup when every row of it lies in the range
# (an hour that has been quiet since its rows, e.g. the newest hour before the range's end): the same rows
# either way. The defaults (a build from before the bounds, or an hour with no rows) never fit a range.
_BOUNDS = "lo Int64 DEFAULT 0, hi Int64 DEFAULT 9223372036854775807"


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
        " r UInt64, e UInt64, ce UInt64, hk Array(UInt16), hv Array(UInt64),"
        " dl Array(String), sl Array(String),"  # the distinct domains and sources: total rows only
        " built_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree(built_at) PARTITION BY toDate(hour)"
        # One key's hours side by side, and small granules: a query reads the histograms of the keys it
        # merges (a set's top keys, the total, the buckets), not those of every key in the range.
        " ORDER BY (team, grp, domain, method, path, pid, exe, container_id, direction, minute, hour)"
        f" {ttl} SETTINGS index_granularity = 1024",
        f"CREATE TABLE IF NOT EXISTS {db}.requests_touched (team LowCardinality(String), hour DateTime('UTC'),"
        " touched_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))) ENGINE = AggregatingMergeTree"
        f" PARTITION BY toDate(hour) ORDER BY (team, hour) {ttl}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_touched_mv TO {db}.requests_touched AS"
        " SELECT team, toStartOfHour(toDateTime(intDiv(ts, 1000000000), 'UTC')) AS hour,"
        f" max(now64(3, 'UTC')) AS touched_at FROM {db}.requests_in GROUP BY team, hour",
        f"CREATE TABLE IF NOT EXISTS {db}.requests_rollup_built (team LowCardinality(String),"
        f" hour DateTime('UTC'), built_at DateTime64(3, 'UTC'), {_BOUNDS}) ENGINE = ReplacingMergeTree(built_at)"
        f" PARTITION BY toDate(hour) ORDER BY (team, hour) {ttl}",
        # A table made before the bounds existed: its builds read as "bounds unknown" (the defaults).
        f"ALTER TABLE {db}.requests_rollup_built " + ", ".join(f"ADD COLUMN IF NOT EXISTS {c}" for c in
                                                                _BOUNDS.split(", ")),
    ]


def _grouping_id(keys: tuple[str, ...], used: tuple[str, ...]) -> int:
    # grouping(used...): one bit per argument, the first the highest, set when the argument is NOT a key.
    return sum(1 << (len(used) - 1 - i) for i, k in enumerate(used) if k not in keys)


_DEFAULTS = {"domain": "''", "method": "''", "path": "''", "pid": "toUInt32(0)", "exe": "''",
             "container_id": "''", "direction": "''"}


ERRORS = "status >= 500 OR grpc_status > 0"
CLIENT_ERRORS = "status >= 400 AND status < 500"


def raw_states(db: str, where: str, sets: tuple[str, ...], minute: str, compact: bool = False,
               counts_only: bool | None = False, source: str = "") -> str:
    """A SELECT of the raw rows matching ``where`` in the rollup's row shape (without team, hour and
    built_at): one row per key of each of ``sets``, with aggregate states. ``minute`` is the expression
    that keys the bucket set (toStartOfMinute for a rollup, the query's own bucket otherwise). ``compact``:
    histograms as sorted (bucket, count) pairs, for storing; otherwise one bucket per row with weight 1,
    which quantilesExactWeighted merges the same and costs less to make. ``counts_only``: empty
    histograms and distinct lists (for ranking keys); None: histograms but no distinct lists. ``source``:
    a scratch table holding those rows already (``raw_scratch``), read instead of the raw table."""
    used = tuple(k for k in KEYS if any(k in SETS[s] for s in sets))
    name = "multiIf(" + ", ".join(f"g = {_grouping_id(SETS[s], used)}, '{s}'" for s in sets) + ", '')"
    grouping = ", ".join("(" + ", ".join(SETS[s]) + ")" for s in sets)
    minute_sql = f"toDateTime({minute}, 'UTC')" if "minute" in used else "toDateTime(0, 'UTC')"
    lists = ("groupUniqArray(domain) AS dl, groupUniqArray(concat(exe, '\\0', container_id)) AS sl,"
             if counts_only is False else "CAST([], 'Array(String)') AS dl, CAST([], 'Array(String)') AS sl,")
    if counts_only:
        hist = "CAST([], 'Array(UInt16)') AS hk, CAST([], 'Array(UInt64)') AS hv,"
    elif compact:
        hist = f"sumMap([{BUCKET}], [toUInt64(1)]) AS hist, hist.1 AS hk, CAST(hist.2, 'Array(UInt64)') AS hv,"
    else:
        hist = f"groupArray({BUCKET}) AS hk, arrayWithConstant(length(hk), toUInt64(1)) AS hv,"
    # Columns no set keys are constants (a SELECT may not name a column outside every grouping set).
    cols = ", ".join(f"{k}" if k in used else f"{_DEFAULTS[k]} AS {k}" for k in KEYS if k != "minute")
    return (
        f"SELECT {name} AS grp, {cols}, {minute_sql} AS minute, count() AS r, countIf({ERRORS}) AS e,"
        f" countIf({CLIENT_ERRORS}) AS ce, {hist}"
        f" {lists}"
        f" grouping({', '.join(used)}) AS g"
        f" FROM {source or f'{db}.requests FINAL WHERE {where}'} GROUP BY GROUPING SETS ({grouping})"
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
    inner = raw_states(db, where, tuple(SETS), "toStartOfMinute(ts)", compact=True)
    storage.query(
        f"INSERT INTO {db}.requests_rollup SELECT {{team:String}}, toDateTime({{hour:UInt32}}, 'UTC'), grp,"
        " minute, domain, method, path, pid, exe, container_id, direction, r, e, ce, hk, hv,"
        " if(grp = 'total', dl, []), if(grp = 'total', sl, []),"
        f" fromUnixTimestamp64Milli({{built:Int64}}, 'UTC') FROM ({inner})",
        params,
    )
    # The bounds are read after the rollup rows: a row they see that the rollup missed came in after
    # built_at, so it marks the hour stale anyway.
    storage.query(
        f"INSERT INTO {db}.requests_rollup_built (team, hour, built_at, lo, hi) SELECT {{team:String}},"
        " toDateTime({hour:UInt32}, 'UTC'), fromUnixTimestamp64Milli({built:Int64}, 'UTC'),"
        " if(count() = 0, 0, toUnixTimestamp64Nano(min(ts))),"
        f" if(count() = 0, 9223372036854775807, toUnixTimestamp64Nano(max(ts))) FROM {db}.requests WHERE {where}",
        params,
    )


def refresh(storage: Storage, now_ms: int | None = None, grace_s: float | None = None) -> int:
    """Build every stale hour that has been quiet for ``grace_s`` (default GRACE_S; at most
    MAX_HOURS_PER_REFRESH); returns how many were built."""
    if not enabled(storage.config):
        return 0
    grace_s = GRACE_S if grace_s is None else grace_s
    start_ms = now_ms if now_ms is not None else time.time_ns() // 10**6
    built_at = start_ms - int(grace_s * 1000)
    todo = stale_hours(storage, built_at)
    for row in todo:
        build_hour(storage, str(row["team"]), int(row["hour"]), built_at)
    return len(todo)


def clean_hours(storage: Storage, team: str, start_ns: int, end_ns: int) -> list[int]:
    """The hours (epoch seconds) whose rollup is up to date and holds only rows inside [start, end)."""
    return clean(storage, team, start_ns, end_ns)[0]


def clean(storage: Storage, team: str, start_ns: int, end_ns: int) -> tuple[list[int], list[int]]:
    """clean_hours, and the version of each (a hash of the hour and its newest build): the rows to read.

    An hour qualifies when it was built after its last insert and either lies wholly inside [start, end)
    or had all its rows inside it when built (``lo``/``hi``): the partial hours at a range's ends then need
    no raw rows when they have been quiet, as the newest hour before ``end`` usually has been."""
    # Hours of a DateTime (1970 to 2106): a range reaching past them has no rollup there.
    first = max(0, start_ns // (HOUR_S * 10**9) * HOUR_S)  # the hour holding start
    last = min(2**32 - HOUR_S, -(-end_ns // (HOUR_S * 10**9)) * HOUR_S)  # exclusive: past the hour holding end
    if last <= first or not enabled(storage.config):
        return [], []
    db = storage.database
    # One pass over both small tables (a UNION, not a JOIN: the JOIN cost ~4x as much per page).
    rows = storage.query(
        "SELECT toUnixTimestamp(hour) AS hour, cityHash64(hour, max(built_at)) AS v FROM ("
        f" SELECT hour, built_at, lo, hi, toDateTime64(0, 3, 'UTC') AS touched_at FROM {db}.requests_rollup_built"
        "  WHERE team = {team:String} AND hour >= toDateTime({first:UInt32}, 'UTC')"
        "  AND hour < toDateTime({last:UInt32}, 'UTC')"
        " UNION ALL SELECT hour, toDateTime64(0, 3, 'UTC'), 0, 0, touched_at"
        f" FROM {db}.requests_touched WHERE team = {{team:String}}"
        "  AND hour >= toDateTime({first:UInt32}, 'UTC') AND hour < toDateTime({last:UInt32}, 'UTC'))"
        " GROUP BY hour HAVING max(built_at) > toDateTime64(0, 3, 'UTC') AND max(touched_at) <= max(built_at)"
        " AND ((toUInt64(toUnixTimestamp(hour)) * 1000000000 >= {start:Int64}"
        "   AND (toUInt64(toUnixTimestamp(hour)) + 3600) * 1000000000 <= {end:Int64})"
        "  OR (argMax(lo, built_at) >= {start:Int64} AND argMax(hi, built_at) < {end:Int64}))"
        " ORDER BY hour",
        {"team": team, "first": first, "last": last, "start": start_ns, "end": end_ns},
    )
    return [int(r["hour"]) for r in rows], [int(r["v"]) for r in rows]


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


# The raw columns the states are made of.
_RAW_COLUMNS = "domain, method, path, pid, exe, container_id, direction, ts, status, grpc_status, duration_ns"


def raw_where(team: str, start_ns: int, end_ns: int, hours: list[int], raw_filter: str,
              params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The condition on the raw rows of [start, end) outside the rollup's ``hours`` ("" when none are)."""
    intervals = raw_intervals(start_ns, end_ns, hours)
    if not intervals:
        return "", params
    params = dict(params, team=team)
    ors = []
    for i, (lo, hi) in enumerate(intervals):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        ors.append(f"(ts >= fromUnixTimestamp64Nano({{lo{i}:Int64}}, 'UTC')"
                   f" AND ts < fromUnixTimestamp64Nano({{hi{i}:Int64}}, 'UTC'))")
    return "team = {team:String} AND (" + " OR ".join(ors) + ")" + raw_filter, params


@contextlib.contextmanager
def raw_scratch(storage: Storage, where: str, params: dict[str, Any]) -> Iterator[str]:
    """The raw rows matching ``where`` (once, with FINAL) in a temporary in-memory table for the life of the
    block; its name, or "" when the backend keeps no session to hold one (each statement reads the raw table
    then). A page's statements (ranking, merging, the distinct lists) read the raw rows of the partial hours
    three times; reading them from the big table is what costs (the rows of an hour are spread over the day's
    granules, the table being sorted by domain and path first): once, then from memory, is ~35 % cheaper."""
    if not where or not storage.scratch_tables:
        yield ""
        return
    name = f"pulse_raw_{uuid.uuid4().hex}"
    storage.query(f"CREATE TEMPORARY TABLE {name} ENGINE = Memory AS SELECT {_RAW_COLUMNS}"
                  f" FROM {storage.database}.requests FINAL WHERE {where}", params)
    try:
        yield name
    finally:
        storage.command(f"DROP TEMPORARY TABLE IF EXISTS {name}")


def merged_states(storage: Storage, team: str, hours: tuple[list[int], list[int]], start_ns: int, end_ns: int,
                  sets: tuple[str, ...], raw_filter: str, bucket_s: int, params: dict[str, Any],
                  keep: str = "", counts_only: bool = False, scratch: str = "") -> tuple[str, dict[str, Any]]:
    """A subquery in the rollup's row shape for [start, end): the rollup rows of ``sets`` in the clean
    ``hours`` (from ``clean``) and the raw rows' states of everything else (``raw_filter``: extra conditions on the raw
    rows, the same as the rollup rows must meet; they may only name key columns). ``keep``: a condition
    on the rows of both sides (the keys worth merging histograms for). ``scratch``: the raw rows outside
    ``hours`` already in a table (``raw_scratch``). Callers GROUP BY and merge; columns they do not read
    are not computed (ClickHouse drops them from the subquery)."""
    db = storage.database
    clean_hours, versions = hours
    if bucket_s % 60:  # a minute lies in one bucket only when buckets are whole minutes
        clean_hours, versions = [], []
    params = dict(params, team=team)
    parts: list[str] = []
    if clean_hours:
        params["rollup_versions"] = versions
        sets_sql = ", ".join(f"'{s}'" for s in sets)
        parts.append(
            "SELECT grp, domain, method, path, pid, exe, container_id, direction, minute, r, e, ce, hk, hv, dl, sl"
            # Only the rows of each clean hour's newest build, instead of FINAL: older builds' rows are
            # left until merges drop them, and the conditions go to PREWHERE, so the histograms of rows
            # not wanted are not read.
            f" FROM {db}.requests_rollup WHERE team = {{team:String}}"
            f" AND cityHash64(hour, built_at) IN {{rollup_versions:Array(UInt64)}} AND grp IN ({sets_sql}){raw_filter}"
            + (f" AND ({keep})" if keep else "")
        )
    where, params = raw_where(team, start_ns, end_ns, clean_hours, raw_filter, params)
    if where:
        inner = raw_states(db, where, sets, "toStartOfInterval(ts, toIntervalSecond({bucket:UInt32}))",
                           counts_only=True if counts_only else None, source=scratch)
        params["bucket"] = bucket_s
        parts.append(
            "SELECT grp, domain, method, path, pid, exe, container_id, direction, minute, r, e, ce, hk, hv, dl, sl"
            f" FROM ({inner})" + (f" WHERE {keep}" if keep else "")
        )
        if "total" in sets and not counts_only:
            # The distinct domains and sources of the raw rows, for the total only: a group's own lists
            # for every key of every set would cost more than the rest of the statement.
            parts.append(
                "SELECT 'total' AS grp, '' AS domain, '' AS method, '' AS path, toUInt32(0) AS pid, '' AS exe,"
                " '' AS container_id, '' AS direction, toDateTime(0, 'UTC') AS minute, toUInt64(0) AS r,"
                " toUInt64(0) AS e, toUInt64(0) AS ce, CAST([], 'Array(UInt16)') AS hk,"
                " CAST([], 'Array(UInt64)') AS hv, groupUniqArray(domain) AS dl,"
                " groupUniqArray(concat(exe, '\\0', container_id)) AS sl"
                f" FROM {scratch or f'{db}.requests WHERE {where}'}"
            )
    return " UNION ALL ".join(parts), params


def _percentile(i: int) -> str:
    # The value of the bucket the weighted quantile of bucket numbers lands in.
    return f"if(qb[{i}] = 0, toUInt64(0), toUInt64(round(pow({GAMMA}, qb[{i}] - 1))))"


STATS = (
    "sum(r) AS requests, sum(e) AS errors, sum(ce) AS client_errors,"
    " if(requests = 0, 0, errors / requests) AS error_rate,"
    # The histograms' (bucket, count) pairs of every row merged, without building them (sumMap is ~2x slower).
    " quantilesExactWeightedArray(0.5, 0.95, 0.99)(hk, hv) AS qb,"
    f" {_percentile(1)} AS p50_ns, {_percentile(2)} AS p95_ns, {_percentile(3)} AS p99_ns,"
    # Distinct domains and sources: only the total's rows carry them.
    " length(arrayDistinct(arrayFlatten(groupArrayIf(dl, grp = 'total')))) AS domains,"
    " length(arrayDistinct(arrayFlatten(groupArrayIf(sl, grp = 'total')))) AS sources"
)
