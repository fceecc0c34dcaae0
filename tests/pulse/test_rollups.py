"""Hourly rollups on the real embedded engine: the dashboard and the edges answer the same from the
rollups as from the raw rows of the same ingested events, copies of an event count once, and rows that
arrive for an hour after its build are counted before the hour is built again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from qtap_async.events import RequestEvent
from qtap_async.pulse import queries as q
from qtap_async.pulse import rollups
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.storage import Storage
from tests.pulse.test_storage import assert_sketched, ingest_through_batch_path, stats, synth_requests

HOUR = 3600 * 10**9


def _build_all(storage: Storage) -> int:
    built = 0
    while n := rollups.refresh(storage, now_ms=time.time_ns() // 10**6 + 5, grace_s=0):
        built += n
    return built


def _dash(storage: Storage, team: str, w: dict[str, int]) -> list[q.DashboardRow]:
    return q.dashboard(storage, team, q.DashboardParams(**w, bucket=600, limit=5))


def _by_set(rows: list[q.DashboardRow]) -> dict[str, list[q.DashboardRow]]:
    out: dict[str, list[q.DashboardRow]] = {}
    for r in rows:
        out.setdefault(r.set, []).append(r)
    return out


@pytest.fixture(scope="module")
def data(storage: Storage, config: PulseConfig) -> tuple[str, dict[str, int], list[RequestEvent], list[int]]:
    """4,000 requests over five hours that start and end mid-hour, the first 300 sent twice."""
    team = f"rollups-{time.time_ns() % 10**9}"
    top = time.time_ns() // HOUR * HOUR - 2 * HOUR  # a whole hour two hours back
    first = top - 5 * HOUR + 17 * 60 * 10**9
    events = synth_requests(4_000, seed=23, start_ns=first, span_ns=5 * HOUR - 40 * 60 * 10**9)
    events = [msgspec.structs.replace(e, direction="ingress" if i % 4 == 0 else "egress")
              for i, e in enumerate(events)]
    asyncio.run(ingest_through_batch_path(storage, config, team, events))
    asyncio.run(ingest_through_batch_path(storage, config, team, events[:300]))
    window = {"start": first - 10**9, "end": top + 10**9}
    whole = [(top - k * HOUR) // 10**9 for k in range(4, 0, -1)]  # the hours wholly inside the window
    return team, window, events, whole


def test_rollups_answer_what_the_raw_rows_answer(
    storage: Storage, data: tuple[str, dict[str, int], list[RequestEvent], list[int]]
) -> None:
    team, w, events, whole = data
    assert rollups.clean_hours(storage, team, w["start"], w["end"]) == []
    raw = _dash(storage, team, w)
    raw_edges = q.edges(storage, team, q.EdgeParams(**w))
    raw_ingress = q.edges(storage, team, q.EdgeParams(**w, direction="ingress"))
    # Ranges that cut the first and the last hour with rows: those hours hold rows on both sides of an end.
    first_hour = whole[0] - 3600
    cuts = [{"start": first_hour * 10**9 + 25 * 60 * 10**9, "end": w["end"]},
            {"start": w["start"], "end": whole[-1] * 10**9 + 7 * 60 * 10**9},
            {"start": first_hour * 10**9 + 25 * 60 * 10**9, "end": whole[-1] * 10**9 + 7 * 60 * 10**9}]
    raw_cuts = [(_dash(storage, team, c), q.edges(storage, team, q.EdgeParams(**c))) for c in cuts]
    assert _build_all(storage) >= 5  # every hour that got rows, the partial ones too
    # The first hour is partial but all its rows lie in the window (they start after the window does):
    # it reads from its rollup like the whole hours.
    assert rollups.clean_hours(storage, team, w["start"], w["end"]) == [first_hour, *whole]
    assert rollups.clean_hours(storage, team, cuts[0]["start"], cuts[0]["end"]) == whole
    assert rollups.clean_hours(storage, team, cuts[1]["start"], cuts[1]["end"]) == [first_hour, *whole[:-1]]
    assert rollups.clean_hours(storage, team, cuts[2]["start"], cuts[2]["end"]) == whole[:-1]
    rolled = _dash(storage, team, w)
    # Without a clean hour the answer was the exact one over the raw rows; from the rollups it has the same
    # rows in the same order with the same counts, and percentiles within 1 % of a duration at their rank.
    def counts(rows: list[Any]) -> list[tuple[Any, ...]]:
        return [(getattr(r, "set", ""), getattr(r, "domain", ""), getattr(r, "method", ""), getattr(r, "path", ""),
                 getattr(r, "pid", 0), r.exe, r.container_id, getattr(r, "bucket_start_ns", 0), r.requests,
                 r.errors, r.client_errors, getattr(r, "domains", 0), getattr(r, "sources", 0)) for r in rows]

    assert counts(rolled) == counts(raw)
    assert counts(q.edges(storage, team, q.EdgeParams(**w))) == counts(raw_edges)
    assert counts(q.edges(storage, team, q.EdgeParams(**w, direction="ingress"))) == counts(raw_ingress)
    assert [r.p99_ns for r in rolled] != [r.p99_ns for r in raw]  # the answers did come from the histograms
    # A cut hour is read raw around the rollups of the others: the counts are still those of the raw rows,
    # with those rows read once into a scratch table (chDB) or by each statement (a server without sessions).
    for c, (raw_dash, raw_edge) in zip(cuts, raw_cuts, strict=True):
        assert counts(_dash(storage, team, c)) == counts(raw_dash), c
        assert counts(q.edges(storage, team, q.EdgeParams(**c))) == counts(raw_edge), c
        assert storage.scratch_tables
        with_scratch = (_dash(storage, team, c), q.edges(storage, team, q.EdgeParams(**c)))
        storage.scratch_tables = False
        try:
            assert (_dash(storage, team, c), q.edges(storage, team, q.EdgeParams(**c))) == with_scratch
        finally:
            storage.scratch_tables = True
        inside = [e for e in events if c["start"] <= int(e.ts) < c["end"]]
        assert _by_set(_dash(storage, team, c))["total"][0].requests == len(inside)
        assert_sketched({0: stats(_by_set(_dash(storage, team, c))["total"][0])}, inside, lambda e: 0)
    # And both are what the events say (copies counted once).
    by = _by_set(rolled)
    assert by["total"][0].requests == len(events)
    assert_sketched({0: stats(by["total"][0])}, events, lambda e: 0)
    assert by["total"][0].domains == len({e.domain for e in events})
    assert by["total"][0].sources == len({(e.exe, e.container_id) for e in events})
    assert_sketched({r.bucket_start_ns: stats(r) for r in by["bucket"]}, events,
                    lambda e: int(e.ts) // (600 * 10**9) * 600 * 10**9)
    top5 = {r.domain for r in by["domain"]}
    assert_sketched({r.domain: stats(r) for r in by["domain"]}, [e for e in events if e.domain in top5],
                    lambda e: e.domain)
    rolled_ingress = q.edges(storage, team, q.EdgeParams(**w, direction="ingress"))
    assert_sketched({(r.exe, r.container_id, r.domain): stats(r) for r in rolled_ingress},
                    [e for e in events if e.direction == "ingress"], lambda e: (e.exe, e.container_id, e.domain))
    # A range inside one hour has no whole hour: all raw, still right.
    inner = {"start": whole[1] * 10**9 + 60 * 10**9, "end": whole[1] * 10**9 + 30 * 60 * 10**9}
    inside = [e for e in events if inner["start"] <= int(e.ts) < inner["end"]]
    [total] = [r for r in _dash(storage, team, inner) if r.set == "total"]
    assert total.requests == len(inside)


def test_late_rows_and_copies_after_a_build(
    storage: Storage, config: PulseConfig, data: tuple[str, dict[str, int], list[RequestEvent], list[int]]
) -> None:
    team, w, events, whole = data
    _build_all(storage)
    hour = whole[2]
    late = synth_requests(50, seed=99, start_ns=hour * 10**9, span_ns=HOUR - 10**9)
    time.sleep(0.01)
    asyncio.run(ingest_through_batch_path(storage, config, team, late))
    # The hour is stale at once: read raw until it is built again, and counted either way.
    assert hour not in rollups.clean_hours(storage, team, w["start"], w["end"])

    def total() -> Any:
        return _by_set(_dash(storage, team, w))["total"][0]

    assert total().requests == len(events) + 50
    _build_all(storage)
    assert rollups.clean_hours(storage, team, w["start"], w["end"]) == [whole[0] - 3600, *whole]
    assert total().requests == len(events) + 50
    assert_sketched({0: stats(total())}, events + late, lambda e: 0)
    # A replayed batch of events already counted changes nothing, before or after the rebuild.
    time.sleep(0.01)
    asyncio.run(ingest_through_batch_path(storage, config, team, events[1000:1500]))
    assert total().requests == len(events) + 50
    _build_all(storage)
    assert total().requests == len(events) + 50
    # A late row in the first hour but before the window: once rebuilt, the hour has a row outside the
    # window, so it is no longer read from its rollup (which would count that row).
    first_hour = whole[0] - 3600
    early = synth_requests(1, seed=7, start_ns=first_hour * 10**9 + 60 * 10**9, span_ns=10**9)
    assert int(early[0].ts) < w["start"]
    time.sleep(0.01)
    asyncio.run(ingest_through_batch_path(storage, config, team, early))
    assert first_hour not in rollups.clean_hours(storage, team, w["start"], w["end"])
    assert total().requests == len(events) + 50
    _build_all(storage)
    assert rollups.clean_hours(storage, team, w["start"], w["end"]) == whole
    assert total().requests == len(events) + 50
    wider = {"start": first_hour * 10**9, "end": w["end"]}
    assert rollups.clean_hours(storage, team, wider["start"], wider["end"]) == [first_hour, *whole]
    assert _by_set(_dash(storage, team, wider))["total"][0].requests == len(events) + 51


def test_other_teams_see_nothing(
    storage: Storage, data: tuple[str, dict[str, int], list[RequestEvent], list[int]]
) -> None:
    team, w, _, _ = data
    _build_all(storage)
    assert rollups.clean_hours(storage, team + "-other", w["start"], w["end"]) == []
    [empty] = _dash(storage, team + "-other", w)
    assert (empty.set, empty.requests, empty.p99_ns) == ("total", 0, 0)
    assert q.edges(storage, team + "-other", q.EdgeParams(**w)) == []


def test_a_data_dir_from_before_the_bounds(storage: Storage, config: PulseConfig) -> None:
    """requests_rollup_built made without lo/hi gets them at setup; its old builds fit a range only by
    lying wholly inside it (their bounds are unknown), and a new build fits a range its rows lie in."""
    from qtap_async.pulse import tables

    old = msgspec.structs.replace(config, database=f"old_{time.time_ns() % 10**9}")
    db = old.database
    storage.command(f"CREATE DATABASE {db}")
    storage.command(f"CREATE TABLE {db}.requests_rollup_built (team LowCardinality(String), hour DateTime('UTC'),"
                    " built_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree(built_at)"
                    " PARTITION BY toDate(hour) ORDER BY (team, hour)")
    for stmt in tables.ddl(old):
        storage.command(stmt)
    cols = storage.query("SELECT name, default_expression AS d FROM system.columns WHERE database = {db:String}"
                         " AND table = 'requests_rollup_built' ORDER BY position", {"db": db})
    assert [(c["name"], c["d"]) for c in cols][-2:] == [("lo", "0"), ("hi", "9223372036854775807")]
    saved = storage.database
    storage.database = db
    try:
        team = "old-bounds"
        hour = time.time_ns() // HOUR * HOUR - 3 * HOUR
        events = synth_requests(200, seed=5, start_ns=hour + 10 * 60 * 10**9, span_ns=10 * 60 * 10**9)
        asyncio.run(ingest_through_batch_path(storage, old, team, events))
        time.sleep(0.01)
        # A build as an older Pulse wrote it: no bounds.
        storage.query(f"INSERT INTO {db}.requests_rollup_built (team, hour, built_at) SELECT {{team:String}},"
                      " toDateTime({h:UInt32}, 'UTC'), now64(3, 'UTC')", {"team": team, "h": hour // 10**9})
        cut = (hour + 5 * 60 * 10**9, hour + 2 * HOUR)
        assert rollups.clean_hours(storage, team, *cut) == []
        assert rollups.clean_hours(storage, team, hour, hour + HOUR) == [hour // 10**9]
        rollups.build_hour(storage, team, hour // 10**9, time.time_ns() // 10**6)
        assert rollups.clean_hours(storage, team, *cut) == [hour // 10**9]
        assert rollups.clean_hours(storage, team, hour + 15 * 60 * 10**9, hour + 2 * HOUR) == []
        [total] = [r for r in _dash(storage, team, {"start": cut[0], "end": cut[1]}) if r.set == "total"]
        assert total.requests == 200
    finally:
        storage.database = saved
        storage.command(f"DROP DATABASE {db}")
