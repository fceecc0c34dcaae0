"""One ``ProtocolSession`` per connection: detection, then the protocol's parser, records out.

The caller feeds the reassembled byte stream of each direction (as seen by the local process) in
order, reports holes with ``gap()`` and the end with ``close()``. Each call returns the records it
completed. No call raises: malformed input becomes a ``ParseError`` record, and an unexpected bug
becomes one too (reason "internal error: ...") after which the session ignores the connection.

Detection looks at the first bytes of each direction (see ``detect``): port 53 on either side means
DNS over TCP; otherwise an HTTP/1 request or status line, the HTTP/2 client preface (or, mid-
connection, plausible HTTP/2 frames or ALPN "h2"), or a TLS record. The direction that starts with a
request / preface / ClientHello / DNS query is the client side; the local process may be either.
When neither direction can be recognized the protocol stays "unknown" and feed() returns [] at once.
"""

from __future__ import annotations

import enum
from typing import Any

from qtap_async.events.dns import DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.events.tls import TlsClientHello
from qtap_async.protocols.detect import MATCH, NEED_MORE, ROLE_CLIENT, ROLE_SERVER, detect
from qtap_async.protocols.dns import DnsTcpConnection
from qtap_async.protocols.http1 import Http1Connection
from qtap_async.protocols.http2 import R_RESYNC, Http2Connection
from qtap_async.protocols.limits import DEFAULT_LIMITS, Limits
from qtap_async.protocols.tls import TlsConnection

__all__ = ["Direction", "ProtocolSession", "Record"]

Record = HttpTransaction | ParseError | TlsClientHello | DnsMessage

_PROTOCOL_NAMES = {"http1": "http1", "http2": "http2", "tls": "tls", "dns": "dns"}


class Direction(enum.IntEnum):
    """Direction of a byte stream from the local process's point of view."""

    SEND = 0
    RECV = 1


class _Detection:
    """Per-direction detection state, made at a connection's first byte or gap and dropped once its
    protocol is known: an idle or detected connection does not carry it."""

    __slots__ = ("buf", "failed", "gapped", "offsets", "ts")

    def __init__(self) -> None:
        self.buf = [b"", b""]
        self.ts = [0, 0]
        self.failed = [False, False]
        self.gapped = [False, False]
        self.offsets = [0, 0]


class _ParkedHttp1:
    """An HTTP/1 parser between exchanges, reduced to what the next exchange needs (its stream offsets):
    ~100 bytes instead of ~700 for the parser, its two readers and their lists. An idle keep-alive
    connection spends most of its life here (``ProtocolSession.park``); its next byte, gap or close
    brings the parser back."""

    __slots__ = ("base0", "base1", "client_dir", "scheme", "ts0", "ts1")  # no tuple: 72 bytes less
    protocol = "http1"

    def __init__(self, h: Http1Connection) -> None:
        self.client_dir = h.client_dir
        self.scheme = h.scheme
        self.base0, self.ts0, self.base1, self.ts1 = h.offsets()

    @property
    def offsets(self) -> tuple[int, int, int, int]:
        return self.base0, self.ts0, self.base1, self.ts1

    def resume(self, limits: Limits) -> Http1Connection:
        return Http1Connection.resume(limits, self.client_dir, self.scheme, self.offsets)


_BOTH_FAILED = _Detection()
_BOTH_FAILED.failed = [True, True]


class ProtocolSession:
    """Parser state of one connection. See the module docstring."""

    __slots__ = ("_alpn", "_closed", "_dead", "_det", "_handler", "_limits", "_parked_once", "local_port",
                 "remote_port")

    def __init__(self, *, local_port: int, remote_port: int, alpn: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.local_port = local_port
        self.remote_port = remote_port
        self._alpn = alpn
        self._limits = limits
        self._handler: Any = None
        self._dead = False
        self._closed = False
        self._det: _Detection | None = None
        self._parked_once = False
        if local_port == 53 or remote_port == 53:
            self._handler = DnsTcpConnection(limits)

    @property
    def protocol(self) -> str:
        """"unknown" until detected, then "http1" | "http2" | "tls" | "dns"."""
        h = self._handler
        return h.protocol if h is not None else "unknown"

    @property
    def detection_failed(self) -> bool:
        """True once neither direction could be recognized (``protocol`` then stays "unknown" for
        good); False while detection is pending or after it succeeded."""
        det = self._det
        return self._handler is None and det is not None and det.failed[0] and det.failed[1]

    # -- public API ---------------------------------------------------------------------------------
    def feed(self, direction: Direction | int, data: bytes | memoryview, ts_ns: int) -> list[Record]:
        """Bytes of one direction, in stream order. Returns the records they completed."""
        h = self._handler
        if h is not None:
            if type(data) is not bytes:
                data = bytes(data)
            d = 1 if direction else 0
            try:
                if type(h) is _ParkedHttp1:
                    h = self._handler = h.resume(self._limits)
                out: list[Record] = h.feed(d, data, ts_ns)
                if h.switch_to is not None:
                    self._handler = h.switch_to
                elif (not self._parked_once and out and type(h) is Http1Connection and d == h.server_dir
                      and self.park()):
                    # The first exchange done: parked at once. A connection that then idles (one request, then
                    # keep-alive) holds offsets only from now on; a busy one pays one rebuild, at its next
                    # request, and keeps its parser after that until it goes quiet (see ``park``).
                    self._parked_once = True
            except Exception as e:  # a bug must not take the agent down: report and stop
                return self._internal(e, d, ts_ns)
            return out
        if self._dead or self._closed:
            return []
        d = 1 if direction else 0
        det = self._det
        if det is None:
            det = self._det = _Detection()
        elif det.failed[d]:
            det.offsets[d] += len(data)
            return []
        try:
            return self._detect(det, d, bytes(data), ts_ns)
        except Exception as e:
            return self._internal(e, d, ts_ns)

    def gap(self, direction: Direction | int, nbytes: int, ts_ns: int) -> list[Record]:
        """``nbytes`` bytes of ``direction`` are missing (drops, truncation) after what was fed."""
        d = 1 if direction else 0
        h = self._handler
        if h is not None:
            try:
                if type(h) is _ParkedHttp1:
                    h = self._handler = h.resume(self._limits)
                out: list[Record] = h.gap(d, nbytes, ts_ns)
                if h.switch_to is not None:
                    self._handler = h.switch_to
            except Exception as e:
                return self._internal(e, d, ts_ns)
            return out
        if not self._dead and not self._closed:
            det = self._det
            if det is None:
                det = self._det = _Detection()
            det.offsets[d] += len(det.buf[d]) + nbytes
            det.buf[d] = b""
            det.gapped[d] = True
        return []

    def close(self, ts_ns: int) -> list[Record]:
        """The connection ended: flush bodies delimited by close, report unfinished exchanges."""
        if self._closed:
            return []
        self._closed = True
        h = self._handler
        if h is None or type(h) is _ParkedHttp1:  # parked: at rest, nothing to flush or report
            return []
        try:
            out: list[Record] = h.close(ts_ns)
        except Exception as e:
            return self._internal(e, None, ts_ns)
        return out

    def park(self) -> bool:
        """The connection has gone quiet: an HTTP/1 parser at rest (between exchanges, nothing held) is
        reduced to its stream offsets; the next byte, gap or close brings it back. True when it parked.

        Called by the idle pass of conntrack, not after every exchange: a busy keep-alive connection
        would pay a parser's teardown and rebuild per exchange (a third of the replay's CPU at summary
        level), while only a connection that stays quiet is worth the ~600 bytes saved."""
        h = self._handler
        if type(h) is not Http1Connection or not h.at_rest():
            return False
        self._handler = _ParkedHttp1(h)
        return True

    # -- detection ----------------------------------------------------------------------------------
    def _detect(self, det: _Detection, d: int, data: bytes, ts: int) -> list[Record]:
        old = det.buf[d]
        if not old:
            det.ts[d] = ts
        buf = old + data
        status, proto, role = detect(buf, alpn=self._alpn)
        if status == NEED_MORE and len(buf) < self._limits.max_detect_bytes:
            det.buf[d] = buf
            return []
        if status != MATCH:
            det.buf[d] = b""
            det.failed[d] = True
            det.offsets[d] += len(buf)
            if det.failed[1 - d]:
                self._dead = True
                self._det = _BOTH_FAILED  # nothing more is read: keep only the answer to detection_failed
            return []
        det.buf[d] = b""
        o = 1 - d
        client_dir = d if role == ROLE_CLIENT else o if role == ROLE_SERVER else None
        lim = self._limits
        scheme = "https" if self._alpn else None
        h: Any
        if proto == "http1":
            assert client_dir is not None
            h = Http1Connection(lim, client_dir, scheme=scheme,
                                resync=(det.failed[0], det.failed[1]))
        elif proto == "http2":
            if client_dir is not None:  # a client or server preface: the connection's start
                known = [not det.gapped[0], not det.gapped[1]]
                known[o] = known[o] and not det.failed[o]
                h = Http2Connection(lim, client_dir=client_dir, known=(known[0], known[1]), alpn=self._alpn,
                                    expect_preface=not (det.gapped[client_dir] or det.failed[client_dir]))
            else:
                h = Http2Connection(lim, known=(False, False), alpn=self._alpn, expect_preface=False)
            if det.failed[o]:
                h.readers[o].state = R_RESYNC
        else:
            h = TlsConnection(lim, client_dir)
        self._handler = h
        self._det = None  # the handler has it all from here
        out: list[Record] = []
        if det.failed[o] and proto != "tls":
            out.append(ParseError(reason=f"{det.offsets[o]} bytes at the start of the stream not recognized "
                                  "(capture started mid-connection?); skipped", direction=o, offset=0,
                                  ts_ns=ts, protocol="session"))
        for dd, ts_dd, chunk in ((d, det.ts[d], old), (d, ts, data)):
            if chunk:
                out.extend(h.feed(dd, chunk, ts_dd))
        pending = det.buf[o]
        if pending:
            det.buf[o] = b""
            out.extend(h.feed(o, pending, det.ts[o]))
        if h.switch_to is not None:
            self._handler = h.switch_to
        return out

    def _internal(self, e: Exception, d: int | None, ts: int) -> list[Record]:
        self._handler = None
        self._dead = True
        return [ParseError(reason=f"internal error: {type(e).__name__}: {e}", direction=d, offset=0, ts_ns=ts,
                           protocol=_PROTOCOL_NAMES.get(self.protocol, "session"))]
