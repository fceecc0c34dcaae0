"""The writer: the local output (synchronous, what replay drives) or the config's stores (events and
objects routed, counted, swapped on reload), and the stores built from a config."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import msgspec
import pytest

from qtap_async.buffers.channel import Channel
from qtap_async.config import loads_config
from qtap_async.errors import ConfigError
from qtap_async.events.connection import GapEvent
from qtap_async.sinks.base import StoredObject
from qtap_async.topology import StdoutWriter, Writer, build_stores
from qtap_async.topology.writer import len_sizeof
from tests.plugins.fakes import memory_runners
from tests.topology.test_graph import config

GAP = GapEvent(id="g1", ts="t", conn_id=7, stream="send", source="socket", bytes=3, pid=1, exe="/x")


def test_the_local_output_writes_json_lines_and_counts_them() -> None:
    buf = io.BytesIO()
    w = Writer([], [], local=StdoutWriter(buf))
    w.write([GAP, {"type": "http_transaction", "id": "a"}])
    lines = buf.getvalue().splitlines()
    assert [msgspec.json.decode(x)["type"] for x in lines] == ["gap", "http_transaction"]
    assert w.stats()["qtap_events_written_total"] == 2
    with pytest.raises(RuntimeError):
        Writer([], []).write([GAP])  # stores are written by run(), never synchronously


async def test_the_local_output_runs_until_its_channel_closes() -> None:
    buf = io.BytesIO()
    w = Writer([], [], local=StdoutWriter(buf))
    rx: Channel[list[Any]] = Channel(10, 1 << 20, "block")
    rx.send_nowait([GAP])
    rx.send_nowait([GAP, GAP])
    rx.close()
    await asyncio.wait_for(w.run(rx), 10)
    assert len(buf.getvalue().splitlines()) == 3 and w.stats()["qtap_events_written_total"] == 3


async def test_events_and_objects_go_to_their_stores_and_references_follow() -> None:
    ev, ob, er, orr = memory_runners()
    seen: list[Any] = []
    w = Writer([er], [orr], keep=lambda item: seen.append(item) or not isinstance(item, dict))
    await w.start()
    obj = StoredObject(b"payload", conn_id=7, transaction_id="t1")
    rx: Channel[list[Any]] = Channel(10, 1 << 20, "block")
    rx.send_nowait([GAP, obj, {"dropped": "by keep"}])
    rx.close()
    await asyncio.wait_for(w.run(rx), 10)
    assert len(seen) == 3 and ob.objects == [obj]
    types = [msgspec.json.decode(r.value)["type"] for r in ev.records]
    assert sorted(types) == ["gap", "object_ref"]  # the object store's reference reached the event store
    stats = w.stats()
    assert stats["qtap_events_written_total"] == 2 and stats["qtap_pipeline_filtered_events_total"] == 1
    assert stats['qtap_sink_delivered_events_total{store="event:mem"}'] == 2


async def test_without_stores_items_are_discarded_and_counted() -> None:
    w = Writer([], [])
    rx: Channel[list[Any]] = Channel(10, 1 << 20, "block")
    rx.send_nowait([GAP, StoredObject(b"x")])
    rx.close()
    await asyncio.wait_for(w.run(rx), 10)
    stats = w.stats()
    assert (stats["qtap_pipeline_events_discarded_total"], stats["qtap_pipeline_objects_discarded_total"]) == (1, 1)


def test_len_sizeof_counts_bodies() -> None:
    assert len_sizeof([GAP]) == 512
    assert len_sizeof([{"request_body": "x" * 1000, "response_body": b"y" * 24}]) == 512 + 1024
    assert len_sizeof(object()) == 512


def test_build_stores_leaves_disabled_out_and_reports_missing_secrets() -> None:
    events, objects = build_stores(loads_config(config(services="disabled")).services)
    assert [r.name for r in events] == ["stdout"] and objects == []
    cfg = loads_config("""
version: 2
services:
  event_stores:
    - type: pulse
      url: http://127.0.0.1:1
      token: {type: env, value: QTAP_TEST_UNSET_TOKEN_VAR}
""")
    try:
        build_stores(cfg.services)
    except ConfigError as exc:
        assert "QTAP_TEST_UNSET_TOKEN_VAR" in str(exc)
    else:
        raise AssertionError("a missing secret must fail before anything starts")
