"""Config versions: create (validated), list, get, diff, activate for a team or agent group, roll back."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from qtap_async.control.auth import Principal
from qtap_async.control.configs import Checked, InvalidConfig, check_config, diff
from qtap_async.control.http import ApiError, Query, json_body, json_response, path_int, yaml_body
from qtap_async.control.models import (
    ActivateIn,
    Activation,
    ConfigCreated,
    ConfigDetail,
    ConfigDiff,
    ConfigVersion,
)
from qtap_async.control.service import Control, Op
from qtap_async.telemetry.metrics import CONTROL_ACTIVATIONS, CONTROL_CONFIGS_CREATED, CONTROL_CONFIGS_REJECTED

_GROUP_RE = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"


def _group(q: Query) -> str:
    group = q.text("group", "", max_length=64)
    if not re.match(_GROUP_RE, group):
        raise ApiError(422, "query parameter 'group': letters, digits, '.', '_' or '-'")
    return group


def _activate(control: Control, request: Request, p: Principal, team: str, group: str, version: int,
              action: str) -> int | None:
    previous = control.store.activate(team, group, version, p.actor)
    control.metrics.inc(CONTROL_ACTIVATIONS, action=action)
    control.audit(request, p.actor, team, action, f"v{version}", group=group, version=version, previous=previous)
    control.hub.notify(team)
    return previous


def store_config(control: Control, request: Request, p: Principal, team: str, checked: Checked, comment: str) -> int:
    """Store a validated config as the team's next version, with its diff in the audit log (API and web UI)."""
    latest = control.store.list_configs(team, 1, 0)
    version = control.store.add_config(team, checked.text, checked.sha256, p.actor, comment)
    previous = control.store.config(team, latest[0].version) if latest else None
    old = previous[0] if previous else ""
    control.metrics.inc(CONTROL_CONFIGS_CREATED)
    # Configs hold no secret in clear (refused above), so the diff is safe to keep in the audit log.
    control.audit(request, p.actor, team, "config.create", f"v{version}", version=version, comment=comment,
                  sha256=checked.sha256, diff=diff(old, checked.text, f"v{latest[0].version}" if latest else "empty",
                                                   f"v{version}"))
    return version


def activate_version(control: Control, request: Request, p: Principal, team: str, group: str, version: int,
                     action: str) -> int | None:
    return _activate(control, request, p, team, group, version, action)


async def create_config(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "editor")
    q = Query(request)
    activate = q.flag("activate")
    group = _group(q)
    comment = q.text("comment", "", max_length=200)
    text = await yaml_body(request, control.settings.limits)
    try:
        checked = await control.blocking(check_config, text, control.settings.limits.max_yaml_depth)
    except InvalidConfig as e:
        control.metrics.inc(CONTROL_CONFIGS_REJECTED)
        raise ApiError(422, f"invalid config ({len(e.issues)} problem{'s' if len(e.issues) != 1 else ''})",
                       e.issues) from None
    version = store_config(control, request, p, team, checked, comment)
    if activate:
        _activate(control, request, p, team, group, version, "config.activate")
    return json_response(ConfigCreated(team=team, version=version, sha256=checked.sha256, activated=activate,
                                       warnings=checked.warnings), 201)


async def list_configs(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    q = Query(request)
    return json_response(control.store.list_configs(
        team, q.integer("limit", 100, 1, control.settings.limits.max_list_limit), q.integer("offset", 0, 0, 10**9)))


def _get(control: Control, team: str, version: int) -> tuple[str, str, str, float, str, list[str]]:
    row = control.store.config(team, version)
    if row is None:
        raise ApiError(404, f"no config version {version} in team {team!r}")
    return row


async def get_config(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    version = path_int(request, "version")
    text, sha, by, at, comment, active = _get(control, team, version)
    return json_response(ConfigDetail(team=team, version=version, sha256=sha, created_by=by, created_at=at,
                                      comment=comment, active_for=active, yaml=text))


async def diff_config(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    version = path_int(request, "version")
    against = Query(request).integer("against", max(version - 1, 0), 0, 10**12)
    new = _get(control, team, version)[0]
    old = _get(control, team, against)[0] if against else ""
    return json_response(ConfigDiff(team=team, from_version=against, to_version=version,
                                    diff=diff(old, new, f"v{against}", f"v{version}")))


async def activate_config(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "editor")
    version = path_int(request, "version")
    body = await json_body(request, control.settings.limits, ActivateIn, optional=True)
    _get(control, team, version)
    _activate(control, request, p, team, body.group, version, "config.activate")
    return json_response(next(a for a in control.store.activations(team) if a.group == body.group))


async def rollback_config(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "editor")
    body = await json_body(request, control.settings.limits, ActivateIn, optional=True)
    target = control.store.previous_activation(team, body.group)
    if target is None:
        raise ApiError(409, f"nothing to roll back to for group {body.group!r} in team {team!r}")
    _activate(control, request, p, team, body.group, target, "config.rollback")
    return json_response(next(a for a in control.store.activations(team) if a.group == body.group))


async def list_activations(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    return json_response(control.store.activations(team))


_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": 10**12}}
_PAGE = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
         {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}}]

OPS = [
    Op("POST", "/api/v1/configs", create_config, "Store a new config version (YAML body), optionally activating it",
       role="editor", write=True, body="yaml", response=ConfigCreated, status=201,
       params=[{"name": "activate", "in": "query", "schema": {"type": "boolean"},
                "description": "also make it active for the team (or ?group=) in the same call"},
               {"name": "group", "in": "query", "schema": {"type": "string", "pattern": _GROUP_RE, "maxLength": 64}},
               {"name": "comment", "in": "query", "schema": {"type": "string", "maxLength": 200}}],
       description="Validated with the agent's own validator; an invalid body gets 422 with every problem's "
                   "field path and line. Secrets in clear are refused: refer to them by environment variable."),
    Op("GET", "/api/v1/configs", list_configs, "Config versions of the team, newest first",
       response=list[ConfigVersion], params=_PAGE),
    Op("GET", "/api/v1/configs/{version}", get_config, "One config version with its YAML", response=ConfigDetail,
       params=[_VERSION]),
    Op("GET", "/api/v1/configs/{version}/diff", diff_config, "Unified diff between two versions",
       response=ConfigDiff,
       params=[_VERSION, {"name": "against", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                      "maximum": 10**12},
                          "description": "the older version (default: version - 1; 0: empty)"}]),
    Op("POST", "/api/v1/configs/{version}/activate", activate_config,
       "Make a version active for the team or one agent group", role="editor", write=True, body=ActivateIn,
       body_optional=True, response=Activation, params=[_VERSION]),
    Op("POST", "/api/v1/configs/rollback", rollback_config,
       "Activate again the version that was active before the current one", role="editor", write=True,
       body=ActivateIn, body_optional=True, response=Activation, errors=(409,)),
    Op("GET", "/api/v1/activations", list_activations, "Which version is active for the team and each group",
       response=list[Activation]),
]
