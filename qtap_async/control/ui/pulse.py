"""The UI's side of Pulse: its query API over HTTP with a query-scoped token (the control plane holds no
events). Errors become ``PulseUnavailable`` with a sentence the page shows."""

from __future__ import annotations

import os
from typing import Any

import httpx

from qtap_async.control.settings import ControlSettings
from qtap_async.errors import ControlError


class PulseUnavailable(ControlError):
    """Pulse is not configured, not reachable, or refused the query; the message says which."""


class PulseReader:
    def __init__(self, settings: ControlSettings) -> None:
        self.url = settings.pulse_url.rstrip("/")
        self.token_env = settings.ui.pulse_token_env
        self.timeout = settings.ui.pulse_timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url and os.environ.get(self.token_env))

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            token = os.environ.get(self.token_env, "")
            # One pooled client: a page makes several queries at once, over kept-alive connections.
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout,
                                             headers={"Authorization": f"Bearer {token}"},
                                             limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
        return self._client

    async def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """GET /v1/query/<name> with the non-empty ``params``; the decoded rows."""
        if not self.url:
            raise PulseUnavailable("no Pulse configured: set pulse_url (--pulse-url) in the control plane's settings")
        if not os.environ.get(self.token_env):
            raise PulseUnavailable(f"no Pulse token: set {self.token_env} to a token with the query scope "
                                   "(qtap pulse token create --scope query)")
        clean = {k: v for k, v in params.items() if v is not None and v != ""}
        try:
            r = await self._get_client().get(f"/v1/query/{name}", params=clean)
        except httpx.HTTPError as e:
            raise PulseUnavailable(f"Pulse at {self.url} did not answer: {e.__class__.__name__}") from None
        if r.status_code != 200:
            try:
                message = str(r.json().get("error", ""))
            except ValueError:
                message = r.text[:200]
            raise PulseUnavailable(f"Pulse answered {r.status_code} to {name}: {message}")
        rows: list[dict[str, Any]] = r.json()
        return rows

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
