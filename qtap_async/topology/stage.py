"""The tracking stage: raw record batches -> decode -> conntrack -> enrich -> dispatch -> output batches.

One asyncio task runs it between the raw channel (from a source: the ring buffer or a record file) and
the output channel (to the writer). The work is ``process``, synchronous, which replay and tests call
directly. Each kernel record goes through all four steps before the next one is decoded, so a decision
taken at a connection's open (its name, its filter) holds from its first byte on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from qtap_async.buffers.channel import Channel
from qtap_async.buffers.compact import TableCompactor
from qtap_async.errors import ChannelClosed, DecodeError
from qtap_async.sources.decode import decode
from qtap_async.topology.dispatch import Dispatch
from qtap_async.transforms.conntrack import Conntrack
from qtap_async.transforms.enrich import Enrich

__all__ = ["SWEEP_INTERVAL_S", "TrackingStage"]

log = logging.getLogger("qtap.transform")

SWEEP_INTERVAL_S = 5.0


class TrackingStage:
    def __init__(self, conntrack: Conntrack, enrich: Enrich, dispatch: Dispatch, *,
                 sweep: bool = True, tee: Callable[[list[bytes]], None] | None = None) -> None:
        self.conntrack = conntrack
        self.enrich = enrich
        self.dispatch = dispatch
        # Per-connection tables, shrunk at the sweep once most of their connections are gone.
        self._tables = [TableCompactor(conntrack.conns), TableCompactor(dispatch.per_connection_table())]
        #: Also given every raw batch before it is processed (``qtap record``: the file holds exactly
        #: what the live pipeline processed, so a replay of it must reproduce the live output).
        self.tee = tee
        self.decode_errors = 0
        self.internal_errors = 0
        # Set (loop time) when the run stops: backlog still queued past it is dropped and counted, so
        # a stop under overload takes bounded time.
        self.drain_deadline: float | None = None
        self.dropped_at_stop = 0
        self.records = 0
        # Replayed timestamps are those of the recording: the wall-clock idle sweep would find every
        # connection hours idle, so a replay never sweeps (the end of the file closes what is open).
        self.sweeps = sweep
        self._last_sweep = time.monotonic()

    def _route(self, items: list[Any]) -> list[Any]:
        return self.dispatch.process(self.enrich.apply(items))

    def handle(self, rec: Any) -> list[Any]:
        """One decoded kernel record through conntrack, enrichment and dispatch (``process`` inlines it)."""
        items = self.conntrack.handle(rec)
        return self.dispatch.process(self.enrich.apply(items)) if items else []

    def process(self, batch: list[bytes]) -> list[Any]:
        """Synchronous core, also used by replay and tests."""
        if self.tee is not None:
            self.tee(batch)
        out: list[Any] = []
        handle = self.conntrack.handle
        enrich = self.enrich.apply
        dispatch = self.dispatch.process
        for raw in batch:
            try:
                rec = decode(raw)
            except DecodeError as exc:
                self.decode_errors += 1
                if self.decode_errors <= 10:
                    log.warning("dropping malformed record: %s", exc)
                continue
            try:
                items = handle(rec)
                if items:
                    out.extend(dispatch(enrich(items)))
            except Exception:
                # A bug in tracking or a parser must cost one record, never the agent.
                self.internal_errors += 1
                if self.internal_errors <= 10:
                    log.exception("internal error on %s record of connection %s", type(rec).__name__,
                                  getattr(rec, "conn_id", "-"))
        self.records += len(batch)
        if self.sweeps:
            self._sweep_due(out)
        return out

    def _sweep_due(self, out: list[Any]) -> None:
        """The idle sweep, at most once per SWEEP_INTERVAL_S; what it closes is routed into ``out``."""
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            out.extend(self._route(self.conntrack.sweep(time.monotonic_ns())))
            for table in self._tables:
                table.check()

    def close_all(self, now_ns: int) -> list[Any]:
        """End of input: every open connection closed (flushing its streams and sessions), routed."""
        return self._route(self.conntrack.close_all(now_ns))

    async def run(self, rx: Channel[list[bytes]], tx: Channel[list[Any]],
                  end_ns: Callable[[], int] | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    # A quiet host sends no batch for a while: the sweep must not wait for one, or an idle
                    # connection is evicted only when unrelated traffic arrives.
                    async with asyncio.timeout(SWEEP_INTERVAL_S if self.sweeps else None):
                        batch = await rx.recv()
                except ChannelClosed:
                    break
                except TimeoutError:  # nothing arrived (recv takes no item once cancelled): sweep anyway
                    swept: list[Any] = []
                    self._sweep_due(swept)
                    if swept:
                        await tx.send(swept)
                    continue
                if self.drain_deadline is not None and loop.time() > self.drain_deadline:
                    self.dropped_at_stop += len(batch)
                    continue
                events = self.process(batch)
                # Dropped before the next recv: on a quiet host that wait is long, and the last batch and its
                # events, alive in this frame, would pin the heap arenas they sit in (RSS not returned).
                del batch
                if events:
                    await tx.send(events)
                del events
            tail = self.close_all(end_ns() if end_ns is not None else time.monotonic_ns())
            if tail:
                await tx.send(tail)
        finally:
            tx.close()
