"""Reading a BPF ring buffer straight from its memory, without a callback per record.

libbpf's ``ring_buffer__consume`` calls back into Python once per record (through a ctypes closure: about
a microsecond each, a tenth of the agent's CPU at 10k HTTPS requests per second). The ring is a shared
mapping (kernel/bpf/ringbuf.c): a consumer page the reader writes, then, read-only, a producer page and
the data pages mapped twice in a row, so a record that wraps around the end is still contiguous. Each
record is an 8-byte header (length with a busy and a discard bit, then a page offset) and the payload,
rounded up to 8 bytes. Reading it means: load the producer position, walk the headers from the consumer
position, copy out each committed record, store the new consumer position.

The loads and the store need acquire/release order against the producer. On x86-64 (total store order)
plain loads and stores have it, so ``MappedRing.usable()`` is True only there; elsewhere the libbpf
callback path stays (qtap_async/bpf/ringbuf.py).
"""

from __future__ import annotations

import mmap
import platform
import struct

__all__ = ["MappedRing"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LEN_MASK = _DISCARD - 1
_HDR = 8
_u64 = struct.Struct("<Q")
_u32 = struct.Struct("<I")


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
        unpack_u32 = _u32.unpack_from
        base = self._page
        mask = self._mask
        cons = _u64.unpack_from(self._cons, 0)[0]
        prod = _u64.unpack_from(data, 0)[0]
        out: list[bytes] = []
        append = out.append
        taken = 0
        cut = False
        while cons < prod:
            off = base + (cons & mask)
            head = unpack_u32(data, off)[0]
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
        _u64.pack_into(self._cons, 0, cons)  # the space is the producer's again
        self.cut = cut
        return out

    def close(self) -> None:
        self._data.close()
        self._cons.close()
