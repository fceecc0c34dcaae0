"""The last stage: output events and objects to where they go.

``Writer`` is the one writer of every run. Events and objects go to the config's event and object stores
(each a ``sinks.runner`` with its own channel, spool and retries); without a config file, the local
output (``StdoutWriter`` or the CLI's ``FormatWriter``) takes them instead, synchronously. Connection
and gap events of ignored connections never reach it (topology/dispatch.py drops them). Stores can be
swapped while running (a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import IO, Any

import msgspec

from qtap_async.buffers.channel import Channel
from qtap_async.config import Services
from qtap_async.errors import ChannelClosed
from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import StoredObject
from qtap_async.sinks.factory import build_event_runner, build_object_runner
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner
from qtap_async.telemetry import metrics

__all__ = ["StdoutWriter", "Writer", "build_stores", "len_sizeof"]

AnyRunner = EventSinkRunner | ObjectSinkRunner


class StdoutWriter:
    """Events as JSON lines on stdout: the local output of a run without a config file."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self._encode_lines = msgspec.json.Encoder().encode_lines  # JSON lines into one buffer, in C
        self.written = 0

    def write(self, events: list[Any]) -> None:
        self.out.write(self._encode_lines(events))
        self.out.flush()
        self.written += len(events)

    async def run(self, rx: Channel[list[Any]]) -> None:
        while True:
            try:
                # Not kept in a local: the last batch would stay alive through the wait for the next.
                self.write(await rx.recv())
            except ChannelClosed:
                break


def len_sizeof(batch: object) -> int:
    """Bytes an output batch holds, roughly: ~512 per event plus the bodies it carries (level full)."""
    if not isinstance(batch, list):
        return 512
    n = 512 * len(batch)
    for e in batch:
        if isinstance(e, dict):
            for k in ("request_body", "response_body"):
                b = e.get(k)
                if isinstance(b, bytes | str):
                    n += len(b)
    return n


# -- stores -------------------------------------------------------------------------------------


def build_stores(services: Services) -> tuple[list[EventSinkRunner], list[ObjectSinkRunner]]:
    """Runners for the enabled stores (``disabled`` ones are left out: nothing is sent to them).

    Each object store sends the reference event of every object it stored to every event store.
    Raises ConfigError (e.g. a secret's variable is not set) before anything is started.
    """
    events = [build_event_runner(s) for s in services.event_stores if s.type != "disabled"]
    objects: list[ObjectSinkRunner] = []
    channels = [r.channel for r in events]

    def on_ref(ref: ObjectRef) -> None:
        for ch in channels:
            if not ch.closed:
                ch.send_nowait(ref)  # never wait here: a full event queue drops and counts the reference

    for s in services.object_stores:
        if s.type == "disabled":
            continue
        runner = build_object_runner(s)
        runner.on_ref = on_ref if events else None
        objects.append(runner)
    return events, objects


def _runners(events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> list[AnyRunner]:
    out: list[AnyRunner] = [*objects]
    out.extend(events)
    return out


async def start_runners(runners: list[AnyRunner]) -> None:
    """Start every runner or none: when one fails, the ones already started are closed."""
    started: list[AnyRunner] = []
    try:
        for r in runners:
            await r.start()
            started.append(r)
    except BaseException:
        for r in started:
            r.channel.close()
            with contextlib.suppress(Exception):
                await r.run()  # closes the sink and the spool
        raise


class Writer:
    """Events to every event store, objects to every object store; or everything to the local output.

    ``keep`` (the CLI's summary counter) sees every item sent to the stores first. Counters: ``stats``."""

    def __init__(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner], *,
                 local: StdoutWriter | None = None, keep: Callable[[Any], bool] | None = None) -> None:
        self.events = events
        self.objects = objects
        self.local = local
        self.keep = keep
        self.written = 0
        self.objects_discarded = 0  # objects made while no object store is enabled
        self.events_discarded = 0  # events made while no event store is enabled
        self.filtered = 0
        self._tasks: dict[asyncio.Task[None], AnyRunner] = {}
        self._running = False

    async def start(self) -> None:
        await start_runners(_runners(self.events, self.objects))

    # -- the local output: synchronous (replay drives it directly) --------------------------------
    def write(self, batch: list[Any]) -> None:
        if self.local is None:
            raise RuntimeError("Writer.write is the local output's; stores are written by run()")
        self.local.write(batch)

    # -- stores -----------------------------------------------------------------------------------
    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def _spawn(self, runners: list[EventSinkRunner] | list[ObjectSinkRunner]) -> None:
        for r in runners:
            task = asyncio.create_task(r.run(), name=f"sink-{r.kind}-{r.name}")
            self._tasks[task] = r
            task.add_done_callback(self._forget)

    async def replace(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> None:
        """Switch to new (already started) stores; the old ones flush what they hold and close."""
        old_events, old_objects = self.events, self.objects
        self.events, self.objects = events, objects
        if self._running:
            self._spawn(events)
            self._spawn(objects)
            await self._close(old_events, old_objects)
        else:
            for r in _runners(old_events, old_objects):
                r.channel.close()
                with contextlib.suppress(Exception):
                    await r.run()

    async def _close(self, events: list[EventSinkRunner], objects: list[ObjectSinkRunner]) -> None:
        # Objects first: the reference events of what they still store must reach open event stores.
        for group in (objects, events):
            for r in group:
                r.channel.close()
            tasks = [t for t, r in list(self._tasks.items()) if r in group]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _route(self, item: Any) -> None:
        if isinstance(item, StoredObject):
            if not self.objects:
                self.objects_discarded += 1
                return
            for r in self.objects:
                with contextlib.suppress(ChannelClosed):  # a store being replaced right now
                    await r.channel.send(item)
            return
        if not self.events:
            self.events_discarded += 1
            return
        for e in self.events:
            with contextlib.suppress(ChannelClosed):
                await e.channel.send(item)

    async def run(self, rx: Channel[list[Any]]) -> None:
        if self.local is not None:
            await self.local.run(rx)
            return
        self._running = True
        self._spawn(self.events)
        self._spawn(self.objects)
        try:
            while True:
                try:
                    # Not kept in a local: the last batch would stay alive through the wait for the next.
                    await self._route_batch(await rx.recv())
                except ChannelClosed:
                    break
        finally:
            await self._close(self.events, self.objects)
            while self._tasks:  # stores being replaced at this very moment
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _route_batch(self, batch: list[Any]) -> None:
        keep = self.keep
        for item in batch:
            if keep is not None and not keep(item):
                self.filtered += 1
                continue
            await self._route(item)
            self.written += 1

    async def aclose(self) -> None:
        """Close stores that were started but never ran (the run failed before its output stage)."""
        if self._running:
            return
        for r in _runners(self.events, self.objects):
            r.channel.close()
            with contextlib.suppress(Exception):
                await r.run()

    def runners(self) -> list[AnyRunner]:
        return _runners(self.events, self.objects)

    def stats(self) -> dict[str, int]:
        """Counters with stable qtap_* names (the runtime's snapshot includes them)."""
        out: dict[str, int] = {
            metrics.EVENTS_WRITTEN.name: self.local.written if self.local is not None else self.written,
            metrics.PIPELINE_OBJECTS_DISCARDED.name: self.objects_discarded,
            metrics.PIPELINE_EVENTS_DISCARDED.name: self.events_discarded,
            metrics.PIPELINE_FILTERED_EVENTS.name: self.filtered,
        }
        for r in _runners(self.events, self.objects):
            for k, v in r.stats().items():
                out[metrics.declared(k).key(store=f"{r.kind}:{r.name}")] = v
        return out
