"""What every handler shares: settings, store, authentication, limits, metrics, the push hub; plus the
operation table type (each route module lists its operations; app.py serves them, openapi.py documents
them)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from qtap_async.control.auth import SESSION_COOKIE, Authenticator, LoginLimiter, Principal
from qtap_async.control.http import ApiError, client_address
from qtap_async.control.oidc import OidcClient
from qtap_async.control.push import PushHub
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import Store
from qtap_async.errors import ControlAuthError
from qtap_async.pulse.metrics import Metrics
from qtap_async.telemetry.metrics import CONTROL


@dataclass
class Op:
    """One API operation. ``auth``: none | user | agent (checked by the app's wrapper). ``role``: the least
    role a user needs in the team (None: any authenticated user), enforced by the handler through
    ``Control.team_for`` since some handlers take the team from the body. ``body``: a Struct, "yaml" or None."""

    method: str
    path: str
    fn: Callable[[Control, Request, Principal | None], Awaitable[Response]]
    summary: str
    auth: str = "user"
    role: str | None = "viewer"
    write: bool = False
    body: Any = None
    body_optional: bool = False
    response: Any = None  # Struct type, list[Struct], or None (204)
    status: int = 200
    params: list[dict[str, Any]] = field(default_factory=list)
    team_param: bool = True
    errors: tuple[int, ...] = ()
    description: str = ""
    streaming: bool = False

    @property
    def op_id(self) -> str:
        return self.fn.__name__.lstrip("_")


class Control:
    def __init__(self, settings: ControlSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.auth = Authenticator(store, settings)
        lim = settings.login
        self.limiter = LoginLimiter(lim.max_failures_per_user, lim.max_failures_per_address, lim.window_s)
        self.metrics = Metrics(CONTROL)
        self.hub = PushHub()
        self.oidc: OidcClient | None = OidcClient(settings.oidc) if settings.oidc.enabled else None
        # argon2 hashing (tens of ms, 64 MiB) runs here, never on the event loop.
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="control")

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()
        self.executor.shutdown(wait=True)

    # -- who and which team ------------------------------------------------------------------------
    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is not None:
            return self.auth.from_token(self.auth.bearer(header))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return self.auth.from_session(cookie)
        raise ControlAuthError("authentication required: a bearer token or a session cookie", 401)

    def team_for(self, request: Request, principal: Principal, role: str | None) -> str:
        """The team a request acts on: ``?team=``, else the caller's only team; checked against ``role``."""
        team = request.query_params.get("team")
        if team is None:
            teams = sorted(principal.roles)
            if len(teams) != 1:
                raise ApiError(400, "you belong to several teams (or none): pass ?team=NAME" if teams
                               else "you belong to no team")
            team = teams[0]
        if len(team) > self.settings.limits.max_name_length:
            raise ApiError(422, "query parameter 'team': too long")
        if principal.role_in(team) is None:
            raise ControlAuthError(f"no access to team {team!r}", 403)
        if role is not None and not principal.can(team, role):
            raise ControlAuthError(f"needs the {role} role in team {team!r} (you are {principal.role_in(team)})", 403)
        return team

    # -- audit -------------------------------------------------------------------------------------
    def audit(self, request: Request | None, actor: str, team: str, action: str, target: str = "",
              **detail: Any) -> None:
        address = client_address(request) if request is not None else ""
        self.store.audit(actor, address, team, action, target, detail)
