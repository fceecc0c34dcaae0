"""Building exchanges for the plugin tests: hand-built transactions and recorded ones."""

from __future__ import annotations

import itertools
from typing import Any

from qtap_async.events.http import HttpTransaction
from qtap_async.plugins import ConnContext, HttpExchange
from qtap_async.protocols import Limits
from tests.protocols.record import load, replay

_ids = itertools.count(1)

SECRET = "s3cr3t-T0KEN-value-4242"


def tx(**kw: Any) -> HttpTransaction:
    base: dict[str, Any] = {
        "protocol": "http/1.1",
        "client_direction": 0,
        "method": "GET",
        "path": "/v1/items",
        "authority": "api.example.com",
        "status": 200,
        "request_headers": [("Host", "api.example.com"), ("User-Agent", "curl/8.0")],
        "response_headers": [("Content-Type", "application/json"), ("Content-Length", "2")],
        "response_body": b"{}",
        "response_body_size": 2,
        "request_start_ns": 1_000_000,
        "request_end_ns": 1_100_000,
        "response_start_ns": 3_000_000,
        "response_end_ns": 5_000_000,
    }
    base.update(kw)
    return HttpTransaction(**base)


def conn(**kw: Any) -> ConnContext:
    base: dict[str, Any] = {
        "conn_id": 77,
        "pid": 4242,
        "exe": "/usr/bin/curl",
        "comm": "curl",
        "direction": "egress",
        "src_ip": "10.0.0.5",
        "src_port": 50000,
        "dst_ip": "93.184.216.34",
        "dst_port": 443,
        "tls": True,
        "container_id": "",
    }
    # Tests name the classified direction (what rules see as conn.direction) and the peer's address; the
    # context stores who opened the connection and both ends.
    traffic = kw.pop("direction", "egress-external")
    base["direction"] = "ingress" if traffic == "ingress" else "egress"
    remote = kw.pop("remote_ip", None)
    if remote is not None:
        base["src_ip" if traffic == "ingress" else "dst_ip"] = remote
    base.update(kw)
    return ConnContext(**base)


def exchange(t: HttpTransaction | None = None, c: ConnContext | None = None) -> HttpExchange:
    return HttpExchange(t or tx(), c or conn(), id=f"test-{next(_ids)}", ts="2026-11-27T07:00:00.000000Z",
                        ts_ns=1_800_000_000_000_000_000)


def recorded(name: str, *, decode_bodies: bool = False) -> list[HttpTransaction]:
    """The transactions of a recording in tests/data/streams (real clients and servers)."""
    limits = Limits(decode_bodies=decode_bodies)
    return [r for r in replay(load(name), limits=limits) if isinstance(r, HttpTransaction)]


def secret_transaction() -> HttpTransaction:
    """A request carrying SECRET in a header, the query string, a cookie and both bodies."""
    return tx(
        method="POST",
        path=f"/v1/users/12345/reset?token={SECRET}&page=2",
        request_headers=[("Host", "api.example.com:8443"), ("Authorization", f"Bearer {SECRET}"),
                         ("X-Api-Key", SECRET), ("Cookie", f"session={SECRET}"), ("User-Agent", "curl/8.0"),
                         ("Content-Type", "application/json")],
        request_body=f'{{"password": "{SECRET}"}}'.encode(),
        request_body_size=30,
        status=500,
        response_headers=[("Content-Type", "application/json"), ("Set-Cookie", f"sid={SECRET}")],
        response_body=f'{{"echo": "{SECRET}"}}'.encode(),
        response_body_size=30,
    )
