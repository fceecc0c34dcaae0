"""Sinks that write to standard output (JSON lines), and the ones that discard everything."""

from __future__ import annotations

import base64
import sys
from typing import BinaryIO

import msgspec

from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import EventRecord, EventStoreSettings, ObjectStoreSettings, StoredObject


class StdoutEventStore(EventStoreSettings, frozen=True, tag="stdout"):
    """``type: stdout`` event store: one JSON event per line on stdout."""


class StdoutObjectStore(ObjectStoreSettings, frozen=True, tag="stdout"):
    """``type: stdout`` object store: one JSON line per object on stdout."""


class DisabledEventStore(EventStoreSettings, frozen=True, tag="disabled"):
    """``type: disabled``: events are discarded (and not counted as lost)."""


class DisabledObjectStore(ObjectStoreSettings, frozen=True, tag="disabled"):
    """``type: disabled``: payloads never leave the agent."""


class _ObjectLine(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    kind: str
    digest: str
    size: int
    content_type: str
    conn_id: int
    transaction_id: str
    body: str | None = None
    body_b64: str | None = None


_encode_line = msgspec.json.Encoder().encode


class StdoutEventSink:
    """One JSON event per line."""

    def __init__(self, name: str = "stdout", stream: BinaryIO | None = None) -> None:
        self.name = name
        self._stream = stream

    def _out(self) -> BinaryIO:
        return self._stream if self._stream is not None else sys.stdout.buffer

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def send(self, batch: list[EventRecord]) -> None:
        out = self._out()
        out.write(b"".join(r.value + b"\n" for r in batch))
        out.flush()

    async def close(self) -> None:
        return None


class StdoutObjectSink:
    """One JSON line per object: its reference fields and its body (text when UTF-8, else base64); text
    objects (``format: text``) as the text itself."""

    def __init__(self, name: str = "stdout", stream: BinaryIO | None = None) -> None:
        self.name = name
        self._stream = stream

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def put(self, obj: StoredObject) -> ObjectRef:
        out = self._stream if self._stream is not None else sys.stdout.buffer
        if obj.content_type.startswith("text/plain"):
            # http_capture `format: text` asked for something to read: the text itself, not JSON around it
            # (its first line, "# <time> <process> ...", starts each transaction).
            out.write(obj.data if obj.data.endswith(b"\n") else obj.data + b"\n")
            out.flush()
            return ObjectRef.of(obj, f"stdout:{obj.digest}", self.name)
        try:
            text: str | None = obj.data.decode()
            b64 = None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(obj.data).decode()
        line = _ObjectLine("object", obj.digest, len(obj.data), obj.content_type, obj.conn_id,
                           obj.transaction_id, text, b64)
        out.write(_encode_line(line) + b"\n")
        out.flush()
        return ObjectRef.of(obj, f"stdout:{obj.digest}", self.name)

    async def close(self) -> None:
        return None


class DisabledEventSink:
    """Accepts and discards (``type: disabled``); counted as delivered."""

    def __init__(self, name: str = "disabled") -> None:
        self.name = name

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def send(self, batch: list[EventRecord]) -> None:
        return None

    async def close(self) -> None:
        return None


class DisabledObjectSink(DisabledEventSink):
    async def put(self, obj: StoredObject) -> ObjectRef:
        return ObjectRef.of(obj, "", self.name)
