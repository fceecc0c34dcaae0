"""Real traffic captured by `qtap run --config` lands in the real Kafka topic and the real MinIO bucket:
read back with independent clients (kafka-python, boto3), counts and contents match what the agent logged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.integration.harness import start_http_server
from tests.plugins.test_run_config import QtapRun, curl

# The fixtures of the sink tests (services, topic, bucket) are reused from there.
from tests.sinks.conftest import Services, bucket, s3_client, services, topic  # noqa: F401

pytestmark = [pytest.mark.bpf, pytest.mark.services]


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def _consume(bootstrap: str, topic_name: str, expect: int, timeout_s: float) -> list[Any]:
    """Every record of the topic, read by a consumer of its own (aiokafka, explicit poll timeouts)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(topic_name, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        out: list[Any] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            quiet = 0
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                got = [r for recs in batch.values() for r in recs]
                out.extend(got)
                quiet = 0 if got else quiet + 1
                if len(out) >= expect and quiet >= 2:  # and nothing more came for 2 s (duplicates show up)
                    break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def _config(svc: Services, topic_name: str, bucket_name: str) -> str:
    return f"""
version: 2
services:
  event_stores:
    - id: kafka-events
      type: kafka
      brokers: ["{svc.kafka_bootstrap}"]
      topic: {topic_name}
  object_stores:
    - id: minio
      type: s3
      endpoint: {svc.s3_endpoint}
      bucket: {bucket_name}
      region: {svc.s3_region}
      access_key: {{type: text, value: {svc.s3_access_key}}}
      secret_key: {{type: text, value: {svc.s3_secret_key}}}
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: full
          format: json
      - type: report_usage
tap:
  direction: all
  ignore_loopback: false
  http:
    stack: default
"""


def test_agent_events_to_kafka_and_objects_to_minio(  # the sink tests' fixtures, imported above
    server: int,
    services: Services,  # noqa: F811
    topic: str,  # noqa: F811
    bucket: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    q = QtapRun(tmp_path, _config(services, topic, bucket))
    try:
        for n in (11, 22, 33):
            curl(f"http://127.0.0.1:{server}/bytes?n={n}&status=200")
        # Both ends (curl egress, server ingress) are captured: 3 requests x 2 sides.
        records = _consume(services.kafka_bootstrap, topic, expect=12, timeout_s=60)
    finally:
        assert q.stop() == 0
    events = [msgspec.json.decode(r.value) for r in records]
    ours = [e for e in events if e.get("dst_port") == server or e.get("port") == server
            or str(server) in str(e.get("host", "")) or str(server) in str(e.get("url", ""))]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(str(e.get("type")), []).append(e)
    assert ours, f"no event for port {server} in {len(events)} Kafka records: {sorted(by_type)}"
    # Every Kafka record is keyed by its connection: one connection's events stay in order on one partition.
    assert all(r.key is not None for r in records)
    requests = [e for e in by_type.get("request", []) if e.get("status") == 200]
    assert len(requests) >= 6, by_type.keys()
    # No secret or payload in events: the bodies are only in the objects (their sizes are metadata).
    payload_keys = [k for e in events for k in e if "body" in k and not k.endswith(("_size", "_truncated"))]
    assert not payload_keys, payload_keys
    refs = by_type.get("object_ref", [])
    assert len(refs) >= 6
    s3 = s3_client(services)
    # Every page: on a busy host the agent stores far more than the 1000 keys of one listing.
    listed = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", [])]
    assert len(listed) >= 1
    bodies = []
    for obj in listed:
        data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        bodies.append(data)
    # The objects hold the full transactions: each response body is in one of them (as JSON bytes or base64).
    import base64
    import random

    for n in (11, 22, 33):
        want = random.Random(n).randbytes(n)
        enc = base64.b64encode(want)
        assert any(want in b or enc in b for b in bodies), f"response body of n={n} not in MinIO"
    # Every reference event names an object that exists.
    keys = {o["Key"] for o in listed}
    assert all(any(r["digest"] in k for k in keys) for r in refs)

