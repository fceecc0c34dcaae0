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
from qtap_async.sinks.base import (
    BufferConfig,
    EventRecord,
    EventSink,
    ObjectSink,
    RetryConfig,
    SpoolConfig,
    StoredObject,
    store_name,
    to_record,
)
from qtap_async.sinks.catalog import EventStoreConfig, ObjectStoreConfig, StoreConfig
from qtap_async.sinks.dir import DirObjectStore
from qtap_async.sinks.factory import build_event_runner, build_event_sink, build_object_runner, build_object_sink
from qtap_async.sinks.kafka import KafkaEventStore, KafkaSasl, KafkaTls
from qtap_async.sinks.pulse import PulseEventStore
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner, SinkRunner
from qtap_async.sinks.s3 import S3ObjectStore
from qtap_async.sinks.stdout import DisabledEventStore, DisabledObjectStore, StdoutEventStore, StdoutObjectStore

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
    "StoreConfig",
    "StoredObject",
    "build_event_runner",
    "build_event_sink",
    "build_object_runner",
    "build_object_sink",
    "store_name",
    "to_record",
]
