"""Sink throughput against the real services of scripts/services: events/s into Kafka and objects/s into
MinIO through the SinkRunner, each next to a baseline measured in the same run (the bare client library
doing the same work without our buffer/batch/retry/spool layer), plus the local spool's throughput.

Prints one JSON line and a one-line summary; writes benchmarks/results/sinks.json. Never gates anything.
Usage: scripts/services up && .venv/bin/python benchmarks/bench_sinks.py [--events N] [--objects N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtap_async.buffers import Spool  # noqa: E402
from qtap_async.sinks import (  # noqa: E402
    BufferConfig,
    KafkaEventStore,
    S3ObjectStore,
    StoredObject,
    build_event_runner,
    build_object_runner,
)
from qtap_async.telemetry import metrics  # noqa: E402


def load_env() -> dict[str, str]:
    path = ROOT / ".services" / "env"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run scripts/services up first")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def event(i: int) -> dict[str, Any]:
    return {"connection_id": f"conn-{i % 64}", "seq": i, "ts": 1_795_000_000_000_000_000 + i,
            "method": "GET", "path": f"/api/v1/items/{i}", "status": 200, "duration_ns": 123_456,
            "process": {"pid": 4242, "exe": "/usr/bin/curl"}, "bytes_in": 512, "bytes_out": 128}


async def bench_kafka(env: dict[str, str], n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap = env["QTAP_KAFKA_BOOTSTRAP"]
    topics = [f"qtap-bench-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    await admin.close()
    events = [event(i) for i in range(n)]

    # Baseline: the bare producer, same settings, values encoded the same way.
    import msgspec

    enc = msgspec.json.Encoder()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                compression_type="zstd", linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    t0 = time.perf_counter()
    futs = [await producer.send(topics[0], enc.encode(e), key=e["connection_id"].encode()) for e in events]
    await asyncio.gather(*futs)
    base_s = time.perf_counter() - t0
    await producer.stop()

    runner = build_event_runner(KafkaEventStore(brokers=[bootstrap], topic=topics[1],
                                                buffer=BufferConfig(max_events=n + 1, batch_max_events=2000)))
    await runner.start()
    task = asyncio.create_task(runner.run())
    t0 = time.perf_counter()
    for e in events:
        runner.channel.send_nowait(e)
    runner.channel.close()
    await task
    sink_s = time.perf_counter() - t0
    st = runner.stats()
    assert st["qtap_sink_delivered_events_total"] == n, st
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.delete_topics(topics)
    await admin.close()
    return {
        "kafka_events": n,
        "kafka_sink_events_per_s": round(n / sink_s),
        "kafka_baseline_producer_events_per_s": round(n / base_s),
        "kafka_sink_vs_baseline_ratio": round(base_s / sink_s, 3),
        "kafka_sink_mean_batch_latency_ms": round(st[metrics.SINK_LATENCY_SUM.name] / 1000
                                                  / max(1, st[metrics.SINK_LATENCY_COUNT.name]), 2),
    }


async def bench_s3(env: dict[str, str], n: int, size: int, concurrency: int) -> dict[str, float]:
    import boto3
    from aiobotocore.session import get_session

    endpoint, ak, sk = env["QTAP_S3_ENDPOINT"], env["QTAP_S3_ACCESS_KEY"], env["QTAP_S3_SECRET_KEY"]
    buckets = [f"qtap-bench-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                      region_name="us-east-1")
    for b in buckets:
        s3.create_bucket(Bucket=b)
    objs = [StoredObject(os.urandom(size)) for _ in range(n)]

    # Baseline: bare aiobotocore put_object with the same concurrency.
    async with get_session().create_client("s3", endpoint_url=endpoint, aws_access_key_id=ak,
                                           aws_secret_access_key=sk, region_name="us-east-1") as client:
        sem = asyncio.Semaphore(concurrency)

        async def put(o: StoredObject) -> None:
            async with sem:
                await client.put_object(Bucket=buckets[0], Key=o.digest, Body=o.data)

        t0 = time.perf_counter()
        await asyncio.gather(*(put(o) for o in objs))
        base_s = time.perf_counter() - t0

    runner = build_object_runner(S3ObjectStore(bucket=buckets[1], endpoint=endpoint, access_key=ak, secret_key=sk,
                                               concurrency=concurrency,
                                               buffer=BufferConfig(max_events=n + 1, batch_max_events=64)))
    await runner.start()
    task = asyncio.create_task(runner.run())
    t0 = time.perf_counter()
    for o in objs:
        runner.channel.send_nowait(o)
    runner.channel.close()
    await task
    sink_s = time.perf_counter() - t0
    assert runner.stats()["qtap_sink_delivered_events_total"] == n
    for b in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=b, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=b)
    return {
        "s3_objects": n,
        "s3_object_bytes": size,
        "s3_concurrency": concurrency,
        "s3_sink_objects_per_s": round(n / sink_s, 1),
        "s3_baseline_put_objects_per_s": round(n / base_s, 1),
        "s3_sink_vs_baseline_ratio": round(base_s / sink_s, 3),
        "s3_sink_mb_per_s": round(n * size / sink_s / 1e6, 2),
    }


def bench_spool(n: int, size: int) -> dict[str, float]:
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory() as d, Spool(d, max_bytes=1 << 30) as sp:
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            sp.append([payload] * min(500, n - i))
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        while sp.depth_events:
            _, pos = sp.read(500, 1 << 20)
            sp.ack(pos)
        read_s = time.perf_counter() - t0
    return {"spool_record_bytes": size, "spool_append_records_per_s": round(n / write_s),
            "spool_read_ack_records_per_s": round(n / read_s),
            "spool_append_mb_per_s": round(n * size / write_s / 1e6, 1)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--objects", type=int, default=2_000)
    ap.add_argument("--object-bytes", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    env = load_env()
    result: dict[str, float | str] = {"benchmark": "sinks"}
    result.update(await bench_kafka(env, args.events))
    result.update(await bench_s3(env, args.objects, args.object_bytes, args.concurrency))
    result.update(bench_spool(200_000, 256))
    out = ROOT / "benchmarks" / "results" / "sinks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.write(
        f"sinks: kafka {result['kafka_sink_events_per_s']} ev/s (bare producer "
        f"{result['kafka_baseline_producer_events_per_s']}), minio {result['s3_sink_objects_per_s']} obj/s of "
        f"{args.object_bytes} B (bare put {result['s3_baseline_put_objects_per_s']}), spool "
        f"{result['spool_append_records_per_s']} rec/s append\n")


if __name__ == "__main__":
    asyncio.run(main())
