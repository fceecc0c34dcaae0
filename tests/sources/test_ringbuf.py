"""The ring-buffer source on a real BPF ring buffer: a test program writes one numbered record per getppid()
of this process, so every record's fate is known. The source hands records on in kernel order, in bounded
batches, counts what a full channel refused, wakes on the ring's epoll fd on both event loops the agent
can run on, and on stop drains everything the kernel delivered before closing its channel. Every test runs
with both readers: the ring's memory read directly (qtap_async/bpf/ringmap.py) and libbpf's callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from qtap_async.bpf.ringbuf import READER_ENV, RingBuffer
from qtap_async.bpf.ringmap import MappedRing
from qtap_async.buffers.channel import Channel
from qtap_async.sources.ringbuf import RawBatch, RingBufferSource, batch_size
from tests.bpf.programs import REC, GetppidRing, build_getppid_ring, getppid_ring, seqs

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
# Bounds a wait that should end at once, so a broken source fails the test instead of hanging it.
SAFETY_S = 30.0


@pytest.fixture(autouse=True, params=["mmap", "libbpf"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "mmap" and not MappedRing.usable():
        pytest.skip("the ring's memory is read directly on x86-64 only")
    monkeypatch.setenv(READER_ENV, request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def ring_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_getppid_ring(tmp_path_factory.mktemp("bpf"))


@pytest.fixture
def ring(ring_object: Path) -> Iterator[GetppidRing]:
    with getppid_ring(ring_object) as g:
        yield g


def _run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(coro)


def _queued(tx: Channel[RawBatch]) -> list[RawBatch]:
    """The batches waiting in a channel, closing it."""
    async def take() -> list[RawBatch]:
        tx.close()
        return [b async for b in tx]
    return asyncio.run(take())


async def _collect(rx: Channel[RawBatch], n: int) -> list[bytes]:
    records: list[bytes] = []
    async with asyncio.timeout(SAFETY_S):
        while len(records) < n:
            records += await rx.recv()
    return records


@pytest.mark.bpf
def test_drain_once_hands_on_what_is_waiting_in_kernel_order(ring: GetppidRing) -> None:
    with RingBuffer(ring.events) as rb:
        src = RingBufferSource(rb)
        tx: Channel[RawBatch] = Channel(max_events=10, sizeof=batch_size)
        assert src.drain_once(tx) == 0 and len(tx) == 0  # nothing waiting: nothing sent, not an empty batch
        ring.produce(25)
        assert src.drain_once(tx) == 25
        assert src.drain_once(tx) == 0
    assert (src.records, src.batches, src.dropped_records) == (25, 1, 0)
    (batch,) = _queued(tx)
    assert seqs(batch) == list(range(25))
    assert tx.sent_bytes == 25 * REC.size  # the channel accounts a batch by its bytes
    assert ring.counts() == (25, 0)


@pytest.mark.bpf
def test_batches_are_bounded_and_a_full_channel_drops_whole_batches_counted(ring: GetppidRing) -> None:
    with RingBuffer(ring.events, max_batch=4) as rb:
        src = RingBufferSource(rb)
        tx: Channel[RawBatch] = Channel(max_events=2, sizeof=batch_size)
        ring.produce(10)
        sent = [src.drain_once(tx) for _ in range(4)]
    assert sent == [4, 4, 2, 0]  # the third batch found the channel full: read from the ring, then dropped
    assert (src.records, src.batches, src.dropped_records) == (10, 3, 2)
    assert (tx.sent_events, tx.dropped_events, tx.dropped_bytes) == (2, 1, 2 * REC.size)
    assert [seqs(b) for b in _queued(tx)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Kernel, source and channel agree: every produced record was delivered or counted as dropped.
    produced, refused = ring.counts()
    assert refused == 0 and produced == src.records == sum(sent)


@pytest.mark.bpf
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_ring_fd_wakes_the_source_without_its_timer(ring: GetppidRing, loop: str) -> None:
    # With an hour-long timer, only the epoll fd registered with the loop can bring the records in.
    async def main() -> None:
        with RingBuffer(ring.events) as rb:
            src = RingBufferSource(rb, poll_interval_s=3600)
            tx: Channel[RawBatch] = Channel(sizeof=batch_size)
            stop = asyncio.Event()
            task = asyncio.create_task(src.run(tx, stop))
            await asyncio.sleep(0)  # the source registers its reader
            seen: list[int] = []
            for round_ in range(3):
                ring.produce(7)
                seen += seqs(await _collect(tx, 7))
                assert seen == list(range(7 * (round_ + 1)))
            stop.set()
            ring.produce(1)  # the stop is looked at on the next wake-up
            async with asyncio.timeout(SAFETY_S):
                await task
            assert seqs(await _collect(tx, 1)) == [21]
            assert tx.closed and len(tx) == 0
            assert (src.records, src.dropped_records) == (22, 0)

    _run(loop, main())


@pytest.mark.bpf
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_stop_drains_everything_delivered_then_closes_the_channel(ring: GetppidRing, loop: str) -> None:
    async def main() -> None:
        with RingBuffer(ring.events, max_batch=64) as rb:
            src = RingBufferSource(rb, poll_interval_s=0.01)
            tx: Channel[RawBatch] = Channel(sizeof=batch_size)
            stop = asyncio.Event()
            calls: list[tuple[int, int]] = []

            def before_final_drain() -> None:
                # The agent detaches here; records produced up to now must all come out of the final drain.
                ring.produce(100)
                ring.obj.detach_all()
                ring.produce(50)  # detached: the kernel writes nothing more
                calls.append(ring.counts())

            task = asyncio.create_task(src.run(tx, stop, before_final_drain))
            ring.produce(300)
            stop.set()  # set before the loop ever ran the source: everything comes from the final drain
            async with asyncio.timeout(SAFETY_S):
                await task
            assert tx.closed
            batches = [b async for b in tx]
            assert calls == [(400, 0)]
            assert seqs([r for b in batches for r in b]) == list(range(400))
            assert len(batches) == src.batches and max(map(len, batches)) <= 64
            assert (src.records, src.dropped_records) == (400, 0)
            assert rb.consume() == []

    _run(loop, main())


@pytest.mark.bpf
def test_batches_are_bounded_in_bytes_too(ring: GetppidRing) -> None:
    # A byte bound of 2.5 records: each batch stops at the record that reaches it, none is lost between.
    with RingBuffer(ring.events, max_batch_bytes=REC.size * 5 // 2) as rb:
        src = RingBufferSource(rb)
        tx: Channel[RawBatch] = Channel(max_events=100, sizeof=batch_size)
        ring.produce(10)
        sent = [src.drain_once(tx) for _ in range(5)]
    assert sent == [3, 3, 3, 1, 0]
    assert [seqs(b) for b in _queued(tx)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.bpf
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_full_channel_leaves_records_in_the_ring_instead_of_dropping_them(ring: GetppidRing, loop: str) -> None:
    async def main() -> None:
        with RingBuffer(ring.events, max_batch=4) as rb:
            src = RingBufferSource(rb, poll_interval_s=0.01)
            tx: Channel[RawBatch] = Channel(max_events=1, sizeof=batch_size)
            assert tx.send_nowait([b"queued before"]) and tx.full
            stop = asyncio.Event()
            task = asyncio.create_task(src.run(tx, stop))
            ring.produce(10)
            await asyncio.sleep(0.1)  # timer rounds and wake-ups with the channel full: the source must not drain
            assert src.records == 0 and src.dropped_records == 0 and ring.counts() == (10, 0)
            # It waited on its timer, not on the ring's fd (readable all along): a few rounds, not a spin.
            assert 1 <= src.full_waits <= 0.1 / 0.01 + 5
            assert await tx.recv() == [b"queued before"]
            got: list[bytes] = []
            async with asyncio.timeout(SAFETY_S):
                while len(got) < 10:  # room again: the records still in the ring come out, in order
                    got += await tx.recv()
            assert seqs(got) == list(range(10))
            stop.set()
            ring.produce(1)
            async with asyncio.timeout(SAFETY_S):
                await task
            assert src.dropped_records == 0

    _run(loop, main())


@pytest.mark.bpf
def test_records_wrapping_around_the_ring_end_and_discarded_ones(tmp_path: Path, reader: str) -> None:
    # A 4 KiB ring of 24-byte records (16 + the 8-byte header): they straddle its end as it wraps, again
    # and again; every fifth is reserved and discarded by the program, so readers must step over it.
    with getppid_ring(build_getppid_ring(tmp_path, ring_bytes=4096, discard_every=5)) as ring, \
            RingBuffer(ring.events, max_batch=37) as rb:
        assert rb.reader == reader
        got: list[bytes] = []
        for _ in range(60):
            ring.produce(150)  # 3600 bytes: less than the ring holds, so nothing is refused
            while batch := rb.consume():
                assert len(batch) <= 37
                got += batch
        produced, refused = ring.counts()
    assert (produced, refused) == (9000, 0)
    assert seqs(got) == [s for s in range(9000) if s % 5]
    assert rb.records == len(got)
