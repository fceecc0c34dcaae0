"""The object a captured transaction becomes: JSON or HTTP-like text, with what the level allows.

``details`` keeps headers and trailers; ``full`` adds the bodies (decoded when the parser decoded a
``content-encoding``). Bodies that are not UTF-8 are base64 in JSON and summarized in text.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import msgspec

from qtap_async.events.http import Headers
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.sinks.base import StoredObject

__all__ = ["render_object"]

_encode = msgspec.json.Encoder().encode


def _body(raw: bytes, decoded: bytes | None) -> bytes:
    return decoded if decoded is not None else raw


def _json_body(data: bytes) -> dict[str, Any]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _as_json(ex: HttpExchange, level: str, rule: str) -> bytes:
    tx, c, r = ex.tx, ex.conn, ex.redactor
    req: dict[str, Any] = {"method": tx.method, "url": ex.shown_url, "path": r.target(tx.path),
                           "headers": r.headers(tx.request_headers)}
    res: dict[str, Any] = {"status": tx.status, "headers": r.headers(tx.response_headers)}
    if tx.request_trailers:
        req["trailers"] = r.headers(tx.request_trailers)
    if tx.response_trailers:
        res["trailers"] = r.headers(tx.response_trailers)
    if level == "full":
        req["body"] = _json_body(_body(tx.request_body, tx.request_body_decoded))
        req["body_truncated"] = tx.request_body_truncated
        res["body"] = _json_body(_body(tx.response_body, tx.response_body_decoded))
        res["body_truncated"] = tx.response_body_truncated
    doc: dict[str, Any] = {
        "transaction_id": ex.id,
        "ts": ex.ts,
        "level": level,
        "rule": rule,
        "protocol": tx.protocol,
        "duration_ns": ex.duration_ns,
        "request": req,
        "response": res,
        "connection": msgspec.structs.asdict(c),
    }
    if tx.grpc is not None:
        doc["grpc"] = msgspec.structs.asdict(tx.grpc)
    if tx.pushed:
        doc["pushed"] = True
        doc["promised_by"] = tx.promised_by
    if tx.incomplete:
        doc["incomplete"] = True
        doc["reason"] = tx.reason
    return _encode(doc)


def _text_headers(lines: list[str], headers: Headers) -> None:
    lines.extend(f"{k}: {v}" for k, v in headers)


def _text_body(lines: list[str], data: bytes, truncated: bool) -> None:
    if not data:
        return
    lines.append("")
    try:
        lines.append(data.decode("utf-8"))
    except UnicodeDecodeError:
        lines.append(f"[{len(data)} bytes of binary data]")
    if truncated:
        lines.append("[truncated]")


def _as_text(ex: HttpExchange, level: str, rule: str) -> bytes:
    tx, c, r = ex.tx, ex.conn, ex.redactor
    version = "HTTP/2" if tx.protocol in ("h2", "h2c") else tx.protocol.upper()
    lines = [
        f"# {ex.ts} {c.exe or c.comm}[{c.pid}] {c.traffic} {c.src_ip}:{c.src_port} -> {c.dst_ip}:{c.dst_port}"
        f" level={level}" + (f" rule={rule!r}" if rule else ""),
        f"{tx.method or '-'} {r.target(tx.path) or '-'} {version}",
    ]
    if tx.authority and not any(k.lower() == "host" for k, _ in tx.request_headers):
        lines.append(f"host: {tx.authority}")
    _text_headers(lines, r.headers(tx.request_headers))
    if level == "full":
        _text_body(lines, _body(tx.request_body, tx.request_body_decoded), tx.request_body_truncated)
    lines.append("")
    lines.append(f"{version} {tx.status if tx.status is not None else '-'}")
    _text_headers(lines, r.headers(tx.response_headers))
    if level == "full":
        _text_body(lines, _body(tx.response_body, tx.response_body_decoded), tx.response_body_truncated)
    if tx.incomplete:
        lines.append(f"# incomplete: {tx.reason}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def render_object(ex: HttpExchange, level: Literal["details", "full"], fmt: Literal["json", "text"],
                  rule: str = "") -> StoredObject:
    """The transaction as an object for the object stores (named by the SHA-256 of its bytes)."""
    if fmt == "text":
        return StoredObject(_as_text(ex, level, rule), "text/plain; charset=utf-8", ex.conn.conn_id, ex.id)
    return StoredObject(_as_json(ex, level, rule), "application/json", ex.conn.conn_id, ex.id)
