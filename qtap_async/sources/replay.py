"""A recorded run as a source: the records of a record file (qtap_async.replay) into the raw channel,
in the batches the ring-buffer drain would hand over, then the channel closed (end of input)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from qtap_async.bpf import abi
from qtap_async.buffers.channel import Channel

__all__ = ["ReplaySource"]


class ReplaySource:
    """Feeds ``records`` (raw ring-buffer records) in batches of ``batch_records``; the raw channel it
    feeds blocks instead of dropping, so a replay loses nothing."""

    def __init__(self, records: Sequence[bytes], batch_records: int = 256) -> None:
        self.records_in = records
        self.batch_records = max(1, batch_records)
        self.records = 0
        self.batches = 0
        self.dropped_records = 0
        self.last_ts_ns = 0  # monotonic time of the last record: where the end of input closes what is open

    def _note(self, batch: Sequence[bytes]) -> None:
        last = batch[-1]
        if len(last) >= abi.HDR.size:
            self.last_ts_ns = max(self.last_ts_ns, abi.HDR.unpack_from(last)[3])

    async def run(self, tx: Channel[list[bytes]], stop: asyncio.Event,
                  before_final_drain: Callable[[], None] | None = None) -> None:
        recs, n = self.records_in, self.batch_records
        try:
            for i in range(0, len(recs), n):
                if stop.is_set():
                    break
                batch = list(recs[i : i + n])
                self._note(batch)
                await tx.send(batch)
                self.records += len(batch)
                self.batches += 1
                await asyncio.sleep(0)  # as the ring-buffer source yields between batches
        finally:
            if before_final_drain is not None:
                before_final_drain()
            tx.close()

    def end_ns(self) -> int:
        return self.last_ts_ns + 1
