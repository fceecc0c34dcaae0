"""Builders for hand-made HTTP/2 byte streams (frames, header blocks) used by the tests.

Header blocks are encoded with the PyPI ``hpack`` package, an encoder independent of ours.
"""

from __future__ import annotations

import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20


def frame(typ: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, typ, flags, sid) + payload


def settings(ack: bool = False, **kv: int) -> bytes:
    ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3, "initial_window_size": 4,
           "max_frame_size": 5}
    payload = b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items())
    return frame(SETTINGS, 1 if ack else 0, 0, payload)


def data(sid: int, body: bytes, *, end: bool = False, pad: int | None = None) -> bytes:
    flags = END_STREAM if end else 0
    if pad is not None:
        return frame(DATA, flags | PADDED, sid, bytes([pad]) + body + b"\0" * pad)
    return frame(DATA, flags, sid, body)


class Side:
    """One direction's HPACK encoder."""

    def __init__(self) -> None:
        self.enc = hpack.Encoder()

    def block(self, headers: list[tuple[str, str]], huffman: bool = True) -> bytes:
        return self.enc.encode(headers, huffman=huffman)

    def headers(self, sid: int, headers: list[tuple[str, str]], *, end: bool = False, pad: int | None = None,
                priority: bool = False, split: int | None = None) -> bytes:
        """A HEADERS frame (and CONTINUATION frames when ``split`` gives the fragment size)."""
        blk = self.block(headers)
        frags = [blk] if split is None else [blk[i : i + split] for i in range(0, len(blk), split)] or [b""]
        flags = (END_STREAM if end else 0) | (END_HEADERS if len(frags) == 1 else 0)
        payload = frags[0]
        if priority:
            flags |= PRIO
            payload = struct.pack(">IB", 0, 15) + payload
        if pad is not None:
            flags |= PADDED
            payload = bytes([pad]) + payload + b"\0" * pad
        out = frame(HEADERS, flags, sid, payload)
        for i, f in enumerate(frags[1:], 1):
            out += frame(CONTINUATION, END_HEADERS if i == len(frags) - 1 else 0, sid, f)
        return out

    def push_promise(self, sid: int, promised: int, headers: list[tuple[str, str]]) -> bytes:
        return frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", promised) + self.block(headers))


def rst(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway(last: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last, code) + debug)


def grpc_msg(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def request(side: Side, sid: int, path: str = "/", method: str = "GET", authority: str = "example.test",
            extra: list[tuple[str, str]] | None = None, end: bool = True, scheme: str = "http") -> bytes:
    hs = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    return side.headers(sid, hs + (extra or []), end=end)


def response(side: Side, sid: int, status: int = 200, extra: list[tuple[str, str]] | None = None,
             end: bool = False) -> bytes:
    return side.headers(sid, [(":status", str(status))] + (extra or []), end=end)
