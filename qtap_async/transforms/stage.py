"""The tracking stage: raw record batches -> decoded records -> conntrack -> output event batches."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from qtap_async.buffers.channel import Channel
from qtap_async.errors import ChannelClosed, DecodeError
from qtap_async.sources.decode import decode
from qtap_async.transforms.conntrack import Conntrack

log = logging.getLogger("qtap.transform")

SWEEP_INTERVAL_S = 5.0


class TrackingStage:
    def __init__(self, conntrack: Conntrack) -> None:
        self.conntrack = conntrack
        self.decode_errors = 0
        self.internal_errors = 0
        # Set (loop time) when the agent stops: backlog still queued past it is dropped and counted, so
        # a stop under overload takes bounded time.
        self.drain_deadline: float | None = None
        self.dropped_at_stop = 0
        self.records = 0
        self._last_sweep = time.monotonic()

    def process(self, batch: list[bytes]) -> list[Any]:
        """Synchronous core, also used by replay and tests."""
        out: list[Any] = []
        handle = self.conntrack.handle
        for raw in batch:
            try:
                rec = decode(raw)
            except DecodeError as exc:
                self.decode_errors += 1
                if self.decode_errors <= 10:
                    log.warning("dropping malformed record: %s", exc)
                continue
            try:
                out.extend(handle(rec))
            except Exception:
                # A bug in tracking or a parser must cost one record, never the agent.
                self.internal_errors += 1
                if self.internal_errors <= 10:
                    log.exception("internal error on %s record of connection %s", type(rec).__name__,
                                  getattr(rec, "conn_id", "-"))
        self.records += len(batch)
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            out.extend(self.conntrack.sweep(time.monotonic_ns()))
        return out

    async def run(self, rx: Channel[list[bytes]], tx: Channel[list[Any]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    batch = await rx.recv()
                except ChannelClosed:
                    break
                if self.drain_deadline is not None and loop.time() > self.drain_deadline:
                    self.dropped_at_stop += len(batch)
                    continue
                events = self.process(batch)
                if events:
                    await tx.send(events)
            tail = self.conntrack.close_all(time.monotonic_ns())
            if tail:
                await tx.send(tail)
        finally:
            tx.close()
