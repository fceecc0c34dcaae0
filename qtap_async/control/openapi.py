"""The OpenAPI 3.1 document of the control plane API, built from the operation table and its Structs."""

from __future__ import annotations

import typing
from typing import Any

import msgspec

from qtap_async.control.models import ErrorBody
from qtap_async.control.service import Op

_REF = "#/components/schemas/{name}"
_ERRORS = {
    400: "Malformed request (bad JSON, missing body)",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Authenticated, but the role, team, scope or CSRF token does not allow it",
    404: "No such resource in your team",
    409: "Conflict with the current state",
    413: "Body larger or deeper than the limits",
    415: "Unsupported Content-Type",
    422: "Invalid parameters or body (for configs: every problem with its field path and line)",
    429: "Too many failed logins",
    502: "The OIDC provider did not answer as expected",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}}}


def _types(ops: list[Op]) -> list[Any]:
    out: list[Any] = [ErrorBody]
    for op in ops:
        for t in (op.body, op.response):
            if t is None or t == "yaml":
                continue
            inner = typing.get_args(t)[0] if typing.get_origin(t) is list else t
            if inner not in out:
                out.append(inner)
    return out


def _schema_of(t: Any) -> dict[str, Any]:
    if typing.get_origin(t) is list:
        return {"type": "array", "items": {"$ref": _REF.format(name=typing.get_args(t)[0].__name__)}}
    return {"$ref": _REF.format(name=t.__name__)}


def build_openapi(ops: list[Op], version: str = "0.1.0") -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_types(ops), ref_template=_REF)
    paths: dict[str, Any] = {}
    team = {"name": "team", "in": "query", "required": False,
            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"},
            "description": "The team to act on (default: your only team)"}
    for op in ops:
        item: dict[str, Any] = {"operationId": op.op_id, "summary": op.summary}
        if op.description:
            item["description"] = op.description
        params = [*op.params]
        if op.team_param:
            params.append(team)
        if params:
            item["parameters"] = params
        if op.auth == "user":
            item["security"] = [{"bearer": []}, {"session": []}]
        elif op.auth == "agent":
            item["security"] = [{"bearer": []}]
        if op.body == "yaml":
            item["requestBody"] = {"required": True, "content": {
                media: {"schema": {"type": "string"}} for media in ("application/yaml", "text/yaml")}}
        elif op.body is not None:
            item["requestBody"] = {"required": not op.body_optional,
                                   "content": {"application/json": {"schema": _schema_of(op.body)}}}
        responses: dict[str, Any] = {}
        if op.streaming:
            responses["200"] = {"description": "server-sent events",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}}}
        elif op.status == 204:
            responses["204"] = {"description": "done"}
        elif op.status in (302, 303):
            responses[str(op.status)] = {"description": "redirect", "headers": {
                "Location": {"schema": {"type": "string"}}}}
        else:
            responses[str(op.status)] = {"description": "success",
                                         "content": {"application/json": {"schema": _schema_of(op.response)}}}
        codes = {400, 401, 403, 404, 409, 413, 415, 422, *op.errors}
        if op.auth == "none":
            codes.discard(403)
            codes |= {401, 403}
        for code in sorted(codes):
            responses[str(code)] = _error(_ERRORS.get(code, "error"))
        responses["503"] = _error("Store unavailable: retry later")
        item["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = item
    plain = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    for path, summary in (("/healthz", "Liveness"), ("/readyz", "Readiness: the store answers"),
                          ("/metrics", "Prometheus metrics")):
        responses = {"200": {"description": "ok", **plain}}
        if path == "/readyz":
            responses["503"] = {"description": "not ready", **plain}
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": summary, "responses": responses}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "qtap control plane", "version": version,
                 "description": "Users, roles and SSO; agent registration; versioned configs pushed to a fleet; "
                                "audit log. Holds configuration only, never payloads."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "qtap_session"},
            },
        },
    }
