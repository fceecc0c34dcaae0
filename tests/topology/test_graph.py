"""The graph of a config driven with hand-made kernel records: filters, stacks and stores as one run
uses them, and reloads (all or nothing)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.buffers.channel import Channel
from qtap_async.config import loads_config
from qtap_async.plugins import HttpTransactionEvent
from qtap_async.replay import RecordFile, Replayer, comparable
from qtap_async.topology import Graph
from qtap_async.topology.graph import AgentOptions, summary_session_factory
from qtap_async.topology.writer import StdoutWriter
from qtap_async.transforms.conntrack import Conntrack, default_session_factory
from tests.plugins.fakes import (
    FixedProcesses,
    conn_close,
    conn_open,
    data,
    http_exchange_records,
    memory_runners,
)

GET = b"GET /bytes?n=3 HTTP/1.1\r\nHost: %s\r\nUser-Agent: t\r\n\r\n"
OK = b"HTTP/1.1 %d X\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc"


def config(level: str = "summary", extra_tap: str = "", services: str = "") -> str:
    return f"""
version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: {services or 'stdout'}}}]
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: {level}
          rules:
            - name: failures
              expr: http.res.status >= 400
              level: full
  light:
    plugins:
      - type: report_usage
tap:
  direction: egress
  http:
    stack: default
{extra_tap}
"""


async def drive(runtime: Graph, records: list[Any], exes: dict[int, str]) -> Conntrack:
    """Feed kernel records through the graph's stage (conntrack, enrichment, dispatch), then run the
    writer to the end."""
    ct = runtime.conntrack
    ct.processes = FixedProcesses(exes)
    rx: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    for rec in records:
        out = runtime.stage.handle(rec)
        if out:
            rx.send_nowait(out)
    rx.close()
    await runtime.writer.run(rx)
    return ct


def decoded(records: list[Any]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(r.value) for r in records]


def one_request(conn_id: int, pid: int, host: bytes = b"api.example.com", status: int = 200,
                **kw: Any) -> list[Any]:
    return [conn_open(conn_id, pid, **kw), *http_exchange_records(conn_id, pid, GET % host, OK % status),
            conn_close(conn_id, pid, 9_000_000)]


def with_memory(runtime: Graph) -> tuple[Any, Any]:
    ev, ob, er, orr = memory_runners()
    runtime.writer.events, runtime.writer.objects = [er], [orr]
    return ev, ob


# -- filters ------------------------------------------------------------------------------------

async def test_ignored_process_gets_no_parser_and_no_events() -> None:
    runtime = Graph(loads_config(config(extra_tap="""  filters:
    custom: [{exe: /usr/bin/wget}]""")))
    ev, _ = with_memory(runtime)
    ct = await drive(runtime, [*one_request(1, 100), *one_request(2, 200)], {100: "/usr/bin/curl",
                                                                           200: "/usr/bin/wget"})
    events = decoded(ev.records)
    assert {e.get("exe") for e in events} == {"/usr/bin/curl"}
    assert [e["type"] for e in events] == ["connection", "http_transaction", "connection"]
    assert runtime.dispatch.ignored_connections == 1
    assert ct.stats.connections_closed == 2  # both were tracked; only the captured one was parsed
    stats = runtime.stats()
    assert stats["qtap_pipeline_ignored_connections_total"] == 1
    assert stats['qtap_stack_transactions_total{stack="default"}'] == 1
    assert stats["qtap_pipeline_filtered_events_total"] == 2  # wget's open and close
    assert stats['qtap_sink_delivered_events_total{store="event:mem"}'] == 3


async def test_endpoint_stack_applies_only_to_its_domain_and_levels_follow_rules() -> None:
    runtime = Graph(loads_config(config(extra_tap="""  endpoints:
    - domain: usage.example.com
      http: {stack: light}
    - domain: "*.quiet.example.com"
      http: {stack: none}""")))
    ev, ob = with_memory(runtime)
    await drive(runtime, [*one_request(1, 100, b"usage.example.com:8080"),
                          *one_request(2, 100, b"api.example.com", status=500),
                          *one_request(3, 100, b"a.quiet.example.com"),
                          *one_request(4, 100, b"api.example.com")], {100: "/usr/bin/curl"})
    by_conn: dict[int, list[str]] = {}
    for e in decoded(ev.records):
        if e["type"] != "connection":
            by_conn.setdefault(e["conn_id"], []).append(e["type"] + ":" + e.get("level", ""))
    assert by_conn == {1: ["request:"], 2: ["http_transaction:full", "object_ref:"], 4: ["http_transaction:summary"]}
    assert len(ob.objects) == 1 and ob.objects[0].conn_id == 2


async def test_ingress_is_left_out_with_direction_egress() -> None:
    runtime = Graph(loads_config(config()))
    ev, _ = with_memory(runtime)
    await drive(runtime, one_request(1, 100, accept=True), {100: "/usr/bin/python3"})
    assert ev.records == []


# -- reloads ------------------------------------------------------------------------------------

async def test_apply_switches_level_for_the_next_transactions_of_open_connections() -> None:
    runtime = Graph(loads_config(config("summary")))
    ev, _ = with_memory(runtime)
    runtime.conntrack.processes = FixedProcesses({100: "/usr/bin/curl"})
    handle = runtime.stage.handle
    out: list[Any] = []
    out += handle(conn_open(1, 100))
    out += handle(http_exchange_records(1, 100, GET % b"h", OK % 200)[0])
    out += handle(http_exchange_records(1, 100, GET % b"h", OK % 200)[1])
    await runtime.apply(loads_config(config("details")))  # same services: the stores stay
    req2 = GET % b"h"
    resp2 = OK % 200
    out += handle(data(1, 100, 0, req2, len(req2), 5_000_000))
    out += handle(data(1, 100, 1, resp2, len(resp2), 6_000_000))
    out += handle(conn_close(1, 100, 9_000_000))
    levels = [e.level for e in out if isinstance(e, HttpTransactionEvent)]
    assert levels == ["summary", "details"]
    assert runtime.reloads == 1 and ev.records == []  # (the writer did not run: nothing stored)


async def test_bad_reload_keeps_the_running_config() -> None:
    runtime = Graph(loads_config(config("summary")))
    before = runtime.pipeline

    def bad() -> Any:
        return loads_config("version: 2\ntap: {direction: sideways}\n")

    assert not await runtime.reload(bad)
    assert runtime.pipeline is before and runtime.failed_reloads == 1


async def test_reload_with_new_stores_starts_them_before_switching(tmp_path: Path) -> None:
    runtime = Graph(loads_config(config("details")))
    old_events = runtime.writer.events
    rx: Channel[list[Any]] = Channel(100, 1 << 20, "block")
    task = asyncio.create_task(runtime.writer.run(rx))
    new = loads_config(config("details", services=f"dir, path: {tmp_path / 'objs'}"))
    assert await runtime.reload(lambda: new)
    assert runtime.writer.events is not old_events
    assert [r.name for r in runtime.writer.objects] == ["dir"]
    assert all(r.channel.closed for r in old_events)
    rx.close()
    await task


async def test_reload_with_an_unusable_store_changes_nothing(tmp_path: Path) -> None:
    runtime = Graph(loads_config(config("details")))
    before = (runtime.pipeline, runtime.writer.events, runtime.writer.objects)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    new = loads_config(config("full", services=f"dir, path: {blocker / 'sub'}"))
    assert not await runtime.reload(lambda: new)
    assert (runtime.pipeline, runtime.writer.events, runtime.writer.objects) == before


def test_local_summary_builds_no_header_lists_and_reports_the_same() -> None:
    """Without a config at summary level nothing reads the header lists: sessions skip building them, and
    the events are the details level's without headers."""
    local = StdoutWriter(out=io.BytesIO())
    assert Graph(None, local=local).conntrack.session_factory is default_session_factory
    summary = AgentOptions(http_level="summary")
    assert Graph(loads_config(config()), summary).conntrack.session_factory is default_session_factory
    assert Graph(None, summary, local=local).conntrack.session_factory is summary_session_factory

    records = RecordFile.load(Path(__file__).parents[1] / "data" / "http1_small.qrec").records
    events = {}
    for level in ("summary", "details"):
        rp = Replayer(level, keep_events=True)
        rp.feed(records)
        # ts_ns: wall clock, from each replay's own monotonic -> wall offset
        events[level] = [{k: v for k, v in comparable(e).items() if k != "ts_ns"} for e in rp.finish().captured]
    headers = {"request_headers", "response_headers", "request_trailers", "response_trailers"}
    assert sum(1 for e in events["summary"] if e.get("type") == "http_transaction") >= 100
    assert events["summary"] == [{k: v for k, v in e.items() if k not in headers} for e in events["details"]]
