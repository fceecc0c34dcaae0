"""The control plane's ASGI application (Starlette): the REST API, the web UI (/ui), /healthz, /readyz,
/metrics, /openapi.json.

Every operation goes through one wrapper that authenticates (bearer token or session cookie), checks
CSRF on writes made with a cookie, and turns every refusal into a JSON error with a 4xx status: a 5xx
only ever means a bug or an unavailable store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qtap_async.control import agents, routes_admin, routes_auth, routes_configs
from qtap_async.control.auth import CSRF_HEADER
from qtap_async.control.http import ApiError, error_response
from qtap_async.control.openapi import build_openapi
from qtap_async.control.service import Control, Op
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import Store, open_store
from qtap_async.errors import ControlAuthError, ControlError
from qtap_async.pulse.app import HeaderLimit
from qtap_async.telemetry.metrics import CONTROL_AUTH_FAILURES, CONTROL_HTTP_REQUESTS, CONTROL_REJECTED_REQUESTS

log = logging.getLogger("qtap.control")

OPS: list[Op] = [*routes_auth.OPS, *routes_admin.OPS, *routes_configs.OPS, *agents.OPS]


def _wrap(control: Control, op: Op) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        try:
            principal = None
            if op.auth != "none":
                principal = control.principal(request)
                if op.auth == "user" and principal.kind == "agent":
                    raise ControlAuthError("an agent identity cannot call the user API", 403)
                if op.auth == "agent" and principal.kind != "agent":
                    raise ControlAuthError("this endpoint takes an agent identity", 403)
                if op.write:
                    control.auth.check_csrf(principal, request.headers.get(CSRF_HEADER))
            response = await op.fn(control, request, principal)
        except ControlAuthError as e:
            control.metrics.inc(CONTROL_AUTH_FAILURES, status=str(e.status))
            headers = {"WWW-Authenticate": 'Bearer realm="qtap-control"'} if e.status == 401 else None
            response = error_response(ApiError(e.status, str(e), headers=headers))
        except ApiError as e:
            if 400 <= e.status < 500:
                control.metrics.inc(CONTROL_REJECTED_REQUESTS, status=str(e.status))
            response = error_response(e)
        except ControlError as e:
            if str(e).startswith("conflict"):
                response = error_response(ApiError(409, str(e)))
            else:
                log.warning("%s %s: %s", op.method, op.path, e)
                response = error_response(ApiError(503, "store unavailable; retry later", headers={"Retry-After": "1"}))
        control.metrics.inc(CONTROL_HTTP_REQUESTS, route=op.path, status=str(response.status_code))
        return response

    handler.__name__ = op.op_id
    return handler


def create_app(settings: ControlSettings, store: Store | None = None) -> Starlette:
    own_store = store is None
    the_store = store if store is not None else open_store(settings)
    control = Control(settings, the_store)

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        ok = control.store.ping()
        return Response("ready\n" if ok else "store unavailable\n", 200 if ok else 503, media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(control.metrics.render(), media_type="text/plain; version=0.0.4")

    spec = msgspec.json.encode(build_openapi(OPS))

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    # One Route per path, so a 405 lists every method the path has in its Allow header.
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for op in OPS:
        by_path.setdefault(op.path, {})[op.method] = _wrap(control, op)

    Handler = Callable[[Request], Awaitable[Response]]

    def dispatch(handlers: dict[str, Handler]) -> Handler:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        return endpoint

    # Fixed paths first: /configs/rollback must not be taken for /configs/{version}.
    paths = sorted(by_path, key=lambda p: p.count("{"))
    routes: list[BaseRoute] = [Route(path, dispatch(by_path[path]), methods=list(by_path[path])) for path in paths]
    routes += [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
               Route("/openapi.json", openapi)]
    ui = None
    if settings.ui.enabled:
        from qtap_async.control.ui import UiApp  # Jinja2 is loaded only when the UI is served

        ui = UiApp(control)
        routes += ui.routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = asyncio.create_task(control.hub.watch(control.store.activation_stamps, settings.push_poll_s),
                                      name="control-push-watch")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if ui is not None:
                await ui.aclose()
            await control.close()
            if own_store:
                the_store.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.control = control
    # h11 bounds a head that arrives in pieces; one that arrives in a single read is checked here (431).
    app.add_middleware(HeaderLimit, limit=settings.limits.max_header_bytes, metrics=control.metrics,
                       requests=CONTROL_HTTP_REQUESTS)
    return app
