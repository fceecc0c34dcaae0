"""The sink protocols and the records that flow into them (``ObjectRef``, the reference event of a stored
object, is part of the event model: ``qtap_async.events.objects``)."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import msgspec

from qtap_async.events.objects import ObjectRef

_json = msgspec.json.Encoder()


class EventRecord(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One encoded event: ``value`` is its JSON, ``key`` the connection id that orders it (Kafka key)."""

    key: bytes | None
    value: bytes

    @property
    def nbytes(self) -> int:
        return len(self.value) + (len(self.key) if self.key else 0)


class StoredObject(msgspec.Struct, gc=False, array_like=True):
    """A payload for an object store (a transaction with headers/bodies, as the plugin level allows).

    ``digest`` (sha256 hex of ``data``) names it: storing it twice stores the same key with the same bytes.
    """

    data: bytes
    content_type: str = "application/json"
    conn_id: int = 0
    transaction_id: str = ""
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = hashlib.sha256(self.data).hexdigest()

    @property
    def nbytes(self) -> int:
        return len(self.data)


class PartialRejection(msgspec.Struct, frozen=True, gc=False):
    """What a store refused of a batch it otherwise took (Pulse's 207): the refused records' indexes in
    the batch and the store's reason for each. The runner counts them as dropped ("rejected") and logs why."""

    indexes: list[int]
    reasons: list[str]


@runtime_checkable
class EventSink(Protocol):
    name: str

    async def check(self) -> None:
        """Raise SinkError naming the store and the reason when it cannot be used (credentials, topic...)."""

    async def start(self) -> None:
        """Connect; raises SinkError (unusable) or SinkTransientError (unreachable right now)."""

    async def send(self, batch: list[EventRecord]) -> PartialRejection | None:
        """Deliver all records or raise: SinkTransientError to retry the batch, SinkError to drop it.
        A store that took the batch but refused some of its records says which (never retried: they
        would be refused again)."""

    async def close(self) -> None: ...


@runtime_checkable
class ObjectSink(Protocol):
    name: str

    async def check(self) -> None: ...

    async def start(self) -> None: ...

    async def put(self, obj: StoredObject) -> ObjectRef:
        """Store one object (idempotent: same digest, same key) or raise as ``EventSink.send``."""

    async def close(self) -> None: ...


def event_key(event: object, key_field: str) -> bytes | None:
    """The Kafka key of an event: its ``key_field`` (default ``conn_id``), as text."""
    value: Any = event.get(key_field) if isinstance(event, dict) else getattr(event, key_field, None)
    if value is None or value == "" or value == 0:
        return None  # no connection: spread over partitions
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def to_record(event: object, key_field: str = "conn_id") -> EventRecord:
    """Encode an event (an EventRecord, raw JSON bytes, a msgspec Struct or a dict) once, as JSON."""
    if isinstance(event, EventRecord):
        return event
    if isinstance(event, bytes | bytearray | memoryview):
        return EventRecord(None, bytes(event))
    return EventRecord(event_key(event, key_field), _json.encode(event))
