"""Event stores (anonymized metadata) and object stores (payloads), with the runner in front of them.

Typical use::

    events = build_event_runner(KafkaEventStore(brokers=[...], topic="qtap", spool=SpoolConfig(dir=...)))
    objects = build_object_runner(S3ObjectStore(bucket=..., ...), refs_to=events)
    await events.start(); await objects.start()          # SinkError when a store is unusable
    tasks = [asyncio.create_task(events.run()), asyncio.create_task(objects.run())]
    events.channel.send_nowait(event); objects.channel.send_nowait(StoredObject(data, ...))
    objects.channel.close(); events.channel.close(); await asyncio.gather(*tasks)   # flush and stop
"""

from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import EventRecord, EventSink, ObjectSink, StoredObject, to_record
from qtap_async.sinks.config import (
    BufferConfig,
    DirObjectStore,
    DisabledEventStore,
    DisabledObjectStore,
    EventStoreConfig,
    KafkaEventStore,
    KafkaSasl,
    KafkaTls,
    ObjectStoreConfig,
    PulseEventStore,
    RetryConfig,
    S3ObjectStore,
    SpoolConfig,
    StdoutEventStore,
    StdoutObjectStore,
    ValueSource,
)
from qtap_async.sinks.factory import build_event_runner, build_event_sink, build_object_runner, build_object_sink
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner, SinkRunner

__all__ = [
    "BufferConfig",
    "DirObjectStore",
    "DisabledEventStore",
    "DisabledObjectStore",
    "EventRecord",
    "EventSink",
    "EventSinkRunner",
    "EventStoreConfig",
    "KafkaEventStore",
    "KafkaSasl",
    "KafkaTls",
    "ObjectRef",
    "ObjectSink",
    "ObjectSinkRunner",
    "ObjectStoreConfig",
    "PulseEventStore",
    "RetryConfig",
    "S3ObjectStore",
    "SinkRunner",
    "SpoolConfig",
    "StdoutEventStore",
    "StdoutObjectStore",
    "StoredObject",
    "ValueSource",
    "build_event_runner",
    "build_event_sink",
    "build_object_runner",
    "build_object_sink",
    "to_record",
]
