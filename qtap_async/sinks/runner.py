"""SinkRunner: channel -> batch -> deliver with retries -> spool when the store stays down.

Two tasks per store:

* intake: cuts batches from the input channel and hands them to the deliverer one at a time; while the
  spool holds data it appends new batches to the spool instead (behind the older data, so order is kept).
* deliverer: delivers the spool's oldest records first, retrying forever with backoff, and acks them in the
  spool only once the store took them; otherwise the batch handed over by intake, retrying for at most
  ``retry.spool_after`` seconds before moving it (and everything after it) to the spool.

The store's health never reaches the ring-buffer drain: during an outage intake keeps draining the channel
into the spool, so ``when_full: block`` only holds a sender for the few seconds a retry takes (and the drain
itself uses ``send_nowait``, which drops and counts instead of waiting). Without a spool, batches are retried
until shutdown: the channel fills and its ``when_full`` policy applies.

At shutdown (the input channel is closed and drained) delivery goes on for ``shutdown_timeout`` seconds;
what is left then stays in the spool for the next start (or, with no spool, is dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from qtap_async.buffers.backoff import Backoff
from qtap_async.buffers.channel import Channel
from qtap_async.buffers.spool import Spool
from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import (
    BufferConfig,
    EventRecord,
    EventSink,
    ObjectSink,
    PartialRejection,
    RetryConfig,
    SpoolConfig,
    StoredObject,
    to_record,
)
from qtap_async.telemetry import metrics

log = logging.getLogger("qtap.sinks")

T = TypeVar("T", EventRecord, StoredObject)


class _Counters:
    __slots__ = ("attempts", "delivered_bytes", "delivered_events", "dropped", "errors", "latency_count",
                 "latency_max", "latency_sum", "retried", "retried_events", "unspooled_events")

    def __init__(self) -> None:
        self.delivered_events = 0
        self.delivered_bytes = 0
        self.attempts = 0
        self.retried = 0
        self.retried_events = 0
        self.errors = 0
        self.unspooled_events = 0
        self.dropped: dict[str, list[int]] = {"rejected": [0, 0], "shutdown": [0, 0]}
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latency_max = 0.0


class SinkRunner(Generic[T]):
    """Drives one store. Subclasses say how a batch is delivered and how items are encoded for the spool."""

    kind = "event"
    _item_type: type[T]

    def __init__(
        self,
        sink: Any,
        *,
        buffer: BufferConfig | None = None,
        retry: RetryConfig | None = None,
        spool: SpoolConfig | None = None,
        shutdown_timeout: float = 10.0,
        check_on_start: bool = True,
    ) -> None:
        self.sink = sink
        self.name: str = sink.name
        self.buffer = buffer or BufferConfig()
        self.retry = retry or RetryConfig()
        self.spool_config = spool
        self.shutdown_timeout = shutdown_timeout
        self.check_on_start = check_on_start
        self.channel: Channel[Any] = Channel(self.buffer.max_events, self.buffer.max_bytes, self.buffer.when_full)
        self._rx: Channel[Any] = self.channel
        self.spool: Spool | None = None
        self.c = _Counters()
        self.up = True
        self.last_error = ""
        self._spooling = False
        self._handoff: list[T] | None = None
        self._intake_done = False
        self._stop_at: float | None = None  # loop time after which delivery gives up (shutdown)
        self._wake_deliverer = asyncio.Event()
        self._wake_intake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._started = False
        self._encoder = msgspec.msgpack.Encoder()

    # ------------------------------------------------------------------------------------------ life
    async def start(self) -> None:
        """Open the spool, prepare the store and (``check_on_start``) check it: SinkError when unusable."""
        if self._started:
            return
        if self.spool_config is not None:
            cfg = self.spool_config
            self.spool = Spool(os.path.join(cfg.dir, f"{self.kind}-{self.name}"), cfg.max_bytes, cfg.when_full,
                               fsync=cfg.fsync)
            self._spooling = self.spool.depth_events > 0
            if self._spooling:
                log.info("sink %s: %d records in the spool from before; delivering them first",
                         self.name, self.spool.depth_events)
        try:
            await self.sink.start()
            if self.check_on_start:
                await self.sink.check()
        except BaseException:
            await self._close_resources()
            raise
        self._started = True

    async def run(self, rx: Channel[Any] | None = None) -> None:
        """Deliver everything received on ``rx`` (default: ``self.channel``) until it is closed and drained."""
        if rx is not None:
            self._rx = rx
        await self.start()
        deliverer = asyncio.create_task(self._deliver_loop(), name=f"sink-{self.name}-deliver")
        try:
            await self._intake_loop()
        finally:
            self._intake_done = True
            if self._stop_at is None:  # the deliverer may have started the clock when the channel closed
                self._stop_at = asyncio.get_running_loop().time() + self.shutdown_timeout
            self._stopping.set()
            self._wake_deliverer.set()
            try:
                await deliverer
            finally:
                if not deliverer.done():
                    deliverer.cancel()
                self._save_leftovers()
                await self._close_resources()

    async def _close_resources(self) -> None:
        try:
            await self.sink.close()
        finally:
            if self.spool is not None:
                self.spool.close()

    def _save_leftovers(self) -> None:
        """Cancelled or timed out with a batch in hand: keep it in the spool (or count it as dropped)."""
        batch, self._handoff = self._handoff, None
        if batch:
            if self.spool is not None:
                self._spool_append(batch)
            else:
                self._drop("shutdown", batch)

    # ---------------------------------------------------------------------------------------- intake
    async def _intake_loop(self) -> None:
        buf = self.buffer
        while True:
            items = await self._rx.recv_batch(buf.batch_max_events, buf.batch_max_bytes, buf.linger)
            if not items:
                return
            batch = [self._prepare(i) for i in items]
            while True:
                if self._spooling:
                    self._spool_append(batch)
                    self._wake_deliverer.set()
                    break
                if self._handoff is None:
                    self._handoff = batch
                    self._wake_deliverer.set()
                    break
                self._wake_intake.clear()
                await self._wake_intake.wait()
            del items, batch  # handed on: not kept alive through the wait for the next

    # ------------------------------------------------------------------------------------- deliverer
    async def _deliver_loop(self) -> None:
        loop = asyncio.get_running_loop()
        buf = self.buffer
        while True:
            spool = self.spool
            if spool is not None and spool.depth_events:
                payloads, pos = spool.read(buf.batch_max_events, buf.batch_max_bytes)
                if not payloads:  # only unreadable records were left there: step over them
                    spool.ack(pos)
                    await asyncio.sleep(0)
                    continue
                items = [self._decode(p) for p in payloads]
                if await self._deliver_until(items, None):
                    return  # shutting down: they stay in the spool (not acked) for the next start
                spool.ack(pos)
                self.c.unspooled_events += len(items)
                if spool.depth_events == 0:
                    self._spooling = False
                    log.info("sink %s: spool drained; delivering directly again", self.name)
                    self._wake_intake.set()
                del items, payloads
                continue
            if self._handoff is not None:
                batch, self._handoff = self._handoff, None
                self._wake_intake.set()
                deadline = loop.time() + self.retry.spool_after if spool is not None else None
                left = await self._deliver_until(batch, deadline)
                if left:
                    if spool is not None:
                        self._start_spooling(left)
                    else:
                        self._drop("shutdown", left)
                del batch, left  # not kept alive through the wait for the next
                continue
            if self._intake_done:
                return
            self._wake_deliverer.clear()
            await self._wake_deliverer.wait()

    def _start_spooling(self, left: list[T]) -> None:
        # Synchronous on purpose: intake cannot slip a newer batch into the spool before these.
        if not self._spooling:
            log.warning("sink %s: store down for %.1fs (%s); spooling", self.name, self.retry.spool_after,
                        self.last_error)
        self._spooling = True
        self._spool_append(left)
        if self._handoff is not None:
            batch, self._handoff = self._handoff, None
            self._spool_append(batch)
        self._wake_intake.set()

    async def _deliver_until(self, batch: list[T], deadline: float | None) -> list[T]:
        """Deliver ``batch``, retrying transient errors with backoff until ``deadline`` (None: until shutdown).
        Returns what is still undelivered."""
        loop = asyncio.get_running_loop()
        r = self.retry
        backoff = Backoff(r.initial, max(r.maximum, r.initial), r.multiplier, r.jitter)
        while batch:
            if self._stop_at is None and self._rx.closed:
                # Shutdown began while intake is blocked behind this delivery (store down, no spool):
                # start the stop deadline here, or a down store would hold the process for ever.
                self._stop_at = loop.time() + self.shutdown_timeout
            if self._stop_at is not None and loop.time() >= self._stop_at:
                return batch
            t0 = time.perf_counter()
            self.c.attempts += 1
            batch, err = await self._attempt(batch)
            if not batch:
                dt = time.perf_counter() - t0
                self.c.latency_sum += dt
                self.c.latency_count += 1
                self.c.latency_max = max(self.c.latency_max, dt)
                if not self.up:
                    log.info("sink %s: store is back", self.name)
                self.up = True
                return batch
            self.c.errors += 1
            self.last_error = str(err)
            if self.up:
                log.warning("sink %s: delivery failed, retrying: %s", self.name, err)
            self.up = False
            delay = backoff.next_delay()
            limit = deadline
            if self._stop_at is not None:
                limit = self._stop_at if limit is None else min(limit, self._stop_at)
            if limit is not None and loop.time() + delay > limit:
                return batch
            self.c.retried += 1
            self.c.retried_events += len(batch)
            if self._stopping.is_set():
                await asyncio.sleep(delay)  # within the stop deadline (checked above)
            else:
                with contextlib.suppress(TimeoutError):  # wake early when shutdown begins
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        return batch

    async def _attempt(self, batch: list[T]) -> tuple[list[T], BaseException | None]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- spool
    def _spool_append(self, batch: list[T]) -> None:
        assert self.spool is not None
        # The spool counts what it keeps (qtap_sink_spooled_*) and what it drops (spool_full) itself.
        self.spool.append([self._encoder.encode(item) for item in batch])

    def _decode(self, payload: bytes) -> T:
        return msgspec.msgpack.decode(payload, type=self._item_type)

    def _prepare(self, item: Any) -> T:
        raise NotImplementedError

    def _drop(self, reason: str, items: list[T]) -> None:
        slot = self.c.dropped.setdefault(reason, [0, 0])
        slot[0] += len(items)
        slot[1] += sum(i.nbytes for i in items)

    # ------------------------------------------------------------------------------------------- stats
    def stats(self) -> dict[str, int]:
        """Plain counters and gauges with stable names (events = objects for an object store)."""
        c = self.c
        ch = self._rx.statistics()
        handoff = self._handoff or []
        dropped: dict[str, list[int]] = {k: list(v) for k, v in c.dropped.items()}
        dropped["queue_full"] = [ch.dropped_events, ch.dropped_bytes]
        sp = self.spool.stats() if self.spool is not None else None
        # (bytes lost to a corrupt spool file are few and rare; they are counted with spool_full)
        dropped["spool_full"] = ([sp.dropped_events - sp.corrupt_events - sp.disk_full_events,
                                  sp.dropped_bytes - sp.disk_full_bytes] if sp else [0, 0])
        dropped["spool_corrupt"] = [sp.corrupt_events, 0] if sp else [0, 0]
        dropped["spool_disk_full"] = [sp.disk_full_events, sp.disk_full_bytes] if sp else [0, 0]
        # Plain names: the writer labels each with its store (the SINK_* declarations name the label).
        # Latency in integer microseconds, as exported (snapshots hold integers).
        out: dict[str, int] = {
            metrics.SINK_DELIVERED_EVENTS.name: c.delivered_events,
            metrics.SINK_DELIVERED_BYTES.name: c.delivered_bytes,
            metrics.SINK_ATTEMPTS.name: c.attempts,
            metrics.SINK_ERRORS.name: c.errors,
            metrics.SINK_RETRIED.name: c.retried,
            metrics.SINK_RETRIED_EVENTS.name: c.retried_events,
            metrics.SINK_SPOOLED_EVENTS.name: sp.appended_events if sp else 0,
            metrics.SINK_SPOOLED_BYTES.name: sp.appended_bytes if sp else 0,
            metrics.SINK_UNSPOOLED_EVENTS.name: c.unspooled_events,
            metrics.SINK_DROPPED_EVENTS.name: sum(v[0] for v in dropped.values()),
            metrics.SINK_DROPPED_BYTES.name: sum(v[1] for v in dropped.values()),
            metrics.SINK_QUEUE_DEPTH_EVENTS.name: ch.depth_events + len(handoff),
            metrics.SINK_QUEUE_DEPTH_BYTES.name: ch.depth_bytes + sum(i.nbytes for i in handoff),
            metrics.SINK_SPOOL_DEPTH_EVENTS.name: sp.depth_events if sp else 0,
            metrics.SINK_SPOOL_DEPTH_BYTES.name: sp.depth_bytes if sp else 0,
            metrics.SINK_SPOOL_DISK_BYTES.name: sp.disk_bytes if sp else 0,
            metrics.SINK_LATENCY_SUM.name: round(c.latency_sum * 1e6),
            metrics.SINK_LATENCY_COUNT.name: c.latency_count,
            metrics.SINK_LATENCY_MAX.name: round(c.latency_max * 1e6),
            metrics.SINK_UP.name: int(self.up),
        }
        for reason, (events_metric, bytes_metric) in metrics.SINK_DROPPED_BY_REASON.items():
            events, nbytes = dropped.get(reason, (0, 0))
            out[events_metric.name] = events
            out[bytes_metric.name] = nbytes
        sink_stats = getattr(self.sink, "stats", None)  # a store's own counters (dir pruning, ...)
        if callable(sink_stats):
            out.update(sink_stats())
        return out


class EventSinkRunner(SinkRunner[EventRecord]):
    kind = "event"
    _item_type = EventRecord

    def __init__(self, sink: EventSink, *, key_field: str = "conn_id", **kw: Any) -> None:
        super().__init__(sink, **kw)
        self.key_field = key_field

    def _prepare(self, item: Any) -> EventRecord:
        return to_record(item, self.key_field)

    async def _attempt(self, batch: list[EventRecord]) -> tuple[list[EventRecord], BaseException | None]:
        try:
            partial = await self.sink.send(batch)
        except SinkError as exc:
            log.error("sink %s: batch of %d events rejected, dropped: %s", self.name, len(batch), exc)
            self._drop("rejected", batch)
            return [], None
        except (SinkTransientError, OSError, TimeoutError) as exc:
            return batch, exc
        if isinstance(partial, PartialRejection) and partial.indexes:
            refused = set(partial.indexes)
            dropped = [r for i, r in enumerate(batch) if i in refused]
            self._drop("rejected", dropped)
            first = partial.reasons[0] if partial.reasons else "no reason given"
            log.warning("sink %s: %d of %d events rejected by the store, dropped (first: %s)", self.name,
                        len(dropped), len(batch), first)
            batch = [r for i, r in enumerate(batch) if i not in refused]
        self.c.delivered_events += len(batch)
        self.c.delivered_bytes += sum(r.nbytes for r in batch)
        return [], None


class ObjectSinkRunner(SinkRunner[StoredObject]):
    """Uploads objects ``concurrency`` at a time; each stored object's ObjectRef goes to ``on_ref``
    (usually an event store's channel), once, when the store has it."""

    kind = "object"
    _item_type = StoredObject

    def __init__(self, sink: ObjectSink, *, on_ref: Callable[[ObjectRef], object] | None = None,
                 concurrency: int = 8, **kw: Any) -> None:
        super().__init__(sink, **kw)
        self.on_ref = on_ref
        self.concurrency = concurrency

    def _prepare(self, item: Any) -> StoredObject:
        if isinstance(item, StoredObject):
            return item
        if isinstance(item, bytes | bytearray | memoryview):
            return StoredObject(bytes(item))
        raise TypeError(f"object store {self.name}: cannot store {type(item).__name__}")

    async def _attempt(self, batch: list[StoredObject]) -> tuple[list[StoredObject], BaseException | None]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(obj: StoredObject) -> ObjectRef | BaseException:
            async with sem:
                try:
                    ref: ObjectRef = await self.sink.put(obj)
                    return ref
                except (SinkError, SinkTransientError, OSError, TimeoutError) as exc:
                    return exc

        results = await asyncio.gather(*(one(o) for o in batch))
        left: list[StoredObject] = []
        err: BaseException | None = None
        for obj, res in zip(batch, results, strict=True):
            if isinstance(res, ObjectRef):
                self.c.delivered_events += 1
                self.c.delivered_bytes += len(obj.data)
                if self.on_ref is not None:
                    self.on_ref(res)
            elif isinstance(res, SinkError):
                log.error("sink %s: object %s rejected, dropped: %s", self.name, obj.digest, res)
                self._drop("rejected", [obj])
            else:
                left.append(obj)
                err = res
        return left, err
