"""A secret sent in a header, a cookie, the query string or a body never reaches the event stores,
whatever the plugins and levels; the object store gets it only at the levels that keep it."""

from __future__ import annotations

import msgspec

from qtap_async.config import loads_config
from qtap_async.topology import Graph
from tests.plugins.fakes import conn_close, conn_open, http_exchange_records, memory_runners
from tests.plugins.helpers import SECRET
from tests.topology.test_graph import drive

CONFIG = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  everything:
    plugins:
      - type: http_capture
        config: {level: full}
      - type: access_logs
        config: {mode: full}
      - type: report_usage
      - type: detect_errors
tap:
  http:
    stack: everything
"""

REQUEST = (
    f"POST /v1/users/12345/reset?token={SECRET}&page=2 HTTP/1.1\r\n"
    f"Host: api.example.com\r\nAuthorization: Bearer {SECRET}\r\nX-API-Key: {SECRET}\r\n"
    f"Cookie: session={SECRET}\r\nContent-Type: application/json\r\nContent-Length: {len(SECRET) + 16}\r\n\r\n"
    f'{{"password": "{SECRET}"}}'
).encode()
RESPONSE = (
    f"HTTP/1.1 500 Internal Server Error\r\nSet-Cookie: sid={SECRET}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(SECRET) + 12}\r\n\r\n"
    f'{{"echo": "{SECRET}"}}'
).encode()


async def test_secret_stays_out_of_events_but_reaches_objects() -> None:
    logged: list[str] = []
    runtime = Graph(loads_config(CONFIG), access_log=logged.append)
    ev, ob, er, orr = memory_runners()
    runtime.writer.events, runtime.writer.objects = [er], [orr]
    records = [conn_open(1, 100), *http_exchange_records(1, 100, REQUEST, RESPONSE), conn_close(1, 100, 9_000_000)]
    await drive(runtime, records, {100: "/usr/bin/curl"})
    types = [msgspec.json.decode(r.value)["type"] for r in ev.records]
    # The transaction was seen by every plugin (so the check below is not vacuous).
    for kind in ("connection", "http_transaction", "request", "issue", "object_ref"):
        assert kind in types, types
    for r in ev.records:
        assert SECRET.encode() not in r.value, r.value
    # Objects (full level) keep the secret in headers, query and bodies; the local log shows it too.
    assert ob.objects and all(SECRET.encode() in o.data for o in ob.objects)
    assert any(SECRET in line for line in logged)
