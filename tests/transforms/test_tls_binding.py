"""Unbound TLS writes held until their binding (qtap_async.transforms.tls_binding), alone and in conntrack."""

from __future__ import annotations

from typing import Any

from qtap_async.bpf import abi
from qtap_async.events.kernel import ConnOpen, Data, TlsBind
from qtap_async.sources.decode import decode
from qtap_async.transforms.conntrack import Connection, Conntrack
from qtap_async.transforms.tls_binding import UnboundTls

SSL = 0x7F00_1234_5000
GEN = 77
UNBOUND = int(abi.DataFlag.UNBOUND)
S = 1_000_000_000


def _unbound(off: int, payload: bytes, *, ssl: int = SSL, gen: int = GEN, pid: int = 10, ts: int = S) -> Data:
    return Data(ts, ssl, pid, pid, off, 0, int(abi.Source.OPENSSL), UNBOUND, 0, gen, payload)


def _bind(conn_id: int, base: int, nbytes: int, *, ssl: int = SSL, gen: int = GEN, pid: int = 10) -> TlsBind:
    return TlsBind(2 * S, conn_id, pid, pid, ssl, base, nbytes, gen)


def test_held_records_are_released_rebased_onto_the_connection_that_binds_them() -> None:
    u = UnboundTls()
    assert u.hold(_unbound(0, b"PRI * ")) == []
    assert u.hold(_unbound(6, b"HTTP/2.0")) == []
    out = u.bind(_bind(5, 100, 14))
    assert [(r.conn_id, r.offset, r.payload, r.flags & UNBOUND, r.fd) for r in out] == [
        (5, 100, b"PRI * ", 0, -1), (5, 106, b"HTTP/2.0", 0, -1)]
    assert len(u) == 0 and u.stats.bound_records == 2 and u.stats.dropped_records == 0


def test_objects_are_told_apart_by_process_and_generation() -> None:
    u = UnboundTls()
    u.hold(_unbound(0, b"a", pid=10))
    u.hold(_unbound(0, b"b", pid=11))  # same address in another process
    u.hold(_unbound(0, b"c", gen=GEN + 1))  # the same address reused by a new object
    (r,) = u.bind(_bind(7, 0, 1, pid=11))
    assert (r.conn_id, r.payload) == (7, b"b")
    (r,) = u.bind(_bind(8, 0, 1))
    assert (r.conn_id, r.payload) == (8, b"a")
    assert len(u) == 1


def test_a_write_reaching_user_space_after_its_binding_still_goes_to_that_connection() -> None:
    u = UnboundTls()
    u.hold(_unbound(0, b"abc"))
    assert len(u.bind(_bind(3, 50, 6))) == 1
    (late,) = u.hold(_unbound(3, b"def"))
    assert (late.conn_id, late.offset) == (3, 53)
    # Beyond the bytes the kernel handed over: not placed anywhere, counted.
    assert u.hold(_unbound(6, b"ghi")) == []
    assert u.stats.dropped_records == 1 and u.stats.dropped_bytes == 3


def test_never_bound_in_time_or_over_the_bounds_is_dropped_and_counted_never_guessed() -> None:
    u = UnboundTls(timeout_s=1.0, max_objects=2, max_bytes=10)
    u.hold(_unbound(0, b"x" * 4, ssl=1, ts=S))
    u.hold(_unbound(0, b"y" * 4, ssl=2, ts=S))
    u.hold(_unbound(0, b"z" * 4, ssl=3, ts=S))  # a third object: the least recently written goes
    assert u.stats.dropped_records == 1 and len(u) == 2
    u.hold(_unbound(4, b"y" * 4, ssl=2, ts=int(1.9 * S)))  # 16 bytes held > 10: the oldest again
    assert u.stats.dropped_records == 2 and len(u) == 1
    u.expire(int(2.5 * S))  # ssl 2 last wrote at 1.9 s: still waiting
    assert len(u) == 1
    u.expire(int(3.0 * S))
    assert len(u) == 0 and u.stats.dropped_records == 4 and u.stats.dropped_bytes == 16
    assert u.bind(_bind(9, 0, 8, ssl=2)) == []  # too late: nothing comes out


class _Fed:
    protocol = "test"

    def __init__(self) -> None:
        self.fed = b""

    def feed(self, direction: Any, data: bytes | memoryview, ts_ns: int) -> list[Any]:
        self.fed += bytes(data)
        return []

    def gap(self, direction: Any, nbytes: int, ts_ns: int) -> list[Any]:
        return []

    def close(self, ts_ns: int) -> list[Any]:
        return []

    def park(self) -> bool:
        return False


def test_conntrack_feeds_the_bound_plaintext_before_the_later_writes_of_the_connection() -> None:
    sessions: dict[tuple[int, int], _Fed] = {}

    def factory(c: Connection, layer: int) -> _Fed:
        return sessions.setdefault((c.conn_id, layer), _Fed())

    ct = Conntrack(session_factory=factory)
    for cid in (1, 2):
        ct.handle(ConnOpen(10, cid, 10, 10, 0, 2, 1, False, 40000 + cid, 443, "127.0.0.1", "10.0.0.1", 3, "x"))
    ct.handle(_unbound(0, b"preface,"))
    assert sessions == {}  # nothing reached any connection while unbound
    ct.handle(_bind(2, 0, 8))
    ct.handle(Data(3 * S, 2, 10, 10, 8, 0, int(abi.Source.OPENSSL), 0, 0, -1, b"headers"))
    assert sessions[(2, 1)].fed == b"preface,headers"
    assert (1, 1) not in sessions
    ct.handle(_unbound(0, b"never bound", ssl=SSL + 64))
    ct.close_all(4 * S)
    assert ct.unbound_tls.stats.dropped_records == 1 and len(ct.unbound_tls) == 0


def test_the_bind_record_decodes() -> None:
    hdr = abi.HDR.pack(int(abi.RecType.TLS_BIND), abi.ABI_VERSION, 0, 5, 42, 10, 11)
    raw = hdr + abi.TLS_BIND.pack(SSL, 100, 14, GEN, 0)[abi.HDR.size:]
    assert decode(raw) == TlsBind(5, 42, 10, 11, SSL, 100, 14, GEN)
