"""The record-file source: recorded raw records into the raw channel in batches, the end of input closes
the channel, a stop ends it early, and the last record's time is where open connections are closed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from qtap_async.bpf import abi
from qtap_async.buffers.channel import Channel, ChannelClosed
from qtap_async.replay import RecordFile
from qtap_async.sources.replay import ReplaySource

RECORDS = RecordFile.load(Path(__file__).resolve().parents[1] / "data" / "http1_large.qrec").records


async def _drain(ch: Channel[list[bytes]]) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    with contextlib.suppress(ChannelClosed):
        while True:
            got.append(await ch.recv())
    return got


async def test_every_record_in_order_in_batches_then_the_channel_closes() -> None:
    src = ReplaySource(RECORDS, batch_records=7)
    ch: Channel[list[bytes]] = Channel(4, 1 << 30, "block")  # smaller than the file: the source must wait
    detached: list[bool] = []
    feeder = asyncio.create_task(src.run(ch, asyncio.Event(), lambda: detached.append(True)))
    batches = await asyncio.wait_for(_drain(ch), 30)
    await feeder
    assert [r for b in batches for r in b] == RECORDS and all(len(b) <= 7 for b in batches)
    assert src.records == len(RECORDS) and src.dropped_records == 0 and ch.closed and detached == [True]
    last_ts = max(abi.HDR.unpack_from(r)[3] for r in RECORDS)
    assert src.end_ns() == last_ts + 1


async def test_a_stop_ends_the_replay_at_the_next_batch() -> None:
    src = ReplaySource(RECORDS, batch_records=1)
    ch: Channel[list[bytes]] = Channel(1 << 20, 1 << 30, "block")
    stop = asyncio.Event()
    stop.set()
    await src.run(ch, stop)
    assert src.records == 0 and ch.closed
