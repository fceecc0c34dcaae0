"""HTTP/2 (RFC 9113) frames, HPACK state per direction, streams -> transactions; gRPC on top.

One ``Http2Connection`` per connection, fed the byte streams of both directions. Each direction has
a frame reader and an HPACK decoder. Frames are parsed from the buffer with one precompiled
``struct.Struct``; DATA payloads are streamed (a frame need not be complete to be consumed) and only
the body bytes kept are copied. Header blocks (HEADERS/PUSH_PROMISE + CONTINUATION, PADDED and
PRIORITY flags handled) are always HPACK-decoded, even for streams that are not tracked, so the
decoder state stays right.

Each stream keeps one half per direction; which half is the request is known from the client
preface, else from the pseudo-headers (``:method`` / ``:status``), else from who sent HEADERS
first. A stream is emitted when both halves ended (END_STREAM), when it is reset (RST_STREAM),
refused by GOAWAY, or when the connection closes (then ``incomplete``). Flow control is ignored:
an observer sees what was sent.

Capture that starts mid-connection (no preface, detected from plausible frames or ALPN) or resumes
after a gap: the HPACK decoder runs in unknown-tail mode (see ``hpack``), header fields that cannot
be decoded are counted and the transaction is flagged, never completed with guesses.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from qtap_async.errors import ProtocolError
from qtap_async.events.http import GrpcInfo, HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.protocols.bodies import Body, decode_content
from qtap_async.protocols.grpc import MessageCounter, is_grpc, parse_grpc_message, split_path
from qtap_async.protocols.hpack import HpackDecoder
from qtap_async.protocols.limits import Limits

__all__ = ["PREFACE", "Http2Connection", "plausible_frames"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PUSH_PROMISE: Final = 5
PING: Final = 6
GOAWAY: Final = 7
WINDOW_UPDATE: Final = 8
CONTINUATION: Final = 9
F_END_STREAM: Final = 0x1
F_ACK: Final = 0x1
F_END_HEADERS: Final = 0x4
F_PADDED: Final = 0x8
F_PRIORITY: Final = 0x20

_HDR = struct.Struct(">BHBBI")
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")

ERROR_CODES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
    0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}

_MAX_CONTROL_FRAME: Final = 65536
R_PREFACE: Final = 0
R_FRAME: Final = 1
R_DATA: Final = 2
R_SKIP: Final = 3
R_RESYNC: Final = 4
R_DEAD: Final = 5
R_MAYBE_PREFACE: Final = 6


def _err_name(code: int) -> str:
    return ERROR_CODES.get(code, f"0x{code:x}")


def _frame_ok(length: int, typ: int, flags: int, sid_raw: int) -> bool:
    if sid_raw & 0x80000000:
        return False
    sid = sid_raw
    if typ in (SETTINGS, PING, GOAWAY):
        if sid != 0:
            return False
        if typ == SETTINGS:
            return length % 6 == 0 and flags & ~F_ACK == 0 and (not flags or length == 0)
        if typ == PING:
            return length == 8 and flags & ~F_ACK == 0
        return length >= 8 and flags == 0
    if typ == WINDOW_UPDATE:
        return length == 4 and flags == 0
    if sid == 0 or typ > CONTINUATION:
        return False
    if typ == DATA:
        return flags & ~(F_END_STREAM | F_PADDED) == 0 and length <= 1 << 20
    if typ == HEADERS:
        return flags & ~(F_END_STREAM | F_END_HEADERS | F_PADDED | F_PRIORITY) == 0 and length <= 1 << 20
    if typ == PRIORITY:
        return length == 5 and flags == 0
    if typ == RST_STREAM:
        return length == 4 and flags == 0
    if typ == PUSH_PROMISE:
        return flags & ~(F_END_HEADERS | F_PADDED) == 0 and 4 <= length <= 1 << 20
    return flags & ~F_END_HEADERS == 0 and length <= 1 << 20  # CONTINUATION


def plausible_frames(data: bytes, *, need_two: bool = True) -> bool | None:
    """Does ``data`` start with HTTP/2 frames? None: not enough bytes to tell.

    Used to pick up a connection mid-stream (no preface) and to resynchronize after a gap: the first
    frame header must be valid for its type and, with ``need_two``, so must the next one.
    """
    n = len(data)
    if n < 9:  # judge the part of the header we have
        if (n and data[0] > 0x10) or (n > 3 and data[3] > CONTINUATION) or (n > 5 and data[5] & 0x80):
            return False
        return None
    hi, lo, typ, flags, sid = _HDR.unpack_from(data, 0)
    length = (hi << 16) | lo
    if not _frame_ok(length, typ, flags, sid):
        return False
    nxt = 9 + length
    if nxt + 9 > n:
        if not need_two and nxt == n:
            return True
        return None
    hi, lo, typ, flags, sid = _HDR.unpack_from(data, nxt)
    return _frame_ok((hi << 16) | lo, typ, flags, sid)


class _Half:
    """What one direction sent on a stream."""

    __slots__ = ("body", "ce", "end_ts", "ended", "grpc", "headers", "informational", "missing", "pseudo",
                 "start_ts", "started", "trailers")

    def __init__(self) -> None:
        self.started = False
        self.ended = False
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.pseudo: dict[str, str] = {}
        self.body: Body | None = None
        self.start_ts: int | None = None
        self.end_ts: int | None = None
        self.informational: list[int] = []
        self.missing = 0
        self.grpc: MessageCounter | None = None
        self.ce: str | None = None


class _Stream:
    __slots__ = ("first_dir", "halves", "id", "partial", "promise", "promised_by", "promiser", "reasons", "reset")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.halves = (_Half(), _Half())
        self.first_dir: int | None = None
        self.reasons: list[str] = []
        self.partial = False
        self.promise: _Half | None = None
        self.promiser: int | None = None
        self.promised_by: int | None = None  # the stream whose PUSH_PROMISE announced this one
        self.reset: tuple[int, int] | None = None


class _Reader:
    __slots__ = ("base", "buf", "cont", "cont_size", "d_end_stream", "d_left", "d_pad", "d_sid", "dir",
                 "expect_settings", "lead_ts", "pos", "skip_left", "state")

    def __init__(self, direction: int, state: int) -> None:
        self.dir = direction
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.lead_ts = 0
        self.state = state
        # pending header block: (kind HEADERS|PUSH_PROMISE, sid, fragments, flags, start_ts, promised sid)
        self.cont: tuple[int, int, list[bytes], int, int, int] | None = None
        self.cont_size = 0  # bytes in cont's fragments, kept as they arrive (see CONTINUATION)
        self.d_sid = 0
        self.d_left = 0  # DATA payload bytes still to come (body + padding)
        self.d_pad = 0  # padding at the end of the current DATA frame
        self.d_end_stream = False
        self.skip_left = 0
        self.expect_settings = False  # a connection's first frame in each direction is SETTINGS


class Http2Connection:
    """Both directions of one HTTP/2 connection.

    ``client_dir``: the direction that sent the client preface, if known. ``known``: whether each
    direction is seen from its start (HPACK state known). ``upgraded``: the connection came from an
    HTTP/1.1 ``Upgrade: h2c`` (stream 1 is the upgraded request, seeded with ``seed_upgrade``).
    """

    protocol = "http2"
    switch_to = None

    def __init__(self, limits: Limits, *, client_dir: int | None = None, upgraded: bool = False,
                 known: tuple[bool, bool] = (True, True), alpn: str | None = None,
                 expect_preface: bool = True) -> None:
        self.limits = limits
        self.client_dir = client_dir
        self.upgraded = upgraded
        self.alpn = alpn
        # mid-connection (roles unknown): a direction may still turn out to start with the preface
        first = R_FRAME if client_dir is not None else R_MAYBE_PREFACE
        self.readers = (_Reader(0, first), _Reader(1, first))
        if client_dir is not None and expect_preface:
            self.readers[client_dir].state = R_PREFACE
        for d in (0, 1):
            self.readers[d].expect_settings = known[d]
        self.decoders = tuple(
            HpackDecoder(known=known[d], max_table_bytes=limits.max_hpack_table_bytes,
                         max_decoded_bytes=2 * limits.max_header_bytes)
            for d in (0, 1)
        )
        self.streams: dict[int, _Stream] = {}
        self.max_sid = [0, 0]  # highest stream id seen: [even, odd]
        self.recent: deque[int] = deque(maxlen=1024)  # recently emitted stream ids (mid-connection mode)
        self.recent_set: set[int] = set()
        self.out: list[object] = []
        self.dead = False
        self.refused = 0
        self.goaway: str | None = None

    @property
    def mid_connection(self) -> bool:
        return self.decoders[0].unknown_tail or self.decoders[1].unknown_tail

    # -- public -------------------------------------------------------------------------------------
    def feed(self, direction: int, data: bytes, ts: int) -> list[object]:
        if not self.dead:
            r = self.readers[direction]
            st = r.state
            if st == R_RESYNC:
                r.base += len(r.buf)
                r.buf = b""
                r.pos = 0
                if plausible_frames(data, need_two=False):
                    r.state = R_FRAME
                    self._run(r, data, ts)
                else:
                    r.base += len(data)
            elif st != R_DEAD:
                self._run(r, data, ts)
            else:
                r.base += len(data)
        out = self.out
        self.out = []
        return out

    def gap(self, direction: int, nbytes: int, ts: int) -> list[object]:
        r = self.readers[direction]
        if not self.dead and r.state != R_DEAD:
            self._gap(r, nbytes, ts)
        r.base += nbytes
        out = self.out
        self.out = []
        return out

    def close(self, ts: int) -> list[object]:
        if not self.dead:
            reason = "connection closed before the stream ended"
            if self.goaway:
                reason = f"connection closed after {self.goaway}"
            for st in list(self.streams.values()):
                st.reasons.append(reason)
                self._emit(st)
            for r in self.readers:
                if r.state == R_PREFACE and r.buf:
                    self._error(r.dir, "connection closed inside the client preface", r.base, ts)
                # A stream cut inside a frame (a truncated or lying frame length) is reported, not
                # left unaccounted: the bytes after the last whole frame were never parsed.
                elif r.state == R_SKIP and r.skip_left:
                    self._error(r.dir, f"connection closed {r.skip_left} bytes short of a frame's end",
                                r.base + r.pos, ts)
                elif r.state == R_FRAME and len(r.buf) > r.pos:
                    self._error(r.dir, f"connection closed inside a frame ({len(r.buf) - r.pos} bytes of it)",
                                r.base + r.pos, ts)
                elif r.cont is not None:
                    self._error(r.dir, "connection closed inside a header block", r.base + r.pos, ts)
            if self.refused > 1:
                self._error(None, f"{self.refused} streams were not tracked (max_concurrent_streams)", 0, ts)
            self.dead = True
        out = self.out
        self.out = []
        return out

    def seed_upgrade(self, method: str, path: str | None, authority: str | None,
                     headers: list[tuple[str, str]], body: Body | None, start: int | None,
                     end: int | None) -> None:
        """Stream 1 of an h2c upgrade: the HTTP/1.1 request that asked for it (RFC 7540 3.2)."""
        st = _Stream(1)
        h = st.halves[self.client_dir or 0]
        h.started = h.ended = True
        h.pseudo = {":method": method, ":scheme": "http"}
        if path is not None:
            h.pseudo[":path"] = path
        if authority is not None:
            h.pseudo[":authority"] = authority
        drop = {"connection", "upgrade", "http2-settings", "host"}
        h.headers = [(k, v) for k, v in headers if k.lower() not in drop]
        h.body = body
        h.start_ts = start
        h.end_ts = end
        st.first_dir = self.client_dir
        self.streams[1] = st
        self.max_sid[1] = 1

    # -- frames -------------------------------------------------------------------------------------
    def _run(self, r: _Reader, data: bytes, ts: int) -> None:
        old = r.buf
        pos = r.pos
        if pos < len(old):
            r.base += pos
            buf = old[pos:] + data
            boundary = len(old) - pos
        else:
            r.base += len(old)
            buf = data
            boundary = 0
            r.lead_ts = ts
        r.buf = buf
        pos = 0
        n = len(buf)
        d = r.dir
        unpack = _HDR.unpack_from
        while pos < n:
            state = r.state
            if state == R_FRAME:
                if n - pos < 9:
                    break
                hi, lo, typ, flags, sid = unpack(buf, pos)
                length = (hi << 16) | lo
                sid &= 0x7FFFFFFF
                if r.expect_settings:
                    if typ != SETTINGS or sid != 0:
                        r.pos = pos
                        self._give_up(r, "connection preface is not a SETTINGS frame: not HTTP/2", ts)
                        return
                    r.expect_settings = False
                end = pos + 9 + length
                if end <= n:
                    start_ts = r.lead_ts if pos < boundary else ts
                    if r.cont is not None and typ != CONTINUATION:
                        r.pos = pos
                        self._give_up(r, "frame interleaved in a header block (expected CONTINUATION)", ts)
                        return
                    if typ == DATA:
                        self._data_frame(r, sid, flags, buf, pos + 9, end, ts, start_ts)
                    else:
                        self._frame(r, typ, flags, sid, buf, pos + 9, end, ts, start_ts)
                        if r.state == R_DEAD or self.dead:
                            return
                    pos = end
                    continue
                # frame not complete in the buffer
                if typ == DATA and length > 0:
                    if r.cont is not None:
                        r.pos = pos
                        self._give_up(r, "DATA frame inside a header block", ts)
                        return
                    if flags & F_PADDED:
                        if n - pos < 10:
                            break
                        pad = buf[pos + 9]
                        body_start = pos + 10
                    else:
                        pad = 0
                        body_start = pos + 9
                    if pad > end - body_start:
                        r.pos = pos
                        self._give_up(r, "DATA padding longer than the frame", ts)
                        return
                    r.d_sid = sid
                    r.d_left = end - body_start
                    r.d_pad = pad
                    r.d_end_stream = bool(flags & F_END_STREAM)
                    start_ts = r.lead_ts if pos < boundary else ts
                    self._data_start(d, sid, start_ts)
                    r.state = R_DATA
                    pos = body_start
                    continue
                limit = (self.limits.max_header_bytes if typ in (HEADERS, CONTINUATION, PUSH_PROMISE)
                         else _MAX_CONTROL_FRAME)
                if length > limit:
                    if typ in (HEADERS, CONTINUATION, PUSH_PROMISE):
                        r.pos = pos
                        self._give_up(r, f"header block larger than {limit} bytes", ts)
                        return
                    r.skip_left = 9 + length
                    r.state = R_SKIP
                    continue
                break
            if state == R_DATA:
                left = r.d_left
                take = n - pos
                if take > left:
                    take = left
                body_bytes = left - r.d_pad  # body bytes still to come in this frame
                if body_bytes > 0:
                    bend = pos + (take if take < body_bytes else body_bytes)
                    self._data_bytes(d, r.d_sid, buf, pos, bend)
                pos += take
                left -= take
                r.d_left = left
                if left == 0:
                    r.state = R_FRAME
                    if r.d_end_stream:
                        self._end_half(d, r.d_sid, ts)
                continue
            if state == R_SKIP:
                take = min(n - pos, r.skip_left)
                pos += take
                r.skip_left -= take
                if r.skip_left == 0:
                    r.state = R_FRAME
                continue
            if state in (R_PREFACE, R_MAYBE_PREFACE):
                have = min(n - pos, 24)
                if buf[pos : pos + have] != PREFACE[:have]:
                    if state == R_MAYBE_PREFACE:
                        r.state = R_FRAME
                        continue
                    r.pos = pos
                    self._give_up(r, "missing HTTP/2 client preface", ts)
                    return
                if have < 24:
                    break
                pos += 24
                r.state = R_FRAME
                if self.client_dir is None:
                    self.client_dir = d
                continue
            # R_RESYNC / R_DEAD
            pos = n
            break
        r.pos = pos

    def _frame(self, r: _Reader, typ: int, flags: int, sid: int, buf: bytes, start: int, end: int, ts: int,
               start_ts: int) -> None:
        d = r.dir
        if typ == HEADERS:
            if sid == 0:
                self._give_up(r, "HEADERS on stream 0", ts)
                return
            if flags & F_PADDED:
                if start >= end:
                    self._give_up(r, "HEADERS frame too short for its padding", ts)
                    return
                pad = buf[start]
                start += 1
                end -= pad
            if flags & F_PRIORITY:
                start += 5
            if end < start:
                self._give_up(r, "HEADERS padding/priority longer than the frame", ts)
                return
            frag = buf[start:end]
            if flags & F_END_HEADERS:
                self._header_block(r, HEADERS, sid, frag, flags, ts, start_ts, 0)
            else:
                r.cont = (HEADERS, sid, [frag], flags, start_ts, 0)
        elif typ == CONTINUATION:
            cont = r.cont
            if cont is None or cont[1] != sid:
                self._give_up(r, "CONTINUATION without a header block in progress", ts)
                return
            cont[2].append(buf[start:end])
            # A running total: summing every fragment again per frame made a flood of tiny CONTINUATION
            # frames quadratic (20k frames held the agent's loop for seconds). The first CONTINUATION of a
            # block starts the total from the HEADERS/PUSH_PROMISE fragment.
            first = len(cont[2]) == 2
            r.cont_size = (len(cont[2][0]) if first else r.cont_size) + (end - start)
            size = r.cont_size
            if size > self.limits.max_header_bytes:
                self._give_up(r, f"header block larger than {self.limits.max_header_bytes} bytes", ts)
                return
            if flags & F_END_HEADERS:
                r.cont = None
                self._header_block(r, cont[0], sid, b"".join(cont[2]), cont[3], ts, cont[4], cont[5])
        elif typ == RST_STREAM:
            if end - start != 4 or sid == 0:
                self._give_up(r, "malformed RST_STREAM", ts)
                return
            code = _U32.unpack_from(buf, start)[0]
            st = self.streams.get(sid)
            if st is not None:
                st.reset = (d, code)
                self._emit(st)
        elif typ == SETTINGS:
            if sid != 0 or (end - start) % 6:
                self._give_up(r, "malformed SETTINGS", ts)
                return
        elif typ == PUSH_PROMISE:
            if flags & F_PADDED:
                if start >= end:
                    self._give_up(r, "PUSH_PROMISE too short", ts)
                    return
                pad = buf[start]
                start += 1
                end -= pad
            if end - start < 4:
                self._give_up(r, "PUSH_PROMISE too short", ts)
                return
            promised = _U32.unpack_from(buf, start)[0] & 0x7FFFFFFF
            frag = buf[start + 4 : end]
            if flags & F_END_HEADERS:
                self._header_block(r, PUSH_PROMISE, sid, frag, flags, ts, start_ts, promised)
            else:
                r.cont = (PUSH_PROMISE, sid, [frag], flags, start_ts, promised)
        elif typ == GOAWAY:
            if end - start < 8 or sid != 0:
                self._give_up(r, "malformed GOAWAY", ts)
                return
            last = _U32.unpack_from(buf, start)[0] & 0x7FFFFFFF
            code = _U32.unpack_from(buf, start + 4)[0]
            cd = self.client_dir
            sender = "peer" if cd is None else "client" if d == cd else "server"
            self.goaway = f"GOAWAY from {sender} ({_err_name(code)}, last stream {last})"
            # streams the sender never processed: opened by the other side, id above last
            parity = 0 if sender == "client" else 1
            for st in list(self.streams.values()):
                if st.id > last and st.id & 1 == parity:
                    st.reasons.append(f"refused by {self.goaway}")
                    self._emit(st)
        # PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing we report

    # -- streams ------------------------------------------------------------------------------------
    def _stream(self, sid: int, create: bool) -> _Stream | None:
        st = self.streams.get(sid)
        if st is not None:
            return st
        parity = sid & 1
        if sid <= self.max_sid[parity] and (not self.mid_connection or sid in self.recent_set):
            return None  # closed (already emitted) or refused stream
        if not create:
            return None
        if sid > self.max_sid[parity]:
            self.max_sid[parity] = sid
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.refused += 1
            if self.refused == 1:
                self._error(None, f"more than {self.limits.max_concurrent_streams} concurrent streams: "
                            f"stream {sid} and later ones are not tracked", 0, 0)
            return None
        st = _Stream(sid)
        self.streams[sid] = st
        return st

    def _header_block(self, r: _Reader, kind: int, sid: int, block: bytes, flags: int, ts: int,
                      start_ts: int, promised: int) -> None:
        d = r.dir
        try:
            fields, missing = self.decoders[d].decode(block)
        except ProtocolError as e:
            self._give_up(r, str(e), ts)
            return
        pseudo: dict[str, str] = {}
        headers = fields
        if fields and fields[0][0][:1] == ":":
            headers = []
            for kv in fields:
                if kv[0][:1] == ":":
                    pseudo[kv[0]] = kv[1]
                else:
                    headers.append(kv)
        if self.client_dir is None:
            if ":method" in pseudo and kind == HEADERS:
                self.client_dir = d
            elif ":status" in pseudo or kind == PUSH_PROMISE:
                self.client_dir = 1 - d
        if kind == PUSH_PROMISE:
            parent = self.streams.get(sid)
            st = self._stream(promised, True)
            if st is None:
                return
            h = _Half()
            h.started = h.ended = True
            h.pseudo = pseudo
            h.headers = headers
            h.missing = missing
            h.start_ts = h.end_ts = start_ts
            st.promise = h
            st.promiser = d
            st.promised_by = sid
            st.first_dir = 1 - d
            if parent is None:
                st.partial = True
            return
        st = self._stream(sid, True)
        if st is None:
            return
        if st.first_dir is None:
            st.first_dir = d
        h = st.halves[d]
        if not h.started and not pseudo and flags & F_END_STREAM and self.mid_connection:
            # trailers of a stream that began before the capture
            h.trailers = headers
            h.missing += missing
            st.partial = True
            if not st.reasons:
                st.reasons.append("stream began before the capture")
            self._end_half(d, sid, ts)
            return
        if not h.started:
            status = pseudo.get(":status")
            if status is not None and len(status) == 3 and status[0] == "1" and status != "101":
                h.informational.append(int(status) if status.isascii() and status.isdigit() else 0)
                h.missing += missing
                if flags & F_END_STREAM:
                    self._end_half(d, sid, ts)
                return
            h.started = True
            h.pseudo = pseudo
            h.headers = headers
            h.start_ts = start_ts
            h.missing += missing
            if missing and not pseudo:
                st.partial = True
                if not st.reasons:
                    st.reasons.append("stream began before the capture")
            for k, v in headers:
                if k == "content-type":
                    if is_grpc(v):
                        h.grpc = MessageCounter()
                elif k == "content-encoding" and self.limits.decode_bodies:
                    h.ce = v
        else:
            h.trailers = headers
            h.missing += missing
        if flags & F_END_STREAM:
            self._end_half(d, sid, ts)

    def _data_frame(self, r: _Reader, sid: int, flags: int, buf: bytes, start: int, end: int, ts: int,
                    start_ts: int) -> None:
        if sid == 0:
            self._give_up(r, "DATA on stream 0", ts)
            return
        if flags & F_PADDED:
            if start >= end:
                self._give_up(r, "DATA frame too short for its padding", ts)
                return
            pad = buf[start]
            start += 1
            end -= pad
            if end < start:
                self._give_up(r, "DATA padding longer than the frame", ts)
                return
        d = r.dir
        st = self.streams.get(sid)
        if st is None:
            st = self._data_start(d, sid, start_ts)
            if st is None:
                return
        if end > start:
            h = st.halves[d]
            if h.body is None:
                h.body = Body(self.limits.max_body_bytes)
            h.body.add_view(buf, start, end)
            if h.grpc is not None:
                h.grpc.feed(buf, start, end)
        if flags & F_END_STREAM:
            self._end_half(d, sid, ts)

    def _data_start(self, d: int, sid: int, start_ts: int) -> _Stream | None:
        st = self.streams.get(sid)
        if st is None:
            if not self.mid_connection:
                return None  # DATA for a stream we do not track (closed, refused)
            st = self._stream(sid, True)
            if st is None:
                return None
            st.partial = True
            st.reasons.append("stream began before the capture")
        h = st.halves[d]
        if not h.started and h.start_ts is None:
            h.start_ts = start_ts
        return st

    def _data_bytes(self, d: int, sid: int, buf: bytes, start: int, end: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        h = st.halves[d]
        if h.body is None:
            h.body = Body(self.limits.max_body_bytes)
        h.body.add_view(buf, start, end)
        if h.grpc is not None:
            h.grpc.feed(buf, start, end)

    def _end_half(self, d: int, sid: int, ts: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        h = st.halves[d]
        h.ended = True
        h.end_ts = ts
        other = st.halves[1 - d]
        partial_done = st.partial and self.client_dir is not None and d != self.client_dir
        if other.ended or st.promise is not None or partial_done:
            self._emit(st)

    # -- emission -----------------------------------------------------------------------------------
    def _emit(self, st: _Stream) -> None:
        if self.streams.pop(st.id, None) is None:
            return
        if self.mid_connection:
            if len(self.recent) == self.recent.maxlen:
                self.recent_set.discard(self.recent[0])
            self.recent.append(st.id)
            self.recent_set.add(st.id)
        self.out.append(self._build(st))

    def _roles(self, st: _Stream) -> int | None:
        if st.promiser is not None:
            return 1 - st.promiser
        if self.client_dir is not None:
            return self.client_dir
        h0, h1 = st.halves
        if ":method" in h0.pseudo or ":status" in h1.pseudo:
            return 0
        if ":method" in h1.pseudo or ":status" in h0.pseudo:
            return 1
        return st.first_dir

    def _build(self, st: _Stream) -> HttpTransaction:
        cd = self._roles(st)
        if st.promise is not None:
            req = st.promise
            resp = st.halves[st.promiser or 0]
        elif cd is None:
            req, resp = st.halves
        else:
            req = st.halves[cd]
            resp = st.halves[1 - cd]
        reasons = st.reasons
        if st.reset is not None:
            rd, code = st.reset
            if not resp.ended:
                who = "client" if rd == cd else "server" if cd is not None else "peer"
                reasons.append(f"stream reset by {who}: {_err_name(code)}")
        elif not reasons:
            if not resp.ended:
                reasons.append("response not ended")
            elif not resp.started and not resp.informational:
                reasons.append("response ended without headers")
            elif not req.ended and not st.partial:
                reasons.append("request not ended")
        missing = req.missing + resp.missing
        if missing:
            reasons.append(f"{missing} header fields not decodable (HPACK state unknown: capture started "
                           "mid-connection or after a gap)")
        pq = req.pseudo
        method = pq.get(":method")
        path = pq.get(":path")
        scheme = pq.get(":scheme")
        authority = pq.get(":authority")
        if authority is None:
            for k, v in req.headers:
                if k == "host":
                    authority = v
                    break
        status_s = resp.pseudo.get(":status")
        status = int(status_s) if status_s is not None and status_s.isascii() and status_s.isdigit() else None
        if self.alpn == "h2":
            protocol = "h2"
        elif self.upgraded or scheme == "http":
            protocol = "h2c"
        else:
            protocol = "h2"
        rb = req.body
        sb = resp.body
        req_body = rb.data() if rb is not None else b""
        resp_body = sb.data() if sb is not None else b""
        if rb is not None and rb.gap:
            reasons.append(f"{rb.gap} request body bytes lost in a gap")
        if sb is not None and sb.gap:
            reasons.append(f"{sb.gap} response body bytes lost in a gap")
        grpc = None
        if req.grpc is not None or resp.grpc is not None:
            grpc = self._grpc(req, resp, path)
        req_dec = resp_dec = None
        dec_err = None
        if req.ce is not None and rb is not None and grpc is None:
            req_dec, dec_err = decode_content(req_body, req.ce, self.limits.max_decoded_body_bytes, rb.truncated)
        if resp.ce is not None and sb is not None and grpc is None:
            resp_dec, e2 = decode_content(resp_body, resp.ce, self.limits.max_decoded_body_bytes, sb.truncated)
            dec_err = dec_err or e2
        return HttpTransaction(  # positional: see the field order in events/http.py
            protocol,  # protocol
            cd,  # client_direction
            method,  # method
            path,  # path
            authority,  # authority
            scheme,  # scheme
            status,  # status
            req.headers,  # request_headers
            resp.headers,  # response_headers
            req.trailers,  # request_trailers
            resp.trailers,  # response_trailers
            req_body,  # request_body
            rb.size if rb is not None else 0,  # request_body_size
            rb is not None and rb.kept < rb.size,  # request_body_truncated
            resp_body,  # response_body
            sb.size if sb is not None else 0,  # response_body_size
            sb is not None and sb.kept < sb.size,  # response_body_truncated
            req_dec,  # request_body_decoded
            resp_dec,  # response_body_decoded
            dec_err,  # body_decode_error
            req.start_ts,  # request_start_ns
            req.end_ts if req.ended else None,  # request_end_ns
            resp.start_ts,  # response_start_ns
            resp.end_ts if resp.ended else None,  # response_end_ns
            st.id,  # stream_id
            resp.informational,  # informational
            None,  # upgrade
            grpc,  # grpc
            bool(reasons),  # incomplete
            "; ".join(reasons) if reasons else None,  # reason
            st.promise is not None,  # pushed
            st.promised_by,  # promised_by
        )

    @staticmethod
    def _grpc(req: _Half, resp: _Half, path: str | None) -> GrpcInfo:
        service, method = split_path(path)
        status = message = None
        encoding = None
        for k, v in req.headers:
            if k == "grpc-encoding":
                encoding = v
        for lst in (resp.trailers, resp.headers):
            for k, v in lst:
                if k == "grpc-status" and status is None:
                    status = v
                elif k == "grpc-message" and message is None:
                    message = v
            if status is not None:
                break
        qg = req.grpc
        sg = resp.grpc
        rq = qg.messages if qg is not None else 0
        rs = sg.messages if sg is not None else 0
        return GrpcInfo(
            service=service,
            method=method,
            grpc_status=int(status) if status is not None and status.isascii() and status.isdigit() else None,
            grpc_message=parse_grpc_message(message),
            grpc_encoding=encoding,
            request_messages=rq,
            response_messages=rs,
            request_compressed_messages=qg.compressed if qg is not None else 0,
            response_compressed_messages=sg.compressed if sg is not None else 0,
            streaming=rq != 1 or rs > 1,
        )

    # -- failures -----------------------------------------------------------------------------------
    def _error(self, direction: int | None, reason: str, off: int, ts: int) -> None:
        self.out.append(ParseError(reason=reason, direction=direction, offset=off, ts_ns=ts, protocol="http2"))

    def _give_up(self, r: _Reader, reason: str, ts: int) -> None:
        """The connection cannot be followed any more: report it and every open stream."""
        self._error(r.dir, reason, r.base + r.pos, ts)
        for st in list(self.streams.values()):
            st.reasons.append(f"HTTP/2 parsing stopped: {reason}")
            self._emit(st)
        for rd in self.readers:
            rd.state = R_DEAD
            rd.buf = b""
            rd.pos = 0
        self.dead = True

    def _gap(self, r: _Reader, n: int, ts: int) -> None:
        d = r.dir
        if r.state == R_DATA and n <= r.d_left:
            body_lost = max(0, min(n, r.d_left - r.d_pad))
            st = self.streams.get(r.d_sid)
            if st is not None and body_lost:
                h = st.halves[d]
                if h.body is None:
                    h.body = Body(self.limits.max_body_bytes)
                h.body.add_gap(body_lost)
                if h.grpc is not None:
                    h.grpc.skip(body_lost)
            r.d_left -= n
            if r.d_left == 0:
                r.state = R_FRAME
                if r.d_end_stream:
                    self._end_half(d, r.d_sid, ts)
            return
        if r.state == R_SKIP and n < r.skip_left:
            r.skip_left -= n
            return
        if r.state == R_RESYNC:
            return
        # frames (maybe header blocks) were lost: HPACK state of this direction is gone
        self._error(d, f"gap of {n} bytes broke the frame sequence; HPACK state of this direction lost, "
                    "resynchronizing", r.base + len(r.buf), ts)
        self.decoders[d].forget()
        r.expect_settings = False
        for st in self.streams.values():
            st.reasons.append("bytes of the connection lost in a gap")
        r.cont = None
        r.base += len(r.buf)
        r.buf = b""
        r.pos = 0
        r.state = R_RESYNC
