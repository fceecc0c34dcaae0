"""Event store that POSTs batches to a Pulse ingestion service (``POST /v1/events``, bearer token).

The body is ``{"events": [...], "sent_at": "<RFC 3339>"}`` in JSON, gzip-compressed when configured.
2xx is delivered (items Pulse rejects one by one are counted, not retried: they would be rejected again);
408, 429, 5xx and network errors are retried; 401/403 are retried too (a rotated token can be fixed without
losing data, which waits in the spool) but ``check`` reports them; other 4xx drop the batch.
"""

from __future__ import annotations

import contextlib
import gzip
import ssl
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.sinks.base import EventRecord


class _Result(msgspec.Struct, gc=False):
    accepted: int = 0
    rejected: int = 0


class PulseEventSink:
    def __init__(self, url: str, token: str, *, ca_file: str | None = None, insecure: bool = False,
                 use_gzip: bool = True, timeout: float = 10.0, name: str = "pulse",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.url = url
        self._token = token
        self.use_gzip = use_gzip
        self.timeout = timeout
        self._verify: ssl.SSLContext | bool = True
        if insecure:
            self._verify = False
        elif ca_file:
            self._verify = ssl.create_default_context(cafile=ca_file)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.rejected_items = 0  # items Pulse refused one by one (schema errors)
        self._where = f"event store {name} ({url})"

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, verify=self._verify, transport=self._transport,
                headers={"Authorization": f"Bearer {self._token}", "User-Agent": "qtap-async"},
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(self, values: list[bytes]) -> httpx.Response:
        await self.start()
        assert self._client is not None
        sent_at = datetime.now(UTC).isoformat().encode()
        body = b'{"events":[' + b",".join(values) + b'],"sent_at":"' + sent_at + b'"}'
        headers = {"Content-Type": "application/json"}
        if self.use_gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            return await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkTransientError(f"{self._where}: cannot reach the service: {type(exc).__name__}: {exc}") from exc

    async def check(self) -> None:
        """An empty batch proves the service answers and takes the token."""
        try:
            resp = await self._post([])
        except SinkTransientError as exc:
            raise SinkError(str(exc)) from exc
        if resp.status_code in (401, 403):
            raise SinkError(f"{self._where}: the token was refused (HTTP {resp.status_code}): {_text(resp)}")
        if resp.status_code >= 300:
            raise SinkError(f"{self._where}: HTTP {resp.status_code}: {_text(resp)}")

    async def send(self, batch: list[EventRecord]) -> None:
        resp = await self._post([r.value for r in batch])
        status = resp.status_code
        if 200 <= status < 300:
            with contextlib.suppress(msgspec.DecodeError):
                self.rejected_items += msgspec.json.decode(resp.content, type=_Result).rejected
            return
        msg = f"{self._where}: HTTP {status}: {_text(resp)}"
        if status in (401, 403, 408, 425, 429) or status >= 500:
            raise SinkTransientError(msg)
        raise SinkError(msg)


def _text(resp: Any) -> str:
    text: str = resp.text
    return text[:300]
