"""The real embedded engine: 1M events through the ingestion batch path, queries against a Python
reference, de-duplication, and the clickhouse-connect backend running the same SQL."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from qtap_async.events import RequestEvent
from qtap_async.events.times import format_ns
from qtap_async.pulse import queries as q
from qtap_async.pulse.config import PulseConfig, Retention
from qtap_async.pulse.ingest import BatchWriter, Sanitizer, decode_body
from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.storage import ClickHouseStorage, Storage
from tests.pulse.conftest import count

BATCH = 10_000


def synth_requests(n: int, seed: int, start_ns: int, span_ns: int) -> list[RequestEvent]:
    rnd = random.Random(seed)
    domains = [f"svc{d}.example.com" for d in range(20)]
    paths = [f"/api/v1/resource{p}/{{id}}" for p in range(10)]
    methods = ["GET", "POST"]
    out = []
    for i in range(n):
        r = rnd.random()
        status = 503 if r < 0.02 else 500 if r < 0.03 else 404 if r < 0.06 else 200
        grpc = rnd.random() < 0.05
        d = rnd.randrange(20)
        out.append(
            RequestEvent(
                id=f"ev-{seed}-{i}",
                ts=start_ns + rnd.randrange(span_ns),
                domain=domains[d],
                path=paths[rnd.randrange(10) if d % 2 else rnd.randrange(3)],
                method=methods[rnd.randrange(2)],
                status=200 if grpc else status,
                grpc_status=(14 if rnd.random() < 0.2 else 0) if grpc else -1,
                duration_ns=int(rnd.lognormvariate(15, 1.2)),
                pid=1000 + d % 4,
                exe=f"/usr/bin/app{d % 4}",
                container_id=f"c{d % 3}",
            )
        )
    return out


def quantile(sorted_values: list[int], level: float) -> int:
    # ClickHouse quantileExact: the element at floor(level * n) of the sorted values.
    return sorted_values[min(len(sorted_values) - 1, int(level * len(sorted_values)))]


def reference(events: list[RequestEvent], key: Callable[[RequestEvent], Any]) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[RequestEvent]] = defaultdict(list)
    for e in events:
        groups[key(e)].append(e)
    out = {}
    for k, evs in groups.items():
        durations = sorted(e.duration_ns for e in evs)
        errors = sum(1 for e in evs if e.status >= 500 or e.grpc_status > 0)
        out[k] = {
            "requests": len(evs),
            "errors": errors,
            "client_errors": sum(1 for e in evs if 400 <= e.status < 500),
            "error_rate": errors / len(evs),
            "p50_ns": quantile(durations, 0.5),
            "p95_ns": quantile(durations, 0.95),
            "p99_ns": quantile(durations, 0.99),
        }
    return out


def stats(row: Any) -> dict[str, Any]:
    return {
        f: getattr(row, f) for f in ("requests", "errors", "client_errors", "error_rate", "p50_ns", "p95_ns", "p99_ns")
    }


def assert_same(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> None:
    """Counts and percentiles exactly equal, the error rate to float precision."""
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert {f: v for f, v in g.items() if f != "error_rate"} == {f: v for f, v in w.items() if f != "error_rate"}, k
        assert g["error_rate"] == pytest.approx(w["error_rate"], rel=1e-12), k


def assert_sketched(got: dict[Any, dict[str, Any]], events: list[RequestEvent],
                    key: Callable[[RequestEvent], Any], alpha: float = 0.01) -> None:
    """What a DDSketch at relative accuracy ``alpha`` promises, against the events themselves: counts
    exact, and each percentile within ``alpha`` of a value at the level's rank (q * (n - 1), which the
    sketch walks to, or quantileExact's floor(q * n); in a small group the two ranks' values differ)."""
    want = reference(events, key)
    assert got.keys() == want.keys()
    groups: dict[Any, list[int]] = defaultdict(list)
    for e in events:
        groups[key(e)].append(e.duration_ns)
    for k, w in want.items():
        g = got[k]
        counts = ("requests", "errors", "client_errors")
        assert {f: g[f] for f in counts} == {f: w[f] for f in counts}, k
        assert g["error_rate"] == pytest.approx(w["error_rate"], rel=1e-12), k
        values = sorted(groups[k])
        n = len(values)
        for f, level in (("p50_ns", 0.5), ("p95_ns", 0.95), ("p99_ns", 0.99)):
            ranks = (int(level * (n - 1)), min(n - 1, int(level * (n - 1)) + 1), min(n - 1, int(level * n)))
            lo, hi = min(values[r] for r in ranks), max(values[r] for r in ranks)
            assert lo * (1 - alpha) - 1 <= g[f] <= hi * (1 + alpha) + 1, (k, f, g[f], lo, hi)


async def ingest_through_batch_path(storage: Storage, config: PulseConfig, team: str, events: list[Any]) -> int:
    """What POST /v1/events does after auth: decode the body, sanitize, group-commit write."""
    loop = asyncio.get_running_loop()

    async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(None, fn, *args)

    sanitizer = Sanitizer(config.limits, config.retention)
    writer = BatchWriter(storage, run_blocking, Metrics())
    writer.start()
    accepted = 0

    async def one(chunk: list[Any]) -> None:
        nonlocal accepted
        body = msgspec.json.encode({"events": chunk})
        d = decode_body(body, "application/json", "", config.limits)
        prepared = await run_blocking(sanitizer.prepare, d.fmt, d.items, team, "bench", None, d.sent_at, d.data)
        assert prepared.result.rejected == 0, prepared.result.errors[:3]
        accepted += prepared.result.accepted
        await writer.write(prepared.rows)

    # Two batches in flight at a time, like two agents posting concurrently.
    chunks = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    for i in range(0, len(chunks), 2):
        await asyncio.gather(*(one(c) for c in chunks[i : i + 2]))
    await writer.close()
    return accepted


async def test_one_million_events_then_p99_and_error_rates_match_python(
    storage: Storage, config: PulseConfig, team: str
) -> None:
    n = 1_000_000
    now = time.time_ns()
    start = now - 2 * 3600 * 10**9
    t0 = time.perf_counter()
    events = synth_requests(n, seed=7, start_ns=start, span_ns=2 * 3600 * 10**9 - 10**9)
    t1 = time.perf_counter()
    accepted = await ingest_through_batch_path(storage, config, team, events)
    # The first batch again (a client retry, a Kafka replay): stored rows collapse by event id.
    accepted += await ingest_through_batch_path(storage, config, team, events[:BATCH])
    t2 = time.perf_counter()
    assert accepted == n + BATCH
    assert count(storage, "requests", team) == n

    window = q.TopParams(start=start, end=now, limit=1000)
    got = {(r.domain, r.method, r.path): stats(r) for r in q.top_endpoints(storage, team, window)}
    want = reference(events, lambda e: (e.domain, e.method, e.path))
    assert_same(got, want)

    domains = q.top_domains(storage, team, q.TopParams(start=start, end=now, limit=5))
    want_d = reference(events, lambda e: e.domain)
    top5 = sorted(want_d, key=lambda d: (-want_d[d]["requests"], d))[:5]
    assert [r.domain for r in domains] == top5
    assert_same({r.domain: stats(r) for r in domains}, {d: want_d[d] for d in top5})

    bucket = 600
    series = q.timeseries(
        storage, team, q.TimeseriesParams(start=start, end=now, bucket=bucket, domain="svc3.example.com")
    )
    want_b = reference(
        [e for e in events if e.domain == "svc3.example.com"],
        lambda e: int(e.ts) // 10**9 // bucket * bucket * 10**9,
    )
    assert_same({r.bucket_start_ns: stats(r) for r in series}, want_b)
    # The bucket's start as a person reads it, the same instant as the number.
    assert all(r.bucket_start == format_ns(r.bucket_start_ns) and r.bucket_start.endswith("0" * 9 + "Z")
               for r in series)

    procs = q.processes(storage, team, q.ProcessParams(start=start, end=now, group_by="container"))
    want_c = reference(events, lambda e: e.container_id)
    assert_same({r.container_id: stats(r) for r in procs}, want_c)
    t3 = time.perf_counter()
    print(
        f"\n1M events: generate {t1 - t0:.1f}s, ingest {t2 - t1:.1f}s ({n / (t2 - t1):,.0f} ev/s), "
        f"queries {t3 - t2:.1f}s",
        file=sys.stderr,
    )


def test_duplicates_collapse_and_teams_do_not_mix(storage: Storage, team: str) -> None:
    now = time.time_ns()
    row = b'{"team":"%s","id":"dup-1","ts":%d,"domain":"d","status":500,"duration_ns":7}'
    storage.insert("requests", row % (team.encode(), now))
    storage.insert("requests", row % (team.encode(), now))
    storage.insert("requests", row % (b"other-" + team.encode(), now))
    assert count(storage, "requests", team) == 1
    (d,) = q.top_domains(storage, team, q.TopParams(start=now - 10**9, end=now + 10**9))
    assert (d.requests, d.errors, d.p99_ns) == (1, 1, 7)
    # Searches collapse copies too.
    for table, extra in (
        ("connections", b',"event":"open"'),
        ("issues", b',"rule":"r"'),
        ("object_refs", b',"transaction_id":"tx"'),
    ):
        row = b'{"team":"%s","id":"dup-2","ts":%d%s}' % (team.encode(), now, extra)
        storage.insert(table, row)
        storage.insert(table, row)
    window = {"start": now - 10**9, "end": now + 10**9}
    assert [c.id for c in q.connections(storage, team, q.ConnectionSearch(**window))] == ["dup-2"]
    assert [c.id for c in q.issues(storage, team, q.IssueSearch(**window))] == ["dup-2"]
    assert [o.id for o in q.objects(storage, team, q.ObjectParams(transaction_id="tx"))] == ["dup-2"]


def test_clickhouse_connect_backend_runs_the_same_schema_and_queries(
    storage: Storage, config: PulseConfig, team: str
) -> None:
    """clickhouse-connect against the same engine (its chdb:// transport stands in for a server)."""
    cc = ClickHouseStorage(config, dsn=f"chdb://{config.chdb_path.resolve()}")
    try:
        cc.setup()  # idempotent on an existing schema
        now = time.time_ns()
        events = synth_requests(3000, seed=11, start_ns=now - 3600 * 10**9, span_ns=3600 * 10**9 - 10**9)
        asyncio.run(ingest_through_batch_path(cc, config, team, events))
        window = dict(start=now - 3600 * 10**9, end=now)
        for fn, params in [
            (q.top_endpoints, q.TopParams(**window)),
            (q.top_domains, q.TopParams(**window, limit=3)),
            (q.timeseries, q.TimeseriesParams(**window, bucket=300, pid=1001)),
            (q.processes, q.ProcessParams(**window)),
        ]:
            assert fn(cc, team, params) == fn(storage, team, params)  # type: ignore[operator]
        got = {
            (r.domain, r.method, r.path): stats(r) for r in q.top_endpoints(cc, team, q.TopParams(**window, limit=1000))
        }
        assert_same(got, reference(events, lambda e: (e.domain, e.method, e.path)))
    finally:
        cc.close()


def test_retention_change_is_applied_to_the_tables(storage: Storage, config: PulseConfig) -> None:
    def ttl(table: str) -> str:
        rows = storage.query(
            "SELECT engine_full FROM system.tables WHERE database = 'pulse' AND name = {t:String}", {"t": table}
        )
        return str(rows[0]["engine_full"])

    assert "toIntervalDay(90)" in ttl("issues")
    storage.config = msgspec.structs.replace(config, retention=Retention(issues=45))
    try:
        storage.setup()
        assert "toIntervalDay(45)" in ttl("issues")
        assert "toIntervalDay(30)" in ttl("requests")
    finally:
        storage.config = config
        storage.setup()
    assert "toIntervalDay(90)" in ttl("issues")


TRICKY = ["a\tb", "a\nb", "back\\slash", "lit\\nnot-newline", "nul\x00byte", "quote'\"", "{team:String}", "é✓\r"]


def test_string_parameters_round_trip_exactly_on_both_backends(
    storage: Storage, config: PulseConfig, team: str
) -> None:
    now = time.time_ns()
    rows = b"\n".join(
        msgspec.json.encode({"team": team, "id": f"s{i}", "ts": now, "domain": v, "status": 200})
        for i, v in enumerate(TRICKY)
    )
    storage.insert("requests", rows)
    cc = ClickHouseStorage(config, dsn=f"chdb://{config.chdb_path.resolve()}")
    try:
        for backend in (storage, cc):
            for v in TRICKY:
                got = q.top_domains(backend, team, q.TopParams(start=now - 10**9, end=now + 10**9, domain=v))
                assert [(d.domain, d.requests) for d in got] == [(v, 1)], (backend, v)
    finally:
        cc.close()
