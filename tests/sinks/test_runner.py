import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from qtap_async.errors import SinkError
from qtap_async.sinks import (
    BufferConfig,
    EventRecord,
    EventSinkRunner,
    ObjectRef,
    ObjectSinkRunner,
    RetryConfig,
    SpoolConfig,
    StoredObject,
)
from tests.sinks.fakes import FlakyEventSink, FlakyObjectSink
from tests.waiting import until

FAST_RETRY = RetryConfig(initial=0.005, maximum=0.02, jitter=0.1, spool_after=0.05)
SMALL_BATCHES = BufferConfig(batch_max_events=10, linger=0.001)


class Ev(msgspec.Struct):
    conn_id: int
    seq: int


def values(sink: FlakyEventSink) -> list[int]:
    return [msgspec.json.decode(r.value, type=Ev).seq for r in sink.received]


async def wait_for(cond: Callable[[], object]) -> None:
    async with asyncio.timeout(5.0):
        await until(cond, 0.005)


async def test_delivers_in_order_with_connection_keys() -> None:
    sink = FlakyEventSink()
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY)
    task = asyncio.create_task(runner.run())
    for i in range(95):
        assert runner.channel.send_nowait(Ev(1 + i % 3, i))
    runner.channel.close()
    await task
    assert values(sink) == list(range(95))
    assert sink.received[4].key == b"2"
    st = runner.stats()
    assert st["qtap_sink_delivered_events_total"] == 95
    assert st["qtap_sink_delivered_bytes_total"] == sum(r.nbytes for r in sink.received)
    assert st["qtap_sink_latency_seconds_count"] >= 10
    assert st["qtap_sink_dropped_events_total"] == 0
    assert sink.closed


async def test_raw_bytes_and_records_pass_through() -> None:
    sink = FlakyEventSink()
    runner = EventSinkRunner(sink, retry=FAST_RETRY)
    task = asyncio.create_task(runner.run())
    runner.channel.send_nowait(b'{"a":1}')
    runner.channel.send_nowait(EventRecord(b"k", b'{"b":2}'))
    runner.channel.close()
    await task
    assert [(r.key, r.value) for r in sink.received] == [(None, b'{"a":1}'), (b"k", b'{"b":2}')]


async def test_transient_errors_are_retried_without_spool() -> None:
    sink = FlakyEventSink()
    sink.up = False
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY)
    task = asyncio.create_task(runner.run())
    for i in range(5):
        runner.channel.send_nowait(Ev(1, i))
    await wait_for(lambda: runner.stats()["qtap_sink_retried_total"] >= 3)
    assert runner.stats()["qtap_sink_up"] == 0
    sink.up = True
    runner.channel.close()
    await task
    assert values(sink) == list(range(5))
    st = runner.stats()
    assert st["qtap_sink_up"] == 1 and st["qtap_sink_errors_total"] >= 3


async def test_outage_goes_to_spool_and_comes_back_in_order(tmp_path: Path) -> None:
    sink = FlakyEventSink()
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY, spool=SpoolConfig(dir=str(tmp_path)))
    task = asyncio.create_task(runner.run())
    for i in range(20):
        runner.channel.send_nowait(Ev(1, i))
    await wait_for(lambda: len(sink.received) == 20)
    sink.up = False
    for i in range(20, 220):
        runner.channel.send_nowait(Ev(1, i))
        if i % 10 == 0:
            await asyncio.sleep(0.002)
    await wait_for(lambda: runner.stats()["qtap_sink_spool_depth_events"] == 200)
    st = runner.stats()
    assert st["qtap_sink_spooled_events_total"] == 200 and st["qtap_sink_spool_disk_bytes"] > 0
    assert st["qtap_sink_queue_depth_events"] == 0  # the outage does not back up the channel
    sink.up = True
    for i in range(220, 240):
        runner.channel.send_nowait(Ev(1, i))
    await wait_for(lambda: len(sink.received) >= 240)
    runner.channel.close()
    await task
    assert values(sink) == list(range(240))
    st = runner.stats()
    assert st["qtap_sink_spool_depth_events"] == 0
    assert st["qtap_sink_unspooled_events_total"] >= 200
    assert st["qtap_sink_dropped_events_total"] == 0


async def test_spool_survives_a_new_runner(tmp_path: Path) -> None:
    spool = SpoolConfig(dir=str(tmp_path))
    retry = RetryConfig(initial=0.005, maximum=0.02, spool_after=0.02)
    down = FlakyEventSink("same")
    down.up = False
    r1 = EventSinkRunner(down, buffer=SMALL_BATCHES, retry=retry, spool=spool, shutdown_timeout=0.05)
    task = asyncio.create_task(r1.run())
    for i in range(50):
        r1.channel.send_nowait(Ev(1, i))
    r1.channel.close()
    await task
    assert r1.stats()["qtap_sink_spool_depth_events"] == 50
    assert down.received == []

    up = FlakyEventSink("same")
    r2 = EventSinkRunner(up, buffer=SMALL_BATCHES, retry=retry, spool=spool)
    task = asyncio.create_task(r2.run())
    r2.channel.send_nowait(Ev(1, 50))
    r2.channel.close()
    await task
    assert values(up) == list(range(51))  # the spooled ones first, then the new one


async def test_rejected_batch_is_dropped_and_counted() -> None:
    sink = FlakyEventSink()
    sink.poison = {msgspec.json.encode(Ev(1, 3))}
    runner = EventSinkRunner(sink, buffer=BufferConfig(batch_max_events=1, linger=0), retry=FAST_RETRY)
    task = asyncio.create_task(runner.run())
    for i in range(6):
        runner.channel.send_nowait(Ev(1, i))
    runner.channel.close()
    await task
    assert values(sink) == [0, 1, 2, 4, 5]
    st = runner.stats()
    assert st["qtap_sink_dropped_rejected_events_total"] == 1
    assert st["qtap_sink_dropped_events_total"] == 1


async def test_queue_full_drops_are_counted() -> None:
    sink = FlakyEventSink()
    runner = EventSinkRunner(sink, buffer=BufferConfig(max_events=5), retry=FAST_RETRY)
    for i in range(8):
        runner.channel.send_nowait(Ev(1, i))
    task = asyncio.create_task(runner.run())
    runner.channel.close()
    await task
    st = runner.stats()
    assert st["qtap_sink_dropped_queue_full_events_total"] == 3
    assert st["qtap_sink_delivered_events_total"] == 5


async def test_shutdown_without_spool_counts_what_is_lost() -> None:
    sink = FlakyEventSink()
    sink.up = False
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY, shutdown_timeout=0.05)
    task = asyncio.create_task(runner.run())
    for i in range(7):
        runner.channel.send_nowait(Ev(1, i))
    runner.channel.close()
    await asyncio.wait_for(task, 5)
    assert runner.stats()["qtap_sink_dropped_shutdown_events_total"] == 7


async def test_spool_full_drops_are_counted(tmp_path: Path) -> None:
    sink = FlakyEventSink()
    sink.up = False
    spool = SpoolConfig(dir=str(tmp_path), max_bytes=4096, when_full="drop_newest")
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY, spool=spool, shutdown_timeout=0.01)
    task = asyncio.create_task(runner.run())
    for i in range(300):
        runner.channel.send_nowait(Ev(1, i))
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    runner.channel.close()
    await task
    st = runner.stats()
    assert st["qtap_sink_dropped_spool_full_events_total"] > 0
    assert st["qtap_sink_dropped_spool_full_events_total"] + st["qtap_sink_spool_depth_events"] == 300


async def test_check_failure_at_start_is_a_sink_error(tmp_path: Path) -> None:
    sink = FlakyEventSink()
    sink.check_error = "unknown topic 'x'"
    runner = EventSinkRunner(sink, spool=SpoolConfig(dir=str(tmp_path)))
    with pytest.raises(SinkError, match="unknown topic"):
        await runner.run()
    # the spool was released: another runner can take it
    other = EventSinkRunner(FlakyEventSink(), spool=SpoolConfig(dir=str(tmp_path)))
    await other.start()
    await other._close_resources()


async def test_objects_are_stored_once_and_refs_emitted(tmp_path: Path) -> None:
    sink = FlakyObjectSink()
    refs: list[ObjectRef] = []
    runner = ObjectSinkRunner(sink, on_ref=refs.append, buffer=SMALL_BATCHES, retry=FAST_RETRY,
                              spool=SpoolConfig(dir=str(tmp_path)), concurrency=4)
    task = asyncio.create_task(runner.run())
    objs = [StoredObject(b"body %d" % i, conn_id=11, transaction_id=f"t{i}") for i in range(30)]
    for o in objs[:10]:
        runner.channel.send_nowait(o)
    await wait_for(lambda: len(refs) == 10)
    sink.up = False
    for o in objs[10:]:
        runner.channel.send_nowait(o)
    await wait_for(lambda: runner.stats()["qtap_sink_spool_depth_events"] == 20)
    sink.up = True
    runner.channel.close()
    await task
    assert set(sink.stored) == {o.digest for o in objs}
    assert sorted(r.transaction_id for r in refs) == sorted(o.transaction_id for o in objs)
    assert all(r.url == f"mem://{r.digest}" for r in refs)
    assert runner.stats()["qtap_sink_delivered_events_total"] == 30


async def test_objects_partial_failure_retries_only_the_failed(tmp_path: Path) -> None:
    sink = FlakyObjectSink()
    objs = [StoredObject(b"x%d" % i) for i in range(5)]
    sink.fail_digests = {objs[2].digest}
    runner = ObjectSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY, concurrency=5)
    task = asyncio.create_task(runner.run())
    for o in objs:
        runner.channel.send_nowait(o)
    await wait_for(lambda: sink.puts >= 8)
    sink.fail_digests = set()
    runner.channel.close()
    await task
    assert len(sink.stored) == 5
    assert runner.stats()["qtap_sink_delivered_events_total"] == 5


async def test_shutdown_with_a_down_store_and_many_batches_ends_in_time() -> None:
    """Store down, no spool, more batches than the hand-off holds: closing the channel must start the stop
    deadline even though intake is blocked behind the deliverer (it used to retry for ever)."""
    sink = FlakyEventSink()
    sink.up = False
    runner = EventSinkRunner(sink, buffer=SMALL_BATCHES, retry=FAST_RETRY, shutdown_timeout=0.1)
    task = asyncio.create_task(runner.run())
    for i in range(200):
        runner.channel.send_nowait(Ev(1, i))
    await wait_for(lambda: runner.stats()["qtap_sink_errors_total"] > 3)
    runner.channel.close()
    await asyncio.wait_for(task, 10)
    st = runner.stats()
    assert st["qtap_sink_dropped_shutdown_events_total"] == 200 and st["qtap_sink_delivered_events_total"] == 0
