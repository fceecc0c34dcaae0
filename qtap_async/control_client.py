"""The agent's link to the control plane: `qtap run --control URL --registration-token T`.

    join      POST /api/v1/agents/register with the registration token, once: the identity (agent id +
              token) is kept in <state>/identity.json (0600) and used from then on
    config    GET /api/v1/agent/config: the version to run; applied, then cached in <state>/config.yaml
              (0600) as the last good config
    follow    GET /api/v1/agent/events (server-sent events): a new active version is fetched and applied
              through Graph.reload, the very path SIGHUP takes (all or nothing)
    report    POST /api/v1/agent/status every heartbeat and after each apply: the version running, or the
              version refused and why, health and the agent's counters

When the control plane cannot be reached the agent runs on its cached config and retries with capped
exponential backoff (1 s doubling to 60 s, with jitter); when it comes back the event stream starts
with the version active now, so a version activated meanwhile is picked up. This module is the agent's
side: it uses the capture pipeline, which the control plane service itself never imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvloop

from qtap_async import __version__
from qtap_async.buffers.backoff import Backoff
from qtap_async.config import Config, default_config, loads_config
from qtap_async.errors import ConfigError, ControlClientError
from qtap_async.topology import Agent, AgentOptions, Graph

log = logging.getLogger("qtap.control")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
STREAM_READ_TIMEOUT_S = 60.0  # the server sends a keepalive every 15 s; silence this long is a dead link


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 (the identity is a credential; configs name secrets' variables)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def identity(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / "identity.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ControlClientError(f"{self.path / 'identity.json'}: unreadable ({e}); remove it to join again") from e
        return data if isinstance(data, dict) and "token" in data else None

    def save_identity(self, data: dict[str, Any]) -> None:
        self.ensure()
        _write_private(self.path / "identity.json", json.dumps(data).encode())

    def cached(self) -> tuple[int, str] | None:
        """(version, yaml) of the last config applied successfully."""
        try:
            meta = json.loads((self.path / "config.json").read_text())
            text = (self.path / "config.yaml").read_text()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(text.encode()).hexdigest() != meta.get("sha256"):
            log.warning("cached config %s does not match its checksum; ignoring it", self.path / "config.yaml")
            return None
        return int(meta["version"]), text

    def save_config(self, version: int, text: str) -> None:
        self.ensure()
        _write_private(self.path / "config.yaml", text.encode())
        _write_private(self.path / "config.json",
                       json.dumps({"version": version, "sha256": hashlib.sha256(text.encode()).hexdigest()}).encode())


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs from a text/event-stream, comments skipped."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)


class ControlLink:
    def __init__(self, url: str, state: StateDir, registration_token: str | None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.state = state
        self.registration_token = registration_token
        self.http = http or httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10.0))
        self.identity: dict[str, Any] | None = None
        self.heartbeat_s = 15.0
        self.running_version: int | None = None
        self.refused_version: int | None = None
        self.refused_reason = ""
        self.runtime: Graph | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._applying = asyncio.Lock()
        self._last_drops: int | None = None

    @property
    def _auth(self) -> dict[str, str]:
        assert self.identity is not None
        return {"Authorization": f"Bearer {self.identity['token']}"}

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.http.aclose()

    # -- joining -----------------------------------------------------------------------------------
    async def register(self) -> None:
        """Load the identity, or join with the registration token. Refusals raise ControlClientError;
        network errors propagate (httpx.HTTPError) so the caller retries."""
        self.identity = self.state.identity()
        if self.identity is not None:
            if self.identity.get("url") not in (None, self.url):
                log.warning("identity in %s was made by %s, not %s", self.state.path, self.identity.get("url"),
                            self.url)
            return
        if not self.registration_token:
            raise ControlClientError(f"no agent identity in {self.state.path} and no --registration-token to join with")
        r = await self.http.post("/api/v1/agents/register", json={
            "registration_token": self.registration_token, "hostname": socket.gethostname(),
            "agent_version": __version__, "kernel": os.uname().release})
        if r.status_code in (400, 401, 403, 422):
            raise ControlClientError(f"the control plane refused to register this agent: {_error_text(r)}",
                                     r.status_code)
        r.raise_for_status()
        body = r.json()
        self.identity = {"agent_id": body["agent_id"], "token": body["token"], "team": body["team"],
                         "group": body["group"], "url": self.url}
        self.heartbeat_s = float(body.get("heartbeat_interval_s", 15.0))
        self.state.save_identity(self.identity)
        log.info("joined the control plane as agent %s (team %s, group %s)", body["agent_id"], body["team"],
                 body["group"] or "-")

    async def fetch(self) -> tuple[int, str] | None:
        """The (version, yaml) to run; None when no version is active. Raises on failure."""
        r = await self.http.get("/api/v1/agent/config", headers=self._auth)
        if r.status_code == 204:
            return None
        if r.status_code in (401, 403):
            raise ControlClientError(f"the control plane refused this agent's identity: {_error_text(r)}",
                                     r.status_code)
        r.raise_for_status()
        body = r.json()
        return int(body["version"]), str(body["yaml"])

    # -- start-up ----------------------------------------------------------------------------------
    async def initial_config(self) -> Config:
        """The config to start with: the active version, else the cached one when the control plane cannot
        be reached, else (nothing cached) keep trying. With no active version: the built-in default."""
        backoff = Backoff(initial=BACKOFF_START_S, maximum=BACKOFF_MAX_S)
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.register()
                got = await self.fetch()
            except (httpx.HTTPError, OSError) as e:
                cached = self.state.cached()
                if cached is not None and (self.identity is not None or attempts >= 3):
                    log.warning("control plane %s unreachable (%s): starting on the cached config v%d", self.url,
                                e, cached[0])
                    self.running_version = cached[0]
                    return loads_config(cached[1], f"cached config v{cached[0]}")
                delay = backoff.next_delay()
                log.warning("control plane %s unreachable (%s); retrying in %.0f s", self.url, e, delay)
                await asyncio.sleep(delay)
                continue
            if got is None:
                cached = self.state.cached()
                if cached is not None:
                    log.info("no active config version: starting on the cached config v%d", cached[0])
                    self.running_version = cached[0]
                    return loads_config(cached[1], f"cached config v{cached[0]}")
                log.info("no active config version yet: starting on the built-in default config")
                return default_config()
            version, text = got
            try:
                config = loads_config(text, f"control v{version}")
            except ConfigError as e:
                self.refused_version, self.refused_reason = version, str(e)
                cached = self.state.cached()
                if cached is None:
                    raise ControlClientError(f"config v{version} from the control plane is invalid here and "
                                             f"nothing is cached: {e}") from e
                self.running_version = cached[0]
                return loads_config(cached[1], f"cached config v{cached[0]}")
            self.running_version = version
            self.state.save_config(version, text)
            return config

    # -- running -----------------------------------------------------------------------------------
    def attach(self, runtime: Graph) -> None:
        """The runtime's on_ready hook: follow the push channel and send heartbeats."""
        self.runtime = runtime
        self._tasks = [asyncio.create_task(self.follow(), name="control-follow"),
                       asyncio.create_task(self.heartbeats(), name="control-heartbeat")]

    async def apply(self, version: int) -> None:
        async with self._applying:
            if version in (self.running_version, self.refused_version):
                return
            got = await self.fetch()
            if got is None or got[0] == self.running_version:
                return
            version, text = got
            runtime = self.runtime
            assert runtime is not None
            # The same reload SIGHUP triggers: built completely, then switched; a failure keeps the running one.
            ok = await runtime.reload(lambda: loads_config(text, f"control v{version}"))
            if ok:
                self.running_version, self.refused_version, self.refused_reason = version, None, ""
                self.state.save_config(version, text)
                log.info("running config v%d from the control plane", version)
            else:
                self.refused_version, self.refused_reason = version, runtime.last_reload_error or "reload failed"
                log.error("refused config v%d: %s", version, self.refused_reason)
        await self.report()

    async def follow(self) -> None:
        backoff = Backoff(initial=BACKOFF_START_S, maximum=BACKOFF_MAX_S)
        while True:
            try:
                if self.identity is None:
                    await self.register()
                timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S)
                async with self.http.stream("GET", "/api/v1/agent/events", headers=self._auth,
                                            timeout=timeout) as r:
                    if r.status_code in (401, 403):
                        await r.aread()
                        raise ControlClientError(f"the control plane refused this agent: {_error_text(r)}")
                    r.raise_for_status()
                    backoff.reset()
                    async for event, data in sse_events(r.aiter_lines()):
                        if event != "config":
                            continue
                        version = json.loads(data).get("version")
                        if isinstance(version, int):
                            await self.apply(version)
                log.warning("control plane closed the event stream; reconnecting")
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError, ControlClientError) as e:
                log.warning("control plane %s: %s; keeping config v%s, retrying", self.url,
                            e or type(e).__name__, self.running_version)
            await asyncio.sleep(backoff.next_delay())

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        rt = self.runtime
        if rt is not None:
            if rt.snapshot is not None:
                out.update(rt.snapshot())
            out.update(rt.writer.stats())
        picked = {k: int(v) for k, v in out.items() if isinstance(v, int) and v >= 0 and len(k) <= 200}
        return dict(sorted(picked.items())[:500])

    def health(self, counters: dict[str, int]) -> str:
        """degraded: the last version was refused, or something was dropped since the last report."""
        drops = sum(v for k, v in counters.items() if "drop" in k and k.endswith("_total"))
        grew = self._last_drops is not None and drops > self._last_drops
        self._last_drops = drops
        return "degraded" if self.refused_version is not None or grew else "ok"

    async def report(self) -> None:
        if self.identity is None:
            return
        counters = self.counters()
        body = {"running_version": self.running_version, "refused_version": self.refused_version,
                "refused_reason": self.refused_reason[:8000], "health": self.health(counters),
                "agent_version": __version__, "kernel": os.uname().release, "counters": counters}
        try:
            r = await self.http.post("/api/v1/agent/status", json=body, headers=self._auth)
            if r.status_code >= 400:
                log.warning("control plane refused the heartbeat: %s", _error_text(r))
        except (httpx.HTTPError, OSError) as e:
            log.debug("heartbeat failed: %s", e)

    async def heartbeats(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(self.heartbeat_s)


def _error_text(r: httpx.Response) -> str:
    try:
        return f"HTTP {r.status_code}: {r.json().get('error', '')}"
    except ValueError:
        return f"HTTP {r.status_code}"


async def _run(url: str, registration_token: str | None, state_dir: Path, options: AgentOptions) -> int:
    link = ControlLink(url, StateDir(state_dir), registration_token)
    try:
        config = await link.initial_config()
        return await Agent(options, config=config, on_ready=link.attach).run()
    finally:
        await link.aclose()


def run_with_control(url: str, registration_token: str | None, state_dir: Path, options: AgentOptions) -> int:
    """Run the agent with its config from the control plane at ``url`` until SIGINT/SIGTERM."""
    if not url.startswith(("http://", "https://")):
        raise ControlClientError(f"--control {url!r}: expected an http:// or https:// URL")
    return uvloop.run(_run(url, registration_token, state_dir, options))
