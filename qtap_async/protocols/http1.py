"""HTTP/1.0 and HTTP/1.1 (RFC 9112), sans-IO: the two byte streams of a connection in, transactions out.

One ``Http1Connection`` per connection. Each direction has a reader (request side, response side)
that consumes bytes with ``bytes.find`` and slicing only; complete heads are decoded in one go. A
request is queued when its head is parsed; responses take the oldest queued request, so pipelining
and early responses (server answers before the request body ends) pair correctly. An exchange is
emitted when both its messages are complete.

Message framing follows RFC 9112 section 6: Transfer-Encoding chunked (trailers kept), else
Content-Length, else no body (requests) or body until close (responses); HEAD, 1xx, 204 and 304
responses have no body; a 2xx answer to CONNECT starts a tunnel. A request carrying ``Upgrade`` (or a
CONNECT) pauses the request reader until the final response: 101 switches protocols (``websocket``:
stop parsing; ``h2c``: hand the rest of both streams to HTTP/2), anything else resumes HTTP/1.

Gaps (bytes lost from a stream): inside a body whose length is known the bytes are counted as
missing and parsing goes on; anywhere else the framing is lost, the message is reported incomplete
and the reader waits for a chunk that starts with a request line (status line) to resynchronize.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from qtap_async.events.http import HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.protocols.bodies import Body, decode_content
from qtap_async.protocols.limits import Limits
from qtap_async.protocols.text import target_text

if TYPE_CHECKING:
    from qtap_async.protocols.http2 import Http2Connection

__all__ = ["KNOWN_METHODS", "Http1Connection", "looks_like_request", "looks_like_response"]

KNOWN_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK "
    b"REPORT SEARCH PURGE MKCALENDAR ACL BIND UNBIND REBIND LINK UNLINK MERGE CHECKOUT CHECKIN "
    b"UNCHECKOUT MKACTIVITY MKWORKSPACE VERSION-CONTROL BASELINE-CONTROL LABEL UPDATE ORDERPATCH "
    b"MSEARCH M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE QUERY".split()
)
_TOKEN_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]{0,23} [^\s]+ HTTP/1\.[01]\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")

S_HEAD: Final = 0
S_LEN: Final = 1
S_CHUNK_SIZE: Final = 2
S_CHUNK_DATA: Final = 3
S_CHUNK_CRLF: Final = 4
S_TRAILERS: Final = 5
S_CLOSE: Final = 6
S_PAUSED: Final = 7
S_STOPPED: Final = 8
S_RESYNC: Final = 9
S_HEAD_CUT: Final = 10
S_EXPECT: Final = 11
_MAX_LINE: Final = 4096
# A head over the limit is read on line by line (see _CutHead): header lines longer than this are dropped
# whole; the ones that frame or name the message are kept wherever they are.
_MAX_CUT_LINE: Final = 8192
_KEEP_WHEN_CUT = (b"content-length:", b"transfer-encoding:", b"host:", b"upgrade:", b"expect:",
                  b"content-encoding:", b"connection:")
_BODY_STATES = frozenset((S_LEN, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_CRLF, S_TRAILERS, S_CLOSE))


def looks_like_request(data: bytes) -> bool | None:
    """True if ``data`` starts with an HTTP/1 request line, None if too short to tell, else False."""
    sp = data.find(b" ", 0, 25)
    if sp > 0:
        if data[:sp] in KNOWN_METHODS:
            return True
        nl = data.find(b"\n", 0, _MAX_LINE)
        if nl < 0:
            return None if len(data) < _MAX_LINE and data[:sp].isupper() else False
        return _TOKEN_METHOD.match(data, 0, nl + 1) is not None
    if len(data) >= 25:
        return False
    head = data.rstrip(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
    return None if not head and data else False


def looks_like_response(data: bytes) -> bool | None:
    if len(data) < 12:
        if b"HTTP/1."[: len(data)] == data[:7]:
            return None
        return False
    return data.startswith(b"HTTP/1.") and data[8:9] == b" " and data[9:12].isdigit()


def _decode_head(head: bytes) -> list[str]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    return text.split("\n")


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]] | None]:
    """A message head -> (first line, [(name, value)] or None when a header line is malformed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    nl = text.find("\n")
    headers: list[tuple[str, str]] | None
    if nl < 0:
        first, headers = text, []
    elif _ODD_TEXT_LINE.search(text, nl) is None:  # every line is "name: value": one pass, no checks
        first = text[:nl]
        headers = [(n, v.strip(" \t\r")) for n, _, v in [line.partition(":") for line in text[nl + 1 :].split("\n")]]
    else:
        lines = text.split("\n")
        first, headers = lines[0], _header_list(lines)
    if first[-1:] == "\r":
        first = first[:-1]
    return first, headers


# The start of a header line the fast path of _header_list refuses: none at all means every line is
# "name: value" with a name that does not start with whitespace (obsolete folding, empty or colon-less
# lines match). Possessive, so a line is scanned once.
_ODD_TEXT_LINE = re.compile(r"\n(?![^ \t:\n][^:\n]*+:)")


def _parse_start(head: bytes, text: str) -> tuple[str, list[tuple[str, str]] | None]:
    """``_parse_head`` for a connection that keeps no header lists (Limits.headers False): the same first
    line and verdict on the header lines, with [] for the list. ``text``: the head decoded as latin-1."""
    nl = text.find("\n")
    first = text if nl < 0 else text[:nl]
    if first.isascii() and (nl < 0 or _ODD_TEXT_LINE.search(text, nl) is None):
        return (first[:-1] if first[-1:] == "\r" else first), []
    first, headers = _parse_head(head)  # odd lines (folding...) or a non-ASCII start line: the full parse
    return first, None if headers is None else []


def _target_text(head: bytes) -> str:
    """The request target of a head whose start line is not ASCII, from its raw bytes (see target_text)."""
    nl = head.find(b"\n")
    line = (head[:nl] if nl >= 0 else head).rstrip(b"\r")
    return target_text(line.partition(b" ")[2].rpartition(b" ")[0])


def _header_list(lines: list[str]) -> list[tuple[str, str]] | None:
    """Header lines (lines[1:]) -> [(name, value)]; None when a line is malformed."""
    parts = [line.partition(":") for line in lines[1:]]
    out = [(n, v.strip(" \t\r")) for n, c, v in parts if c and n and n[0] not in " \t"]
    if len(out) == len(parts):
        return out
    return _header_list_slow(lines)


def _header_list_slow(lines: list[str]) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    append = out.append
    for i in range(1, len(lines)):
        line = lines[i]
        name, sep, value = line.partition(":")
        if sep and name and name[0] not in " \t":
            append((name, value.strip(" \t\r")))
        elif line[:1] in (" ", "\t") and out:  # obsolete line folding
            n0, v0 = out[-1]
            out[-1] = (n0, (v0 + " " + line.strip(" \t\r")).strip())
        elif not line.strip(" \t\r"):
            continue
        else:
            return None
    return out


# Header lookups work on the head decoded as latin-1 (one character per byte, so ``low``, its lowercase,
# lines up with it): compiled, str methods are direct C calls where bytes methods are looked up by name
# and parse their arguments on every call. ASCII whitespace only, as bytes.strip() strips.
_WS: Final = " \t\n\r\x0b\x0c"


def _values(text: str, low: str, key: str) -> list[str]:
    """Values of every header line ``key`` (``"\\nname:"``, lowercase) in a head."""
    out = []
    i = low.find(key)
    k = len(key)
    while i >= 0:
        j = low.find("\n", i + k)
        if j < 0:
            j = len(low)
        out.append(text[i + k : j].strip(" \t\r"))
        i = low.find(key, j)
    return out


def _value(text: str, low: str, key: str) -> str | None:
    i = low.find(key)
    if i < 0:
        return None
    k = len(key)
    j = low.find("\n", i + k)
    if j < 0:
        j = len(low)
    return text[i + k : j].strip(" \t\r")


def _digits(v: str) -> bool:
    """ASCII digits only (str.isdigit also takes latin-1's superscripts), at most 18 of them."""
    return v.isdigit() and v.isascii() and len(v) <= 18


def _content_length(low: str) -> int | None:
    """-1 when absent, None when invalid (differing or malformed values)."""
    i = low.find("\ncontent-length:")
    if i < 0:
        return -1
    j = low.find("\n", i + 16)
    if j < 0:
        v = low[i + 16 :].strip(" \t\r")
        if _digits(v):
            return int(v)
    elif low.find("\ncontent-length:", j) < 0:
        v = low[i + 16 : j].strip(" \t\r")
        if _digits(v):
            return int(v)
    vals = _values(low, low, "\ncontent-length:")
    if not vals:
        return -1
    seen = None
    for v in vals:
        for part in v.split(","):
            part = part.strip(_WS)
            if not _digits(part):
                return None
            x = int(part)
            if seen is not None and x != seen:
                return None
            seen = x
    return seen


def _is_chunked(low: str) -> bool | None:
    """None without Transfer-Encoding; else whether the final coding is chunked."""
    if low.find("\ntransfer-encoding:") < 0:
        return None
    vals = _values(low, low, "\ntransfer-encoding:")
    last = ",".join(vals).split(",")[-1].strip(_WS)
    return last == "chunked"


class _Exchange:
    """One request/response exchange being assembled. Class attributes are the defaults, so creating
    one sets only what differs (this is on the hot path)."""

    method: str | None = None
    path: str | None = None
    authority: str | None = None
    scheme: str | None = None
    version: str | None = None
    req_headers: list[tuple[str, str]] = []
    req_trailers: list[tuple[str, str]] = []
    req_body: Body | None = None
    req_start: int | None = None
    req_end: int | None = None
    req_done = False
    status: int | None = None
    resp_version: str | None = None
    resp_headers: list[tuple[str, str]] = []
    resp_trailers: list[tuple[str, str]] = []
    resp_body: Body | None = None
    resp_start: int | None = None
    resp_end: int | None = None
    resp_done = False
    upgrade: str | None = None
    wants_upgrade = False
    expect_continue = False  # the request asked for 100-continue before its body
    emitted = False
    after_gap = False
    ce_req: str | None = None
    ce_resp: str | None = None

    def __init__(self) -> None:
        self.informational: list[int] = []
        self.reasons: list[str] = []


class _CutHead:
    """A message head larger than ``max_header_bytes``, read on line by line instead of kept whole: its
    start line (cut to the limit, the version kept), the header lines within the limit, and the lines
    that frame or name the message wherever they are. From them the message is still reported (cut) and
    its body framed, so the connection stays in sync. Memory stays bounded by the limit."""

    __slots__ = ("carry", "first", "kept", "kept_bytes", "long", "off", "start_ts", "tail")

    def __init__(self, off: int, start_ts: int) -> None:
        self.off = off
        self.start_ts = start_ts
        self.first: bytes | None = None
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        self.carry = b""
        self.long = False  # the current line is over its bound: its prefix is kept (start line) or nothing
        self.tail = b""  # the last bytes of a long start line (its HTTP version)

    def take(self, buf: bytes, a: int, b: int, limit: int) -> None:
        """Bytes ``buf[a:b]`` of the current line."""
        if self.long:
            if self.first is None:
                self.tail = (self.tail + buf[max(a, b - 16):b])[-16:]
            return
        bound = limit if self.first is None else _MAX_CUT_LINE
        if len(self.carry) + (b - a) <= bound:
            self.carry += buf[a:b]
            return
        self.long = True
        if self.first is None:
            self.carry = (self.carry + buf[a:min(b, a + bound)])[:bound]
            self.tail = buf[max(a, b - 16):b]
        else:
            self.carry = b""

    def end_line(self, limit: int) -> bytes | None:
        """The line just ended: True-ish bytes to look at, None when it was dropped."""
        line, long = self.carry, self.long
        self.carry, self.long = b"", False
        if self.first is None:
            if long:  # cut start line: what fits, then its version
                line = line + b" " + self.tail.rstrip(b"\r").rpartition(b" ")[2]
            self.first = line
            return line
        if long:
            return None
        if line in (b"", b"\r"):
            return line
        if line[:20].lower().startswith(_KEEP_WHEN_CUT) or self.kept_bytes + len(line) < limit:
            self.kept.append(line)
            self.kept_bytes += len(line) + 1
        return line

    def head(self) -> bytes:
        return b"\n".join([self.first or b"", *self.kept])


class _Reader:
    """Bytes of one direction -> message heads, bodies and ends (request or response side)."""

    __slots__ = ("after_gap", "base", "body", "buf", "conn", "cur", "cut", "cut_reason", "dir", "expect_state",
                 "handoff", "is_req", "last_ts", "lead_ts", "pos", "remaining", "scan", "state")

    def __init__(self, conn: Http1Connection, direction: int, is_req: bool) -> None:
        self.conn = conn
        self.dir = direction
        self.is_req = is_req
        self.buf = b""
        self.pos = 0
        self.base = 0  # stream offset of buf[0]
        self.lead_ts = 0  # ts of the chunk that brought buf[pos]
        self.last_ts = 0  # ts of the last chunk
        self.state = S_HEAD
        self.cur: _Exchange | None = None
        self.body: Body | None = None
        self.remaining = 0
        self.scan = 0
        self.handoff = False
        self.after_gap = False
        self.cut: _CutHead | None = None
        self.cut_reason: str | None = None  # set while the head being dispatched was cut
        self.expect_state = S_HEAD  # S_EXPECT: the body framing to resume if the refused body comes anyway

    # -- input ------------------------------------------------------------------------------------
    def feed(self, data: bytes, ts: int) -> None:
        self.last_ts = ts
        st = self.state
        if st == S_STOPPED:
            self.base += len(self.buf) + len(data)
            self.buf = b""
            self.pos = 0
            return
        if st == S_RESYNC:
            self.base += len(self.buf)
            self.buf = b""
            self.pos = 0
            ok = looks_like_request(data) if self.is_req else looks_like_response(data)
            if not ok:
                self.base += len(data)
                return
            self.state = S_HEAD
            self.after_gap = True
        pos = self.pos
        old = self.buf
        if pos < len(old):
            self.base += pos
            buf = old[pos:] + data
            boundary = len(old) - pos
            self.scan = self.scan - pos if self.scan > pos else 0
        else:
            self.base += len(old)
            buf = data
            boundary = 0
            self.lead_ts = ts
            self.scan = 0
        self.buf = buf
        self.pos = 0
        if self.state == S_PAUSED:
            if len(buf) > self.conn.limits.max_header_bytes * 4:
                self.conn.give_up(self.dir, "too much data sent while waiting for an Upgrade answer", ts)
            return
        self._run(ts, boundary)

    def _run(self, ts: int, boundary: int) -> None:
        buf = self.buf
        n = len(buf)
        pos = self.pos
        conn = self.conn
        while pos < n:
            st = self.state
            if st == S_HEAD:
                c = buf[pos]
                if c == 13 or c == 10:  # stray CRLF between messages (RFC 9112 2.2)
                    pos += 1
                    continue
                scan = self.scan if self.scan > pos else pos
                end = buf.find(b"\r\n\r\n", scan)
                if end >= 0:
                    e2 = buf.find(b"\n\n", scan, end)
                    if e2 >= 0:
                        end, hlen = e2, 2
                    else:
                        hlen = 4
                else:
                    end = buf.find(b"\n\n", scan)
                    hlen = 2
                    if end < 0:
                        if n - pos > conn.limits.max_header_bytes:
                            self._cut_head(pos, self.lead_ts if pos < boundary else ts, ts)
                            continue
                        self.scan = max(pos, n - 3)
                        break
                self.scan = 0
                if end - pos > conn.limits.max_header_bytes:
                    self._cut_head(pos, self.lead_ts if pos < boundary else ts, ts)
                    continue
                start_ts = self.lead_ts if pos < boundary else ts
                head = buf[pos:end]
                off = self.base + pos
                pos = end + hlen
                self.pos = pos
                if self.is_req:
                    conn.on_request_head(self, head, start_ts, ts, off)
                else:
                    conn.on_response_head(self, head, start_ts, ts, off)
                if self.state == S_STOPPED and not self.handoff:
                    pos = n
                    break
                continue
            if st == S_HEAD_CUT:
                pos = self._read_cut_head(buf, pos, n, ts)
                continue
            if st == S_EXPECT:
                # After a final answer to a 100-continue request: its body, or the next request?
                ok = looks_like_request(buf[pos:pos + _MAX_LINE])
                if ok is None:
                    break
                self.state = S_HEAD if ok else self.expect_state
                continue
            if st == S_LEN:
                take = n - pos
                rem = self.remaining
                if take >= rem:
                    if self.body is not None:
                        self.body.add_view(buf, pos, pos + rem)
                    pos += rem
                    self.remaining = 0
                    self.pos = pos
                    self._message_end(ts)
                    continue
                if self.body is not None:
                    self.body.add_view(buf, pos, n)
                self.remaining = rem - take
                pos = n
                break
            if st == S_CHUNK_SIZE:
                nl = buf.find(b"\n", pos, pos + _MAX_LINE)
                if nl < 0:
                    if n - pos >= _MAX_LINE:
                        self.pos = pos
                        conn.give_up(self.dir, "chunk size line too long", ts)
                        return
                    break
                line = buf[pos:nl]
                semi = line.find(b";")
                if semi >= 0:
                    line = line[:semi]
                line = line.strip(b" \t\r")
                if _HEX.fullmatch(line) is None:
                    self.pos = pos
                    conn.give_up(self.dir, f"invalid chunk size {line[:32]!r}", ts)
                    return
                size = int(line, 16)
                pos = nl + 1
                if size == 0:
                    self.state = S_TRAILERS
                else:
                    self.remaining = size
                    self.state = S_CHUNK_DATA
                continue
            if st == S_CHUNK_DATA:
                take = n - pos
                rem = self.remaining
                if take >= rem:
                    if self.body is not None:
                        self.body.add_view(buf, pos, pos + rem)
                    pos += rem
                    self.remaining = 0
                    self.state = S_CHUNK_CRLF
                    continue
                if self.body is not None:
                    self.body.add_view(buf, pos, n)
                self.remaining = rem - take
                pos = n
                break
            if st == S_CHUNK_CRLF:
                c = buf[pos]
                if c == 10:
                    pos += 1
                elif c == 13:
                    if pos + 1 >= n:
                        break
                    if buf[pos + 1] != 10:
                        self.pos = pos
                        conn.give_up(self.dir, "missing CRLF after chunk data", ts)
                        return
                    pos += 2
                else:
                    self.pos = pos
                    conn.give_up(self.dir, "missing CRLF after chunk data", ts)
                    return
                self.state = S_CHUNK_SIZE
                continue
            if st == S_TRAILERS:
                c = buf[pos]
                if c == 13 or c == 10:
                    if c == 13:
                        if pos + 1 >= n:
                            break
                        if buf[pos + 1] != 10:
                            self.pos = pos
                            conn.give_up(self.dir, "malformed trailer section", ts)
                            return
                        pos += 2
                    else:
                        pos += 1
                    self.pos = pos
                    self._message_end(ts)
                    continue
                end = buf.find(b"\r\n\r\n", pos)
                hlen = 4
                if end < 0:
                    end = buf.find(b"\n\n", pos)
                    hlen = 2
                    if end < 0:
                        if n - pos > conn.limits.max_header_bytes:
                            self.pos = pos
                            conn.give_up(self.dir, "trailer section too large", ts)
                            return
                        break
                tr = _header_list(_decode_head(b"\n" + buf[pos:end]))
                if tr is None:
                    self.pos = pos
                    conn.give_up(self.dir, "malformed trailer line", ts)
                    return
                if self.cur is not None:
                    if self.is_req:
                        self.cur.req_trailers = tr
                    else:
                        self.cur.resp_trailers = tr
                pos = end + hlen
                self.pos = pos
                self._message_end(ts)
                continue
            if st == S_CLOSE:
                if self.body is not None:
                    self.body.add_view(buf, pos, n)
                pos = n
                break
            if st == S_STOPPED:
                if self.handoff:
                    conn.handoff(self.dir, buf[pos:], ts)
                    self.handoff = False
                pos = n
                break
            # S_PAUSED: keep the bytes until the Upgrade answer; S_RESYNC: drop the rest of the chunk
            if st == S_RESYNC:
                pos = n
            break
        if pos >= n and self.state != S_PAUSED:
            # Everything consumed: drop the chunk now rather than at the next feed, so an idle keep-alive
            # connection does not hold its last request or response (bodies keep their own references).
            self.base += n
            self.buf = b""
            pos = 0
        self.pos = pos

    def _cut_head(self, pos: int, start_ts: int, ts: int) -> None:
        """The head starting at ``pos`` is over the limit: report it, then read it on line by line."""
        limit = self.conn.limits.max_header_bytes
        off = self.base + pos
        self.conn._error(self.dir, f"message head larger than {limit} bytes (limit max_header_bytes): header "
                         "lines past the limit are not reported", off, ts)
        self.cut = _CutHead(off, start_ts)
        self.state = S_HEAD_CUT
        self.scan = 0

    def _read_cut_head(self, buf: bytes, pos: int, n: int, ts: int) -> int:
        cut = self.cut
        assert cut is not None
        limit = self.conn.limits.max_header_bytes
        while pos < n:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                cut.take(buf, pos, n, limit)
                return n
            cut.take(buf, pos, nl, limit)
            pos = nl + 1
            line = cut.end_line(limit)
            if line in (b"", b"\r") and cut.first is not None and line is not cut.first:
                # End of the head: the message goes on as if its head had been whole, marked cut.
                self.cut = None
                self.state = S_HEAD
                self.cut_reason = (f"message head larger than {limit} bytes (limit max_header_bytes): header "
                                   "lines past the limit were dropped")
                self.pos = pos
                if self.is_req:
                    self.conn.on_request_head(self, cut.head(), cut.start_ts, ts, cut.off)
                else:
                    self.conn.on_response_head(self, cut.head(), cut.start_ts, ts, cut.off)
                self.cut_reason = None
                return pos
        return pos

    def _message_end(self, ts: int) -> None:
        self.state = S_HEAD
        body = self.body
        self.body = None
        cur = self.cur
        self.cur = None
        if self.is_req:
            self.conn.on_request_end(self, cur, body, ts)
        else:
            self.conn.on_response_end(self, cur, body, ts)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def leftover(self) -> int:
        return len(self.buf) - self.pos

    def resync(self) -> None:
        self.state = S_RESYNC
        self.cut = None
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        self.cur = None
        self.body = None
        self.scan = 0

    def stop(self) -> None:
        self.state = S_STOPPED
        self.cut = None
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0


class Http1Connection:
    """Both directions of one HTTP/1 connection. ``client_dir`` is the direction carrying requests."""

    protocol = "http1"
    # Slots: one of these lives as long as its connection (10k idle keep-alive connections are 10k of them).
    __slots__ = ("client_dir", "dead", "headers", "limits", "out", "paused", "queue", "readers", "scheme",
                 "server_dir", "switch_to")

    def __init__(self, limits: Limits, client_dir: int, *, scheme: str | None = None,
                 resync: tuple[bool, bool] = (False, False)) -> None:
        self.limits = limits
        self.client_dir = client_dir
        self.server_dir = 1 - client_dir
        self.scheme = scheme
        req = _Reader(self, client_dir, True)
        resp = _Reader(self, 1 - client_dir, False)
        self.readers = [req, resp] if client_dir == 0 else [resp, req]
        for d in (0, 1):
            if resync[d]:
                self.readers[d].state = S_RESYNC
        # Requests waiting for (the end of) their response. A list, not a deque: it holds at most
        # limits.max_pending_requests, and an empty deque costs ~600 bytes per idle connection.
        self.queue: list[_Exchange] = []
        self.out: list[object] = []
        self.switch_to: Http2Connection | None = None
        self.paused: _Exchange | None = None
        self.dead = False
        self.headers = limits.headers  # False: header lists are not built (see _parse_start)

    # -- parking -----------------------------------------------------------------------------------
    def at_rest(self) -> bool:
        """Between exchanges with nothing held: a new parser with the same stream offsets would go on
        exactly as this one (ProtocolSession parks an idle keep-alive connection's parser this way)."""
        if self.queue or self.out or self.paused is not None or self.dead or self.switch_to is not None:
            return False
        for r in self.readers:
            if (r.state != S_HEAD or r.buf or r.cur is not None or r.body is not None or r.cut is not None
                    or r.after_gap or r.handoff):
                return False
        return True

    def offsets(self) -> tuple[int, int, int, int]:
        """(base, last_ts) of direction 0 then 1: what a parser at rest carries into the next exchange."""
        a, b = self.readers
        return a.base, a.last_ts, b.base, b.last_ts

    @classmethod
    def resume(cls, limits: Limits, client_dir: int, scheme: str | None, offsets: tuple[int, int, int, int]
               ) -> Http1Connection:
        """A parser parked by its session at rest (``at_rest``), back with its stream offsets."""
        h = cls(limits, client_dir, scheme=scheme)
        a, b = h.readers
        a.base, a.last_ts, b.base, b.last_ts = offsets
        return h

    # -- public ------------------------------------------------------------------------------------
    def feed(self, direction: int, data: bytes, ts: int) -> list[object]:
        self.readers[direction].feed(data, ts)
        out = self.out
        if out:
            self.out = []
        else:
            out = []
        return out

    def gap(self, direction: int, nbytes: int, ts: int) -> list[object]:
        r = self.readers[direction]
        st = r.state
        if st != S_STOPPED and not self.dead:
            self._gap(r, nbytes, ts)
        r.base += nbytes
        out = self.out
        self.out = []
        return out

    def close(self, ts: int) -> list[object]:
        if not self.dead:
            resp = self.readers[self.server_dir]
            req = self.readers[self.client_dir]
            if resp.state == S_CLOSE and resp.cur is not None:
                resp._message_end(resp.last_ts)  # the close delimits this body
            for r in (resp, req):
                cur = r.cur
                if cur is None or r.state not in _BODY_STATES:
                    continue
                side = "request" if r.is_req else "response"
                cur.reasons.append(f"connection closed before the {side} body ended")
                if r.is_req:
                    cur.req_body = r.body
                    cur.req_done = True
                else:
                    cur.resp_body = r.body
                    cur.resp_done = True
                r.cur = None
                r.body = None
            if ((resp.state == S_HEAD and resp.leftover) or resp.state == S_HEAD_CUT) and self.queue:
                self.queue[0].reasons.append("connection closed inside the response head")
            self._flush(None)
            resp.stop()
            req.stop()
            self.dead = True
        out = self.out
        self.out = []
        return out

    # -- request side -------------------------------------------------------------------------------
    def on_request_head(self, r: _Reader, head: bytes, start_ts: int, ts: int, off: int) -> None:
        text = head.decode("latin-1")
        first, headers = _parse_head(head) if self.headers else _parse_start(head, text)
        method, _, rest = first.partition(" ")
        target, _, version = rest.rpartition(" ")
        if not method or not target or version[:7] != "HTTP/1." or headers is None:
            self._bad_message(r, "malformed request head" if headers is not None or not method
                              else "malformed header line", off, ts)
            return
        if len(self.queue) >= self.limits.max_pending_requests:
            self.give_up(r.dir, f"more than {self.limits.max_pending_requests} pipelined requests pending", ts)
            return
        ex = _Exchange()
        ex.method = method
        ex.version = version
        ex.req_headers = headers
        ex.req_start = start_ts
        ex.scheme = self.scheme
        if r.cut_reason:
            ex.reasons.append(r.cut_reason)
        if r.after_gap:
            ex.after_gap = True
            r.after_gap = False
        low = text.lower()
        if not target.isascii():
            target = _target_text(head)
        if target[0] == "/":
            ex.path = target
            host = _value(text, low, "\nhost:")
            if host is not None:
                ex.authority = host
        elif method == "CONNECT":
            ex.authority = target
        elif "://" in target:  # absolute-form (proxy requests)
            sch, _, rest2 = target.partition("://")
            ex.scheme = sch.lower()
            slash = rest2.find("/")
            if slash < 0:
                ex.authority, ex.path = rest2, "/"
            else:
                ex.authority, ex.path = rest2[:slash], rest2[slash:]
        else:
            ex.path = target  # asterisk-form (OPTIONS *) and oddities
        if self.limits.decode_bodies:
            ce = _value(text, low, "\ncontent-encoding:")
            if ce:
                ex.ce_req = ce
        if "\ntransfer-encoding:" in low:
            if not _is_chunked(low):
                self._bad_message(r, "request Transfer-Encoding without final chunked coding", off, ts)
                return
            r.state = S_CHUNK_SIZE
            r.body = Body(self.limits.max_body_bytes)
        elif "\ncontent-length:" in low:
            cl = _content_length(low)
            if cl is None:
                self._bad_message(r, "invalid Content-Length", off, ts)
                return
            if cl > 0:
                r.state = S_LEN
                r.remaining = cl
                r.body = Body(self.limits.max_body_bytes)
        if method == "CONNECT" or "\nupgrade:" in low:
            ex.wants_upgrade = True
        if r.state != S_HEAD and "\nexpect:" in low:
            exp = _value(text, low, "\nexpect:")
            ex.expect_continue = exp is not None and exp.strip(_WS) == "100-continue"
        self.queue.append(ex)
        if r.state == S_HEAD:  # no body: the request ends with its head
            ex.req_end = ts
            ex.req_done = True
            if ex.wants_upgrade:
                r.state = S_PAUSED
                self.paused = ex
        else:
            r.cur = ex

    def on_request_end(self, r: _Reader, ex: _Exchange | None, body: Body | None, ts: int) -> None:
        if ex is None:
            return
        ex.req_body = body
        ex.req_end = ts
        ex.req_done = True
        if ex.wants_upgrade and not ex.resp_done:
            r.state = S_PAUSED
            self.paused = ex
        if ex.resp_done:
            self._emit(ex)

    # -- response side ------------------------------------------------------------------------------
    def on_response_head(self, r: _Reader, head: bytes, start_ts: int, ts: int, off: int) -> None:
        text = head.decode("latin-1")
        first, headers = _parse_head(head) if self.headers else _parse_start(head, text)
        version, _, rest = first.partition(" ")
        code, _, _reason = rest.partition(" ")
        if version[:7] != "HTTP/1." or len(code) != 3 or not (code.isascii() and code.isdigit()) or headers is None:
            self._bad_message(r, "malformed status line" if headers is not None else "malformed header line",
                              off, ts)
            return
        status = int(code)
        queue = self.queue
        ex: _Exchange | None = None
        if queue:
            if r.after_gap:
                ex = self._pair_after_gap(start_ts)
            elif queue[0].after_gap and queue[0].req_start is not None and start_ts < queue[0].req_start:
                ex = None  # answer to a request lost in a gap
            else:
                ex = queue[0]
        r.after_gap = False
        if ex is None:
            ex = _Exchange()
            ex.req_done = True
            ex.scheme = self.scheme
            ex.reasons.append("request not seen (capture started mid-connection or request lost)")
            queue.insert(0, ex)
        if r.cut_reason:
            ex.reasons.append(r.cut_reason)
        if 100 <= status < 200 and status != 101:
            ex.informational.append(status)
            return
        ex.status = status
        ex.resp_version = version
        ex.resp_headers = headers
        ex.resp_start = start_ts
        low = text.lower()
        if self.limits.decode_bodies:
            ce = _value(text, low, "\ncontent-encoding:")
            if ce:
                ex.ce_resp = ce
        r.cur = ex
        method = ex.method
        if status == 101:
            up = _value(text, low, "\nupgrade:")
            ex.upgrade = up.strip().lower() if up else "unknown"
            self._response_done(r, ex, None, ts)
            self._switch(r, ex, ts)
            return
        if method == "CONNECT" and 200 <= status < 300:
            ex.upgrade = "tunnel"
            self._response_done(r, ex, None, ts)
            self._switch(r, ex, ts)
            return
        if method == "HEAD" or status == 204 or status == 304:
            self._response_done(r, ex, None, ts)
            return
        if "\ntransfer-encoding:" in low:
            r.body = Body(self.limits.max_body_bytes)
            r.state = S_CHUNK_SIZE if _is_chunked(low) else S_CLOSE
            return
        cl = _content_length(low)
        if cl is None:
            self._bad_message(r, "invalid Content-Length", off, ts)
            return
        if cl == 0:
            self._response_done(r, ex, None, ts)
            return
        r.body = Body(self.limits.max_body_bytes)
        if cl > 0:
            r.state = S_LEN
            r.remaining = cl
        else:
            r.state = S_CLOSE

    def _pair_after_gap(self, start_ts: int) -> _Exchange | None:
        """After a gap in the response stream: answer the newest request sent before this response."""
        queue = self.queue
        pick = None
        for ex in queue:
            if ex.req_start is not None and ex.req_start <= start_ts:
                pick = ex
        if pick is None:
            return None
        while queue[0] is not pick:
            old = queue.pop(0)
            old.reasons.append("response lost in a gap")
            old.resp_done = True
            if old.req_done:
                self._emit(old)
        return pick

    def _response_done(self, r: _Reader, ex: _Exchange, body: Body | None, ts: int) -> None:
        r.cur = None
        r.body = None
        r.state = S_HEAD
        self.on_response_end(r, ex, body, ts)

    def on_response_end(self, r: _Reader, ex: _Exchange | None, body: Body | None, ts: int) -> None:
        if ex is None:
            return
        ex.resp_body = body
        ex.resp_end = ts
        ex.resp_done = True
        if ex.expect_continue and not ex.req_done and ex.status is not None and ex.status >= 200:
            self._refused_before_body(ex, ts)
        queue = self.queue
        if queue and queue[0] is ex:
            del queue[0]
        if self.paused is ex and ex.upgrade is None:
            # Upgrade declined: the request side goes on as HTTP/1
            self.paused = None
            req = self.readers[self.client_dir]
            if req.state == S_PAUSED:
                req.state = S_HEAD
                if req.leftover:
                    req._run(ts, 0)
        if ex.req_done:
            self._emit(ex)

    def _refused_before_body(self, ex: _Exchange, ts: int) -> None:
        """A final answer to an ``Expect: 100-continue`` request whose body has not begun (RFC 9110
        10.1.1): the request ends without its body and the exchange is reported. The client may still
        send the body or close; the request reader decides on the next bytes (S_EXPECT)."""
        req = self.readers[self.client_dir]
        body = req.body
        if req.cur is not ex or (body is not None and body.size > 0):
            return  # the body has begun: it goes on to its end as framed
        ex.req_body = None
        ex.req_end = ex.req_start if ex.req_start is not None else ts
        ex.req_done = True
        req.cur = None
        req.body = None
        req.expect_state = req.state
        req.state = S_EXPECT

    def _switch(self, r: _Reader, ex: _Exchange, ts: int) -> None:
        req = self.readers[self.client_dir]
        self.paused = None
        if ex.upgrade == "h2c":
            from qtap_async.protocols.http2 import Http2Connection

            h2 = Http2Connection(self.limits, client_dir=self.client_dir, upgraded=True)
            h2.seed_upgrade(ex.method or "GET", ex.path, ex.authority, ex.req_headers, ex.req_body,
                            ex.req_start, ex.req_end)
            self.switch_to = h2
            held = req.buf[req.pos :] if req.state == S_PAUSED else b""
            req.stop()
            r.state = S_STOPPED
            r.handoff = True
            if held:
                self.out.extend(h2.feed(self.client_dir, held, ts))
        else:
            req.stop()
            r.state = S_STOPPED

    def handoff(self, direction: int, data: bytes, ts: int) -> None:
        if self.switch_to is not None and data:
            self.out.extend(self.switch_to.feed(direction, data, ts))

    # -- emission -----------------------------------------------------------------------------------
    def _emit(self, ex: _Exchange) -> None:
        if ex.emitted:
            return
        ex.emitted = True
        self.out.append(self._build(ex))

    def _build(self, ex: _Exchange) -> HttpTransaction:
        rb = ex.req_body
        sb = ex.resp_body
        req_body = rb.data() if rb is not None else b""
        resp_body = sb.data() if sb is not None else b""
        reasons = ex.reasons
        if rb is not None and rb.gap:
            reasons.append(f"{rb.gap} request body bytes lost in a gap")
        if sb is not None and sb.gap:
            reasons.append(f"{sb.gap} response body bytes lost in a gap")
        req_dec = resp_dec = None
        dec_err = None
        if ex.ce_req is not None and rb is not None:
            req_dec, dec_err = decode_content(req_body, ex.ce_req, self.limits.max_decoded_body_bytes,
                                              rb.truncated)
        if ex.ce_resp is not None and sb is not None:
            resp_dec, e2 = decode_content(resp_body, ex.ce_resp, self.limits.max_decoded_body_bytes,
                                          sb.truncated)
            dec_err = dec_err or e2
        version = ex.version or ex.resp_version
        return HttpTransaction(  # positional: see the field order in events/http.py
            "http/1.0" if version == "HTTP/1.0" else "http/1.1",  # protocol
            self.client_dir,  # client_direction
            ex.method,  # method
            ex.path,  # path
            ex.authority,  # authority
            ex.scheme,  # scheme
            ex.status,  # status
            ex.req_headers or [],  # request_headers
            ex.resp_headers or [],  # response_headers
            ex.req_trailers or [],  # request_trailers
            ex.resp_trailers or [],  # response_trailers
            req_body,  # request_body
            rb.size if rb is not None else 0,  # request_body_size
            rb is not None and rb.kept < rb.size,  # request_body_truncated
            resp_body,  # response_body
            sb.size if sb is not None else 0,  # response_body_size
            sb is not None and sb.kept < sb.size,  # response_body_truncated
            req_dec,  # request_body_decoded
            resp_dec,  # response_body_decoded
            dec_err,  # body_decode_error
            ex.req_start,  # request_start_ns
            ex.req_end,  # request_end_ns
            ex.resp_start,  # response_start_ns
            ex.resp_end,  # response_end_ns
            None,  # stream_id
            ex.informational,  # informational
            ex.upgrade,  # upgrade
            None,  # grpc
            bool(reasons),  # incomplete
            "; ".join(reasons) if reasons else None,  # reason
        )

    # -- failures -----------------------------------------------------------------------------------
    def _error(self, direction: int, reason: str, off: int, ts: int) -> None:
        self.out.append(ParseError(reason=reason, direction=direction, offset=off, ts_ns=ts, protocol="http1"))

    def _bad_message(self, r: _Reader, reason: str, off: int, ts: int) -> None:
        """A message head that cannot be parsed: report it and resynchronize that direction."""
        self._error(r.dir, reason, off, ts)
        cur = r.cur
        if r.is_req:
            if cur is not None and not cur.req_done:
                cur.reasons.append(reason)
                self.on_request_end(r, cur, r.body, ts)
        elif self.queue:
            ex = self.queue[0]
            ex.reasons.append(f"response unreadable: {reason}")
            self.on_response_end(r, ex, None, ts)
        r.resync()
        r.after_gap = True

    def _gap(self, r: _Reader, n: int, ts: int) -> None:
        st = r.state
        off = r.base + len(r.buf)
        body = r.body
        if st in (S_LEN, S_CHUNK_DATA):
            if n < r.remaining or (st == S_LEN and n == r.remaining):
                if body is not None:
                    body.add_gap(n)
                r.remaining -= n
                if r.remaining == 0:
                    r._message_end(ts)
                return
        elif st == S_CLOSE:
            if body is not None:
                body.add_gap(n)
            return
        elif st == S_RESYNC:
            return
        # the framing is lost
        self._error(r.dir, f"gap of {n} bytes broke the message framing; resynchronizing", off, ts)
        cur = r.cur
        if cur is not None:
            if body is not None:
                body.add_gap(n)
            if r.is_req:
                cur.reasons.append("request cut by a gap")
                self.on_request_end(r, cur, body, ts)
            else:
                cur.reasons.append("response cut by a gap")
                self.on_response_end(r, cur, body, ts)
        elif st == S_PAUSED and self.paused is not None:
            self.paused.reasons.append("gap while waiting for the Upgrade answer")
            self.paused = None
        r.resync()

    def give_up(self, direction: int, reason: str, ts: int) -> None:
        """Stop parsing the connection: report the reason and every unfinished exchange."""
        r = self.readers[direction]
        self._error(direction, reason, r.base + r.pos, ts)
        for rd in self.readers:
            if rd.cur is not None and not rd.cur.emitted:
                rd.cur.reasons.append(reason)
        self._flush(reason)
        for rd in self.readers:
            rd.stop()
        self.dead = True

    def _flush(self, reason: str | None) -> None:
        """Emit every exchange not emitted yet, with ``reason`` (or why it is unfinished)."""
        pending: list[_Exchange] = list(self.queue)
        req = self.readers[self.client_dir]
        if req.cur is not None and req.cur not in pending:
            pending.insert(0, req.cur)
        self.queue.clear()
        for ex in pending:
            if ex.emitted:
                continue
            if reason is not None:
                if reason not in ex.reasons:
                    ex.reasons.append(reason)
            elif not ex.reasons:
                if not ex.req_done:
                    ex.reasons.append("connection closed before the request ended")
                elif ex.status is None:
                    ex.reasons.append("connection closed before the response")
                else:
                    ex.reasons.append("connection closed before the response ended")
            self._emit(ex)
