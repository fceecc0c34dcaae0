"""Protocol records (transactions, DNS messages, TLS hellos, parse errors) -> output events.

A pure formatter: it reads the connection (already named by transforms/enrich.py) and changes nothing.
Each record becomes one JSON-ready mapping with its connection and process context, so a line of output
stands on its own. HTTP transactions are shaped for people and rules: method, path, authority, status,
timings in wall-clock time, and headers/bodies only as far as the capture level allows.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any, Literal

import msgspec

from qtap_async.context.containers import container_fields
from qtap_async.events.http import HttpTransaction, host_of
from qtap_async.plugins.redact import DEFAULT_REDACTOR, Redactor
from qtap_async.transforms.conntrack import Connection, Conntrack

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
Level = Literal["summary", "details", "full"]


def _type_name(rec: Any) -> str:
    cfg = getattr(type(rec), "__struct_config__", None)
    tag = getattr(cfg, "tag", None)
    if isinstance(tag, str):
        return tag
    return _CAMEL.sub("_", type(rec).__name__).lower()


class ProtocolOutput:
    """The local output's shape of each protocol record (``conntrack`` gives the wall clock)."""

    def __init__(self, conntrack: Conntrack, level: Level = "details", redactor: Redactor | None = None) -> None:
        self.conntrack = conntrack
        self.level = level
        self.redactor = redactor or DEFAULT_REDACTOR
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()

    def _event_id(self) -> str:
        return f"{self._id_prefix}-p{next(self._ids)}"

    def _context(self, conn: Connection, layer: int) -> dict[str, Any]:
        src_ip, src_port, dst_ip, dst_port = conn.endpoints()
        p = conn.process
        return {
            "conn_id": conn.conn_id,
            "direction": conn.direction,
            "tls": layer == 1,
            "src_ip": src_ip,
            "src_port": src_port,
            "dst_ip": dst_ip,
            "dst_port": dst_port,
            "pid": conn.pid,
            "exe": p.exe,
            "comm": p.comm,
            "container_id": p.container_id,
            **container_fields(p.container_id),
        }

    def convert(self, conn: Connection, rec: Any, layer: int, host: str | None = None) -> list[Any]:
        """``host``: the transaction's host when the caller has it already (transforms/enrich.py sets it)."""
        if isinstance(rec, HttpTransaction):
            return [self._http(conn, rec, layer, host_of(rec.authority) if host is None else host)]
        if not isinstance(rec, msgspec.Struct):
            return []
        body = msgspec.to_builtins(rec)
        body.pop("kind", None)  # the record's own tag; `type` says the same
        if "id" in body:  # a DNS message's own id; `id` names the event (stores de-duplicate by it)
            body["dns_id"] = body.pop("id")
        ts = body.get("ts_ns")
        event: dict[str, Any] = {"type": _type_name(rec), "id": self._event_id(),
                                 "ts": self.conntrack.rfc3339(ts if isinstance(ts, int) else conn.last_ns)}
        event.update(self._context(conn, layer))
        for k, v in body.items():
            if k not in event and k != "ts_ns":  # the record's ts_ns is monotonic; `ts` is wall-clock
                event[k] = v
        return [event]

    def _http(self, conn: Connection, tx: HttpTransaction, layer: int, host: str) -> dict[str, Any]:
        start = tx.request_start_ns or tx.response_start_ns or conn.last_ns
        p = conn.process
        if p.container_id and container_fields(p.container_id):
            ev: dict[str, Any] = {"type": "http_transaction", "id": self._event_id(),
                                  "ts": self.conntrack.rfc3339(start)}
            ev.update(self._context(conn, layer))
            ev.update(protocol=tx.protocol, method=tx.method, scheme=tx.scheme or ("https" if layer == 1 else "http"),
                      authority=tx.authority, host=host or conn.domain, path=self.redactor.target(tx.path),
                      status=tx.status, request_body_size=tx.request_body_size,
                      response_body_size=tx.response_body_size)
        else:
            # One literal, in _context's order (this runs per transaction; building the context dict and
            # merging it costs more than the fields themselves).
            if conn.direction == "ingress":
                src_ip, src_port, dst_ip, dst_port = conn.raddr, conn.rport, conn.laddr, conn.lport
            else:
                src_ip, src_port, dst_ip, dst_port = conn.laddr, conn.lport, conn.raddr, conn.rport
            ev = {"type": "http_transaction", "id": f"{self._id_prefix}-p{next(self._ids)}",
                  "ts": self.conntrack.rfc3339(start), "conn_id": conn.conn_id, "direction": conn.direction,
                  "tls": layer == 1, "src_ip": src_ip, "src_port": src_port, "dst_ip": dst_ip, "dst_port": dst_port,
                  "pid": conn.pid, "exe": p.exe, "comm": p.comm, "container_id": p.container_id,
                  "protocol": tx.protocol, "method": tx.method,
                  "scheme": tx.scheme or ("https" if layer == 1 else "http"), "authority": tx.authority,
                  "host": host or conn.domain, "path": self.redactor.target(tx.path), "status": tx.status,
                  "request_body_size": tx.request_body_size, "response_body_size": tx.response_body_size}
        if tx.response_end_ns and tx.request_start_ns:
            ev["duration_ns"] = tx.response_end_ns - tx.request_start_ns
        if tx.response_start_ns and tx.request_start_ns:
            ev["ttfb_ns"] = tx.response_start_ns - tx.request_start_ns
        if tx.stream_id is not None:
            ev["stream_id"] = tx.stream_id
        if tx.pushed:  # a server push: the server promised this exchange, no client asked for it
            ev["pushed"] = True
            ev["promised_by"] = tx.promised_by
        if tx.grpc is not None:
            ev["grpc"] = msgspec.structs.asdict(tx.grpc)
        if tx.upgrade:
            ev["upgrade"] = tx.upgrade
        if tx.informational:
            ev["informational"] = tx.informational
        if tx.incomplete:
            ev["incomplete"] = True
            ev["reason"] = tx.reason
        if self.level in ("details", "full"):
            r = self.redactor
            ev["request_headers"] = r.headers(tx.request_headers)
            ev["response_headers"] = r.headers(tx.response_headers)
            if tx.request_trailers:
                ev["request_trailers"] = r.headers(tx.request_trailers)
            if tx.response_trailers:
                ev["response_trailers"] = r.headers(tx.response_trailers)
        if self.level == "full":
            ev["request_body"] = tx.request_body_decoded if tx.request_body_decoded is not None else tx.request_body
            ev["response_body"] = (tx.response_body_decoded if tx.response_body_decoded is not None
                                   else tx.response_body)
            ev["request_body_truncated"] = tx.request_body_truncated
            ev["response_body_truncated"] = tx.response_body_truncated
        return ev
