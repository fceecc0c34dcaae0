"""Kafka ingestion: consume the agents' topic in a consumer group, store, then commit.

Offsets are committed only after the batch's rows are in storage, so a crash or a stop loses nothing:
the uncommitted tail is consumed again on restart and its copies collapse to one row per event id
(ReplacingMergeTree, read with FINAL).

A message value is one event or an array of events, JSON (default) or msgpack (header
``content-type: application/msgpack``). Its team comes from an ``authorization: Bearer <token>``
header, else from ``kafka.team`` in the config; a message with neither is dropped and counted.
Clock-skew decisions use the message timestamp as "now", so a replayed message is judged as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qtap_async.errors import PulseAuthError, PulseError
from qtap_async.pulse.ingest import JSON, MSGPACK, Sanitizer
from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.tokens import TokenStore
from qtap_async.telemetry.metrics import PULSE_KAFKA_COMMITS, PULSE_KAFKA_MESSAGES, PULSE_KAFKA_REJECTED

if TYPE_CHECKING:
    from qtap_async.pulse.app import Pulse

log = logging.getLogger("qtap.pulse.kafka")
_MSGPACK_ARRAY = {*range(0x90, 0xA0), 0xDC, 0xDD}
_json_list = msgspec.json.Decoder(list[msgspec.Raw])
_msgpack_list = msgspec.msgpack.Decoder(list[msgspec.Raw])


def prepare_messages(
    messages: Sequence[Any], sanitizer: Sanitizer, tokens: TokenStore, default_team: str, metrics: Metrics
) -> dict[str, list[bytes]]:
    """Rows per table for a batch of ConsumerRecords (value, headers, timestamp)."""
    rows: dict[str, list[bytes]] = {}
    principals: dict[str, tuple[str, str] | None] = {}
    for msg in messages:
        metrics.inc(PULSE_KAFKA_MESSAGES)
        headers = {k.lower(): v for k, v in (msg.headers or ())}
        team, agent = default_team, ""
        auth = headers.get("authorization", b"").decode("utf-8", "replace")
        if auth:
            if auth not in principals:
                try:
                    p = tokens.authenticate(auth.partition(" ")[2].strip(), "ingest")
                    principals[auth] = (p.team, p.agent)
                except PulseAuthError:
                    principals[auth] = None
            found = principals[auth]
            if found is None:
                metrics.inc(PULSE_KAFKA_REJECTED, reason="auth")
                continue
            team, agent = found
        if not team:
            metrics.inc(PULSE_KAFKA_REJECTED, reason="no_team")
            continue
        value: bytes = msg.value or b""
        is_msgpack = b"msgpack" in headers.get("content-type", b"")
        fmt = MSGPACK if is_msgpack else JSON
        try:
            if is_msgpack:
                items = (
                    _msgpack_list.decode(value) if value[:1] and value[0] in _MSGPACK_ARRAY else [msgspec.Raw(value)]
                )
            else:
                items = _json_list.decode(value) if value.lstrip()[:1] == b"[" else [msgspec.Raw(value)]
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            metrics.inc(PULSE_KAFKA_REJECTED, reason="decode")
            continue
        prepared = sanitizer.prepare(fmt, items, team, agent, reference_ns=msg.timestamp * 1_000_000, body=value)
        if prepared.result.errors:
            log.debug("kafka %s@%s: %s", msg.partition, msg.offset, prepared.result.errors[:3])
        for table, chunks in prepared.rows.items():
            if chunks:
                rows.setdefault(table, []).extend(chunks)
    return rows


async def run_kafka(pulse: Pulse) -> None:
    """Consume until cancelled. Insert failures are retried; offsets move only after a stored batch."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
    from aiokafka.errors import CommitFailedError, KafkaError  # type: ignore[import-untyped]
    from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

    cfg = pulse.config.kafka
    consumer = AIOKafkaConsumer(
        cfg.topic,
        bootstrap_servers=cfg.bootstrap,
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    delay = 0.5
    while True:
        try:
            await consumer.start()
            break
        except KafkaError as e:
            log.warning("kafka %s not reachable (%s); retrying in %.1fs", cfg.bootstrap, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    log.info("kafka: consuming %s as group %s from %s", cfg.topic, cfg.group_id, cfg.bootstrap)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=cfg.max_batch)
            if not batches:
                continue
            messages = [m for part in batches.values() for m in part]
            rows = await pulse.run_blocking(
                prepare_messages, messages, pulse.sanitizer, pulse.tokens, cfg.team, pulse.metrics
            )
            delay = 0.2
            while True:
                assert pulse.writer is not None
                try:
                    await pulse.writer.write(rows)
                    break
                except PulseError as e:
                    log.warning("kafka batch not stored (%s); retrying in %.1fs", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            offsets: dict[TopicPartition, OffsetAndMetadata] = {
                tp: OffsetAndMetadata(part[-1].offset + 1, "") for tp, part in batches.items()
            }
            try:
                await consumer.commit(offsets)
                pulse.metrics.inc(PULSE_KAFKA_COMMITS)
            except (CommitFailedError, KafkaError) as e:
                # A rebalance took the partitions: the new owner re-reads them; copies collapse.
                log.warning("kafka commit failed: %s", e)
    finally:
        await consumer.stop()
