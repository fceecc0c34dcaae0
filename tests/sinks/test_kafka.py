"""Kafka sink against the real broker from scripts/services, read back with kafka-python."""

import asyncio
import collections

import msgspec
import pytest

from qtap_async.settings import Secret
from qtap_async.sinks import BufferConfig, KafkaEventStore, KafkaSasl, build_event_runner
from tests.sinks.conftest import Services, consume_all

pytestmark = pytest.mark.services


class Ev(msgspec.Struct):
    conn_id: int
    seq: int
    path: str


async def test_events_read_back_by_an_independent_consumer(services: Services, topic: str) -> None:
    runner = build_event_runner(KafkaEventStore(
        brokers=[services.kafka_bootstrap], topic=topic, buffer=BufferConfig(batch_max_events=200)))
    await runner.start()
    task = asyncio.create_task(runner.run())
    sent = [Ev(1000 + i % 13, i, f"/api/{i}") for i in range(3000)]
    for ev in sent:
        assert runner.channel.send_nowait(ev)
    runner.channel.close()
    await task
    assert runner.stats()["qtap_sink_delivered_events_total"] == 3000

    msgs = await asyncio.to_thread(consume_all, services, topic, 3000)
    got = [msgspec.json.decode(m.value, type=Ev) for m in msgs]
    assert len(got) == 3000
    assert sorted(got, key=lambda e: e.seq) == sent
    # key = connection id, so one connection's events share a partition and keep their order
    partitions: dict[int, set[int]] = collections.defaultdict(set)
    per_conn: dict[int, list[int]] = collections.defaultdict(list)
    for m, ev in zip(msgs, got, strict=True):
        assert m.key == str(ev.conn_id).encode()
        partitions[ev.conn_id].add(m.partition)
        per_conn[ev.conn_id].append(ev.seq)
    assert all(len(p) == 1 for p in partitions.values())
    assert all(seqs == sorted(seqs) for seqs in per_conn.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1  # keys spread over partitions


async def test_sasl_plain_with_value_sources(services: Services, topic: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTAP_TEST_KAFKA_PASSWORD", services.kafka_sasl_password)
    runner = build_event_runner(KafkaEventStore(
        brokers=[services.kafka_sasl_bootstrap], topic=topic, compression="gzip",
        sasl=KafkaSasl(mechanism="PLAIN", username=Secret("text", services.kafka_sasl_username),
                       password=Secret("env", "QTAP_TEST_KAFKA_PASSWORD"))))
    await runner.start()
    task = asyncio.create_task(runner.run())
    for i in range(50):
        runner.channel.send_nowait({"conn_id": 7, "seq": i})
    runner.channel.close()
    await task
    msgs = await asyncio.to_thread(consume_all, services, topic, 50)
    assert [msgspec.json.decode(m.value)["seq"] for m in msgs] == list(range(50))
