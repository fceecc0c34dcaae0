"""A bounded in-memory channel between pipeline stages (and in front of every sink).

Bounded by item count and by bytes. When full, ``when_full`` decides what an awaiting sender does:
``block`` waits for room (backpressure), ``drop_newest`` drops the item and counts it. ``send_nowait`` never
waits whatever the policy: the ring-buffer drain uses it, because it must never stall (the kernel would drop
blindly instead); there a full channel drops the item and counts it.

Closing the channel tells the receiver that input has ended once the queued items are drained.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import msgspec

from qtap_async.errors import ChannelClosed

__all__ = ["Channel", "ChannelClosed", "ChannelStats", "WhenFull", "default_sizeof"]

T = TypeVar("T")
WhenFull = Literal["block", "drop_newest"]


class ChannelStats(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of a channel's counters; depth_* are gauges, the rest only grow."""

    depth_events: int
    depth_bytes: int
    sent_events: int
    sent_bytes: int
    dropped_events: int
    dropped_bytes: int
    blocked_sends: int


def default_sizeof(item: object) -> int:
    """Bytes an item accounts for: its length for byte strings, ``nbytes`` when it has one, else a guess."""
    if isinstance(item, bytes | bytearray | memoryview):
        return len(item)
    nbytes = getattr(item, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return 256


class Channel(Generic[T]):
    def __init__(
        self,
        max_events: int = 10_000,
        max_bytes: int = 64 << 20,
        when_full: WhenFull = "block",
        sizeof: Callable[[object], int] = default_sizeof,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.when_full: WhenFull = when_full
        self._sizeof = sizeof
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiting = 0  # blocked senders, woken or not, that have not put their item yet
        self.sent_events = 0
        self.sent_bytes = 0
        self.dropped_events = 0
        self.dropped_bytes = 0
        self.blocked_sends = 0

    # ------------------------------------------------------------------------------------------ sending
    def _fits(self, size: int) -> bool:
        # An item bigger than max_bytes still passes through an empty channel, else it could never pass.
        if not self._items:
            return True
        return len(self._items) < self.max_events and self._bytes + size <= self.max_bytes

    @property
    def full(self) -> bool:
        """No room for another item now (events or bytes at their bound): a sender that can wait elsewhere
        (the ring-buffer source leaves records in the kernel's ring) does so instead of dropping."""
        return bool(self._items) and (len(self._items) >= self.max_events or self._bytes >= self.max_bytes)

    def _put(self, item: T, size: int) -> None:
        self._items.append((item, size))
        self._bytes += size
        self.sent_events += 1
        self.sent_bytes += size
        self._readable.set()

    def _drop(self, size: int) -> None:
        self.dropped_events += 1
        self.dropped_bytes += size

    def send_nowait(self, item: T) -> bool:
        """Queue ``item`` if it fits; otherwise drop and count it. Never waits. True when queued."""
        if self._closed:
            raise ChannelClosed
        size = self._sizeof(item)
        if self._waiting or not self._fits(size):
            # Waiting blocked senders go first: an item that jumped the queue would reorder their data.
            self._drop(size)
            return False
        self._put(item, size)
        return True

    async def send(self, item: T) -> bool:
        """Queue ``item``; when full, wait (``block``) or drop and count (``drop_newest``)."""
        if self._closed:
            raise ChannelClosed
        size = self._sizeof(item)
        if not self._waiting and self._fits(size):
            self._put(item, size)
            return True
        if self.when_full == "drop_newest":
            self._drop(size)
            return False
        self.blocked_sends += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room.append(fut)
        self._waiting += 1
        try:
            while True:
                await fut
                if self._closed:
                    raise ChannelClosed
                if self._fits(size):
                    break
                fut = asyncio.get_running_loop().create_future()
                self._room.appendleft(fut)
        except BaseException:
            self._waiting -= 1
            if fut in self._room:
                self._room.remove(fut)
            self._wake_sender()
            raise
        self._waiting -= 1
        self._put(item, size)
        self._wake_sender()  # there may be room for the next waiter too
        return True

    def _wake_sender(self) -> None:
        while self._room:
            fut = self._room[0]
            if fut.done():
                self._room.popleft()
                continue
            if self._closed or self._fits(1):
                self._room.popleft()
                fut.set_result(None)
            return

    def close(self) -> None:
        """No more sends; the receiver gets what is queued, then the end."""
        self._closed = True
        self._readable.set()
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------------------------------- receiving
    def _take(self) -> tuple[T, int]:
        item, size = self._items.popleft()
        self._bytes -= size
        if not self._items and not self._closed:
            self._readable.clear()
        return item, size

    async def recv(self) -> T:
        """The next item; raises ChannelClosed once the channel is closed and empty."""
        while not self._items:
            if self._closed:
                raise ChannelClosed
            await self._readable.wait()
        item, _ = self._take()
        self._wake_sender()
        return item

    async def recv_batch(self, max_events: int, max_bytes: int, linger: float) -> list[T]:
        """Up to ``max_events`` items / ``max_bytes`` bytes (at least one item), waiting at most ``linger``
        seconds after the first item for the batch to fill. An empty list means closed and drained."""
        while not self._items:
            if self._closed:
                return []
            await self._readable.wait()
        batch: list[T] = []
        nbytes = 0
        deadline = asyncio.get_running_loop().time() + linger
        while True:
            while self._items and len(batch) < max_events:
                size = self._items[0][1]
                if batch and nbytes + size > max_bytes:
                    break
                item, size = self._take()
                batch.append(item)
                nbytes += size
            self._wake_sender()
            if len(batch) >= max_events or self._closed or (self._items and nbytes + self._items[0][1] > max_bytes):
                return batch
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return batch
            try:
                async with asyncio.timeout(remaining):
                    await self._readable.wait()
            except TimeoutError:
                return batch

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    # ------------------------------------------------------------------------------------------- stats
    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def statistics(self) -> ChannelStats:
        return ChannelStats(
            depth_events=len(self._items),
            depth_bytes=self._bytes,
            sent_events=self.sent_events,
            sent_bytes=self.sent_bytes,
            dropped_events=self.dropped_events,
            dropped_bytes=self.dropped_bytes,
            blocked_sends=self.blocked_sends,
        )
