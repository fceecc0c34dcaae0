"""Conntrack driven directly with decoded records (no kernel): lifecycle, bounds, evictions, sessions."""

from __future__ import annotations

import struct
from typing import Any

from qtap_async.context.process import ProcessCache
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.events.kernel import ConnClose, ConnOpen, Data, ProcExec
from qtap_async.events.times import format_ns
from qtap_async.transforms.conntrack import Connection, Conntrack, Parsed


class FakeListeners:
    def __init__(self, ports: set[int]) -> None:
        self.p = ports

    def is_listening(self, pid: int, port: int) -> bool:
        return port in self.p


class Rec:
    def __init__(self) -> None:
        self.fed: dict[int, bytes] = {0: b"", 1: b""}
        self.gaps = 0
        self.closed = False

    protocol = "test"

    def feed(self, direction: Any, data: bytes | memoryview, ts_ns: int) -> list[Any]:
        self.fed[int(direction)] += bytes(data)
        return []

    def gap(self, direction: Any, nbytes: int, ts_ns: int) -> list[Any]:
        self.gaps += nbytes
        return []

    def close(self, ts_ns: int) -> list[Any]:
        self.closed = True
        return []

    def park(self) -> bool:
        return False


def _open(conn_id: int, role: int = 1, lport: int = 40000, rport: int = 80, midstream: bool = False,
          pid: int = 1, udp: bool = False) -> ConnOpen:
    return ConnOpen(10, conn_id, pid, pid, 0, 2, role, midstream, lport, rport, "127.0.0.1", "10.0.0.1", 3, "x",
                    udp)


def _data(conn_id: int, off: int, payload: bytes, direction: int = 0, skipped: int = 0, ts: int = 20) -> Data:
    return Data(ts, conn_id, 1, 1, off, direction, 0, 0, skipped, 3, payload)


def _ct(**kw: Any) -> tuple[Conntrack, dict[int, Rec]]:
    sessions: dict[int, Rec] = {}

    def factory(c: Connection, layer: int) -> Rec:
        sessions[c.conn_id] = Rec()
        return sessions[c.conn_id]

    ct = Conntrack(session_factory=factory, processes=ProcessCache(), listeners=FakeListeners({8080}),  # type: ignore[arg-type]
                   **kw)
    return ct, sessions


def test_lifecycle_bytes_and_duration() -> None:
    ct, sessions = _ct()
    (ev,) = ct.handle(_open(1))
    assert isinstance(ev, ConnectionEvent) and ev.event == "open" and ev.direction == "egress"
    assert (ev.src_port, ev.dst_port) == (40000, 80)
    ct.handle(_data(1, 3, b"def"))
    ct.handle(_data(1, 0, b"abc"))
    ct.handle(_data(1, 0, b"HTTP", direction=1))
    (close,) = ct.handle(ConnClose(1000, 1, 1, 6, 4, 10))
    assert close.event == "close" and close.bytes_sent == 6 and close.bytes_received == 4
    assert close.duration_ns == 990 and close.reason == "closed"
    assert sessions[1].fed == {0: b"abcdef", 1: b"HTTP"} and sessions[1].closed
    assert not ct.conns


def test_ingress_by_role_and_by_listening_port_when_joined_midway() -> None:
    ct, _ = _ct()
    (a,) = ct.handle(_open(1, role=2, lport=8080, rport=5555))
    assert a.direction == "ingress" and (a.src_port, a.dst_port) == (5555, 8080)
    (b,) = ct.handle(_open(2, role=0, lport=8080, rport=6666, midstream=True))
    assert b.direction == "ingress" and b.midstream
    (c,) = ct.handle(_open(3, role=0, lport=50000, rport=443, midstream=True))
    assert c.direction == "egress"


def test_gaps_are_reported_with_their_size() -> None:
    ct, sessions = _ct()
    ct.handle(_open(1))
    out = ct.handle(_data(1, 0, b"abc", skipped=100))
    assert [type(e) for e in out] == [GapEvent] and out[0].bytes == 100
    assert sessions[1].gaps == 100
    # A record after a hole that never fills: reported at close.
    ct.handle(_data(1, 500, b"zzz"))
    ct.handle(ConnClose(99, 1, 1, 503, 0, 10))
    assert sessions[1].gaps == 100 + (500 - 103)
    assert sessions[1].fed[0] == b"abczzz"


def test_table_is_bounded_and_evictions_counted() -> None:
    ct, sessions = _ct(max_connections=3)
    for i in range(1, 6):
        ct.handle(_open(i))
    assert len(ct.conns) == 3 and ct.stats.connections_evicted_full == 2
    assert set(ct.conns) == {3, 4, 5}
    assert sessions == {}  # no data: no session was ever created


def test_idle_sweep() -> None:
    ct, _ = _ct(idle_timeout_s=1.0)
    ct.handle(_open(1))
    ct.handle(_open(2))
    ct.handle(_data(2, 0, b"x", ts=2_000_000_000))
    out = ct.sweep(2_500_000_000)
    assert [e.conn_id for e in out if isinstance(e, ConnectionEvent)] == [1]
    assert out[0].reason == "evicted" and ct.stats.connections_evicted_idle == 1
    assert set(ct.conns) == {2}


def test_orphan_data_is_kept_counted_and_announced() -> None:
    ct, sessions = _ct()
    (ev,) = ct.handle(_data(9, 1000, b"late"))
    # Its open record was lost: it is announced with what is known, so opens and closes still pair up.
    assert isinstance(ev, ConnectionEvent) and (ev.event, ev.conn_id, ev.direction) == ("open", 9, "unknown")
    assert ct.stats.orphan_data_records == 1 and sessions[9].fed[0] == b"late"
    assert ct.stats.connections_opened == 1


def _data_from(conn_id: int, off: int, payload: bytes, pid: int, direction: int = 0, ts: int = 20) -> Data:
    return Data(ts, conn_id, pid, pid, off, direction, 0, 0, 0, 3, payload)


def test_evicted_connection_resumes_with_bytes_counted_once() -> None:
    ct, _ = _ct(idle_timeout_s=1.0)
    ct.handle(_open(1))
    ct.handle(_data(1, 0, b"x" * 10, ts=100))
    (evicted,) = [e for e in ct.sweep(2_000_000_000) if isinstance(e, ConnectionEvent)]
    assert (evicted.reason, evicted.bytes_sent) == ("evicted", 10)
    out = ct.handle(_data(1, 10, b"y" * 5, ts=3_000_000_000))
    (resumed,) = [e for e in out if isinstance(e, ConnectionEvent)]
    assert (resumed.event, resumed.resumed, resumed.conn_id) == ("open", True, 1)
    assert (resumed.direction, resumed.src_port, resumed.dst_ip) == (evicted.direction, 40000, "10.0.0.1")
    (close,) = ct.handle(ConnClose(4_000_000_000, 1, 1, 15, 0, 10))
    assert (close.event, close.reason, close.bytes_sent, close.resumed) == ("close", "closed", 5, True)
    assert close.duration_ns == 1_000_000_000
    # The kernel's close of a connection evicted without later data: a resumed segment with no new bytes.
    ct.handle(_open(2))
    ct.sweep(10_000_000_000)
    tail = ct.handle(ConnClose(11_000_000_000, 2, 1, 0, 0, 10))
    assert [(e.event, e.resumed, e.bytes_sent) for e in tail] == [("open", True, 0), ("close", True, 0)]
    st = ct.stats
    assert st.connections_opened == st.connections_closed + len(ct.conns) and st.connections_resumed == 2


def test_io_by_another_process_moves_transactions_and_is_kept_in_owners() -> None:
    ct, _ = _ct()
    seen: list[int] = []

    def handle(rec: Any) -> list[Any]:
        out = ct.handle(rec)
        seen.extend(p.conn.pid for p in out if isinstance(p, Parsed))  # records come back with their connection
        return out

    handle(_open(1, role=2, lport=8080, pid=100))
    handle(_data_from(1, 0, b"GET / HTTP/1.1\r\n\r\n", pid=200, direction=1))
    conn = ct.conns[1]
    assert (conn.pid, conn.open_pid) == (200, 100)
    ct.handle(_data_from(1, 0, b"ok", pid=100))
    ct.handle(_data_from(1, 2, b"ok", pid=200))
    (close,) = ct.handle(ConnClose(50, 1, 100, 4, 18, 10))
    assert close.pid == 100
    assert close.owners is not None and [o.pid for o in close.owners] == [100, 200]  # bounded: no repeats
    # When each took over, in the one time form (RFC 3339 UTC, ns) beside its epoch ns.
    assert [o.first_ts for o in close.owners] == [format_ns(o.first_ns) for o in close.owners]
    assert all(o.first_ns > 0 for o in close.owners)
    assert ct.stats.owner_changes == 3


def test_exec_in_the_same_pid_is_a_new_owner() -> None:
    ct, _ = _ct()
    ct.handle(ProcExec(1, 999_999_990, 1, 0, 0, "bash", "/opt/bash"))
    ct.handle(_open(1, pid=999_999_990))
    ct.handle(_data_from(1, 0, b"a", pid=999_999_990))
    ct.handle(ProcExec(30, 999_999_990, 1, 0, 0, "head", "/opt/head"))
    ct.handle(_data_from(1, 1, b"b", pid=999_999_990))
    (close,) = ct.handle(ConnClose(50, 1, 999_999_990, 2, 0, 10))
    assert close.exe == "/opt/bash"
    assert close.owners is not None and [o.exe for o in close.owners] == ["/opt/bash", "/opt/head"]


def test_gap_reasons_come_from_the_record_flags_and_payload_off_makes_no_gap_events() -> None:
    from qtap_async.bpf import abi

    ct, _ = _ct()
    ct.handle(_open(1))
    sendfile = Data(20, 1, 1, 1, 0, 0, 0, int(abi.DataFlag.SENDFILE), 500, 3, b"")
    (gap,) = ct.handle(sendfile)
    assert isinstance(gap, GapEvent) and (gap.reason, gap.bytes, gap.stream) == ("sendfile", 500, "send")
    assert ct.handle(Data(21, 1, 1, 1, 600, 0, 0, 0, 0, 3, b"x")) == []  # held: 100 bytes are missing
    off = Data(22, 1, 1, 1, 601, 0, 0, int(abi.DataFlag.NO_PAYLOAD), 40, 3, b"")
    assert ct.handle(off) == []
    lost, close = ct.handle(ConnClose(50, 1, 1, 641, 0, 10))  # the hole never filled: "lost"
    assert isinstance(lost, GapEvent) and (lost.reason, lost.bytes) == ("lost", 100)
    assert isinstance(close, ConnectionEvent) and close.bytes_sent == 641


def test_fork_hint_names_a_child_gone_before_user_space_looked() -> None:
    from qtap_async.events.kernel import ProcFork

    ct, _ = _ct()
    ct.handle(ProcExec(1, 999_999_980, 1, 0, 0, "srv", "/opt/srv"))
    ct.handle(ProcFork(2, 999_999_981, 999_999_980, 0, 0))
    ct.handle(_open(1, role=2, lport=8080, pid=999_999_980))
    ct.handle(_data_from(1, 0, b"x", pid=999_999_981, direction=1))
    assert ct.conns[1].process.exe == "/opt/srv" and ct.conns[1].process.pid == 999_999_981


def test_exec_hint_names_a_vanished_process() -> None:
    ct, _ = _ct()
    ct.handle(ProcExec(1, 999_999_999, 1, 0, 0, "ghost", "/opt/ghost"))
    (ev,) = ct.handle(_open(1, pid=999_999_999))
    assert ev.exe == "/opt/ghost" and ev.comm == "ghost"


def test_udp_dns_datagrams_are_parsed_one_by_one() -> None:
    ct, _ = _ct()
    got: list[Any] = []
    ct.handle(_open(1, rport=53, udp=True))
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03www\x04test\x00" + struct.pack("!HH", 1, 1)
    got.extend(p.record for p in ct.handle(_data(1, 0, query)) if isinstance(p, Parsed))
    assert len(got) == 1 and got[0].qname == "www.test." and not got[0].is_response
    (close,) = ct.handle(ConnClose(5, 1, 1, len(query), 0, 1))
    assert close.transport == "udp" and close.protocol == "dns"


def test_timestamps_are_rfc3339_wall_clock() -> None:
    from datetime import UTC, datetime

    ct, _ = _ct()
    for mono in (0, 999_999_999, 1_000_000_000, 61_234_567_891):
        wall = ct.wall_ns(mono)
        want = datetime.fromtimestamp(wall // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{wall % 10**9:09d}Z"  # nanoseconds: the kernel's precision, as every event writes it
        assert ct.rfc3339(mono) == want


def test_open_is_named_as_the_kernel_saw_it_when_the_process_execd_before_user_space_looked() -> None:
    # bash opens the socket, then execs head; user space reads the open record only after the exec, while
    # the exec record is still queued behind it: the open must still say bash (the kernel's comm says so).
    import os

    me = os.getpid()  # a live pid: /proc names it as the program running now (not "bash")
    ct, _ = _ct()
    ct.handle(ProcExec(1, me, 1, 0, 0, "bash", "/opt/bash"))
    ct.processes._cache.pop(me, None)
    rec = ConnOpen(10, 1, me, me, 0, 2, 1, False, 40000, 80, "127.0.0.1", "10.0.0.1", 3, "bash")
    (ev,) = ct.handle(rec)
    assert (ev.exe, ev.comm) == ("/opt/bash", "bash")


def test_process_records_and_protocol_records_come_back_as_values() -> None:
    from qtap_async.events.kernel import ProcExit
    from qtap_async.transforms.conntrack import default_session_factory

    ct = Conntrack(session_factory=default_session_factory, processes=ProcessCache(),
                   listeners=FakeListeners(set()))  # type: ignore[arg-type]
    exec_rec = ProcExec(1, 999_999_970, 1, 0, 0, "curl", "/usr/bin/curl")
    assert ct.handle(exec_rec) == [exec_rec]  # applied to the process cache, and handed on
    assert ct.handle(ProcExit(2, 999_999_970, 0)) == [ProcExit(2, 999_999_970, 0)]
    ct.handle(_open(1))
    ct.handle(_data(1, 0, b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"))
    out = ct.handle(_data(1, 0, b"HTTP/1.1 204 No Content\r\n\r\n", direction=1, ts=30))
    (parsed,) = [p for p in out if isinstance(p, Parsed)]
    assert parsed.conn is ct.conns[1] and parsed.layer == 0
    assert (parsed.record.method, parsed.record.path, parsed.record.status) == ("GET", "/x", 204)
    ctx = parsed.conn.context(parsed.layer)  # what a plugin gets: a frozen snapshot, not the connection
    assert (ctx.conn_id, ctx.dst_port, ctx.tls) == (1, 80, False)


def test_a_muted_connection_is_counted_but_not_parsed() -> None:
    ct, sessions = _ct()
    ct.handle(_open(1))
    ct.mute(1)
    ct.handle(_data(1, 0, b"abc"))
    (close,) = ct.handle(ConnClose(1000, 1, 1, 3, 0, 10))
    assert sessions == {} and close.bytes_sent == 3  # no session was made; the bytes still count
    ct.handle(_open(2))
    ct.mute(2, socket=False)  # TLS plaintext only
    ct.handle(_data(2, 0, b"xyz"))
    assert 2 in sessions and ct.conns[2].sessions[1] is None
    ct.mute(99)  # unknown: nothing to do


def test_an_idle_keepalive_connection_holds_no_buffered_bytes() -> None:
    from qtap_async.protocols.session import _ParkedHttp1
    from qtap_async.transforms.conntrack import default_session_factory

    ct = Conntrack(session_factory=default_session_factory)
    ct.handle(_open(1))
    c = ct.conns[1]
    assert c.streams == {} and c.sessions == {}  # opened, no bytes: nothing per stream yet
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ct.handle(_data(1, 0, req, 0))
    out = ct.handle(_data(1, 0, resp, 1))
    assert [p.record.status for p in out if isinstance(p, Parsed)] == [200]
    assert all(st._pending is None and st.pending_bytes == 0 for st in c.streams.values())
    session = c.sessions[0]
    assert isinstance(getattr(session, "_handler", None), _ParkedHttp1)  # its first exchange done: offsets only
    assert getattr(session, "_det", 1) is None
    ct.handle(_data(1, len(req), req, 0, ts=30))  # the next request brings the parser back
    out = ct.handle(_data(1, len(resp), resp, 1, ts=40))
    assert [p.record.status for p in out if isinstance(p, Parsed)] == [200]
    assert not isinstance(getattr(session, "_handler", None), _ParkedHttp1)  # busy now: the whole parser kept
    assert ct.park_idle(1 + ct.park_idle_ns) == 0  # not quiet for long enough yet (its last bytes: ts 40)
    assert ct.sweep(41 + ct.park_idle_ns) == [] and ct.stats.sessions_parked == 1  # the sweep parks it
    assert isinstance(getattr(session, "_handler", None), _ParkedHttp1)
    assert ct.park_idle(10**15) == 0  # nothing fed since: the pass has nothing to look at
    ct.handle(_data(1, 2 * len(req), req, 0, ts=50))
    ct.handle(_data(1, 2 * len(resp), resp, 1, ts=60))
    ct.handle(ConnClose(70, 1, 1, 3 * len(req), 3 * len(resp), 10))
    assert ct.park_idle(10**15) == 0  # closed: forgotten by the idle pass
