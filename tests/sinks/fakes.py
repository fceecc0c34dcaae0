"""In-process stand-ins for a store, for the runner's unit tests (the real stores are tested with the
services marker)."""

from __future__ import annotations

import asyncio

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.sinks import EventRecord, ObjectRef, StoredObject


class FlakyEventSink:
    """Takes batches while ``up``; raises SinkTransientError while down; SinkError for values in ``poison``."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.up = True
        self.received: list[EventRecord] = []
        self.calls = 0
        self.poison: set[bytes] = set()
        self.check_error: str | None = None
        self.closed = False
        self.delay = 0.0

    async def check(self) -> None:
        if self.check_error:
            raise SinkError(f"event store {self.name}: {self.check_error}")

    async def start(self) -> None:
        return None

    async def send(self, batch: list[EventRecord]) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up:
            raise SinkTransientError(f"event store {self.name}: down")
        if any(r.value in self.poison for r in batch):
            raise SinkError(f"event store {self.name}: rejected")
        self.received.extend(batch)

    async def close(self) -> None:
        self.closed = True


class FlakyObjectSink:
    def __init__(self, name: str = "fakeobj") -> None:
        self.name = name
        self.up = True
        self.stored: dict[str, bytes] = {}
        self.puts = 0
        self.fail_digests: set[str] = set()

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def put(self, obj: StoredObject) -> ObjectRef:
        self.puts += 1
        await asyncio.sleep(0)
        if not self.up or obj.digest in self.fail_digests:
            raise SinkTransientError(f"object store {self.name}: down")
        self.stored[obj.digest] = obj.data
        return ObjectRef.of(obj, f"mem://{obj.digest}", self.name)

    async def close(self) -> None:
        return None
