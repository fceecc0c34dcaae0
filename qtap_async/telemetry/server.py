"""The status server: /healthz, /readyz and /metrics over a deliberately small HTTP/1.1 subset.

Only GET and HEAD of three fixed paths, one request per connection (``Connection: close``), no request bodies.
Everything else is refused with a 4xx: a malformed request line 400, a request line or header block over the
limits 414/431, another method 405, a slow client 408. It never answers 5xx to what a client sends (/readyz's
503 is a state of the agent, not of the request). It binds loopback unless told otherwise, since /metrics
tells how much traffic which process makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from qtap_async.errors import StatusServerError
from qtap_async.telemetry import metrics
from qtap_async.telemetry.metrics import MetricRegistry
from qtap_async.telemetry.readiness import Readiness

log = logging.getLogger("qtap.status")

DEFAULT_LISTEN = "127.0.0.1:10001"
MAX_HEAD_BYTES = 8192  # request line + headers
MAX_TARGET_BYTES = 2048
HEAD_TIMEOUT_S = 10.0
MAX_CLIENTS = 32  # a scraper, two probes and a curl; more are refused by closing

_REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port); ``off`` -> None; StatusServerError naming the problem."""
    v = value.strip()
    if v.lower() in ("off", "none", "disabled", ""):
        return None
    host, sep, port_s = v.rpartition(":")
    if not sep or not host:
        raise StatusServerError(f"--status-listen must be HOST:PORT or off, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise StatusServerError(f"--status-listen: port must be a number, got {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise StatusServerError(f"--status-listen: port must be 0..65535, got {port}")
    return host, port


class StatusServer:
    def __init__(self, host: str, port: int, registry: MetricRegistry, readiness: Callable[[], Readiness]) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.readiness = readiness
        self.started = time.monotonic()
        self._server: asyncio.Server | None = None
        self._clients = 0
        self.requests: dict[int, int] = {}  # status code -> count (exported as metrics.STATUS_REQUESTS)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD_BYTES)
        except OSError as exc:
            raise StatusServerError(f"status server cannot listen on {self.host}:{self.port}: {exc.strerror}; "
                                    "pick another --status-listen HOST:PORT or `off`") from None
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("status server on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def snapshot(self) -> dict[str, int]:
        return {metrics.STATUS_REQUESTS.key(code=str(c)): n for c, n in sorted(self.requests.items())}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            status, ctype, body, head_only = await self._handle(reader)
            self.requests[status] = self.requests.get(status, 0) + 1
            head = (f"HTTP/1.1 {status} {_REASON[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n")
            writer.write(head.encode() + (b"" if head_only else body))
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients -= 1
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return self._error(408, "request head not received in time")
        except asyncio.LimitOverrunError:
            return self._error(431, f"request head over {MAX_HEAD_BYTES} bytes")
        except asyncio.IncompleteReadError as exc:
            if b"\r\n" not in exc.partial:
                return self._error(400, "incomplete request line")
            head = exc.partial + b"\r\n\r\n"
        line, _, _headers = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha():
            return self._error(400, "malformed request line")
        method, target = parts[0], parts[1]
        if len(target) > MAX_TARGET_BYTES:
            return self._error(414, f"request target over {MAX_TARGET_BYTES} bytes")
        if not target.isascii() or not target.startswith(b"/"):
            return self._error(400, "request target must be an ASCII path")
        if method not in (b"GET", b"HEAD"):
            return self._error(405, "only GET and HEAD")
        head_only = method == b"HEAD"
        path = target.split(b"?", 1)[0].decode()
        if path == "/healthz":
            body = msgspec.json.encode({"status": "alive", "uptime_s": round(time.monotonic() - self.started, 3)})
            return 200, "application/json", body + b"\n", head_only
        if path == "/readyz":
            st = self.readiness()
            return 200 if st.ready else 503, "application/json", msgspec.json.encode(st) + b"\n", head_only
        if path == "/metrics":
            return 200, METRICS_TYPE, self.registry.exposition(), head_only
        return self._error(404, "unknown path: /healthz, /readyz or /metrics")

    @staticmethod
    def _error(status: int, why: str) -> tuple[int, str, bytes, bool]:
        return status, "application/json", msgspec.json.encode({"error": why}) + b"\n", False
