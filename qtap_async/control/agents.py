"""Agents: joining with a registration token, the config they should run, their heartbeats, the push
channel (server-sent events) that tells them about a new active version, and the fleet listing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from qtap_async.control.auth import Principal, hash_secret, make_token, token_kind
from qtap_async.control.http import ApiError, client_address, json_body, json_response
from qtap_async.control.models import AgentConfig, AgentOut, AgentStatusIn, Registered, RegisterIn
from qtap_async.control.service import Control, Op
from qtap_async.errors import ControlAuthError
from qtap_async.telemetry.metrics import (
    CONTROL_AGENT_HEARTBEATS,
    CONTROL_AGENT_REFUSALS,
    CONTROL_AGENT_REGISTRATIONS,
    CONTROL_AUTH_FAILURES,
    CONTROL_PUSH_STREAMS,
)


async def register_agent(control: Control, request: Request, _: Principal | None) -> Response:
    body = await json_body(request, control.settings.limits, RegisterIn)
    reg = control.store.use_registration_token(hash_secret(body.registration_token)) \
        if token_kind(body.registration_token) == "qcr" else None
    if reg is None:
        control.metrics.inc(CONTROL_AUTH_FAILURES, kind="registration")
        raise ControlAuthError("invalid, expired, used up or revoked registration token", 401)
    reg_id, team, group = reg
    agent_id, token = make_token("qca")
    control.store.create_agent(agent_id, hash_secret(token), team, group, body.hostname, body.agent_version,
                               body.kernel, client_address(request))
    control.metrics.inc(CONTROL_AGENT_REGISTRATIONS)
    control.audit(request, f"agent:{agent_id}", team, "agent.register", agent_id, hostname=body.hostname,
                  group=group, registration_token=reg_id)
    return json_response(Registered(agent_id=agent_id, token=token, team=team, group=group,
                                    heartbeat_interval_s=control.settings.heartbeat_interval_s), 201)


def _agent(p: Principal | None) -> Principal:
    if p is None or p.kind != "agent":
        raise ControlAuthError("this endpoint takes an agent identity (the token `qtap run --control` got)", 403)
    return p


async def agent_config(control: Control, request: Request, p: Principal | None) -> Response:
    a = _agent(p)
    control.store.touch_agent(a.name, client_address(request))
    version = control.store.desired_version(a.team, a.group)
    if version is None:
        return Response(status_code=204)
    row = control.store.config(a.team, version)
    assert row is not None
    return json_response(AgentConfig(version=version, sha256=row[1], yaml=row[0]))


async def agent_status(control: Control, request: Request, p: Principal | None) -> Response:
    a = _agent(p)
    body = await json_body(request, control.settings.limits, AgentStatusIn)
    control.store.update_agent_status(a.name, address=client_address(request), health=body.health,
                                      running=body.running_version, refused=body.refused_version,
                                      reason=body.refused_reason, counters=body.counters,
                                      agent_version=body.agent_version, kernel=body.kernel)
    control.metrics.inc(CONTROL_AGENT_HEARTBEATS)
    if body.refused_version is not None and body.refused_reason:
        control.metrics.inc(CONTROL_AGENT_REFUSALS)
        control.audit(request, a.actor, a.team, "agent.refused", a.name, version=body.refused_version,
                      reason=body.refused_reason[:1000])
    return Response(status_code=204)


async def agent_events(control: Control, request: Request, p: Principal | None) -> Response:
    """``event: config`` with ``{"version": N}`` whenever the version this agent should run changes (and
    once at the start); a comment line every ``push_keepalive_s`` keeps proxies from closing the stream."""
    a = _agent(p)
    settings = control.settings

    async def stream() -> AsyncIterator[bytes]:
        sent: int | None = -1
        control.metrics.inc(CONTROL_PUSH_STREAMS)
        woken = True
        while True:
            wake = control.hub.waiter(a.team)
            if woken:  # the store is read only when something may have changed for the team
                version = control.hub.desired(a.team, a.group, control.store.desired_version)
                if version != sent:
                    sent = version
                    yield b"event: config\ndata: " + msgspec.json.encode({"version": version}) + b"\n\n"
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.push_keepalive_s):
                    await wake.wait()
                    woken = True
            if not woken:
                yield b": keepalive\n\n"
                control.store.touch_agent(a.name, client_address(request))

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def list_agents(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    return json_response(control.store.list_agents(team, control.settings.stale_after_s))


def _agent_id(request: Request) -> str:
    value = str(request.path_params.get("agent_id", ""))
    if not 0 < len(value) <= 64:
        raise ApiError(404, f"no agent {value!r}")
    return value


async def get_agent(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "viewer")
    agent_id = _agent_id(request)
    rows = control.store.list_agents(team, control.settings.stale_after_s, agent_id)
    if not rows:
        raise ApiError(404, f"no agent {agent_id!r} in team {team!r}")
    return json_response(rows[0])


async def remove_agent(control: Control, request: Request, p: Principal | None) -> Response:
    assert p is not None
    team = control.team_for(request, p, "admin")
    agent_id = _agent_id(request)
    if not control.store.revoke_agent(team, agent_id):
        raise ApiError(404, f"no agent {agent_id!r} in team {team!r}")
    control.audit(request, p.actor, team, "agent.remove", agent_id)
    return Response(status_code=204)


_AGENT_ID = {"name": "agent_id", "in": "path", "required": True,
             "schema": {"type": "string", "minLength": 1, "maxLength": 64}}

OPS = [
    Op("POST", "/api/v1/agents/register", register_agent, "An agent joins with a registration token",
       auth="none", role=None, body=RegisterIn, response=Registered, status=201, team_param=False,
       description="Answers the agent's identity (a token shown once) and its team and group."),
    Op("GET", "/api/v1/agents", list_agents, "Agents of the team: host, versions, health, counters, last seen",
       response=list[AgentOut]),
    Op("GET", "/api/v1/agents/{agent_id}", get_agent, "One agent", response=AgentOut, params=[_AGENT_ID]),
    Op("DELETE", "/api/v1/agents/{agent_id}", remove_agent, "Revoke an agent's identity (admin)", role="admin",
       write=True, status=204, params=[_AGENT_ID]),
    Op("GET", "/api/v1/agent/config", agent_config, "The config this agent should run (204: none active)",
       auth="agent", role=None, response=AgentConfig, team_param=False),
    Op("POST", "/api/v1/agent/status", agent_status,
       "Heartbeat: the version running (or refused, with the reason), health and counters",
       auth="agent", role=None, write=True, body=AgentStatusIn, status=204, team_param=False),
    Op("GET", "/api/v1/agent/events", agent_events, "Push channel (server-sent events): new active versions",
       auth="agent", role=None, team_param=False, streaming=True),
]
