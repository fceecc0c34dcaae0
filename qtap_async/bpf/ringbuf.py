"""The ring buffer reader: an epoll fd for the event loop and batched consumption.

`consume()` reads the ring's memory directly where that is safe (qtap_async/bpf/ringmap.py, x86-64);
otherwise libbpf calls back once per record and the callback only copies the bytes into a list. Either
way the whole batch goes to the caller: per-record work belongs in the decoder, not here.
QTAP_RINGBUF_READER=libbpf keeps the callback path everywhere.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select

from qtap_async.bpf._libbpf import SAMPLE_FN, check_int, check_ptr, libbpf
from qtap_async.bpf.object import BpfMap
from qtap_async.bpf.ringmap import MappedRing
from qtap_async.errors import BpfError

_string_at = ctypes.string_at
log = logging.getLogger("qtap.bpf")
READER_ENV = "QTAP_RINGBUF_READER"


# Returned by the sample callback to stop a consume() once the batch is full; libbpf commits the record
# and hands the value back from ring_buffer__consume (libbpf 1.1 has no ring_buffer__consume_n).
_BATCH_FULL = -11  # -EAGAIN


#: Bytes one consume() copies out at most. 4096 full data records are 64 MiB: one batch that size made the
#: raw queue's byte bound moot (it admits any one batch) and was most of the agent's peak RSS under load.
MAX_BATCH_BYTES = 4 << 20


def planned_reader() -> str:
    """How ``RingBuffer.consume`` will read here, and why (``qtap inspect``)."""
    if os.environ.get(READER_ENV, "mmap") == "libbpf":
        return f"libbpf callbacks ({READER_ENV}=libbpf)"
    if not MappedRing.usable():
        return "libbpf callbacks (the ring's memory is read directly on x86-64 only)"
    return "mmap (the ring's memory, no callback per record)"


class RingBuffer:
    """Reader of one BPF_MAP_TYPE_RINGBUF map. One consume() returns at most `max_batch` records and about
    `max_batch_bytes` bytes: against a producer as fast as the consumer, libbpf would otherwise keep
    consuming into one unbounded batch.

    Read from its mapping (``reader`` "mmap"), the map's own fd is the one to poll (a ring buffer map is
    pollable: readable while records wait) and libbpf's ring_buffer is not made at all: its mapping of the
    same pages would count them in RSS a second time (the ring's size, twice: its data pages are mapped
    twice in a row)."""

    def __init__(self, bpf_map: BpfMap, max_batch: int = 4096, max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.name = bpf_map.name
        self.records = 0
        #: The last consume() stopped at the batch bounds: more records are likely waiting.
        self.cut = False
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._map_fd = bpf_map.fd
        self._mapped: MappedRing | None = None
        self._ptr: int | None = None
        if os.environ.get(READER_ENV, "mmap") != "libbpf" and MappedRing.usable():
            try:
                self._mapped = MappedRing(self._map_fd, bpf_map.max_entries)
            except (OSError, ValueError) as exc:
                log.warning("ring buffer %s: reading through libbpf callbacks (%s)", bpf_map.name, exc)
        #: How consume() reads: "mmap" (the ring's memory) or "libbpf" (a callback per record).
        self.reader = "mmap" if self._mapped is not None else "libbpf"
        if self._mapped is None:
            self._open_libbpf()

    def _open_libbpf(self) -> None:
        max_batch, max_batch_bytes = self._max_batch, self._max_batch_bytes
        self._batch: list[bytes] = []
        batch = self._batch
        append = batch.append
        taken = [0]  # bytes in the batch being filled

        def on_sample(_ctx: int | None, data: int, size: int) -> int:
            append(_string_at(data, size))
            n = taken[0] = taken[0] + size
            return _BATCH_FULL if len(batch) >= max_batch or n >= max_batch_bytes else 0

        self._taken = taken
        self._cb = SAMPLE_FN(on_sample)  # must outlive the ring_buffer
        ptr = libbpf().ring_buffer__new(self._map_fd, self._cb, None, None)
        self._ptr = check_ptr(ptr, f"ring buffer {self.name}", "ring_buffer__new")

    def _check_open(self) -> None:
        if self._mapped is None and self._ptr is None:  # open, exactly one of them is set
            raise BpfError(f"ring buffer {self.name}", 9, "closed")

    def fileno(self) -> int:
        """An fd that becomes readable when records are waiting (for loop.add_reader)."""
        self._check_open()
        if self._ptr is None:
            return self._map_fd
        return int(libbpf().ring_buffer__epoll_fd(self._ptr))

    def consume(self) -> list[bytes]:
        """All records available now, oldest first (may be empty)."""
        self._check_open()
        mapped = self._mapped
        if mapped is not None:
            batch = mapped.consume(self._max_batch, self._max_batch_bytes)
            self.cut = mapped.cut
            self.records += len(batch)
            return batch
        assert self._ptr is not None
        ret = libbpf().ring_buffer__consume(self._ptr)
        self.cut = ret == _BATCH_FULL
        if ret < 0 and not self.cut:
            check_int(ret, f"ring buffer {self.name}", "consume")
        return self._take()

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for records (for synchronous tools and tests)."""
        self._check_open()
        if self._mapped is not None:
            p = select.poll()
            p.register(self._map_fd, select.POLLIN)
            if not p.poll(timeout_ms):
                return []
            return self.consume()
        assert self._ptr is not None
        ret = libbpf().ring_buffer__poll(self._ptr, timeout_ms)
        if ret < 0 and -ret != 4 and ret != _BATCH_FULL:  # EINTR is not an error here
            check_int(ret, f"ring buffer {self.name}", "poll")
        return self._take()

    def _take(self) -> list[bytes]:
        batch = self._batch[:]
        self._batch.clear()
        self._taken[0] = 0
        self.records += len(batch)
        return batch

    def close(self) -> None:
        mapped, self._mapped = self._mapped, None
        if mapped is not None:
            mapped.close()
        ptr, self._ptr = self._ptr, None
        if ptr:
            libbpf().ring_buffer__free(ptr)

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
