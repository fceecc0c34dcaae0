"""Protocol records (transactions, DNS messages, TLS hellos, parse errors) -> output events.

Each record is flattened into one JSON-ready mapping with its connection and process context, so a line
of output stands on its own. The record's own `type` tag (or class name) becomes the event type.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from qtap_async.transforms.conntrack import Connection, Conntrack

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _type_name(rec: Any) -> str:
    cfg = getattr(type(rec), "__struct_config__", None)
    tag = getattr(cfg, "tag", None)
    if isinstance(tag, str):
        return tag
    return _CAMEL.sub("_", type(rec).__name__).lower()


class ProtocolOutput:
    def __init__(self, conntrack: Conntrack) -> None:
        self.conntrack = conntrack

    def convert(self, conn: Connection, rec: Any, layer: int) -> list[Any]:
        if isinstance(rec, msgspec.Struct):
            body = msgspec.structs.asdict(rec)
        elif isinstance(rec, dict):
            body = dict(rec)
        else:
            return []
        # What a TLS hello or Host header tells about the peer names the connection too.
        name = body.get("sni") or body.get("authority") or body.get("host")
        if isinstance(name, str) and name and not conn.domain:
            conn.domain = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        src_ip, src_port, dst_ip, dst_port = conn.endpoints()
        p = conn.process
        ts_ns = body.get("request_start_ns") or body.get("ts_ns") or conn.last_ns
        event: dict[str, Any] = {
            "type": _type_name(rec),
            "ts": self.conntrack.rfc3339(ts_ns if isinstance(ts_ns, int) else conn.last_ns),
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
        }
        for k, v in body.items():
            if k not in event and k != "type":
                event[k] = v
        return [event]
