"""Connection-level limits uvicorn does not enforce by itself: a cap on open connections and a
deadline for each request head.

uvicorn's own ``limit_concurrency`` answers 503 (a server fault) and arms no timer before the first
byte, so an idle or trickling client (slowloris) holds a connection for ever. ``guarded_protocol``
builds an h11 protocol class that answers 429 to a connection over ``max_connections`` and 408 to a
request head not complete within ``header_timeout_s``; both close the connection. h11 is used (not
httptools) because it bounds the size of a request head (``h11_max_incomplete_event_size``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.schema import PulseErrorBody
from qtap_async.telemetry.metrics import PULSE_CONNECTIONS_REFUSED, MetricDef

__all__ = ["guarded_protocol"]


def _canned(status: int, reason: str, message: str, retry_after: bool = False) -> bytes:
    body = msgspec.json.encode(PulseErrorBody(message))
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(max_connections: int, header_timeout_s: float, metrics: Metrics,
                     refused: MetricDef = PULSE_CONNECTIONS_REFUSED) -> type[H11Protocol]:
    """The protocol class; each refusal counts ``refused`` by reason (the control plane passes its own)."""
    too_many = _canned(429, "Too Many Requests", f"too many connections (limit {max_connections}); retry later",
                       retry_after=True)
    too_slow = _canned(408, "Request Timeout", f"request head not received within {header_timeout_s:g} s")

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                metrics.inc(refused, 1, reason="max_connections")
                transport.write(too_many)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_head():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_head():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head has the same deadline, counted from now (uvicorn's keep-alive
            # timer still closes an idle connection sooner).
            if not self.transport.is_closing() and self._waiting_for_head():
                self._disarm()
                self._arm()

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._waiting_for_head():
                return
            metrics.inc(refused, 1, reason="header_timeout")
            self.transport.write(too_slow)
            self.transport.close()

        def connection_lost(self, exc: Any) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol
