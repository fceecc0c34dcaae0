"""Users, API tokens, registration tokens and the audit log."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from qtap_async.control.auth import Principal, hash_password, hash_secret, make_token
from qtap_async.control.http import ApiError, Query, json_body, json_response
from qtap_async.control.models import (
    ROLE_RANK,
    SCOPE_ROLE,
    AuditRecord,
    RegistrationTokenCreated,
    RegistrationTokenIn,
    RegistrationTokenOut,
    TokenCreated,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
)
from qtap_async.control.service import Control, Op
from qtap_async.errors import ControlAuthError, ControlError

_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
_OFFSET = {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}}


def _path(request: Request, name: str) -> str:
    value = str(request.path_params.get(name, ""))
    if not 0 < len(value) <= 64:
        raise ApiError(404, f"no {name} {value!r}")
    return value


# -- users ----------------------------------------------------------------------------------------


async def list_users(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    return json_response(control.store.list_users(team))


async def create_user(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    body = await json_body(request, control.settings.limits, UserIn)
    team = body.team or control.team_for(request, p, "admin")
    if not p.can(team, "admin"):
        raise ControlAuthError(f"needs the admin role in team {team!r}", 403)
    row = control.store.user_row(body.name)
    if row is None:
        pw = await control.blocking(hash_password, body.password) if body.password else None
        uid = control.store.create_user(body.name, "local", pw)
    elif control.store.memberships(row[0]).get(team):
        raise ApiError(409, f"user {body.name!r} is already in team {team!r}")
    else:
        if body.password:  # an existing account's password is its owner's, not another team's admin's
            raise ApiError(409, f"user {body.name!r} exists; add them without a password")
        uid = row[0]
    control.store.set_membership(uid, team, body.role)
    control.audit(request, p.actor, team, "user.create", body.name, role=body.role, password=bool(body.password))
    out = next(u for u in control.store.list_users(team) if u.name == body.name)
    return json_response(out, 201)


async def remove_user(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "admin")
    name = _path(request, "name")
    if name == p.name:
        raise ApiError(409, "you cannot remove yourself; another admin can")
    row = control.store.user_row(name)
    if row is None or not control.store.remove_membership(row[0], team):
        raise ApiError(404, f"no user {name!r} in team {team!r}")
    control.store.delete_user_sessions(row[0])
    if not control.store.memberships(row[0]):
        control.store.set_disabled(row[0], True)
    control.audit(request, p.actor, team, "user.remove", name)
    return Response(status_code=204)


# -- API tokens -----------------------------------------------------------------------------------


async def list_tokens(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    ids = control.store.user_ids_in_team(team) if p.can(team, "admin") else [p.user_id]
    return json_response(control.store.list_api_tokens(ids))


async def create_token(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    body = await json_body(request, control.settings.limits, TokenIn)
    scopes: list[str] = sorted(set(body.scopes))
    if p.kind == "token":
        # A token can only make tokens that can do no more than itself.
        mine = control.store.api_token_owner(p.token_id)
        have = max((ROLE_RANK[r] for r in p.roles.values()), default=0)
        if mine is None or any(ROLE_RANK[SCOPE_ROLE[s]] > have for s in scopes):
            raise ControlAuthError("a token cannot create a token with wider scopes than its own", 403)
    expires_at = time.time() + body.expires_in_s if body.expires_in_s else None
    token_id, token = make_token("qct")
    control.store.create_api_token(token_id, hash_secret(token), body.name, p.user_id, scopes, expires_at)
    for team in sorted(p.roles) or [""]:
        control.audit(request, p.actor, team, "token.create", token_id, name=body.name, scopes=scopes,
                      expires_at=expires_at)
    return json_response(TokenCreated(id=token_id, token=token, scopes=scopes, expires_at=expires_at), 201)


async def revoke_token(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    token_id = _path(request, "token_id")
    owner = control.store.api_token_owner(token_id)
    allowed = owner is not None and (owner == p.user_id or any(
        p.can(team, "admin") for team in control.store.memberships(owner)))
    if not allowed or owner is None:
        raise ApiError(404, f"no token {token_id!r}")
    if not control.store.revoke_api_token(token_id):
        raise ApiError(409, f"token {token_id!r} is already revoked")
    owner_name = control.store.user_name(owner) or ""
    for team in sorted(control.store.memberships(owner)) or [""]:
        control.audit(request, p.actor, team, "token.revoke", token_id, owner=owner_name)
    return Response(status_code=204)


# -- registration tokens --------------------------------------------------------------------------


async def list_registration_tokens(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "admin")
    return json_response(control.store.list_registration_tokens(team))


async def create_registration_token(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "admin")
    body = await json_body(request, control.settings.limits, RegistrationTokenIn, optional=True)
    token_id, token = make_token("qcr")
    expires_at = time.time() + body.expires_in_s if body.expires_in_s else None
    control.store.create_registration_token(token_id, hash_secret(token), team, body.group, p.actor, expires_at,
                                            body.max_uses)
    control.audit(request, p.actor, team, "registration_token.create", token_id, group=body.group,
                  expires_at=expires_at, max_uses=body.max_uses)
    return json_response(RegistrationTokenCreated(id=token_id, token=token, team=team, group=body.group), 201)


async def revoke_registration_token(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "admin")
    token_id = _path(request, "token_id")
    if not control.store.revoke_registration_token(team, token_id):
        raise ApiError(404, f"no active registration token {token_id!r} in team {team!r}")
    control.audit(request, p.actor, team, "registration_token.revoke", token_id)
    return Response(status_code=204)


# -- audit ----------------------------------------------------------------------------------------


async def query_audit(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    q = Query(request)
    try:
        rows = control.store.query_audit(
            team, action=q.text("action", max_length=64) or None, actor=q.text("actor", max_length=128) or None,
            since=q.opt_float("since"), limit=q.integer("limit", 100, 1, control.settings.limits.max_list_limit),
            offset=q.integer("offset", 0, 0, 10**9))
    except ControlError as e:
        raise ApiError(503, str(e)) from None
    return json_response(rows)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
_TOKEN_ID = {"name": "token_id", "in": "path", "required": True,
             "schema": {"type": "string", "minLength": 1, "maxLength": 64}}

OPS = [
    Op("GET", "/api/v1/users", list_users, "Users of the team and their roles", response=list[UserOut]),
    Op("POST", "/api/v1/users", create_user, "Add a user to the team (admin)", role="admin", write=True, body=UserIn,
       response=UserOut, status=201, errors=(409,),
       description="A new local user gets the password given (at least 12 characters; none: SSO only). "
                   "An existing user is added to the team with the role."),
    Op("DELETE", "/api/v1/users/{name}", remove_user, "Remove a user from the team (admin); ends their sessions",
       role="admin", write=True, status=204, params=[_NAME], errors=(409,)),
    Op("GET", "/api/v1/tokens", list_tokens, "API tokens: your own, or every team member's for an admin",
       response=list[TokenOut]),
    Op("POST", "/api/v1/tokens", create_token, "Create an API token for yourself (shown once)", role=None,
       write=True, body=TokenIn, response=TokenCreated, status=201, team_param=False,
       description="Scopes cap what the token may do: read = viewer, write = editor, admin = admin, in every "
                   "team of the user (never more than the user's own role)."),
    Op("DELETE", "/api/v1/tokens/{token_id}", revoke_token, "Revoke an API token (yours, or a team member's as admin)",
       role=None, write=True, status=204, params=[_TOKEN_ID], team_param=False, errors=(409,)),
    Op("GET", "/api/v1/registration-tokens", list_registration_tokens, "Registration tokens of the team (admin)",
       role="admin", response=list[RegistrationTokenOut]),
    Op("POST", "/api/v1/registration-tokens", create_registration_token,
       "Create a token agents use to join the team (admin; shown once)", role="admin", write=True,
       body=RegistrationTokenIn, body_optional=True, response=RegistrationTokenCreated, status=201),
    Op("DELETE", "/api/v1/registration-tokens/{token_id}", revoke_registration_token,
       "Revoke a registration token (admin); agents that joined with it keep their identity", role="admin",
       write=True, status=204, params=[_TOKEN_ID]),
    Op("GET", "/api/v1/audit", query_audit, "The team's audit log, newest first (append-only)",
       response=list[AuditRecord],
       params=[{"name": "action", "in": "query", "schema": {"type": "string", "maxLength": 64}},
               {"name": "actor", "in": "query", "schema": {"type": "string", "maxLength": 128}},
               {"name": "since", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1e11},
                "description": "epoch seconds"},
               _LIMIT, _OFFSET]),
]
