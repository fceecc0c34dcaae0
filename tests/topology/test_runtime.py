"""The run loop without a kernel: a record file as the source feeding the same graph a live run builds
(local output, or a config's stores), the counters it exposes, and config reloads from the file."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.config import loads_config
from qtap_async.replay import RecordFile, replay, replay_with_config
from qtap_async.topology import Agent, AgentOptions, ConfigReloader, Graph, StdoutWriter
from tests.topology.test_graph import config
from tests.waiting import until

DATA = Path(__file__).resolve().parents[1] / "data"
OPTIONS = dict(tls=False, status_listen="", container_metadata=False)


def _records(name: str = "http1_small") -> list[bytes]:
    return RecordFile.load(DATA / f"{name}.qrec").records


async def test_a_record_file_through_the_run_loop_prints_what_the_synchronous_replay_prints() -> None:
    recs = _records()
    buf = io.BytesIO()
    agent = Agent(AgentOptions(**OPTIONS), writer=StdoutWriter(buf), replay=recs)  # type: ignore[arg-type]
    assert await asyncio.wait_for(agent.run(install_signals=False), 60) == 0
    looped = [msgspec.json.decode(x) for x in buf.getvalue().splitlines()]
    again = io.BytesIO()
    replay(recs, sink=again)
    direct = [msgspec.json.decode(x) for x in again.getvalue().splitlines()]
    strip = {"id", "ts", "ts_ns", "exe", "comm", "user", "uid", "cgroup", "container_id"}

    def shape(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in strip} for e in evs]

    assert len(looped) == len(direct) > 300 and shape(looped) == shape(direct)
    snap = agent.snapshot()
    assert snap["qtap_source_records_total"] == len(recs) and snap["qtap_events_written_total"] == len(looped)
    assert snap["qtap_channel_raw_dropped_events_total"] == 0  # a replay waits, it never drops


async def test_the_same_counters_whichever_way_a_run_starts() -> None:
    recs = _records()
    local = Agent(AgentOptions(**OPTIONS), writer=StdoutWriter(io.BytesIO()), replay=recs)  # type: ignore[arg-type]
    await local.run(install_signals=False)
    cfg = loads_config(config().replace("{type: stdout}]\n  object_stores: [{type: stdout}]",
                                        "{type: disabled}]\n  object_stores: [{type: disabled}]")
                       .replace("direction: egress", "direction: all"))
    got: list[Any] = []
    configured = await replay_with_config(recs, cfg, AgentOptions(**OPTIONS), keep=got.append)  # type: ignore[arg-type]
    a, b = local.snapshot(), configured.snapshot()
    shared = {k for k in a if "{" not in k}
    assert shared == {k for k in b if "{" not in k}  # every unlabelled counter exists in both
    assert a["qtap_connections_opened_total"] == b["qtap_connections_opened_total"] == 3
    assert a['qtap_transactions_total{protocol="http/1.1"}'] == b['qtap_transactions_total{protocol="http/1.1"}'] == 300
    assert b['qtap_stack_transactions_total{stack="default"}'] == 300
    assert sum(1 for e in got if type(e).__name__ == "HttpTransactionEvent") == 300


async def test_stop_ends_a_replay_early_and_the_run_still_closes_cleanly() -> None:
    recs = _records("h2_streams")
    agent = Agent(AgentOptions(**OPTIONS), writer=StdoutWriter(io.BytesIO()), replay=recs,  # type: ignore[arg-type]
                  batch_records=8)
    task = asyncio.create_task(agent.run(install_signals=False))
    await until(lambda: agent.source is not None and agent.source.records > 0, 0)
    agent.stop()
    assert await asyncio.wait_for(task, 60) == 0
    assert 0 < agent.snapshot()["qtap_source_records_total"] < len(recs)
    assert agent.snapshot()["qtap_connections_open"] == 0


async def test_reloader_follows_file_changes_and_requests(tmp_path: Path) -> None:
    path = tmp_path / "qpoint.yaml"
    path.write_text(config("summary"))
    runtime = Graph(loads_config(path.read_text()))
    reloader = ConfigReloader(path, runtime, interval=0.05)
    task = asyncio.create_task(reloader.run())
    try:
        path.write_text(config("full") + "\n# changed\n")
        await until(lambda: runtime.reloads >= 1, 0.02)
        plugin = runtime.pipeline.stacks["default"].plugins[0]
        assert plugin.config.level == "full"  # type: ignore[attr-defined]
        path.write_text("version: 2\nstacks: {broken\n")
        await until(lambda: runtime.failed_reloads >= 1, 0.02)
        assert runtime.pipeline.stacks["default"].plugins[0].config.level == "full"  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        path.write_text(config("details"))
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        try:
            reloader.request()
            await until(lambda: runtime.reloads >= 2, 0.02)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        assert runtime.pipeline.stacks["default"].plugins[0].config.level == "details"  # type: ignore[attr-defined]
    finally:
        task.cancel()


