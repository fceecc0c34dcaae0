"""The sink protocols, the records that flow into them (``ObjectRef``, the reference event of a stored
object, is part of the event model: ``qtap_async.events.objects``), and the settings every store shares.

Each store's settings Struct lives beside its sink (``StdoutEventStore`` in stdout.py, ``KafkaEventStore``
in kafka.py...) on ``EventStoreSettings`` or ``ObjectStoreSettings``, tagged on ``type``; the unions of
them, which the config decodes each store entry into, are in ``qtap_async.sinks.catalog``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

from qtap_async.events.objects import ObjectRef
from qtap_async.settings import Settings

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


# -- settings shared by every store ----------------------------------------------------------------------

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class BufferConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The in-memory queue in front of one store and how batches are cut from it."""

    max_events: PositiveInt = 100_000
    max_bytes: PositiveInt = 64 << 20
    when_full: Literal["block", "drop_newest"] = "block"
    batch_max_events: PositiveInt = 500
    batch_max_bytes: PositiveInt = 1 << 20
    linger: NonNegFloat = 0.05  # seconds to wait for a batch to fill after its first event


class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Backoff for transient errors; after ``spool_after`` seconds of failing, batches go to the spool."""

    initial: Annotated[float, msgspec.Meta(gt=0)] = 0.1
    maximum: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2
    spool_after: NonNegFloat = 2.0


class SpoolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The durable on-disk spool (one subdirectory per store under ``dir``)."""

    dir: str
    max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 1 << 30
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    fsync: bool = False


class StoreSettings(Settings, frozen=True, kw_only=True, tag_field="type"):
    """What every store entry takes besides its own settings. ``kind`` names the list in error messages."""

    kind: ClassVar[str] = "store"

    id: str = ""  # Qtap's name for the entry: unique within its list, and the default ``name``
    name: str = ""  # for metrics and the spool directory; defaults to the id, then the type
    buffer: BufferConfig = msgspec.field(default_factory=BufferConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    spool: SpoolConfig | None = None
    shutdown_timeout: NonNegFloat = 10.0  # seconds to keep delivering at exit before leaving data in the spool
    check_on_start: bool = True  # fail start-up when the store is unusable (else start and spool)

    @property
    def type(self) -> str:
        """The entry's ``type`` (the Struct's tag)."""
        return str(self.__struct_config__.tag)


class EventStoreSettings(StoreSettings, frozen=True):
    kind: ClassVar[str] = "event store"


class ObjectStoreSettings(StoreSettings, frozen=True):
    kind: ClassVar[str] = "object store"


def store_name(cfg: StoreSettings) -> str:
    """The store's name in metrics, logs and the spool directory: ``name``, else ``id``, else its type."""
    return cfg.name or cfg.id or cfg.type
