"""The ``object_ref`` event: where an object store put a stored object (a transaction's headers and
bodies), sent to the event stores once the store has it."""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import msgspec

from qtap_async.events.times import Timestamp, format_ns

__all__ = ["ObjectRef", "Storable"]


class Storable(Protocol):
    """What a reference is made from (``qtap_async.sinks.StoredObject``)."""

    @property
    def data(self) -> bytes: ...
    @property
    def digest(self) -> str: ...
    @property
    def transaction_id(self) -> str: ...
    @property
    def conn_id(self) -> int: ...
    @property
    def content_type(self) -> str: ...


class ObjectRef(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="object_ref", tag_field="type"):
    """The reference record the event stores get for each stored object.

    ``id`` is derived from the store, digest and transaction, so a re-sent reference has the same id
    and collapses with the first copy wherever events are de-duplicated by id. ``ts`` (``ts_ns`` in epoch
    nanoseconds): when the store took the object.
    """

    id: str
    ts: Timestamp
    ts_ns: int
    conn_id: int
    transaction_id: str
    digest: str
    url: str
    size: int
    content_type: str
    store: str

    @classmethod
    def of(cls, obj: Storable, url: str, store: str) -> ObjectRef:
        ident = hashlib.sha256(f"{store}\0{obj.digest}\0{obj.transaction_id}\0{obj.conn_id}".encode())
        now = time.time_ns()
        return cls(id=ident.hexdigest()[:32], ts=format_ns(now), ts_ns=now, conn_id=obj.conn_id,
                   transaction_id=obj.transaction_id, digest=obj.digest, url=url, size=len(obj.data),
                   content_type=obj.content_type, store=store)
