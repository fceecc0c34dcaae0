"""Overload accounting with the real agent: every record the kernel saw is processed or counted as dropped."""

from __future__ import annotations

import pytest

from tests.perf.accounting import run_accounted

pytestmark = pytest.mark.bpf


def test_every_record_is_processed_or_counted_as_dropped() -> None:
    # 64 KiB ring, 4-batch raw queue, 2-batch output queue and a slow sink: drops at the ring buffer and
    # at the raw channel are expected; the identity must hold exactly whatever their split.
    acc = run_accounted(6000, 1024)
    assert acc.decode_errors == 0
    assert acc.kernel_drop_ringbuf > 0, acc.as_dict()  # the load really overloaded the ring buffer
    assert acc.seen_by_kernel == (acc.stage_records + acc.source_dropped_records + acc.kernel_drop_ringbuf
                                  + acc.left_in_ring_at_close), acc.as_dict()
    # The source's view: what it drained was either queued for the stage or dropped at the raw channel.
    assert acc.source_records == acc.stage_records + acc.source_dropped_records
    # Only records delivered after the source's final drain are left in the ring.
    assert acc.kernel_records == acc.source_records + acc.left_in_ring_at_close


def test_accounting_without_overload_processes_everything() -> None:
    # Big ring and queues, no sink delay: a small load must not lose anything anywhere.
    acc = run_accounted(200, 512, ring_buffer_bytes=16 << 20, raw_queue_events=4096, out_queue_events=4096,
                        sink_delay_s=0.0)
    assert acc.kernel_drop_ringbuf == 0 and acc.source_dropped_records == 0, acc.as_dict()
    assert acc.unaccounted == 0, acc.as_dict()
    # 200 sends of 512 B are at least 200 data records of the traced process.
    assert acc.stage_records >= 200
