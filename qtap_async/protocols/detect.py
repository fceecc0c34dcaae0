"""Protocol detection from the first bytes of one direction of a connection.

``detect(data)`` answers ``(status, protocol, role)``: status MATCH / NEED_MORE / NO_MATCH,
protocol "http1" | "http2" | "tls", role CLIENT (the bytes start a request: request line, h2 client
preface, ClientHello), SERVER (status line, ServerHello) or UNKNOWN (mid-connection HTTP/2 frames,
TLS records other than a hello). The checks only look at a bounded prefix.
"""

from __future__ import annotations

from qtap_async.protocols.http1 import looks_like_request, looks_like_response
from qtap_async.protocols.http2 import PREFACE, plausible_frames
from qtap_async.protocols.tls import ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, looks_like_tls

__all__ = ["MATCH", "NEED_MORE", "NO_MATCH", "ROLE_CLIENT", "ROLE_SERVER", "ROLE_UNKNOWN", "detect"]

MATCH, NEED_MORE, NO_MATCH = 0, 1, 2


def _server_settings_first(data: bytes) -> bool:
    """A non-ACK SETTINGS frame on stream 0 followed by a valid frame header (or nothing more)."""
    if len(data) < 9 or data[3] != 4 or data[4] != 0 or data[5:9] != b"\0\0\0\0":
        return False
    length = int.from_bytes(data[:3], "big")
    if length % 6 or length > 6 * 32:
        return False
    return bool(plausible_frames(data, need_two=False)) if len(data) >= 9 + length else False


def detect(data: bytes, *, alpn: str | None = None) -> tuple[int, str, int]:
    if not data:
        return NEED_MORE, "unknown", ROLE_UNKNOWN
    head = data[:24]
    if PREFACE.startswith(head):
        if len(head) == 24:
            return MATCH, "http2", ROLE_CLIENT
        return NEED_MORE, "unknown", ROLE_UNKNOWN
    if _server_settings_first(data):
        # a server's connection preface: its SETTINGS frame, often written before the client's
        # preface is read (TLS servers do this), so it may be the first thing we see
        return MATCH, "http2", ROLE_SERVER
    if alpn == "h2":
        return (NEED_MORE if len(data) < 9 else MATCH), "http2", ROLE_UNKNOWN
    pending = False
    r = looks_like_request(data)
    if r:
        return MATCH, "http1", ROLE_CLIENT
    pending = pending or r is None
    r = looks_like_response(data)
    if r:
        return MATCH, "http1", ROLE_SERVER
    pending = pending or r is None
    t, role = looks_like_tls(data)
    if t:
        return MATCH, "tls", role
    pending = pending or t is None
    f = plausible_frames(data, need_two=True)
    if f:
        return MATCH, "http2", ROLE_UNKNOWN
    pending = pending or f is None
    return (NEED_MORE if pending else NO_MATCH), "unknown", ROLE_UNKNOWN
