"""Sessions: local login (rate-limited), logout, who am I, and the OIDC single sign-on round trip."""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qtap_async.control.auth import Principal, hash_secret, verify_password
from qtap_async.control.http import ApiError, Query, client_address, json_body, json_response
from qtap_async.control.models import LoginIn, Me, Membership
from qtap_async.control.oidc import pkce_pair, roles_for_groups
from qtap_async.control.service import Control, Op
from qtap_async.errors import ControlAuthError, ControlError
from qtap_async.telemetry.metrics import CONTROL_LOGINS

_SAFE_NEXT = re.compile(r"^/[A-Za-z0-9/_.~-]{0,200}$")  # same-site paths only: never an open redirect


def _me(control: Control, p: Principal) -> Me:
    return Me(user=p.name, source=p.source, memberships=[Membership(team=t, role=r)  # type: ignore[arg-type]
                                                         for t, r in sorted(p.roles.items())],
              csrf_token=p.csrf or None, expires_at=p.expires_at, pulse_url=control.settings.pulse_url)


def _audit_teams(control: Control, user_id: str | None) -> list[str]:
    teams = sorted(control.store.memberships(user_id)) if user_id else []
    return teams or [""]


async def password_login(control: Control, request: Request, username: str, password: str) -> tuple[str, Principal]:
    """Check a local login (rate limits, audit, metrics) and open a session: (cookie value, principal).
    Shared by the API's POST /api/v1/login and the web UI's login form."""
    if len(password.encode()) > control.settings.limits.max_password_bytes:
        raise ApiError(422, f"password longer than {control.settings.limits.max_password_bytes} bytes")
    address = client_address(request)
    wait = control.limiter.retry_after(username, address)
    if wait > 0:
        control.metrics.inc(CONTROL_LOGINS, method="password", result="rate_limited")
        raise ApiError(429, "too many failed logins; try again later", headers={"Retry-After": str(int(wait) + 1)})
    row = control.store.user_row(username)
    stored = row[2] if row is not None and not row[3] else None
    ok = await control.blocking(verify_password, stored, password)
    if not ok or row is None:
        control.limiter.failed(username, address)
        control.metrics.inc(CONTROL_LOGINS, method="password", result="failed")
        for team in _audit_teams(control, row[0] if row else None):
            control.audit(request, username, team, "login.failed", username, method="password")
        raise ControlAuthError("wrong user name or password", 401)
    control.limiter.succeeded(username)
    cookie, csrf, expires = control.auth.new_session(row[0], "local", address)
    p = control.auth.user_principal(row[0], kind="session", source="local", csrf=csrf, expires_at=expires)
    control.metrics.inc(CONTROL_LOGINS, method="password", result="ok")
    for team in _audit_teams(control, row[0]):
        control.audit(request, p.name, team, "login", p.name, method="password")
    return cookie, p


async def login(control: Control, request: Request, _: Principal | None) -> Response:
    body = await json_body(request, control.settings.limits, LoginIn)
    cookie, p = await password_login(control, request, body.username, body.password)
    response = json_response(_me(control, p))
    response.headers["set-cookie"] = control.auth.cookie_header(cookie, int(control.settings.session_ttl_s))
    return response


async def logout(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    if p.kind == "session":
        control.store.delete_session(p.session_hash)
        for team in sorted(p.roles) or [""]:
            control.audit(request, p.name, team, "logout", p.name)
    response = Response(status_code=204)
    response.headers["set-cookie"] = control.auth.cookie_header("", 0)
    return response


async def me(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    return json_response(_me(control, p))


async def oidc_login(control: Control, request: Request, _: Principal | None) -> Response:
    if control.oidc is None:
        raise ApiError(404, "single sign-on is not configured (oidc.issuer)")
    next_path = Query(request).text("next", "/")
    if not _SAFE_NEXT.match(next_path):
        raise ApiError(422, "query parameter 'next': must be a path on this site, like /agents")
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    try:
        url = await control.oidc.authorization_url(state, nonce, challenge)
    except ControlError as e:
        raise ApiError(502, str(e)) from None
    control.store.put_oidc_login(hash_secret(state), verifier, nonce, next_path)
    return RedirectResponse(url, status_code=302)


async def oidc_callback(control: Control, request: Request, _: Principal | None) -> Response:
    if control.oidc is None:
        raise ApiError(404, "single sign-on is not configured (oidc.issuer)")
    q = Query(request)
    if q.text("error"):
        raise ApiError(401, f"the provider refused the login: {q.text('error')}")
    code, state = q.text("code", max_length=2048), q.text("state", max_length=256)
    if not code or not state:
        raise ApiError(422, "query parameters 'code' and 'state' are required")
    started = control.store.take_oidc_login(hash_secret(state), control.settings.oidc.login_timeout_s)
    if started is None:
        raise ControlAuthError("unknown or expired login state; start the login again", 401)
    verifier, nonce, next_path = started
    try:
        claims = await control.oidc.finish(code, verifier, nonce)
    except ControlAuthError:
        control.metrics.inc(CONTROL_LOGINS, method="oidc", result="failed")
        raise
    except ControlError as e:
        raise ApiError(502, str(e)) from None
    name, subject, groups = control.oidc.identity(claims)
    roles = roles_for_groups(groups, control.settings.oidc.group_roles)
    if not roles:
        control.metrics.inc(CONTROL_LOGINS, method="oidc", result="no_role")
        control.audit(request, name, "", "login.failed", name, method="oidc", reason="no group maps to a role",
                      groups=groups)
        raise ControlAuthError("none of your groups gives access to a team", 403)
    row = control.store.user_row(name)
    if row is None:
        uid = control.store.create_user(name, "oidc", None, subject)
    elif row[1] != "oidc":
        # Never merge an SSO identity into a local account of the same name.
        control.audit(request, name, "", "login.failed", name, method="oidc", reason="name taken by a local user")
        raise ControlAuthError(f"user {name!r} is a local account; log in with its password", 403)
    elif row[3]:
        raise ControlAuthError("user disabled", 403)
    else:
        uid = row[0]
    control.store.replace_memberships(uid, roles)  # the provider's groups decide, at every login
    cookie, _csrf, _exp = control.auth.new_session(uid, "oidc", client_address(request))
    control.metrics.inc(CONTROL_LOGINS, method="oidc", result="ok")
    for team in sorted(roles):
        control.audit(request, name, team, "login", name, method="oidc", groups=groups)
    response = RedirectResponse(next_path, status_code=303)
    response.headers["set-cookie"] = control.auth.cookie_header(cookie, int(control.settings.session_ttl_s))
    return response


OPS = [
    Op("POST", "/api/v1/login", login, "Log in with a local user name and password (sets the session cookie)",
       auth="none", role=None, body=LoginIn, response=Me, team_param=False, errors=(429,),
       description="Failed logins are limited per user name and per address (settings `login`); past the "
                   "limit the answer is 429 with Retry-After. The answer carries the session's CSRF token."),
    Op("POST", "/api/v1/logout", logout, "End the browser session", role=None, write=True, status=204,
       team_param=False),
    Op("GET", "/api/v1/me", me, "Who the credentials belong to, their teams and roles", role=None, response=Me,
       team_param=False),
    Op("GET", "/api/v1/auth/oidc/login", oidc_login, "Start single sign-on (302 to the provider)", auth="none",
       role=None, status=302, team_param=False, errors=(502,),
       params=[{"name": "next", "in": "query", "schema": {"type": "string", "maxLength": 200},
                "description": "Path to return to after the login"}]),
    Op("GET", "/api/v1/auth/oidc/callback", oidc_callback, "Finish single sign-on (the provider redirects here)",
       auth="none", role=None, status=303, team_param=False, errors=(502,),
       params=[{"name": n, "in": "query", "schema": {"type": "string", "maxLength": 2048}} for n in ("code", "state")]),
]
