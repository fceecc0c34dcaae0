"""Store outages against the real services: stop Kafka (then MinIO) for ~30 s while data flows, start it
again, and check that nothing was lost, that the spool took the data meanwhile and that the metrics showed
it; and a new runner process delivering what an earlier one left in the spool."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from qtap_async.sinks import (
    BufferConfig,
    KafkaEventStore,
    RetryConfig,
    S3ObjectStore,
    SpoolConfig,
    StoredObject,
    build_event_runner,
    build_object_runner,
)
from qtap_async.sinks.runner import SinkRunner
from tests.sinks.conftest import ROOT, Services, consume_all, s3_client
from tests.waiting import until

pytestmark = [pytest.mark.services, pytest.mark.timeout(420)]

OUTAGE_S = 30
RETRY = RetryConfig(initial=0.2, maximum=2.0, spool_after=1.0)


def dropped_by_reason(stats: dict[str, int]) -> dict[str, int]:
    """The non-zero drop counters by reason (a failure says which path lost the records; the log says why)."""
    return {k: v for k, v in stats.items() if k.startswith("qtap_sink_dropped_") and v}


async def flow(runner: SinkRunner, make, stop: asyncio.Event, rate_per_s: int = 100) -> int:  # type: ignore[no-untyped-def]
    """Send items at a steady rate until ``stop``; returns how many were sent."""
    n = 0
    while not stop.is_set():
        for _ in range(rate_per_s // 20):
            assert runner.channel.send_nowait(make(n)), "the channel must not fill during an outage"
            n += 1
        await asyncio.sleep(0.05)
    return n


async def test_kafka_down_for_30s_loses_nothing(services: Services, topic: str, tmp_path: Path) -> None:
    runner = build_event_runner(KafkaEventStore(
        brokers=[services.kafka_bootstrap], topic=topic, request_timeout=3.0, retry=RETRY,
        buffer=BufferConfig(max_events=5000), spool=SpoolConfig(dir=str(tmp_path), max_bytes=64 << 20)))
    await runner.start()
    task = asyncio.create_task(runner.run())
    stop = asyncio.Event()
    sender = asyncio.create_task(flow(runner, lambda i: {"conn_id": 1 + i % 7, "seq": i}, stop))
    try:
        await asyncio.sleep(2)
        delivered_before = runner.stats()["qtap_sink_delivered_events_total"]
        assert delivered_before > 0
        await asyncio.to_thread(services.run, "stop", "kafka")
        await asyncio.sleep(OUTAGE_S)
        during = runner.stats()
        assert during["qtap_sink_up"] == 0
        assert during["qtap_sink_spool_depth_events"] > 1000  # ~30 s x 100/s went to the spool
        assert during["qtap_sink_spooled_events_total"] >= during["qtap_sink_spool_depth_events"]
        assert during["qtap_sink_retried_total"] > 0
        assert during["qtap_sink_queue_depth_events"] < 1000  # the channel kept draining
    finally:
        await asyncio.to_thread(services.run, "start", "kafka")
    await asyncio.sleep(2)
    stop.set()
    sent = await sender
    async with asyncio.timeout(120):
        await until(lambda: runner.stats()["qtap_sink_spool_depth_events"] == 0
                    and runner.stats()["qtap_sink_queue_depth_events"] == 0, 0.1)
    runner.channel.close()
    await task
    after = runner.stats()
    assert after["qtap_sink_up"] == 1
    assert after["qtap_sink_dropped_events_total"] == 0, dropped_by_reason(after)
    assert after["qtap_sink_unspooled_events_total"] == after["qtap_sink_spooled_events_total"]

    msgs = await asyncio.to_thread(consume_all, services, topic, sent, 60)
    seqs = [json.loads(m.value)["seq"] for m in msgs]
    assert set(seqs) == set(range(sent)), f"lost {sorted(set(range(sent)) - set(seqs))[:20]}"
    # per connection, first deliveries are in order (a retried batch may repeat earlier events)
    first_seen: dict[str, list[int]] = {}
    seen: set[int] = set()
    for m, s in zip(msgs, seqs, strict=True):
        if s not in seen:
            seen.add(s)
            first_seen.setdefault(m.key.decode(), []).append(s)
    assert all(v == sorted(v) for v in first_seen.values())


async def test_minio_down_for_30s_loses_nothing(services: Services, bucket: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    runner = build_object_runner(S3ObjectStore(
        bucket=bucket, endpoint=services.s3_endpoint, region=services.s3_region, access_key=services.s3_access_key,
        secret_key=services.s3_secret_key, timeout=3.0, retry=RETRY,
        spool=SpoolConfig(dir=str(tmp_path), max_bytes=64 << 20)))
    await runner.start()
    task = asyncio.create_task(runner.run())
    stop = asyncio.Event()
    sender = asyncio.create_task(flow(runner, lambda i: StoredObject(b"object %d " % i + b"x" * 512,
                                                                     transaction_id=str(i)), stop, 40))
    try:
        await asyncio.sleep(2)
        assert runner.stats()["qtap_sink_delivered_events_total"] > 0
        await asyncio.to_thread(services.run, "stop", "minio")
        await asyncio.sleep(OUTAGE_S)
        during = runner.stats()
        assert during["qtap_sink_up"] == 0
        assert during["qtap_sink_spool_depth_events"] > 400
        assert during["qtap_sink_spool_depth_bytes"] > 400 * 512
    finally:
        await asyncio.to_thread(services.run, "start", "minio")
    await asyncio.sleep(2)
    stop.set()
    sent = await sender
    async with asyncio.timeout(120):
        await until(lambda: runner.stats()["qtap_sink_spool_depth_events"] == 0
                    and runner.stats()["qtap_sink_queue_depth_events"] == 0, 0.1)
    runner.channel.close()
    await task
    after = runner.stats()
    assert after["qtap_sink_dropped_events_total"] == 0, dropped_by_reason(after)

    s3 = s3_client(services)
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
    expect = {StoredObject(b"object %d " % i + b"x" * 512).digest for i in range(sent)}
    assert keys == expect, f"missing {len(expect - keys)} of {len(expect)}"


RUNNER_PROCESS = """
import asyncio, json, sys
import msgspec
from qtap_async.sinks import KafkaEventStore, build_event_runner

async def main() -> None:
    runner = build_event_runner(msgspec.json.decode(sys.argv[1], type=KafkaEventStore))
    await runner.start()
    before = runner.stats()["qtap_sink_spool_depth_events"]
    runner.channel.close()  # nothing new: just deliver what the spool holds, then stop
    await runner.run()
    print(json.dumps({"spooled_at_start": before, **runner.stats()}))

asyncio.run(main())
"""


async def test_new_runner_process_delivers_the_spool(services: Services, topic: str, tmp_path: Path) -> None:
    spool = SpoolConfig(dir=str(tmp_path))
    # First runner: its broker address answers nothing (the store is down), so everything is spooled.
    down = KafkaEventStore(name="events", brokers=["127.0.0.1:1"], topic=topic, check_on_start=False,
                           request_timeout=1.0, retry=RetryConfig(initial=0.05, spool_after=0.2),
                           shutdown_timeout=0.5, spool=spool)
    r1 = build_event_runner(down)
    task = asyncio.create_task(r1.run())
    for i in range(500):
        r1.channel.send_nowait({"conn_id": 1 + i % 3, "seq": i})
    async with asyncio.timeout(30):
        await until(lambda: r1.stats()["qtap_sink_spool_depth_events"] == 500, 0.1)
    r1.channel.close()
    await task
    assert r1.stats()["qtap_sink_delivered_events_total"] == 0
    assert await asyncio.to_thread(lambda: any(tmp_path.rglob("*.seg")))

    # A new process, same store name and spool directory, the real broker this time.
    up = msgspec.structs.replace(down, brokers=[services.kafka_bootstrap], shutdown_timeout=60.0)
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", RUNNER_PROCESS, msgspec.json.encode(up).decode()],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["spooled_at_start"] == 500
    assert stats["qtap_sink_delivered_events_total"] == 500
    assert stats["qtap_sink_spool_depth_events"] == 0

    msgs = await asyncio.to_thread(consume_all, services, topic, 500)
    assert sorted(json.loads(m.value)["seq"] for m in msgs) == list(range(500))
