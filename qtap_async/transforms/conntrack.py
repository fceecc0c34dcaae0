"""Connection tracking: kernel records -> connections with process context and ordered streams.

Synchronous and I/O-free except for /proc reads of process context, so tests drive it directly with
decoded records. ``Conntrack.handle`` returns values and calls nothing above it: connection and gap
events, ``Parsed`` (a protocol record with the connection it was parsed on, for the enrichment and
dispatch stages of qtap_async.topology), and the process records it applied (``ProcExec``/``ProcExit``,
which the runtime hands to TLS discovery). What is parsed is decided from above by ``mute``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from qtap_async.bpf import abi
from qtap_async.context.containers import container_fields
from qtap_async.context.listeners import ListeningPorts
from qtap_async.context.process import ProcessCache, ProcessInfo, user_name
from qtap_async.events.connection import ConnectionEvent, GapEvent, Owner
from qtap_async.events.context import ConnContext, Direction
from qtap_async.events.kernel import (
    ConnClose,
    ConnOpen,
    Data,
    JavaData,
    KernelRecord,
    ProcExec,
    ProcExit,
    ProcFork,
    TlsBind,
)
from qtap_async.protocols.dns import parse_dns_datagram
from qtap_async.transforms.java_streams import JavaStreams
from qtap_async.transforms.reassembly import Gap, ReassemblyStats, Segment, StreamReassembler
from qtap_async.transforms.tls_binding import UnboundTls

_SOURCE_NAMES = {int(s): s.name.lower() for s in abi.Source} | {abi.SOURCE_JAVA: "java"}
_DIR_NAMES = {0: "send", 1: "recv"}
PAYLOAD_OFF = "payload_off"
# Why a data record's `skipped` bytes were not captured, from its flags (first match wins).
_SKIP_REASONS = (
    (abi.DataFlag.SENDFILE, "sendfile"),
    (abi.DataFlag.SPLICE, "splice"),
    (abi.DataFlag.IO_URING, "io_uring"),
    (abi.DataFlag.DISCARDED, "discarded"),
    (abi.DataFlag.READ_FAULT, "read_fault"),
    (abi.DataFlag.NO_PAYLOAD, PAYLOAD_OFF),
)
_URING = int(abi.DataFlag.IO_URING)
_NO_SESSION = object()  # a layer whose session is not made yet (None: the layer is muted)
_UNBOUND = int(abi.DataFlag.UNBOUND)
# Connections evicted (idle or table full) that are remembered so later activity resumes them honestly.
MAX_EVICTED_REMEMBERED = 16384
# Distinct processes kept in a connection's owner history (a socket shared by many workers stays bounded).
MAX_OWNERS = 16
# A connection that moved no bytes for this long has its sessions parked (ProtocolSession.park) at the sweep.
PARK_IDLE_S = 5.0


def _skip_reason(flags: int) -> str:
    for flag, reason in _SKIP_REASONS:
        if flags & flag:
            return reason
    return "truncated"


class Session(Protocol):
    """What conntrack needs of a protocol session (qtap_async.protocols.ProtocolSession)."""

    def feed(self, direction: Any, data: bytes | memoryview, ts_ns: int) -> list[Any]: ...
    def gap(self, direction: Any, nbytes: int, ts_ns: int) -> list[Any]: ...
    def close(self, ts_ns: int) -> list[Any]: ...
    def park(self) -> bool: ...
    @property
    def protocol(self) -> str: ...


SessionFactory = Callable[["Connection", int], Session | None]


def default_session_factory(conn: Connection, layer: int) -> Session | None:
    """A protocol session per connection and layer (0: socket bytes, 1: TLS plaintext)."""
    from qtap_async.protocols import ProtocolSession

    return ProtocolSession(local_port=conn.lport, remote_port=conn.rport)


class Parsed(msgspec.Struct, gc=False):
    """A protocol record (``qtap_async.events.ProtocolRecord``) and where it was parsed: the live
    connection and the layer (0: socket bytes, 1: TLS plaintext). Only the transform stages see the live
    connection; plugins get a ``ConnContext`` snapshot of it. ``host``: an HTTP transaction's host
    (Host / ``:authority`` without the port), set once by the enrichment stage for the stages after it.
    A Struct because one is made per record: its constructor is C."""

    conn: Connection
    layer: int
    record: Any
    host: str = ""


#: What ``Conntrack.handle`` returns, in order.
Tracked = ConnectionEvent | GapEvent | Parsed | ProcExec | ProcExit


@dataclass
class ConntrackStats:
    connections_opened: int = 0
    connections_closed: int = 0
    connections_evicted_idle: int = 0
    connections_evicted_full: int = 0
    orphan_data_records: int = 0
    connections_resumed: int = 0
    owner_changes: int = 0
    data_records: int = 0
    data_bytes: int = 0
    process_records: int = 0
    reassembly: ReassemblyStats = field(default_factory=ReassemblyStats)
    sessions_parked: int = 0


class Connection:
    """One TCP connection as seen from one process (each end on this host is its own connection)."""

    __slots__ = (
        "_firsts",
        "_layer0",
        "_layer1",
        "_stream0",
        "_stream1",
        "_streams_other",
        "base_received",
        "base_sent",
        "bytes_received",
        "bytes_sent",
        "conn_id",
        "direction",
        "domain",
        "domain_source",
        "exec_gen",
        "family",
        "fd",
        "io_uring",
        "laddr",
        "last_ns",
        "lport",
        "midstream",
        "open_pid",
        "open_process",
        "open_ts_ns",
        "owners",
        "pid",
        "process",
        "raddr",
        "resumed",
        "role",
        "rport",
        "tls",
        "udp",
        "uid",
    )

    def __init__(self, rec: ConnOpen, process: ProcessInfo, direction: Direction) -> None:
        self.conn_id = rec.conn_id
        #: The process doing the I/O now (what protocol records are attributed to); the opener is kept
        #: apart for the connection events.
        self.pid = rec.pid
        self.open_pid = rec.pid
        self.open_process = process
        self.uid = rec.uid if rec.uid >= 0 else process.uid
        self.exec_gen = 0
        #: (pid, process, wall-clock-less monotonic ts of first I/O) of every process that moved bytes, once
        #: a second one did; None while the opener is the only one.
        self.owners: list[tuple[int, ProcessInfo, int]] | None = None
        self.resumed = False
        self.io_uring = False
        self.base_sent = 0
        self.base_received = 0
        self.fd = rec.fd
        self.family = "ipv6" if rec.family == 10 else "ipv4"
        self.role = rec.role
        self.direction = direction
        self.laddr = rec.laddr
        self.lport = rec.lport
        self.raddr = rec.raddr
        self.rport = rec.rport
        self.open_ts_ns = rec.ts_ns
        self.last_ns = rec.ts_ns
        self.midstream = rec.midstream
        self.process = process
        self.bytes_sent = 0
        self.bytes_received = 0
        # Per stream (key: source * 2 + dir) a reassembler and per layer (0: socket bytes, 1: TLS plaintext)
        # a session, made at its first byte. Slots, not dicts: the socket streams and both layers are what
        # almost every connection has, and two small dicts cost ~450 bytes per connection; the streams of
        # other sources (TLS plaintext, Java) are in a dict made when one appears.
        self._stream0: StreamReassembler | None = None
        self._stream1: StreamReassembler | None = None
        self._streams_other: dict[int, StreamReassembler] | None = None
        self._layer0: object = _NO_SESSION  # Session | None | _NO_SESSION
        self._layer1: object = _NO_SESSION  # Session | None | _NO_SESSION
        # Which came first (bit 0: stream 1 before stream 0; bit 1: layer 1 before layer 0): a close flushes
        # streams and sessions in the order they appeared, as the dicts these slots replace did.
        self._firsts = 0
        # Written by the enrichment stage only (transforms/enrich.py; precedence in context/domains.py).
        self.domain = ""
        self.domain_source = ""
        self.tls = False
        self.udp = rec.udp

    # -- streams and sessions ------------------------------------------------------------------------
    def stream(self, key: int) -> StreamReassembler | None:
        if key == 0:
            return self._stream0
        if key == 1:
            return self._stream1
        other = self._streams_other
        return other.get(key) if other is not None else None

    def set_stream(self, key: int, stream: StreamReassembler) -> None:
        if key == 0:
            self._stream0 = stream
        elif key == 1:
            if self._stream0 is None:
                self._firsts |= 1
            self._stream1 = stream
        else:
            if self._streams_other is None:
                self._streams_other = {}
            self._streams_other[key] = stream

    @property
    def streams(self) -> dict[int, StreamReassembler]:
        """Every stream's reassembler by key (a new dict: reading only)."""
        out: dict[int, StreamReassembler] = {}
        for key in ((1, 0) if self._firsts & 1 else (0, 1)):
            st = self._stream1 if key else self._stream0
            if st is not None:
                out[key] = st
        if self._streams_other:
            out.update(self._streams_other)
        return out

    def has_session(self, layer: int) -> bool:
        """A session was made for ``layer`` (or the layer was muted: None)."""
        return (self._layer1 if layer else self._layer0) is not _NO_SESSION

    def session(self, layer: int) -> Session | None:
        """The layer's session; None when none was made or the layer is muted."""
        s = self._layer1 if layer else self._layer0
        return None if s is _NO_SESSION else s  # type: ignore[return-value]

    def set_session(self, layer: int, session: Session | None) -> None:
        if layer:
            if self._layer0 is _NO_SESSION:
                self._firsts |= 2
            self._layer1 = session
        else:
            self._layer0 = session

    @property
    def sessions(self) -> dict[int, Session | None]:
        """The sessions made so far by layer, None for a muted layer (a new dict: reading only)."""
        order = (1, 0) if self._firsts & 2 else (0, 1)
        return {layer: self.session(layer) for layer in order if self.has_session(layer)}

    def drop_parsing(self) -> None:
        """Forget every stream and session (an eviction keeps the identity and the byte counts only)."""
        self._stream0 = self._stream1 = None
        self._streams_other = None
        self._layer0 = self._layer1 = _NO_SESSION
        self._firsts = 0

    @property
    def protocol(self) -> str:
        if self.udp:
            return "dns"
        for layer in (1, 0):
            s = self.session(layer)
            if s is not None and s.protocol not in ("unknown", "tls"):
                return s.protocol
        s = self.session(0)
        return s.protocol if s is not None else "unknown"

    def context(self, layer: int) -> ConnContext:
        """A snapshot of the connection and its process for an event about its traffic (layer 1: the bytes
        came through a TLS probe): what plugins see, never the live connection."""
        src_ip, src_port, dst_ip, dst_port = self.endpoints()
        p = self.process
        return ConnContext(
            conn_id=self.conn_id,
            direction=self.direction,
            tls=layer == 1 or self.tls,
            src_ip=src_ip,
            src_port=src_port,
            dst_ip=dst_ip,
            dst_port=dst_port,
            pid=self.pid,
            exe=p.exe,
            comm=p.comm,
            container_id=p.container_id,
            **container_fields(p.container_id),  # type: ignore[arg-type]
            user=p.user,
            domain=self.domain,
        )

    def endpoints(self) -> tuple[str, int, str, int]:
        """(src_ip, src_port, dst_ip, dst_port) with src = the initiator."""
        if self.direction == "ingress":
            return self.raddr, self.rport, self.laddr, self.lport
        return self.laddr, self.lport, self.raddr, self.rport


class Conntrack:
    """Kernel records in; connection events, gaps, parsed protocol records and process changes out."""

    def __init__(
        self,
        *,
        max_connections: int = 65536,
        idle_timeout_s: float = 300.0,
        session_factory: SessionFactory | None = None,
        processes: ProcessCache | None = None,
        listeners: ListeningPorts | None = None,
        emit_gaps: bool = True,
        park_idle_s: float = PARK_IDLE_S,
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.session_factory = session_factory
        self.processes = processes or ProcessCache()
        self.listeners = listeners or ListeningPorts()
        self.emit_gaps = emit_gaps
        self.conns: OrderedDict[int, Connection] = OrderedDict()
        # Connections whose sessions were fed since the last idle pass (``park_idle``): only those can
        # hold a parser worth parking, so the pass never walks the whole table.
        self._fed: dict[int, Connection] = {}
        self.park_idle_ns = int(park_idle_s * 1e9)
        # Evicted connections by id: the kernel may still report them (data after an idle spell, or their
        # close), and they then resume as the same connection instead of a context-less orphan.
        self._evicted: OrderedDict[int, Connection] = OrderedDict()
        self.stats = ConntrackStats()
        self.java = JavaStreams()
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC; events carry wall-clock time.
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self._fmt_sec = -1
        self._fmt_prefix = ""
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        # TLS writes whose connection the kernel has not named yet (see qtap_async.transforms.tls_binding).
        self.unbound_tls = UnboundTls()

    # -- helpers ---------------------------------------------------------------------------------
    def _event_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def wall_ns(self, ts_ns: int) -> int:
        return ts_ns + self._wall_offset_ns

    def rfc3339(self, ts_ns: int) -> str:
        wall = self.wall_ns(ts_ns)
        sec, frac = divmod(wall, 1_000_000_000)
        if sec != self._fmt_sec:  # formatting the date part once per second: this runs per event
            self._fmt_sec = sec
            self._fmt_prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._fmt_prefix}{frac:09d}Z"  # = events.times.format_ns(wall), cached per second

    def _direction(self, rec: ConnOpen) -> Direction:
        if rec.role == abi.Role.CONNECT:
            return "egress"
        if rec.role == abi.Role.ACCEPT:
            return "ingress"
        # Joined mid-way: a connection on a port this process's network namespace listens on was accepted.
        return "ingress" if self.listeners.is_listening(rec.pid, rec.lport) else "egress"

    def _owners(self, c: Connection) -> list[Owner] | None:
        if c.owners is None:
            return None
        return [Owner(pid=pid, exe=p.exe, comm=p.comm, user=p.user, first_ns=self.wall_ns(ts),
                      first_ts=self.rfc3339(ts)) for pid, p, ts in c.owners]

    def _conn_event(self, c: Connection, event: str, ts_ns: int, reason: str = "") -> ConnectionEvent:
        src_ip, src_port, dst_ip, dst_port = c.endpoints()
        p = c.open_process
        closing = event == "close"
        return ConnectionEvent(
            id=self._event_id(),
            ts=self.rfc3339(ts_ns),
            ts_ns=self.wall_ns(ts_ns),
            event=event,
            conn_id=c.conn_id,
            direction=c.direction,
            family=c.family,
            src_ip=src_ip,
            src_port=src_port,
            dst_ip=dst_ip,
            dst_port=dst_port,
            pid=c.open_pid,
            exe=p.exe,
            comm=p.comm,
            user=user_name(c.uid) if c.uid >= 0 and c.uid != p.uid else p.user,
            uid=c.uid,
            container_id=p.container_id,
            cgroup=p.cgroup,
            **container_fields(p.container_id),  # type: ignore[arg-type]
            bytes_sent=c.bytes_sent - c.base_sent,
            bytes_received=c.bytes_received - c.base_received,
            duration_ns=(ts_ns - c.open_ts_ns) if closing else 0,
            protocol=c.protocol if closing else "",
            domain=c.domain,
            domain_source=c.domain_source,
            tls=c.tls,
            transport="udp" if c.udp else "tcp",
            midstream=c.midstream,
            resumed=c.resumed,
            io_uring=c.io_uring,
            owners=self._owners(c) if closing else None,
            reason=reason,
        )

    def mute(self, conn_id: int, *, socket: bool = True, tls: bool = True) -> None:
        """Parse nothing more of a connection's socket bytes and/or TLS plaintext (a filter upstream
        decided it is not captured): the cheapest place to drop it. Counting and gaps go on."""
        c = self.conns.get(conn_id)
        if c is None:
            return
        if socket:
            c.set_session(0, None)
        if tls:
            c.set_session(1, None)

    # -- records ---------------------------------------------------------------------------------
    def handle(self, rec: KernelRecord) -> list[Any]:
        if type(rec) is Data:
            if rec.flags & _UNBOUND:
                return self._data_list(self.unbound_tls.hold(rec))
            return self._data(rec)
        if type(rec) is TlsBind:
            return self._data_list(self.unbound_tls.bind(rec))
        if type(rec) is ConnOpen:
            return self._open(rec)
        if type(rec) is ConnClose:
            return self._close(rec)
        if type(rec) is JavaData:
            return self._java(rec)
        if type(rec) is ProcExec:
            self.stats.process_records += 1
            self.processes.on_exec(rec.pid, rec.comm, rec.filename, rec.uid, rec.cgroup_id, rec.exe_ino,
                                   rec.exe_dev)
            return [rec]  # TLS discovery looks at the new program (the runtime routes it there)
        if type(rec) is ProcFork:
            self.stats.process_records += 1
            self.processes.on_fork(rec.pid, rec.ppid, rec.uid, rec.cgroup_id, rec.ts_ns)
            return []
        if type(rec) is ProcExit:
            self.stats.process_records += 1
            self.processes.on_exit(rec.pid)
            return [rec]
        return []

    def _data_list(self, recs: list[Data]) -> list[Any]:
        out: list[Any] = []
        for r in recs:
            out.extend(self._data(r))
        return out

    def _open(self, rec: ConnOpen) -> list[Any]:
        out: list[Any] = []
        old = self.conns.pop(rec.conn_id, None)
        if old is not None:  # should not happen (ids are unique per run); close the old one honestly
            out.extend(self._finish(old, rec.ts_ns, "replaced"))
        self._evicted.pop(rec.conn_id, None)
        out.extend(self._make_room(rec.ts_ns))
        process = self.processes.as_seen(rec.pid, rec.comm, uid=rec.uid, cgroup_id=rec.cgroup_id, now_ns=rec.ts_ns)
        c = Connection(rec, process, self._direction(rec))
        c.exec_gen = self.processes.exec_gen.get(rec.pid, 0)
        self.conns[rec.conn_id] = c
        self.stats.connections_opened += 1
        out.append(self._conn_event(c, "open", rec.ts_ns))
        return out

    def _make_room(self, ts_ns: int) -> list[Any]:
        if len(self.conns) < self.max_connections:
            return []
        _, victim = self.conns.popitem(last=False)
        self.stats.connections_evicted_full += 1
        return self._evict(victim, ts_ns)

    def _evict(self, c: Connection, ts_ns: int) -> list[Any]:
        out = self._finish(c, ts_ns, "evicted")
        # Keep the identity and the byte counts reported so far; the streams and sessions are gone.
        c.drop_parsing()
        c.owners = None
        self._evicted[c.conn_id] = c
        if len(self._evicted) > MAX_EVICTED_REMEMBERED:
            self._evicted.popitem(last=False)
        return out

    def _revive(self, conn_id: int, ts_ns: int, out: list[Any]) -> Connection | None:
        """An evicted connection shows activity again: the same connection, opened again as `resumed`,
        counting its bytes from where the eviction's close left them."""
        c = self._evicted.pop(conn_id, None)
        if c is None:
            return None
        out.extend(self._make_room(ts_ns))
        c.resumed = True  # its streams start again wherever the next bytes are
        c.base_sent, c.base_received = c.bytes_sent, c.bytes_received
        c.open_ts_ns = c.last_ns = ts_ns
        c.open_pid, c.open_process = c.pid, c.process
        self.conns[conn_id] = c
        self.stats.connections_opened += 1
        self.stats.connections_resumed += 1
        out.append(self._conn_event(c, "open", ts_ns))
        return c

    def _orphan(self, rec: Data, out: list[Any]) -> Connection:
        # Data for a connection whose open record was lost (ring buffer full): keep what we know, and
        # announce it like any other connection so opens and closes still pair up.
        self.stats.orphan_data_records += 1
        out.extend(self._make_room(rec.ts_ns))
        stub = ConnOpen(rec.ts_ns, rec.conn_id, rec.pid, rec.tid, 0, 2, 0, True, 0, 0, "", "", rec.fd, "")
        c = Connection(stub, self.processes.get(rec.pid, now_ns=rec.ts_ns), "unknown")
        c.exec_gen = self.processes.exec_gen.get(rec.pid, 0)
        self.conns[rec.conn_id] = c
        self.stats.connections_opened += 1
        out.append(self._conn_event(c, "open", rec.ts_ns))
        return c

    def _switch_owner(self, c: Connection, pid: int, ts_ns: int) -> None:
        """Another process (or a new program in the same one) moves bytes on `c` from now on."""
        if c.owners is None:
            c.owners = [(c.pid, c.process, c.open_ts_ns)]
        c.pid = pid
        c.process = self.processes.get(pid, now_ns=ts_ns)
        c.exec_gen = self.processes.exec_gen.get(pid, 0)
        self.stats.owner_changes += 1
        for opid, p, _ in c.owners:
            if opid == pid and p is c.process:
                return  # back to a process seen before (workers sharing a socket take turns)
        if len(c.owners) < MAX_OWNERS:
            c.owners.append((pid, c.process, ts_ns))

    def _java(self, rec: JavaData) -> list[Any]:
        """Plaintext from the Java agent: on its connection, a Data record of the Java source (layer 1)."""
        c = self.java.resolve(rec, self.conns)
        if c is None:
            return []
        return self._data(Data(rec.ts_ns, c.conn_id, rec.pid, rec.tid, rec.offset, rec.dir, abi.SOURCE_JAVA, 0, 0,
                               c.fd, rec.payload))

    def _data(self, rec: Data) -> list[Any]:
        out: list[Any] = []
        c = self.conns.get(rec.conn_id)
        if c is None:
            c = self._revive(rec.conn_id, rec.ts_ns, out) or self._orphan(rec, out)
        else:
            self.conns.move_to_end(rec.conn_id)
        pid = rec.pid
        if pid != c.pid or self.processes.exec_gen.get(pid, 0) != c.exec_gen:
            self._switch_owner(c, pid, rec.ts_ns)
        stats = self.stats
        stats.data_records += 1
        n = len(rec.payload)
        stats.data_bytes += n
        c.last_ns = rec.ts_ns
        source = rec.source
        layer = 1 if source else 0
        if source == 0:
            if rec.dir == 0:
                c.bytes_sent = max(c.bytes_sent, rec.offset + n + rec.skipped)
            else:
                c.bytes_received = max(c.bytes_received, rec.offset + n + rec.skipped)
        else:
            c.tls = True
        flags = rec.flags
        if flags & _URING:
            c.io_uring = True
        if c.udp:
            # DNS over UDP: every record is one whole datagram, nothing to reassemble.
            if not rec.payload:
                return out
            msg = parse_dns_datagram(rec.payload, direction=rec.dir, ts_ns=rec.ts_ns)
            out.extend(self._protocol(c, [msg], 0))
            return out
        key = source * 2 + rec.dir
        stream = c.stream(key)
        if stream is None:
            # A stream seen from its start begins at 0; one joined mid-way begins where we came in.
            stream = StreamReassembler(None if c.midstream or c.resumed else 0, stats=stats.reassembly)
            c.set_stream(key, stream)
        # In order and whole (almost every record): its payload is the one segment, fed as it is (segments None).
        segments: list[Segment] | None = None
        if rec.skipped:
            segments = stream.push(rec.offset, rec.payload, rec.skipped, _skip_reason(flags))
        elif not stream.advance(rec.offset, n):
            segments = stream.push(rec.offset, rec.payload)
        if not (n if segments is None else segments):
            return out
        if not c.has_session(layer):
            c.set_session(layer, self.session_factory(c, layer) if self.session_factory else None)
        self._fed[rec.conn_id] = c
        if segments is not None:
            out.extend(self._deliver(c, source, rec.dir, segments, rec.ts_ns))
        elif (session := c.session(layer)) is not None:
            out.extend(self._protocol(c, session.feed(rec.dir, rec.payload, rec.ts_ns), layer))
        return out

    def _deliver(self, c: Connection, source: int, direction: int, segments: list[Segment],
                 ts_ns: int) -> list[Any]:
        """Ordered segments of one stream to its protocol session: bytes are fed, holes reported."""
        layer = 1 if source else 0
        session = c.session(layer)
        out: list[Any] = []
        for seg in segments:
            if isinstance(seg, int):
                reason = seg.reason if isinstance(seg, Gap) else "lost"
                # With payload capture off every call is "skipped" by design: no gap worth an event.
                if self.emit_gaps and reason != PAYLOAD_OFF:
                    out.append(self._gap_event(c, source, direction, seg, ts_ns, reason))
                if session is not None:
                    out.extend(self._protocol(c, session.gap(direction, seg, ts_ns), layer))
            elif session is not None:
                out.extend(self._protocol(c, session.feed(direction, seg, ts_ns), layer))
        return out

    def _gap_event(self, c: Connection, source: int, direction: int, n: int, ts_ns: int, reason: str) -> GapEvent:
        return GapEvent(
            id=self._event_id(),
            ts=self.rfc3339(ts_ns),
            conn_id=c.conn_id,
            stream=_DIR_NAMES.get(direction, "?"),
            source=_SOURCE_NAMES.get(source, str(source)),
            bytes=int(n),
            pid=c.pid,
            exe=c.process.exe,
            reason=reason,
        )

    def _protocol(self, c: Connection, records: list[Any], layer: int) -> list[Any]:
        if not records:
            return []
        return [Parsed(c, layer, r) for r in records]

    def _close(self, rec: ConnClose) -> list[Any]:
        out: list[Any] = []
        c = self.conns.pop(rec.conn_id, None)
        if c is None:
            # Evicted earlier: its real end is news, told as a resumed segment with the bytes since.
            c = self._revive(rec.conn_id, rec.ts_ns, out)
            if c is None:
                return out
            del self.conns[rec.conn_id]
        # The kernel's totals include bytes whose records were dropped or muted (TLS ciphertext).
        c.bytes_sent = max(c.bytes_sent, rec.bytes_sent)
        c.bytes_received = max(c.bytes_received, rec.bytes_received)
        # "swept": no kernel hook saw the end; the kernel's sweep found the socket freed (bytes still exact).
        out.extend(self._finish(c, rec.ts_ns, "swept" if rec.reason == abi.CloseReason.SWEPT else "closed"))
        return out

    def _finish(self, c: Connection, ts_ns: int, reason: str) -> list[Any]:
        out: list[Any] = []
        for key, stream in c.streams.items():
            out.extend(self._deliver(c, key >> 1, key & 1, stream.flush(), ts_ns))
        for layer, session in c.sessions.items():
            if session is not None:
                out.extend(self._protocol(c, session.close(ts_ns), layer))
        self.stats.connections_closed += 1
        self._fed.pop(c.conn_id, None)
        out.append(self._conn_event(c, "close", ts_ns, reason))
        return out

    def park_idle(self, now_ns: int) -> int:
        """Park the sessions (see ``ProtocolSession.park``) of the connections fed since the last pass that
        have been quiet for ``park_idle_ns`` since; the others wait for a later pass. Returns how many parked."""
        fed = self._fed
        if not fed:
            return 0
        limit = now_ns - self.park_idle_ns
        busy: dict[int, Connection] = {}
        parked = 0
        for conn_id, c in fed.items():
            if c.last_ns >= limit:
                busy[conn_id] = c
                continue
            for layer in (0, 1):
                s = c.session(layer)
                if s is not None and s.park():
                    parked += 1
        self._fed = busy
        self.stats.sessions_parked += parked
        return parked

    def sweep(self, now_ns: int) -> list[Any]:
        """Park the sessions of quiet connections; evict connections idle longer than the idle timeout
        (their close was never seen)."""
        out: list[Any] = []
        self.unbound_tls.expire(now_ns)
        self.park_idle(now_ns)
        limit = now_ns - self.idle_timeout_ns
        while self.conns:
            conn_id, c = next(iter(self.conns.items()))
            if c.last_ns >= limit:
                break
            del self.conns[conn_id]
            self.stats.connections_evicted_idle += 1
            out.extend(self._evict(c, now_ns))
        return out

    def close_all(self, now_ns: int) -> list[Any]:
        """Agent stopping: report every open connection as closed by the agent."""
        out: list[Any] = []
        self.unbound_tls.drop_all()  # no binding can come any more: counted as dropped
        while self.conns:
            _, c = self.conns.popitem(last=False)
            out.extend(self._finish(c, now_ns, "agent_stopped"))
        return out
