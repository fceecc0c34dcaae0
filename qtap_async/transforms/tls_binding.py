"""TLS plaintext written before its connection was known, held until the kernel names the connection.

TLS stacks that do their socket I/O outside the plaintext calls (gRPC's BoringSSL on a BIO pair, rustls,
Node.js) encrypt a write into memory and send the ciphertext after the call returns. The kernel programs do
not guess that write's socket from the thread's last one (a thread serving several connections would tie a
new connection's first write to another connection): they send it unbound (``abi.DataFlag.UNBOUND``: the
record's ``conn_id`` is the TLS object, its ``fd`` the object's binding generation, its offset counts in the
object's unbound stream), and a ``TlsBind`` record follows once the thread's next send names the socket.

``UnboundTls`` holds those records per (process, object, generation) and, on the binding, gives them back as
ordinary records of the connection, at the stream offsets the kernel reserved for them (ahead of every later
write of that connection). What is never bound within ``timeout_s``, or does not fit in the bounds, is
dropped and counted; it is never attributed to a guessed connection.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from qtap_async.bpf import abi
from qtap_async.events.kernel import Data, TlsBind

_UNBOUND = int(abi.DataFlag.UNBOUND)
# Objects whose binding is remembered after it came: a write that reserved its unbound offset just before
# the binding can reach the ring buffer just after it, and still belongs to that connection.
MAX_BOUND_REMEMBERED = 4096

Key = tuple[int, int, int]  # pid, TLS object, generation


@dataclass
class UnboundStats:
    held_records: int = 0
    bound_records: int = 0
    dropped_records: int = 0
    dropped_bytes: int = 0


@dataclass
class _Held:
    records: list[Data]
    nbytes: int
    last_ns: int


def is_unbound(rec: Data) -> bool:
    return bool(rec.flags & _UNBOUND)


def _rebase(rec: Data, conn_id: int, base: int) -> Data:
    return Data(rec.ts_ns, conn_id, rec.pid, rec.tid, base + rec.offset, rec.dir, rec.source,
                rec.flags & ~_UNBOUND, rec.skipped, -1, rec.payload)


class UnboundTls:
    """Unbound TLS plaintext records in, the connection's records out once their binding arrives."""

    def __init__(self, *, timeout_s: float = abi.TLS_PENDING_TTL_NS / 1e9, max_objects: int = 4096,
                 max_bytes: int = 16 << 20) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.stats = UnboundStats()
        self._held: OrderedDict[Key, _Held] = OrderedDict()  # least recently written first
        self._bytes = 0
        self._bound: OrderedDict[Key, TlsBind] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, rec: Data) -> list[Data]:
        """An unbound record: kept for its binding, or returned at once rebased when the binding came first."""
        key = (rec.pid, rec.conn_id, rec.fd & 0xFFFFFFFF)
        bound = self._bound.get(key)
        if bound is not None:
            return self._release(bound, [rec])
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held([], 0, rec.ts_ns)
        else:
            self._held.move_to_end(key)
        held.records.append(rec)
        held.nbytes += len(rec.payload)
        held.last_ns = rec.ts_ns
        self._bytes += len(rec.payload)
        self.stats.held_records += 1
        while self._held and (len(self._held) > self.max_objects or self._bytes > self.max_bytes):
            self._drop(next(iter(self._held)))
        return []

    def bind(self, rec: TlsBind) -> list[Data]:
        """The connection of an object's unbound writes: its held records, rebased onto that connection."""
        key = (rec.pid, rec.ssl, rec.gen)
        self._bound[key] = rec
        self._bound.move_to_end(key)
        while len(self._bound) > MAX_BOUND_REMEMBERED:
            self._bound.popitem(last=False)
        held = self._held.pop(key, None)
        if held is None:
            return []
        self._bytes -= held.nbytes
        return self._release(rec, held.records)

    def expire(self, now_ns: int) -> None:
        """Drop (and count) what has waited longer than the timeout since its object's last write."""
        limit = now_ns - self.timeout_ns
        while self._held:
            key, held = next(iter(self._held.items()))
            if held.last_ns >= limit:
                break
            self._drop(key)

    def drop_all(self) -> None:
        """The input ended: nothing held can be bound any more (dropped, counted)."""
        while self._held:
            self._drop(next(iter(self._held)))

    def _release(self, bind: TlsBind, records: list[Data]) -> list[Data]:
        out: list[Data] = []
        for r in records:
            if r.offset + len(r.payload) + r.skipped > bind.nbytes:
                # Written after the kernel handed the object's unbound stream over: not placed in it.
                self._count_drop(r)
                continue
            out.append(_rebase(r, bind.conn_id, bind.base))
        self.stats.bound_records += len(out)
        return out

    def _drop(self, key: Key) -> None:
        held = self._held.pop(key)
        self._bytes -= held.nbytes
        for r in held.records:
            self._count_drop(r)

    def _count_drop(self, rec: Data) -> None:
        self.stats.dropped_records += 1
        self.stats.dropped_bytes += len(rec.payload)
