"""The OpenAPI 3.1 document of the Pulse HTTP API, built from the same Structs the handlers use."""

from __future__ import annotations

from typing import Any

import msgspec

from qtap_async.pulse.bounds import Event
from qtap_async.pulse.queries import QUERIES
from qtap_async.pulse.schema import IngestResult, PulseErrorBody

_REF = "#/components/schemas/{name}"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="PulseErrorBody")}}},
    }


_PARAM_DOCS = {
    "start": "Range start (inclusive): epoch nanoseconds or RFC 3339 with offset. Default: 24 h before `end`.",
    "end": "Range end (exclusive): epoch nanoseconds or RFC 3339 with offset. Default: now.",
    "limit": "Maximum rows returned.",
    "offset": "Rows skipped (paging).",
    "bucket": "Bucket width in seconds (at most 10,000 buckets per range).",
    "group_by": "`process` (pid, exe, container) or `container`.",
    "transaction_id": "The transaction whose object references to list.",
}

_AUTH_ERRORS = {
    "401": _error("Missing or invalid bearer token"),
    "403": _error("Token revoked or lacking the scope"),
}
# Answers of the connection and head limits (docs/security.md), possible on every operation.
_LIMIT_ERRORS = {
    "408": _error("Request head or body not received in time"),
    "429": _error("Too many connections or concurrent batches: retry after Retry-After seconds"),
    "431": _error("Request headers larger than limits.max_header_bytes"),
}


def build_openapi(version: str = "0.1.0") -> dict[str, Any]:
    types: list[Any] = [Event, IngestResult, PulseErrorBody]
    for q in QUERIES:
        types += [q.params, q.result]
    (schemas_refs, components) = msgspec.json.schema_components(types, ref_template=_REF)
    event_schema = schemas_refs[0]
    # Parameter structs describe query strings; they are not bodies.
    param_schemas = {q.params.__name__: components.pop(q.params.__name__, {}) for q in QUERIES}
    components.pop("_Range", None)

    paths: dict[str, Any] = {}
    ts_schema = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "description": "epoch nanoseconds"},
            {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
        ]
    }
    paths["/v1/events"] = {
        "post": {
            "operationId": "ingest_events",
            "summary": "Ingest a batch of events (JSON or msgpack, optionally gzip or zstd)",
            "description": (
                "The team and agent of every stored row come from the bearer token. Each item is "
                "validated on its own: invalid items get an entry in `errors` (index and reason), the "
                "valid rest is stored. Fields outside the schema (headers, bodies...) are dropped. "
                "`sent_at` (the agent's clock) lets Pulse correct a skewed agent clock."
            ),
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    media: {
                        "schema": {
                            "anyOf": [
                                {
                                    "type": "object",
                                    "properties": {
                                        "events": {"type": "array", "items": event_schema},
                                        "sent_at": {"anyOf": [*ts_schema["anyOf"], {"type": "null"}]},
                                    },
                                    "required": ["events"],
                                },
                                {"type": "array", "items": event_schema},
                            ]
                        }
                    }
                    for media in ("application/json", "application/msgpack")
                },
            },
            "responses": {
                "200": _result("Every event was stored"),
                "207": _result("Some events were stored; `errors` lists the rejected ones"),
                "422": _result("No event was stored; `errors` lists why"),
                "400": _error("The body is not a batch (malformed JSON/msgpack, wrong envelope)"),
                "413": _error("Body, decoded body or batch too large"),
                "415": _error("Unsupported Content-Type or Content-Encoding"),
                "503": _error("Storage unavailable: retry later"),
                **_AUTH_ERRORS,
                **_LIMIT_ERRORS,
            },
        }
    }
    for q in QUERIES:
        props: dict[str, Any] = param_schemas[q.params.__name__].get("properties", {})
        params = []
        for name, prop in props.items():
            schema = _param_schema(prop)
            in_path = "{" + name + "}" in q.path
            doc = _PARAM_DOCS.get(name, f"Only rows whose `{name}` equals this value.")
            params.append(
                {
                    "name": name,
                    "in": "path" if in_path else "query",
                    "required": in_path,
                    "schema": schema,
                    "description": doc,
                }
            )
        paths[q.path] = {
            "get": {
                "operationId": q.run.__name__,
                "summary": q.summary,
                "security": [{"bearer": []}],
                "parameters": params,
                "responses": {
                    "200": {
                        "description": "Rows, confined to the token's team",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": _REF.format(name=q.result.__name__)},
                                }
                            }
                        },
                    },
                    "422": _error("Invalid parameters"),
                    "503": _error("Storage unavailable"),
                    **_AUTH_ERRORS,
                    **_LIMIT_ERRORS,
                },
            }
        }
    plain = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "responses": {"200": {"description": "alive", **plain}, **_LIMIT_ERRORS},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: storage answers",
            "responses": {
                "200": {"description": "ready", **plain},
                "503": {"description": "not ready", **plain},
                **_LIMIT_ERRORS,
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text exposition format", **plain}, **_LIMIT_ERRORS},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qtap Pulse",
            "version": version,
            "description": "Ingestion and query service for qtap-async events, stored in ClickHouse.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _param_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the null branch and the null default."""
    schema = {k: v for k, v in prop.items() if not (k == "default" and v is None)}
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b != {"type": "null"}]
        schema.pop("anyOf")
        if len(branches) == 1:
            schema.update(branches[0])
        else:
            schema["anyOf"] = branches
    return schema


def _result(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="IngestResult")}}},
    }
