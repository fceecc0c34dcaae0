"""The web UI's queries (requests list, summary, dependency edges) on the real embedded engine, against a
Python reference computed from the same events; copies of an event count once."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from qtap_async.events import RequestEvent
from qtap_async.pulse import queries as q
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.storage import Storage
from tests.pulse.test_storage import (
    assert_same,
    assert_sketched,
    ingest_through_batch_path,
    reference,
    stats,
    synth_requests,
)

HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def data(storage: Storage, config: PulseConfig) -> tuple[str, int, list[RequestEvent]]:
    """5,000 requests over the last hour in a team of their own, the first 500 sent twice."""
    import asyncio

    team = f"ui-queries-{time.time_ns() % 10**9}"
    now = time.time_ns()
    events = synth_requests(5_000, seed=11, start_ns=now - HOUR, span_ns=HOUR - 10**9)
    # Some ingress traffic and a few paths to search for.
    events = [msgspec.structs.replace(e, direction="ingress" if i % 5 == 0 else "egress",
                                      path=e.path + ("/needle" if i % 97 == 0 else ""))
              for i, e in enumerate(events)]
    asyncio.run(ingest_through_batch_path(storage, config, team, events))
    asyncio.run(ingest_through_batch_path(storage, config, team, events[:500]))
    return team, now, events


def _window(now: int) -> dict[str, int]:
    return {"start": now - HOUR, "end": now + 10**9}


def test_summary_matches_python(storage: Storage, data: tuple[str, int, list[RequestEvent]]) -> None:
    team, now, events = data
    [row] = q.summary(storage, team, q.SummaryParams(**_window(now)))
    assert_same({"all": stats(row)}, reference(events, lambda e: "all"))
    assert row.domains == len({e.domain for e in events})
    assert row.sources == len({(e.exe, e.container_id) for e in events})
    [ingress] = q.summary(storage, team, q.SummaryParams(**_window(now), direction="ingress"))
    assert ingress.requests == sum(1 for e in events if e.direction == "ingress")


def test_edges_match_python(storage: Storage, data: tuple[str, int, list[RequestEvent]]) -> None:
    team, now, events = data
    rows = q.edges(storage, team, q.EdgeParams(**_window(now)))
    got = {(r.exe, r.container_id, r.domain): stats(r) for r in rows}
    assert_sketched(got, events, lambda e: (e.exe, e.container_id, e.domain))
    counts = [r.requests for r in rows]
    assert counts == sorted(counts, reverse=True)
    assert len(q.edges(storage, team, q.EdgeParams(**_window(now), limit=3))) == 3


def test_requests_are_newest_first_filtered_and_paginated(
    storage: Storage, data: tuple[str, int, list[RequestEvent]]
) -> None:
    team, now, events = data
    newest = sorted(events, key=lambda e: (-int(e.ts), e.id))  # type: ignore[call-overload]
    page1 = q.requests(storage, team, q.RequestSearch(**_window(now), limit=50))
    page2 = q.requests(storage, team, q.RequestSearch(**_window(now), limit=50, offset=50))
    # Copies of the first 500 events are gone: every id once, in the order of the reference.
    assert [r.id for r in page1 + page2] == [e.id for e in newest[:100]]

    def ids(**filters: object) -> list[str]:
        return [r.id for r in q.requests(storage, team, q.RequestSearch(**_window(now), limit=1000, **filters))]

    def want(pred: object) -> list[str]:
        return [e.id for e in newest if pred(e)][:1000]  # type: ignore[operator]

    assert ids(status_class="5xx") == want(lambda e: e.status >= 500)
    assert ids(status_class="4xx") == want(lambda e: 400 <= e.status < 500)
    assert ids(status_class="error") == want(lambda e: e.status >= 500 or e.grpc_status > 0)
    assert ids(domain="svc3.example.com", method="POST") == want(
        lambda e: e.domain == "svc3.example.com" and e.method == "POST")
    assert ids(exe="/usr/bin/app1", container_id="c2") == want(
        lambda e: e.exe == "/usr/bin/app1" and e.container_id == "c2")
    assert ids(direction="ingress", pid=1002) == want(lambda e: e.direction == "ingress" and e.pid == 1002)
    assert ids(q="NEEDLE") == want(lambda e: "/needle" in e.path)
    one = newest[123]
    [row] = q.requests(storage, team, q.RequestSearch(**_window(now), id=one.id))
    assert (row.domain, row.path, row.status, row.duration_ns, row.exe) == (
        one.domain, one.path, one.status, one.duration_ns, one.exe)


def test_other_teams_and_ranges_see_nothing(storage: Storage, data: tuple[str, int, list[RequestEvent]]) -> None:
    team, now, _ = data
    assert q.requests(storage, team + "-other", q.RequestSearch(**_window(now))) == []
    assert q.edges(storage, team + "-other", q.EdgeParams(**_window(now))) == []
    [empty] = q.summary(storage, team, q.SummaryParams(start=now - 3 * HOUR, end=now - 2 * HOUR))
    assert (empty.requests, empty.error_rate, empty.domains) == (0, 0, 0)
    with pytest.raises(q.QueryError):
        q.summary(storage, team, q.SummaryParams(start=now, end=now - 1))


def test_dashboard_is_the_single_queries_in_one_pass(storage: Storage,
                                                     data: tuple[str, int, list[RequestEvent]]) -> None:
    team, now, events = data
    w = _window(now)
    rows = q.dashboard(storage, team, q.DashboardParams(**w, bucket=300, limit=7))
    by: dict[str, list[q.DashboardRow]] = {}
    for r in rows:
        by.setdefault(r.set, []).append(r)
    [total] = by["total"]
    [summary] = q.summary(storage, team, q.SummaryParams(**w))
    assert_sketched({0: stats(total)}, events, lambda e: 0)
    assert (total.domains, total.sources) == (summary.domains, summary.sources)

    def same(got: list[q.DashboardRow], want: list[Any], keys: tuple[str, ...]) -> None:
        # The keys the single query ranks first, in its order; counts exact, percentiles as sketched.
        assert [tuple(getattr(r, k) for k in keys) for r in got] == [tuple(getattr(r, k) for k in keys) for r in want]
        picked = {tuple(getattr(r, k) for k in keys) for r in got}
        assert_sketched({tuple(getattr(r, k) for k in keys): stats(r) for r in got},
                        [e for e in events if tuple(getattr(e, k) for k in keys) in picked],
                        lambda e: tuple(getattr(e, k) for k in keys))

    same(by["domain"], q.top_domains(storage, team, q.TopParams(**w, limit=7)), ("domain",))
    same(by["endpoint"], q.top_endpoints(storage, team, q.TopParams(**w, limit=7)), ("domain", "method", "path"))
    same(by["process"], q.processes(storage, team, q.ProcessParams(**w, limit=7)), ("pid", "exe", "container_id"))
    same(by["container"], q.processes(storage, team, q.ProcessParams(**w, limit=7, group_by="container")),
         ("container_id",))
    series = q.timeseries(storage, team, q.TimeseriesParams(**w, bucket=300))
    assert [(r.bucket_start_ns, r.bucket_start) for r in by["bucket"]] == [
        (r.bucket_start_ns, r.bucket_start) for r in series]
    assert_sketched({r.bucket_start_ns: stats(r) for r in by["bucket"]}, events,
                    lambda e: int(e.ts) // (300 * 10**9) * 300 * 10**9)  # type: ignore[call-overload]
    [empty] = q.dashboard(storage, team + "-none", q.DashboardParams(**w))
    assert (empty.set, empty.requests, empty.error_rate) == ("total", 0, 0)
