"""Event store that POSTs batches to a Pulse ingestion service, through Pulse's own client
(``qtap_async.pulse.client.PulseClient``: ``POST <url>/v1/events``, bearer token, gzip JSON).

The client's own retries are off: the runner retries (with the spool behind it). 2xx and 422 are delivered,
except the items Pulse rejects one by one (207/422): those are returned to the runner, which counts them as
dropped ("rejected") and logs Pulse's reason; they are not retried (they would be rejected again); 408, 429, 5xx and
network errors are retried; 401/403 are retried too (a rotated token can be fixed without losing data,
which waits in the spool) but ``check`` reports them; other 4xx drop the batch.
"""

from __future__ import annotations

import ssl

import httpx
import msgspec

from qtap_async.errors import PulseClientError, SinkError, SinkTransientError
from qtap_async.pulse.client import PulseClient
from qtap_async.sinks.base import EventRecord, PartialRejection


class PulseEventSink:
    def __init__(self, url: str, token: str, *, ca_file: str | None = None, insecure: bool = False,
                 use_gzip: bool = True, timeout: float = 10.0, name: str = "pulse",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.url = url
        self._token = token
        self.use_gzip = use_gzip
        self.timeout = timeout
        if transport is None and (insecure or ca_file):
            verify: ssl.SSLContext | bool = False if insecure else ssl.create_default_context(cafile=ca_file)
            transport = httpx.AsyncHTTPTransport(verify=verify)
        self._transport = transport
        self._client: PulseClient | None = None
        self.rejected_items = 0  # items Pulse refused one by one (schema errors)
        self._where = f"event store {name} ({url})"

    async def start(self) -> None:
        if self._client is None:
            self._client = PulseClient(self.url, self._token, max_retries=0, timeout=self.timeout,
                                       compression="gzip" if self.use_gzip else "none",
                                       transport=self._transport)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _send(self, values: list[bytes]) -> PartialRejection | None:
        await self.start()
        assert self._client is not None
        try:
            result = await self._client.send([msgspec.Raw(v) for v in values])
        except PulseClientError as exc:
            # status 0: the client gave up (it retries nothing here): unreachable, or 408/429/5xx, all transient.
            if exc.status in (401, 403):
                raise SinkTransientError(f"{self._where}: the token was refused (HTTP {exc.status}): {exc}") from exc
            if exc.status:
                raise SinkError(f"{self._where}: {exc}") from exc
            raise SinkTransientError(f"{self._where}: {exc}") from exc
        self.rejected_items += result.rejected
        if not result.rejected:
            return None
        errors = [e for e in result.errors if 0 <= e.index < len(values)]
        if len(errors) != result.rejected:  # an answer we cannot map to records: say so, count them all
            return PartialRejection(list(range(len(values)))[: result.rejected],
                                    [f"pulse rejected {result.rejected} events: {result.errors[:3]}"] * result.rejected)
        return PartialRejection([e.index for e in errors], [e.error for e in errors])

    async def check(self) -> None:
        """An empty batch proves the service answers and takes the token."""
        try:
            await self._send([])
        except SinkTransientError as exc:
            raise SinkError(str(exc)) from exc

    async def send(self, batch: list[EventRecord]) -> PartialRejection | None:
        return await self._send([r.value for r in batch])
