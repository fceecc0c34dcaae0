"""Schemathesis against Pulse's own OpenAPI document, run from pytest against an in-process server.

Every operation gets schema-valid and schema-violating requests (wrong types, missing fields, odd
strings). The checks: no 5xx, every status and body as documented, auth enforced. Afterwards a control
team's data must be exactly as before: bad input touched nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from qtap_async.pulse.app import create_app
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.queries import QUERIES
from qtap_async.pulse.storage import Storage
from qtap_async.pulse.tokens import TokenStore
from tests.pulse.test_app import _Server

NOW = time.time_ns()
TEAM = "schemathesis"

# 207/422 are how /v1/events answers a batch with invalid items (documented); 422 also answers
# schema-valid query parameters that contradict each other (end before start); 431 answers generated
# headers over limits.max_header_bytes.
ST_CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 413, 415, 422, 431, 207]},
            "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 413, 422, 431]},
        },
    }
)


@pytest.fixture(scope="module")
def server(config: PulseConfig, storage: Storage, tokens: TokenStore) -> Iterator[tuple[str, str]]:
    token = tokens.create(TEAM, "fuzz")[1]
    _TOKEN["value"] = token
    app = create_app(config, storage=storage, tokens=tokens)
    with _Server(app) as url:
        yield url, token
    # The fuzzing was authenticated: many requests got past the token check (not just 401s).
    metrics = app.state.pulse.metrics
    # Every status /v1/events answers past the token check (any but 401/403): how many the generator makes
    # is its own business (9-15 of ~150 here), so the check is that some did, and that queries mostly did.
    past_auth = ("200", "207", "400", "413", "415", "422", "431")
    ingest = {s: metrics.get("pulse_http_requests_total", route="/v1/events", status=s) for s in past_auth}
    ok_queries = sum(metrics.get("pulse_http_requests_total", route=q.path, status="200") for q in QUERIES)
    assert sum(ingest.values()) > 0 and ok_queries > 50, (ingest, ok_queries)


@pytest.fixture(scope="module")
def control(server: tuple[str, str], tokens: TokenStore) -> Iterator[None]:
    """Data of another team, and what the API says about it before and after the fuzzing."""
    url, _ = server
    h = {"authorization": f"Bearer {tokens.create('control', 'ctl')[1]}"}
    events = [
        {
            "type": "request",
            "id": f"ctl-{i}",
            "ts": NOW - i * 10**9,
            "domain": "ctl.example",
            "path": "/p",
            "status": 500 if i % 4 == 0 else 200,
            "duration_ns": 1000 * i,
        }
        for i in range(40)
    ] + [{"type": "connection", "id": "ctl-c", "ts": NOW, "event": "open", "dst_ip": "10.1.1.1"}]
    params = {"start": NOW - 3600 * 10**9, "end": NOW + 10**9}

    def look() -> list[Any]:
        with httpx.Client(base_url=url, headers=h) as c:
            return [c.get(p, params=params).json() for p in ("/v1/query/top/endpoints", "/v1/query/connections")]

    with httpx.Client(base_url=url, headers=h) as c:
        assert c.post("/v1/events", json=events).status_code == 200
    before = look()
    assert before[0][0]["requests"] == 40
    yield
    assert look() == before


def _fit(value: Any) -> Any:
    """JSON numbers have no size limit, msgpack integers stop at 64 bits: send bigger ones as floats
    (they only ever land in fields Pulse drops or rejects)."""
    if isinstance(value, dict):
        return {k: _fit(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    return msgspec.msgpack.encode(_fit(value))


def _schema() -> Any:
    # The document is built from code: load it from the app without a server.
    from qtap_async.pulse.openapi import build_openapi

    return schemathesis.openapi.from_dict(build_openapi(), config=ST_CONFIG)


schema = _schema()
_TOKEN: dict[str, str] = {}


@schema.auth(refresh_interval=None)
class _Bearer:
    """The fuzzing team's token, through schemathesis so it can also try requests without it."""

    def get(self, case: Any, ctx: Any) -> str:
        return _TOKEN.get("value", "")  # set by the server fixture before any request

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: Any, server: tuple[str, str], control: None) -> None:
    case.call_and_validate(base_url=server[0])
