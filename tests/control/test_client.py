"""The agent's side of the link (no BPF): joining, the cached last good config (0600), running on the cache
when the control plane is unreachable, refusing a bad registration token."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from qtap_async.control_client import ControlLink, StateDir, sse_events
from qtap_async.errors import ControlClientError
from tests.control.conftest import Plane, config_yaml
from tests.integration.harness import free_port


async def test_join_fetch_and_cache(plane: Plane, tmp_path: Path) -> None:
    admin = plane.client(plane.user("root", "admin"))
    reg = admin.post("/api/v1/registration-tokens", json={}).json()["token"]
    state = StateDir(tmp_path / "state")
    link = ControlLink(plane.url, state, reg)
    try:
        config = await link.initial_config()  # nothing active yet: the built-in default
        assert link.running_version is None and config.services.event_stores[0].type == "stdout"
        assert stat.S_IMODE((tmp_path / "state" / "identity.json").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        admin.post("/api/v1/configs", content=config_yaml("full").encode(), params={"activate": "true"},
                   headers={"Content-Type": "application/yaml"})
        again = ControlLink(plane.url, state, None)  # the identity is reused: no token needed any more
        try:
            cfg = await again.initial_config()
        finally:
            await again.aclose()
        assert again.running_version == 1 and cfg.stacks["default"].plugins[0].config.level == "full"  # type: ignore[union-attr]
        assert state.cached() == (1, config_yaml("full"))
        assert stat.S_IMODE((tmp_path / "state" / "config.yaml").stat().st_mode) == 0o600
    finally:
        await link.aclose()
    # Unreachable: the cached config is used.
    down = ControlLink(f"http://127.0.0.1:{free_port()}", state, None)
    try:
        cfg = await down.initial_config()
    finally:
        await down.aclose()
    assert down.running_version == 1 and cfg.stacks["default"].plugins[0].config.level == "full"  # type: ignore[union-attr]


async def test_bad_registration_token_is_refused(plane: Plane, tmp_path: Path) -> None:
    link = ControlLink(plane.url, StateDir(tmp_path / "s"), "qcr_0000000000000000_" + "a" * 43)
    try:
        with pytest.raises(ControlClientError, match="refused to register"):
            await link.initial_config()
    finally:
        await link.aclose()


async def test_sse_parser() -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for line in [": keepalive", "", "event: config", 'data: {"version": 3}', "", "data: a", "data: b", ""]:
            yield line

    assert [e async for e in sse_events(lines())] == [("config", '{"version": 3}'), ("message", "a\nb")]
    assert httpx  # the link's HTTP client


def test_health_turns_degraded_on_new_drops_or_a_refusal(tmp_path: Path) -> None:
    link = ControlLink("http://127.0.0.1:1", StateDir(tmp_path), None)
    assert link.health({"qtap_kernel_drop_ringbuf_total": 5}) == "ok"  # the first report sets the baseline
    assert link.health({"qtap_kernel_drop_ringbuf_total": 5}) == "ok"
    assert link.health({"qtap_kernel_drop_ringbuf_total": 7, "qtap_x": 1}) == "degraded"
    assert link.health({"qtap_kernel_drop_ringbuf_total": 7}) == "ok"
    link.refused_version = 3
    assert link.health({"qtap_kernel_drop_ringbuf_total": 7}) == "degraded"
