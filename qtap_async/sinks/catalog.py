"""Every store type, as the tagged unions the config decodes each store entry into (once, on ``type``).

A new store declares its settings Struct beside its sink (on ``EventStoreSettings`` or
``ObjectStoreSettings`` of ``sinks/base.py``, with a ``tag``), is added to its union here, and is built in
``sinks/factory.py``. The union's members are listed in the order of their tags' names: that is the order
the config's error messages list the allowed types in.
"""

from __future__ import annotations

from typing import TypeAlias

from qtap_async.sinks.dir import DirObjectStore
from qtap_async.sinks.kafka import KafkaEventStore
from qtap_async.sinks.otel import OtelEventStore
from qtap_async.sinks.pulse import PulseEventStore
from qtap_async.sinks.s3 import S3ObjectStore
from qtap_async.sinks.stdout import DisabledEventStore, DisabledObjectStore, StdoutEventStore, StdoutObjectStore

__all__ = ["EventStoreConfig", "ObjectStoreConfig", "StoreConfig"]

EventStoreConfig: TypeAlias = (
    DisabledEventStore | KafkaEventStore | OtelEventStore | PulseEventStore | StdoutEventStore
)
ObjectStoreConfig: TypeAlias = DirObjectStore | DisabledObjectStore | S3ObjectStore | StdoutObjectStore
#: Any store entry of either list.
StoreConfig: TypeAlias = EventStoreConfig | ObjectStoreConfig
