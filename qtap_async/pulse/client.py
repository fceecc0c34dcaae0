"""Agent side: a minimal Pulse event-store client (batched POST with a bearer token, retries).

    async with PulseClient("http://127.0.0.1:8428", token) as client:
        await client.add({"type": "request", "id": "...", "ts": time.time_ns(), ...})
        ...                       # sends every ``max_batch`` events or ``max_delay`` seconds
    # leaving the block flushes what is left

``send(events)`` posts one batch and returns the server's IngestResult. Connection errors, timeouts,
429 and 5xx are retried with exponential backoff and jitter (the server de-duplicates by event id, so a
retry of a batch that was in fact stored is harmless); any other 4xx raises PulseClientError at once.
Events are msgspec Structs from qtap_async.events or plain dicts in the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import httpx
import msgspec

from qtap_async.errors import PulseClientError
from qtap_async.pulse.schema import IngestResult
from qtap_async.pulse.wire import Coding, Compressor

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class PulseClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_batch: int = 1000,
        max_delay: float = 1.0,
        max_retries: int = 5,
        backoff: float = 0.2,
        timeout: float = 10.0,
        compression: Coding = "gzip",
        encoding: Literal["json", "msgpack"] = "json",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/events"
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_retries = max_retries
        self.backoff = backoff
        self.compression = compression
        self.encoding = encoding
        self._encode = msgspec.msgpack.encode if encoding == "msgpack" else msgspec.json.encode
        self._compress = Compressor(compression)
        self._headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/msgpack" if encoding == "msgpack" else "application/json",
        }
        if self._compress.content_encoding is not None:
            self._headers["content-encoding"] = self._compress.content_encoding
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._buffer: list[Any] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.sent_events = 0
        self.rejected_events = 0
        self.retries = 0

    async def __aenter__(self) -> PulseClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def add(self, event: Any) -> None:
        """Queue one event; sends a batch when ``max_batch`` are queued (waiting for that send)."""
        self._raise_kept()
        self._buffer.append(event)
        if len(self._buffer) >= self.max_batch:
            await self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_delay, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        self._flush_task = asyncio.ensure_future(self.flush())
        self._flush_task.add_done_callback(self._keep_error)

    def _keep_error(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._error = task.exception()

    def _raise_kept(self) -> None:
        """A batch the timer sent failed: say so at the caller's next call, not never."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def flush(self) -> None:
        """Send everything queued, in batches of at most ``max_batch``."""
        self._raise_kept()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            while self._buffer:
                batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
                await self.send(batch)

    def _body(self, events: Sequence[Any]) -> bytes:
        return self._compress(self._encode({"events": list(events), "sent_at": time.time_ns()}))

    async def send(self, events: Sequence[Any]) -> IngestResult:
        """POST one batch, retrying transient failures; the server's per-item result."""
        body = self._body(events)
        attempt = 0
        while True:
            try:
                resp = await self._http.post(self.url, content=body, headers=self._headers)
            except httpx.TransportError as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code in (200, 207, 422):
                    result = msgspec.json.decode(resp.content, type=IngestResult)
                    self.sent_events += result.accepted
                    self.rejected_events += result.rejected
                    return result
                if resp.status_code not in _RETRY_STATUS:
                    raise PulseClientError(
                        f"pulse refused the batch: {resp.status_code} {resp.text[:300]}", resp.status_code
                    )
                reason = f"HTTP {resp.status_code}"
            attempt += 1
            if attempt > self.max_retries:
                raise PulseClientError(f"pulse: giving up after {self.max_retries} retries ({reason})")
            self.retries += 1
            await asyncio.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._flush_task is not None and not self._flush_task.done():
                with contextlib.suppress(Exception):
                    await self._flush_task
            await self._http.aclose()
        self._raise_kept()
