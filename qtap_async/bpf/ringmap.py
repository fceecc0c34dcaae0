"""Reading a BPF ring buffer straight from its memory, without a callback per record.

libbpf's ``ring_buffer__consume`` calls back into Python once per record (through a ctypes closure: about
a microsecond each, a tenth of the agent's CPU at 10k HTTPS requests per second). The ring is a shared
mapping (kernel/bpf/ringbuf.c): a consumer page the reader writes, then, read-only, a producer page and
the data pages mapped twice in a row, so a record that wraps around the end is still contiguous. Each
record is an 8-byte header (length with a busy and a discard bit, then a page offset) and the payload,
rounded up to 8 bytes. Reading it means: load the producer position, walk the headers from the consumer
position, copy out each committed record, store the new consumer position.

The positions are read and the consumer position is written through native memoryview casts ("Q", "I"):
an item is one aligned machine load or store, so the kernel never sees a half-written consumer position
(struct's packers make no such promise; with them a few records per minute were refused at 10k req/s,
the cause not pinned down). The loads and the store also need acquire/release order against the
producer: on x86-64 (total store order) plain loads and stores have it, so ``MappedRing.usable()`` is
True only there; elsewhere the libbpf callback path stays (qtap_async/bpf/ringbuf.py).
"""

from __future__ import annotations

import mmap
import platform

__all__ = ["MappedRing"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LEN_MASK = _DISCARD - 1
_HDR = 8


class MappedRing:
    """One BPF_MAP_TYPE_RINGBUF of ``size`` data bytes (its max_entries, a power of two), mapped from ``fd``."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._cons.close()
            raise
        # Native, aligned views: an item is one machine load or store (see the module docstring).
        self._cons_pos = memoryview(self._cons).cast("Q")  # [0]: consumer_pos
        self._words = memoryview(self._data).cast("I")  # [0:2]: producer_pos; record headers at offset/4
        self._prod_pos = self._words[:2].cast("B").cast("Q")
        self._page = page
        self._mask = size - 1
        #: The last consume() stopped at its bounds with committed records left.
        self.cut = False

    @staticmethod
    def usable() -> bool:
        """Plain loads and stores order like the kernel's acquire/release only on x86-64."""
        return platform.machine() in ("x86_64", "AMD64")

    def consume(self, max_records: int, max_bytes: int) -> list[bytes]:
        """The committed records waiting, oldest first: at most ``max_records``, stopping once ``max_bytes``
        payload bytes are taken. Discarded records are skipped; a busy one (still being written) ends it."""
        data = self._data
        words = self._words
        base = self._page
        mask = self._mask
        cons: int = self._cons_pos[0]
        prod: int = self._prod_pos[0]
        out: list[bytes] = []
        append = out.append
        taken = 0
        cut = False
        while cons < prod:
            off = base + (cons & mask)
            head: int = words[off >> 2]  # 8-byte aligned
            if head & _BUSY:
                break
            n = head & _LEN_MASK
            cons += (n + _HDR + 7) & ~7
            if head & _DISCARD:
                continue
            start = off + _HDR
            append(data[start : start + n])
            taken += n
            if len(out) >= max_records or taken >= max_bytes:
                cut = cons < prod
                break
        self._cons_pos[0] = cons  # one store: the space is the producer's again
        self.cut = cut
        return out

    def close(self) -> None:
        for view in (self._prod_pos, self._words, self._cons_pos):
            view.release()  # an mmap with views exported cannot close
        self._data.close()
        self._cons.close()
