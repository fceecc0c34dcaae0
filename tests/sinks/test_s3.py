"""S3 sink against the real MinIO from scripts/services, read back with boto3."""

import asyncio
import hashlib
import os

import msgspec
import pytest

from qtap_async.settings import Secret
from qtap_async.sinks import (
    KafkaEventStore,
    ObjectRef,
    S3ObjectStore,
    StoredObject,
    build_event_runner,
    build_object_runner,
)
from tests.sinks.conftest import Services, consume_all, s3_client

pytestmark = pytest.mark.services


def store(services: Services, bucket: str, **kw: object) -> S3ObjectStore:
    return S3ObjectStore(bucket=bucket, endpoint=services.s3_endpoint, region=services.s3_region,
                         access_key=Secret("text", services.s3_access_key),
                         secret_key=Secret("env", "QTAP_TEST_S3_SECRET"), **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _secret_env(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTAP_TEST_S3_SECRET", services.s3_secret_key)


async def test_objects_read_back_with_boto3(services: Services, bucket: str) -> None:
    refs: list[ObjectRef] = []
    runner = build_object_runner(store(services, bucket, key="tx/{{SHARD}}/{{DIGEST}}", sse="AES256",
                                       access_url="{{ENDPOINT}}/{{BUCKET}}/{{KEY}}"))
    runner.on_ref = refs.append
    await runner.start()
    task = asyncio.create_task(runner.run())
    sizes = [0, 1, 100, 4096, 65_536, 1 << 20] + [300] * 194
    objs = [StoredObject(os.urandom(n), content_type="application/octet-stream", conn_id=i % 5,
                         transaction_id=f"t{i}") for i, n in enumerate(sizes)]
    for o in objs:
        runner.channel.send_nowait(o)
    runner.channel.close()
    await task
    assert runner.stats()["qtap_sink_delivered_events_total"] == len(objs)

    s3 = s3_client(services)
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
    assert keys == {f"tx/{o.digest[:2]}/{o.digest}" for o in objs}
    for o in objs[:8]:
        got = s3.get_object(Bucket=bucket, Key=f"tx/{o.digest[:2]}/{o.digest}")
        body = got["Body"].read()
        assert body == o.data and hashlib.sha256(body).hexdigest() == o.digest
        assert got["ContentType"] == "application/octet-stream"
        assert got["ServerSideEncryption"] == "AES256"
    by_tx = {r.transaction_id: r for r in refs}
    assert len(by_tx) == len(objs)
    r = by_tx["t3"]
    assert r.url == f"{services.s3_endpoint}/{bucket}/tx/{objs[3].digest[:2]}/{objs[3].digest}"
    assert (r.size, r.conn_id, r.digest) == (4096, 3, objs[3].digest)


async def test_same_content_is_one_object(services: Services, bucket: str) -> None:
    runner = build_object_runner(store(services, bucket))
    await runner.start()
    task = asyncio.create_task(runner.run())
    for i in range(20):
        runner.channel.send_nowait(StoredObject(b'{"same": "body"}', transaction_id=f"t{i}"))
    runner.channel.close()
    await task
    listed = s3_client(services).list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == [hashlib.sha256(b'{"same": "body"}').hexdigest()]


async def test_reference_records_reach_the_event_store(services: Services, bucket: str, topic: str) -> None:
    events = build_event_runner(KafkaEventStore(brokers=[services.kafka_bootstrap], topic=topic))
    objects = build_object_runner(store(services, bucket), refs_to=events)
    await events.start()
    await objects.start()
    tasks = [asyncio.create_task(events.run()), asyncio.create_task(objects.run())]
    objs = [StoredObject(b"payload %d" % i, conn_id=100 + i, transaction_id=f"tx{i}") for i in range(10)]
    for o in objs:
        objects.channel.send_nowait(o)
    objects.channel.close()
    await tasks[1]
    events.channel.close()
    await tasks[0]
    msgs = await asyncio.to_thread(consume_all, services, topic, 10)
    refs = [msgspec.json.decode(m.value, type=ObjectRef) for m in msgs]
    assert sorted((r.transaction_id, r.digest, r.conn_id) for r in refs) == sorted(
        (o.transaction_id, o.digest, o.conn_id) for o in objs)
    assert all(r.url == f"s3://{bucket}/{r.digest}" for r in refs)
    assert {m.key for m in msgs} == {str(100 + i).encode() for i in range(10)}
    assert all(b'"type":"object_ref"' in m.value for m in msgs)


async def test_known_keys_are_bounded_and_a_recent_repeat_is_not_uploaded_again(
        services: Services, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The table that skips re-uploads of identical content keeps the last _KNOWN_DIGESTS keys put (least
    # recently put out first). Told apart on MinIO: an object deleted behind the store's back comes back
    # only if the store forgot it had stored it.
    from qtap_async.sinks import s3 as s3_module
    from qtap_async.sinks.factory import build_object_sink
    from qtap_async.sinks.s3 import S3ObjectSink

    monkeypatch.setattr(s3_module, "_KNOWN_DIGESTS", 8)
    sink = build_object_sink(store(services, bucket))
    assert isinstance(sink, S3ObjectSink)
    objs = [StoredObject(f"body {i}".encode(), transaction_id=f"t{i}") for i in range(30)]
    try:
        for o in objs:
            await sink.put(o)
        assert len(sink._known) == 8 and sink.known_evicted == 22
        await sink.put(objs[22])  # a repeat: now the most recently put, so objs[23] goes out next
        await sink.put(StoredObject(b"one more", transaction_id="x"))
        s3 = s3_client(services)
        for o in (objs[0], objs[22], objs[23]):
            s3.delete_object(Bucket=bucket, Key=o.digest)
        for o in (objs[0], objs[22], objs[23]):
            await sink.put(o)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert objs[0].digest in keys  # forgotten long ago: uploaded again
        assert objs[23].digest in keys  # pushed out by "one more" (objs[22] was put again after it)
        assert objs[22].digest not in keys  # still known: not uploaded again
    finally:
        await sink.close()
