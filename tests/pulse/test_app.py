"""The HTTP API, served by uvicorn in this process on the shared engine, and the agent-side client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from qtap_async.errors import PulseClientError
from qtap_async.events.times import format_ns
from qtap_async.pulse.app import create_app
from qtap_async.pulse.client import PulseClient
from qtap_async.pulse.config import IngestLimits, PulseConfig
from qtap_async.pulse.storage import Storage
from qtap_async.pulse.tokens import TokenStore
from tests.pulse.conftest import count
from tests.pulse.test_storage import assert_same, reference, stats, synth_requests

NOW = time.time_ns()
HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def client(config: PulseConfig, storage: Storage, tokens: TokenStore) -> Iterator[httpx.Client]:
    small = msgspec.structs.replace(config, limits=IngestLimits(max_batch_events=500, max_body_bytes=1 << 20))
    with _Server(create_app(small, storage=storage, tokens=tokens)) as url, httpx.Client(base_url=url) as c:
        yield c


def bearer(tokens: TokenStore, team: str, scopes: tuple[str, ...] = ("ingest", "query")) -> dict[str, str]:
    return {"authorization": f"Bearer {tokens.create(team, 'agent-1', scopes)[1]}"}


def req(i: int, **kw: Any) -> dict[str, Any]:
    ev = {
        "type": "request",
        "id": f"r{i}",
        "ts": NOW - i * 10**6,
        "domain": "api.example",
        "path": "/x",
        "method": "GET",
        "status": 200,
        "duration_ns": 1000 + i,
    }
    ev.update(kw)
    return ev


def window() -> dict[str, int]:
    return {"start": NOW - HOUR, "end": NOW + 10**9}


def snapshot(client: httpx.Client, headers: dict[str, str]) -> list[Any]:
    return [
        client.get(path, params=window(), headers=headers).json()
        for path in ("/v1/query/top/endpoints", "/v1/query/connections", "/v1/query/issues")
    ]


# ---- auth ---------------------------------------------------------------------------------------------


def test_missing_invalid_revoked_and_underscoped_tokens_store_nothing(
    client: httpx.Client, tokens: TokenStore, storage: Storage, team: str
) -> None:
    body = {"events": [req(0)]}
    r = client.post("/v1/events", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/v1/events", json=body, headers={"authorization": "Basic abc"}).status_code == 401
    fake = "qtp_000000000000_" + "A" * 43
    assert client.post("/v1/events", json=body, headers={"authorization": f"Bearer {fake}"}).status_code == 401
    assert client.post("/v1/events", json=body, headers={"authorization": "Bearer garbage"}).status_code == 401

    token_id, token = tokens.create(team, "a1")
    tokens.revoke(token_id)
    r = client.post("/v1/events", json=body, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "revoked" in r.json()["error"]
    r = client.get("/v1/query/top/domains", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 403

    query_only = bearer(tokens, team, ("query",))
    assert client.post("/v1/events", json=body, headers=query_only).status_code == 403
    ingest_only = bearer(tokens, team, ("ingest",))
    assert client.get("/v1/query/top/domains", headers=ingest_only).status_code == 403
    assert client.get("/v1/query/top/domains").status_code == 401
    for table in ("requests", "connections", "issues", "object_refs"):
        assert count(storage, table, team) == 0


def test_a_token_cannot_read_another_teams_data(client: httpx.Client, tokens: TokenStore, team: str) -> None:
    a, b = bearer(tokens, team), bearer(tokens, team + "-b")
    events = [
        req(0),
        {"type": "connection", "id": "c0", "ts": NOW, "event": "open", "dst_ip": "10.0.0.1", "domain": "api.example"},
        {"type": "issue", "id": "i0", "ts": NOW, "rule": "slow", "severity": "high"},
        {"type": "object_ref", "id": "o0", "ts": NOW, "transaction_id": "tx-1", "digest": "sha256:ab"},
    ]
    assert client.post("/v1/events", json=events, headers=a).status_code == 200
    # The payload cannot pick the team either.
    spoof = [req(1, team=team), {"type": "issue", "id": "i1", "ts": NOW, "rule": "r", "team": team}]
    assert client.post("/v1/events", json=spoof, headers=b).status_code == 200
    seen_a, seen_b = snapshot(client, a), snapshot(client, b)
    assert [len(x) for x in seen_a] == [1, 1, 1] and seen_a[0][0]["requests"] == 1
    assert [x["id"] for x in seen_b[2]] == ["i1"]
    assert seen_b[1] == []
    assert client.get("/v1/query/transactions/tx-1/objects", headers=b).json() == []
    objs = client.get("/v1/query/transactions/tx-1/objects", headers=a).json()
    assert [(o["id"], o["digest"], o["agent"]) for o in objs] == [("o0", "sha256:ab", "agent-1")]


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors_and_the_valid_rest_is_stored(
    client: httpx.Client, tokens: TokenStore, storage: Storage, team: str
) -> None:
    h = bearer(tokens, team)
    control = bearer(tokens, team + "-control")
    client.post("/v1/events", json=[req(i) for i in range(5)], headers=control)
    before = snapshot(client, control)

    r = client.post("/v1/events", content=b'{"events": [{"type": "request", "id": ', headers=h)
    assert r.status_code == 400 and "malformed json" in r.json()["error"]
    r = client.post("/v1/events", json={"events": [req(i) for i in range(501)]}, headers=h)
    assert r.status_code == 413 and "limit is 500" in r.json()["error"]
    r = client.post("/v1/events", content=b"x" * (1 << 20 + 1), headers=h)
    assert r.status_code == 413
    assert count(storage, "requests", team) == 0

    sql = "x'); DROP TABLE pulse.requests; --"
    events = [
        req(0, domain=sql, path="/a' OR '1'='1", user_agent='"; SELECT * FROM system.users'),
        req(1, status="oops"),
        req(2, duration_ns=-5),
        {"type": "request", "id": "r3"},
        req(4, method=["GET"]),
        req(5, id="{team:String}", domain="{start:Int64}"),
    ]
    r = client.post("/v1/events", json=events, headers=h)
    assert r.status_code == 207
    result = r.json()
    assert (result["accepted"], result["rejected"]) == (2, 4)
    assert {e["index"]: e["error"] for e in result["errors"]} == {
        1: "Expected `int`, got `str` - at `$.status`",
        2: "Expected `int` >= 0 - at `$.duration_ns`",
        3: "Object missing required field `ts`",
        4: "Expected `str`, got `array` - at `$.method`",
    }
    rows = client.get("/v1/query/top/endpoints", params=window(), headers=h).json()
    assert sorted((x["domain"], x["path"]) for x in rows) == sorted([("{start:Int64}", "/x"), (sql, "/a' OR '1'='1")])
    got = client.get("/v1/query/top/domains", params={**window(), "domain": sql}, headers=h).json()
    assert [x["domain"] for x in got] == [sql]
    # An all-invalid batch stores nothing and says so.
    r = client.post("/v1/events", json=[req(9, status="x")], headers=h)
    assert r.status_code == 422 and r.json()["accepted"] == 0
    assert count(storage, "requests", team) == 2
    assert snapshot(client, control) == before
    tables = storage.query("SELECT name FROM system.tables WHERE database = 'pulse' AND name = 'requests'")
    assert tables == [{"name": "requests"}]


def test_query_parameters_are_validated(client: httpx.Client, tokens: TokenStore, team: str) -> None:
    h = bearer(tokens, team)
    cases = {
        "/v1/query/timeseries?bucket=abc": "$.bucket",
        "/v1/query/timeseries?bucket=1&start=0&end=100000000000000": "buckets",
        "/v1/query/top/domains?limit=5000": "$.limit",
        "/v1/query/top/domains?start=10&end=5": "end must be after start",
        "/v1/query/connections?start=2026-01-01T00:00:00": "timezone",
        "/v1/query/processes?group_by=user": "$.group_by",
    }
    for url, text in cases.items():
        r = client.get(url, headers=h)
        assert r.status_code == 422, url
        assert text in r.json()["error"], url


def test_health_metrics_and_openapi(client: httpx.Client, tokens: TokenStore, team: str) -> None:
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/readyz").status_code == 200
    client.post("/v1/events", json=[req(0)], headers=bearer(tokens, team))
    text = client.get("/metrics").text
    assert 'pulse_http_requests_total{route="/v1/events",status="200"}' in text
    assert "pulse_insert_rows_total" in text and "pulse_events_accepted_total" in text
    from qtap_async import __version__

    assert f'pulse_build_info{{version="{__version__}"}} 1' in text
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/events", "/v1/query/top/endpoints", "/v1/query/transactions/{transaction_id}/objects"} <= set(
        spec["paths"]
    )


def test_the_running_app_builds_rollups_in_its_background(
    client: httpx.Client, tokens: TokenStore, team: str, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qtap_async.pulse import app as pulse_app
    from qtap_async.pulse import rollups

    monkeypatch.setattr(pulse_app, "ROLLUP_INTERVAL_S", 0.2)
    monkeypatch.setattr(rollups, "GRACE_S", 0.5)
    hour = (NOW // HOUR - 3) * HOUR
    events = [req(i, id=f"old{i}", ts=hour + i * 10**9, duration_ns=10**6 * (i + 1)) for i in range(100)]
    assert client.post("/v1/events", json=events, headers=bearer(tokens, team)).status_code == 200
    deadline = time.monotonic() + 30
    while rollups.clean_hours(storage, team, hour, hour + HOUR) != [hour // 10**9]:
        assert time.monotonic() < deadline, "the background did not build the hour"
        time.sleep(0.2)
    # The hour reads as clean as soon as the worker thread's insert lands; the counter is bumped after
    # refresh returns to the event loop, so it may trail by a moment.
    while "pulse_rollup_hours_built_total" not in client.get("/metrics").text:
        assert time.monotonic() < deadline, "the hour was built but pulse_rollup_hours_built_total never appeared"
        time.sleep(0.1)
    w = {"start": hour - HOUR, "end": hour + 2 * HOUR}
    [total] = [r for r in client.get("/v1/query/dashboard", params=w, headers=bearer(tokens, team)).json()
               if r["set"] == "total"]
    assert total["requests"] == 100
    assert total["p50_ns"] == pytest.approx(50 * 10**6, rel=0.021)  # rank 49.5 of 1..100 ms, sketched


# ---- end to end: real HTTP server, the agent-side client -----------------------------------------------


class _Server:
    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="uvloop"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_http_end_to_end_with_the_agent_client(
    config: PulseConfig, storage: Storage, tokens: TokenStore, team: str
) -> None:
    token = tokens.create(team, "agent-e2e")[1]
    events = synth_requests(20_000, seed=3, start_ns=NOW - HOUR, span_ns=HOUR - 10**9)
    with _Server(create_app(config, storage=storage, tokens=tokens)) as url:

        async def send() -> None:
            thirds = [events[0::3], events[1::3], events[2::3]]
            variants = [("gzip", "json"), ("zstd", "msgpack"), ("none", "json")]
            for part, (comp, enc) in zip(thirds, variants, strict=True):
                async with PulseClient(url, token, max_batch=2000, compression=comp, encoding=enc) as c:  # type: ignore[arg-type]
                    for ev in part:
                        await c.add(ev)
                assert (c.sent_events, c.rejected_events) == (len(part), 0)

        asyncio.run(send())
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as h:
            rows = h.get("/v1/query/top/endpoints", params={**window(), "limit": 1000}).json()
            series = h.get("/v1/query/timeseries", params={**window(), "bucket": 900}).json()
    got = {(r["domain"], r["method"], r["path"]): r for r in rows}
    assert_same(
        {
            k: {
                f: v
                for f, v in r.items()
                if f in ("requests", "errors", "client_errors", "error_rate", "p50_ns", "p95_ns", "p99_ns")
            }
            for k, r in got.items()
        },
        reference(events, lambda e: (e.domain, e.method, e.path)),
    )
    want_b = reference(events, lambda e: int(e.ts) // 10**9 // 900 * 900 * 10**9)
    assert {r["bucket_start_ns"]: r["requests"] for r in series} == {k: v["requests"] for k, v in want_b.items()}
    assert [r["bucket_start"] for r in series] == [format_ns(r["bucket_start_ns"]) for r in series]
    assert stats  # (shared helper import kept for readers of both modules)


def test_client_retries_transient_failures_and_stops_on_4xx() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503, json={"error": "busy"})
        if calls["n"] == 3:
            raise httpx.ConnectError("refused")
        body = msgspec.json.decode(__import__("gzip").decompress(request.content))
        assert request.headers["authorization"] == "Bearer tok"
        return httpx.Response(200, json={"accepted": len(body["events"]), "rejected": 0, "errors": []})

    async def run() -> None:
        c = PulseClient("http://pulse", "tok", backoff=0.001, transport=httpx.MockTransport(handler))
        result = await c.send([req(0), req(1)])
        assert result.accepted == 2 and c.retries == 3
        await c.close()
        bad = PulseClient(
            "http://pulse",
            "tok",
            backoff=0.001,
            transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"error": "invalid token"})),
        )
        with pytest.raises(PulseClientError, match="401") as info:
            await bad.send([req(0)])
        assert info.value.status == 401
        await bad.close()

    asyncio.run(run())
    assert calls["n"] == 4


def test_client_sends_on_the_timer_and_reports_a_failed_background_send() -> None:
    posted: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        n = len(msgspec.json.decode(__import__("gzip").decompress(request.content))["events"])
        posted.append(n)
        if len(posted) == 2:
            return httpx.Response(400, json={"error": "bad batch"})
        return httpx.Response(200, json={"accepted": n, "rejected": 0, "errors": []})

    async def run() -> None:
        c = PulseClient("http://pulse", "tok", max_batch=100, max_delay=0.05, transport=httpx.MockTransport(handler))
        for i in range(3):
            await c.add(req(i))
        await asyncio.sleep(0.3)  # the timer sends the three
        assert posted == [3] and c.sent_events == 3
        await c.add(req(3))
        await asyncio.sleep(0.3)  # this one is refused in the background...
        with pytest.raises(Exception, match="400"):
            await c.add(req(4))  # ...and the next call says so (without queueing its event)
        await c.close()
        assert posted == [3, 1]

    asyncio.run(run())
