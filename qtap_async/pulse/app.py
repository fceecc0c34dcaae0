"""The Pulse ASGI application (Starlette): ingestion, query API, health, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from qtap_async.errors import BodyError, PulseAuthError, PulseError, QueryError
from qtap_async.pulse import rollups
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.ingest import BatchWriter, Sanitizer, decode_body
from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.openapi import build_openapi
from qtap_async.pulse.queries import QUERIES, QuerySpec
from qtap_async.pulse.schema import IngestResult, PulseErrorBody
from qtap_async.pulse.storage import Storage, open_storage
from qtap_async.pulse.tokens import Caller, TokenStore
from qtap_async.telemetry.metrics import (
    PULSE_AUTH_FAILURES,
    PULSE_HTTP_REQUESTS,
    PULSE_INGEST_BUSY,
    PULSE_QUERY_SECONDS,
    PULSE_ROLLUP_ERRORS,
    PULSE_ROLLUP_HOURS,
    MetricDef,
)

log = logging.getLogger("qtap.pulse")
_encode = msgspec.json.Encoder().encode


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(PulseErrorBody(message), status, headers)


_INT = re.compile(r"^-?[0-9]{1,20}$")


@functools.cache
def _integer_fields(params: type[msgspec.Struct]) -> frozenset[str]:
    info = msgspec.inspect.type_info(params)
    assert isinstance(info, msgspec.inspect.StructType)
    out = set()
    for f in info.fields:
        types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        if any(isinstance(t, msgspec.inspect.IntType) for t in types):
            out.add(f.name)
    return frozenset(out)


def parse_params(params: type[msgspec.Struct], raw: dict[str, str]) -> Any:
    """Query-string values into ``params``, strictly: integers are plain decimal digits (no "1.0",
    "1e3" or "null"), times are epoch ns digits or RFC 3339 with an offset, enums exact."""
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _integer_fields(params) and _INT.match(value):
            typed[key] = int(value)
        else:
            typed[key] = value
    return msgspec.convert(typed, params)


class Pulse:
    """Everything the handlers share. ``storage``/``tokens`` may be handed in (tests share one engine)."""

    def __init__(self, config: PulseConfig, storage: Storage | None = None, tokens: TokenStore | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.sanitizer = Sanitizer(config.limits, config.retention, self.metrics)
        self._own_storage = storage is None
        self._own_tokens = tokens is None
        self.storage: Storage | None = storage
        self.tokens = tokens if tokens is not None else TokenStore(config.tokens_path)
        # Bounds the memory ingestion can hold: each slot is one body being read, decoded and validated.
        self.ingest_slots = asyncio.Semaphore(config.limits.max_concurrent_ingest)
        self.executor = ThreadPoolExecutor(config.query_threads, thread_name_prefix="pulse")
        self.writer: BatchWriter | None = None
        # Background tasks started with the app (the Kafka consumer), stopped before the writer.
        self.background: list[Callable[[Pulse], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def start(self) -> None:
        if self.storage is None:
            self.storage = await self.run_blocking(open_storage, self.config)
        assert self.storage is not None
        self.writer = BatchWriter(self.storage, self.run_blocking, self.metrics)
        self.writer.start()
        jobs = [*self.background, *([_keep_rollups] if rollups.enabled(self.config) else [])]
        self._tasks = [asyncio.create_task(job(self)) for job in jobs]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.writer is not None:
            await self.writer.close()
        if self._own_storage and self.storage is not None:
            await self.run_blocking(self.storage.close)
        if self._own_tokens:
            self.tokens.close()
        self.executor.shutdown(wait=True)

    def authenticate(self, request: Request, scope: str) -> Caller:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if not header:
            raise PulseAuthError("missing bearer token", 401)
        limit = self.config.limits.max_auth_header_bytes
        if len(header) > limit:
            raise PulseAuthError(f"authorization header is {len(header)} bytes; the limit is {limit}", 401)
        if kind.lower() != "bearer" or not token.strip():
            raise PulseAuthError("authorization must be 'Bearer <token>'", 401)
        return self.tokens.authenticate(token.strip(), scope)


ROLLUP_INTERVAL_S = 5.0


async def _keep_rollups(pulse: Pulse) -> None:
    """Build the hours that got rows and have been quiet since (pulse/rollups.py), every few seconds."""
    while True:
        await asyncio.sleep(ROLLUP_INTERVAL_S)
        storage = pulse.storage
        if storage is None:
            continue
        try:
            built = await pulse.run_blocking(rollups.refresh, storage)
        except PulseError as e:
            # Queries stay right without the rollups (they read the raw rows); the next round retries.
            pulse.metrics.inc(PULSE_ROLLUP_ERRORS)
            log.warning("pulse: building rollups failed: %s", e)
            continue
        if built:
            pulse.metrics.inc(PULSE_ROLLUP_HOURS, built)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, f"body not received within {timeout_s:g} s ({size} bytes so far)") from None
    return b"".join(chunks)


def create_app(config: PulseConfig, storage: Storage | None = None, tokens: TokenStore | None = None) -> Starlette:
    pulse = Pulse(config, storage, tokens)

    def auth_response(e: PulseAuthError) -> Response:
        pulse.metrics.inc(PULSE_AUTH_FAILURES, 1, status=str(e.status))
        headers = {"WWW-Authenticate": 'Bearer realm="pulse"'} if e.status == 401 else None
        return _error(e.status, str(e), headers)

    async def ingest(request: Request) -> Response:
        try:
            principal = pulse.authenticate(request, "ingest")
        except PulseAuthError as e:
            return auth_response(e)
        received_ns = time.time_ns()
        limits = config.limits
        try:
            async with asyncio.timeout(limits.ingest_queue_timeout_s):
                await pulse.ingest_slots.acquire()
        except TimeoutError:
            pulse.metrics.inc(PULSE_INGEST_BUSY, 1)
            return _error(429, f"{limits.max_concurrent_ingest} batches are being decoded; retry later",
                          {"Retry-After": "1"})
        try:
            return await ingest_one(request, principal, received_ns)
        finally:
            pulse.ingest_slots.release()

    async def ingest_one(request: Request, principal: Caller, received_ns: int) -> Response:
        try:
            body = await _read_body(request, config.limits.max_body_bytes, config.limits.body_timeout_s)

            def work() -> Any:
                decoded = decode_body(
                    body,
                    request.headers.get("content-type", "application/json"),
                    request.headers.get("content-encoding", ""),
                    config.limits,
                )
                return pulse.sanitizer.prepare(
                    decoded.fmt,
                    decoded.items,
                    principal.team,
                    principal.agent,
                    received_ns,
                    decoded.sent_at,
                    decoded.data,
                )

            prepared = await pulse.run_blocking(work)
        except BodyError as e:
            return _error(e.status, str(e))
        assert pulse.writer is not None
        try:
            await pulse.writer.write(prepared.rows)
        except PulseError as e:
            log.warning("insert failed: %s", e)
            return _error(503, "storage unavailable; retry later", {"Retry-After": "1"})
        result: IngestResult = prepared.result
        status = 200 if result.rejected == 0 else (422 if result.accepted == 0 else 207)
        return _json(result, status)

    def query_endpoint(spec: QuerySpec) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                principal = pulse.authenticate(request, "query")
            except PulseAuthError as e:
                return auth_response(e)
            try:
                params = parse_params(spec.params, {**request.query_params, **request.path_params})
            except msgspec.ValidationError as e:
                return _error(422, str(e))
            t0 = time.perf_counter()
            try:
                rows = await pulse.run_blocking(spec.run, pulse.storage, principal.team, params)
            except QueryError as e:
                return _error(e.status, str(e))
            except PulseError as e:
                log.warning("query %s failed: %s", spec.path, e)
                return _error(503, "storage unavailable; retry later", {"Retry-After": "1"})
            pulse.metrics.observe(PULSE_QUERY_SECONDS, time.perf_counter() - t0, route=spec.path)
            return _json(rows)

        return handler

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        ok = pulse.storage is not None and await pulse.run_blocking(pulse.storage.ping)
        return Response("ready\n" if ok else "storage unavailable\n", 200 if ok else 503, media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(pulse.metrics.render(), media_type="text/plain; version=0.0.4")

    spec_bytes = _encode(build_openapi())

    async def openapi(request: Request) -> Response:
        return Response(spec_bytes, media_type="application/json")

    def counted(
        path: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            response = await handler(request)
            pulse.metrics.inc(PULSE_HTTP_REQUESTS, 1, route=path, status=str(response.status_code))
            return response

        return wrapper

    endpoints: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/v1/events", ingest, "POST"),
        *((q.path, query_endpoint(q), "GET") for q in QUERIES),
        ("/healthz", healthz, "GET"),
        ("/readyz", readyz, "GET"),
        ("/metrics", metrics, "GET"),
        ("/openapi.json", openapi, "GET"),
    ]
    routes = [Route(path, counted(path, fn), methods=[method]) for path, fn, method in endpoints]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pulse.start()
        try:
            yield
        finally:
            await pulse.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.pulse = pulse
    app.add_middleware(HeaderLimit, limit=config.limits.max_header_bytes, metrics=pulse.metrics)
    return app


class HeaderLimit:
    """431 for a request whose header fields are over ``limit`` bytes. The h11 parser only bounds a head
    that arrives in pieces; one that arrives in a single read is parsed whole, so the size is checked
    here. The request target is not counted: query values have their own length limits (422)."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics, requests: MetricDef = PULSE_HTTP_REQUESTS) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.requests = requests  # the counter of answers by route and status (the control plane has its own)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.limit:
                self.metrics.inc(self.requests, 1, route="*", status="431")
                response = _error(431, f"request headers are {size} bytes; the limit is {self.limit}",
                                  {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
