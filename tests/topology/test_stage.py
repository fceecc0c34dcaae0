"""The tracking stage on recorded raw ring-buffer records (tests/data/*.qrec): decode, conntrack,
enrichment and dispatch per record; malformed records and internal errors cost one record; the asyncio
stage closes what is open at the end of input and drops (counted) what is queued past the stop deadline."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from qtap_async.buffers.channel import Channel, ChannelClosed
from qtap_async.events.connection import ConnectionEvent
from qtap_async.replay import RecordFile
from qtap_async.topology import Graph, StdoutWriter
from qtap_async.transforms.conntrack import Connection

DATA = Path(__file__).resolve().parents[1] / "data"


def _records() -> list[bytes]:
    return RecordFile.load(DATA / "http1_small.qrec").records


def _graph(**kw: Any) -> Graph:
    return Graph(None, local=StdoutWriter(), sweep=False, **kw)


def _types(events: list[Any]) -> list[str]:
    return [e["type"] if isinstance(e, dict) else type(e).__name__ for e in events]


def test_recorded_records_become_connections_and_transactions() -> None:
    g = _graph()
    recs = _records()
    out = g.stage.process(recs) + g.stage.close_all(2**62)
    types = _types(out)
    # The fixture: `h2load --h1 -n 300 -c 3` against a traced nginx worker (its 3 accepted connections).
    assert types.count("http_transaction") == 300
    opens = [e for e in out if isinstance(e, ConnectionEvent) and e.event == "open"]
    closes = [e for e in out if isinstance(e, ConnectionEvent) and e.event == "close"]
    assert len(opens) == len(closes) == 3 and g.stage.records == len(recs)
    assert {c.direction for c in closes} == {"ingress"} and all(c.reason == "closed" for c in closes)
    assert g.stage.decode_errors == 0 and g.stage.internal_errors == 0
    assert not g.conntrack.conns  # close_all: nothing left open


def test_malformed_records_and_internal_errors_cost_one_record_each() -> None:
    calls = {"n": 0}

    def exploding(conn: Connection, layer: int) -> Any:
        calls["n"] += 1
        raise RuntimeError("a bug in a parser")

    g = _graph(session_factory=exploding)
    recs = _records()
    out = g.stage.process([b"\x00\x01", *recs[:50]])
    assert g.stage.decode_errors == 1
    assert g.stage.internal_errors == calls["n"] > 0  # each failing record counted, the batch went on
    assert any(isinstance(e, ConnectionEvent) for e in out)


def test_tee_sees_every_raw_batch_before_it_is_processed() -> None:
    g = _graph()
    seen: list[int] = []
    g.stage.tee = lambda batch: seen.append(len(batch))
    recs = _records()
    g.stage.process(recs[:10])
    g.stage.process(recs[10:25])
    assert seen == [10, 15]


async def test_run_closes_what_is_open_at_the_end_of_input_and_closes_its_output() -> None:
    g = _graph()
    recs = _records()
    rx: Channel[list[bytes]] = Channel(100, 1 << 30, "block")
    tx: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    half = recs[: len(recs) // 2]
    rx.send_nowait(half)
    rx.close()
    await asyncio.wait_for(g.stage.run(rx, tx, lambda: 2**62), 30)
    assert tx.closed
    got: list[Any] = []
    with contextlib.suppress(ChannelClosed):
        while True:
            got += await tx.recv()
    closes = [e for e in got if isinstance(e, ConnectionEvent) and e.event == "close"]
    assert closes and any(c.reason == "agent_stopped" for c in closes)  # cut mid-way: closed by the end


async def test_backlog_past_the_stop_deadline_is_dropped_and_counted() -> None:
    g = _graph()
    recs = _records()
    rx: Channel[list[bytes]] = Channel(100, 1 << 30, "block")
    tx: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    rx.send_nowait(recs[:20])
    rx.send_nowait(recs[20:50])
    rx.close()
    g.stage.drain_deadline = asyncio.get_running_loop().time() - 1  # already past
    await asyncio.wait_for(g.stage.run(rx, tx), 30)
    assert g.stage.dropped_at_stop == 50 and g.stage.records == 0


async def test_an_idle_connection_is_evicted_while_no_batch_arrives(monkeypatch: Any) -> None:
    """The idle sweep runs on its interval even when no record comes in (a quiet host): it does not wait for
    unrelated traffic to evict a connection past the idle timeout."""
    import time

    from qtap_async.bpf import abi
    from qtap_async.topology import AgentOptions
    from qtap_async.topology import stage as stage_mod

    monkeypatch.setattr(stage_mod, "SWEEP_INTERVAL_S", 0.1)
    g = Graph(None, AgentOptions(idle_timeout_s=0.05), local=StdoutWriter(), sweep=True)
    opened = abi.conn_open_record(time.monotonic_ns(), 42, 100, lport=8080, rport=40000, comm=b"srv")
    rx: Channel[list[bytes]] = Channel(100, 1 << 30, "block")
    tx: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    run = asyncio.create_task(g.stage.run(rx, tx))
    rx.send_nowait([opened])
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while not any(isinstance(e, ConnectionEvent) and e.event == "close" for e in got):
        assert time.monotonic() < deadline, f"no eviction without new records: {_types(got)}"
        got += await asyncio.wait_for(tx.recv(), 10)
    (close,) = [e for e in got if isinstance(e, ConnectionEvent) and e.event == "close"]
    assert close.reason == "evicted" and close.conn_id == 42 and not g.conntrack.conns
    assert not run.done()  # the stage is still waiting for records, not finished by the sweep
    rx.close()
    await asyncio.wait_for(run, 10)


def _held_by_a_run_coroutine(obj: object) -> list[str]:
    """The suspended ``run`` coroutines (their frames) still referring to ``obj``."""
    import gc
    import types

    return [r.cr_code.co_qualname for r in gc.get_referrers(obj)  # a suspended coroutine holds its locals
            if isinstance(r, types.CoroutineType) and r.cr_code.co_name == "run"]


async def test_the_stage_and_writer_keep_no_batch_while_they_wait() -> None:
    """Waiting for the next batch, the stage and the writer hold neither the last raw batch nor its events:
    on a quiet host that wait lasts, and what they held would keep the heap it sits in (RSS not returned)."""
    import io

    g = _graph()
    recs = _records()
    rx: Channel[list[bytes]] = Channel(100, 1 << 30, "block")
    tx: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    run = asyncio.create_task(g.stage.run(rx, tx))
    batch = recs[:200]
    rx.send_nowait(batch)
    events = await asyncio.wait_for(tx.recv(), 10)
    await asyncio.sleep(0)  # the stage is back in its recv
    assert events and not _held_by_a_run_coroutine(batch) and not _held_by_a_run_coroutine(events)

    writer = StdoutWriter(out=io.BytesIO())
    out: Channel[list[Any]] = Channel(1000, 1 << 30, "block")
    written = asyncio.create_task(writer.run(out))
    out.send_nowait(events)
    for _ in range(3):  # written within a few loop turns
        await asyncio.sleep(0)
    assert writer.written == len(events)
    assert not _held_by_a_run_coroutine(events)
    rx.close()
    out.close()
    await asyncio.wait_for(asyncio.gather(run, written), 10)
