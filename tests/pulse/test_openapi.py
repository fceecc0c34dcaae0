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
from qtap_async.pulse.storage import Storage
from qtap_async.pulse.tokens import TokenStore
from tests.pulse.test_app import _Server

NOW = time.time_ns()
TEAM = "schemathesis"

# 207/422 are how /v1/events answers a batch with invalid items (documented); 422 also answers
# schema-valid query parameters that contradict each other (end before start).
ST_CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 413, 415, 422, 207]},
            "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 413, 422]},
        },
    }
)


@pytest.fixture(scope="module")
def server(config: PulseConfig, storage: Storage, tokens: TokenStore) -> Iterator[tuple[str, str]]:
    token = tokens.create(TEAM, "fuzz")[1]
    with _Server(create_app(config, storage=storage, tokens=tokens)) as url:
        yield url, token


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


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except OverflowError:  # an integer msgpack cannot hold: send its text, still schema-violating
        return msgspec.msgpack.encode(str(value))


def _schema() -> Any:
    # The document is built from code: load it from the app without a server.
    from qtap_async.pulse.openapi import build_openapi

    return schemathesis.openapi.from_dict(build_openapi(), config=ST_CONFIG)


schema = _schema()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: Any, server: tuple[str, str], control: None) -> None:
    url, token = server
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"})
