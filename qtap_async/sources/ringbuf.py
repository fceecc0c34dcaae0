"""The ring-buffer source: drains the kernel's records into a channel from the event loop.

The epoll fd of libbpf's ring buffer is registered with loop.add_reader, so uvloop wakes us when records
are waiting; each wake-up consumes everything available as one batch. The drain never waits on the
next stage: a full channel drops the batch and counts its records (the kernel would otherwise drop
blindly once the ring fills).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import struct
from collections.abc import Callable
from typing import Protocol

from qtap_async.bpf.ringbuf import RingBuffer
from qtap_async.buffers.channel import Channel

log = logging.getLogger("qtap.source")

RawBatch = list[bytes]
_ts = struct.Struct("<8xQ").unpack_from  # qtap_hdr.ts_ns


def _record_ts(raw: bytes) -> int:
    return int(_ts(raw)[0])


class SideChannel(Protocol):
    """Records that reach qtap other than through the ring buffer (the Java agent's plaintext)."""

    def drain(self) -> list[bytes]: ...


def batch_size(batch: object) -> int:
    if isinstance(batch, list):
        return sum(len(b) for b in batch)
    return 0


class RingBufferSource:
    def __init__(self, ringbuf: RingBuffer, poll_interval_s: float = 0.02, side: SideChannel | None = None) -> None:
        self.ringbuf = ringbuf
        self.side = side
        # The kernel wakes us only for a batch (wakeup_bytes); a trickle is drained on this timer.
        self.poll_interval_s = poll_interval_s
        self.records = 0
        self.batches = 0
        self.dropped_records = 0
        self.full_waits = 0  # poll intervals spent with the raw queue full, records left in the ring

    def drain_once(self, tx: Channel[RawBatch]) -> int:
        # The side channel is read first: a Java thread sends its chunk before its next syscall on that socket
        # (a close included), so every chunk older than a ring-buffer record consumed next is already here.
        # Merged by time, a chunk comes after its connection's open and before its close.
        side = self.side.drain() if self.side is not None else None
        batch = self.ringbuf.consume()
        if side:
            batch = list(heapq.merge(batch, side, key=_record_ts)) if batch else side
        if not batch:
            return 0
        self.records += len(batch)
        self.batches += 1
        if not tx.send_nowait(batch):
            self.dropped_records += len(batch)
        return len(batch)

    async def run(self, tx: Channel[RawBatch], stop: asyncio.Event,
                  before_final_drain: Callable[[], None] | None = None) -> None:
        """Drain until `stop` is set, then drain what is left and close `tx`. `before_final_drain` detaches
        the programs, so the last drain sees every record the kernel will ever deliver (exact accounting)."""
        loop = asyncio.get_running_loop()
        fd = self.ringbuf.fileno()
        wake = asyncio.Event()
        loop.add_reader(fd, wake.set)
        try:
            while not stop.is_set():
                if tx.full:
                    # Records wait in the ring (see below). The ring's fd stays readable while they do, so
                    # waiting for it would spin: look again after the poll interval instead.
                    self.full_waits += 1
                    await asyncio.sleep(self.poll_interval_s)
                    continue
                # The timer drains what the kernel did not wake us for (less than wakeup_bytes waiting).
                try:
                    async with asyncio.timeout(self.poll_interval_s):
                        await wake.wait()
                except TimeoutError:
                    pass
                wake.clear()
                # Again at once only while batches come out full (the ring holds more): the records that arrive
                # while the last batch is processed wait for the next wakeup or tick, so batches stay large (a
                # batch costs a task switch and a write whatever its size). sleep(0) is a yield to the loop
                # between big batches (the pipeline runs meanwhile), not a poll. While the queue is full the
                # records stay in the kernel's ring (which drops and counts what it cannot hold) rather than
                # being copied out only to be dropped here: what is in flight stays within the ring plus the
                # queue's byte bound.
                while not tx.full and self.drain_once(tx) and self.ringbuf.cut:  # noqa: ASYNC110
                    await asyncio.sleep(0)
        finally:
            loop.remove_reader(fd)
            if before_final_drain is not None:
                before_final_drain()
            while self.drain_once(tx):
                pass
            tx.close()
