"""Schemathesis over the whole control plane API, from its own OpenAPI document, with an admin token.

Every operation gets schema-valid and schema-violating requests. The checks: no 5xx, statuses and
bodies as documented. Afterwards another team's data must be exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from qtap_async.control.app import OPS, create_app
from qtap_async.control.openapi import build_openapi
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import Store
from tests.control.conftest import Plane, ServerThread, config_yaml

ST_CONFIG = SchemathesisConfig.from_dict({
    "checks": {
        "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]},
        "positive_data_acceptance": {"expected-statuses": ["2xx", 302, 303, 400, 401, 403, 404, 409, 422, 429]},
    },
})
_TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    d: Path = tmp_path_factory.mktemp("st")
    st = ControlSettings(data_dir=str(d), cookie_secure=False)
    store = Store(st.sqlite_path)
    app = create_app(st, store)
    with ServerThread(app) as url:
        plane = Plane(url, store, st, app)
        _TOKEN["value"] = plane.user("fuzzer", "admin", "fuzz")
        other = plane.client(plane.user("keeper", "admin", "other"))
        assert other.post("/api/v1/configs", content=config_yaml().encode(), params={"activate": "true"},
                          headers={"Content-Type": "application/yaml"}).status_code == 201

        def look() -> list[Any]:
            return [other.get(p).json() for p in ("/api/v1/configs", "/api/v1/activations", "/api/v1/users")]

        before = look()
        yield plane
        assert look() == before
        metrics = app.state.control.metrics
        ok = sum(metrics.get("control_http_requests_total", route=op.path, status=s)
                 for op in OPS for s in ("200", "201", "204"))
        assert ok > 50, ok  # the fuzzing got past authentication many times
    store.close()


schema = schemathesis.openapi.from_dict(build_openapi(OPS), config=ST_CONFIG).exclude(
    # The stream never ends by itself; tests/control/test_api.py covers it.
    path="/api/v1/agent/events")


@schema.auth(refresh_interval=None)
class _Bearer:
    def get(self, case: Any, ctx: Any) -> str:
        return _TOKEN.get("value", "")

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: Any, server: Plane) -> None:
    case.call_and_validate(base_url=server.url)


def test_fuzzer_token_still_works(server: Plane) -> None:
    assert httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {_TOKEN['value']}"}
                     ).status_code == 200
