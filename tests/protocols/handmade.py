"""Hand-built edge-case conversations, as Recordings, for the same property tests as the real ones."""

from __future__ import annotations

from tests.protocols import h2build as hb
from tests.protocols.record import Recording


def _rec(name: str, port: int, chunks: list[tuple[int, bytes]]) -> Recording:
    return Recording(name=name, description="hand-built", server_port=port,
                     events=[(d, 1000 * (i + 1), b) for i, (d, b) in enumerate(chunks)])


def h2_everything() -> Recording:
    cl, sv = hb.Side(), hb.Side()
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    c = (hb.PREFACE + hb.settings()
         + cl.headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/p.S/M"),
                          *grpc, *[(f"x{i}", "v" * 30) for i in range(20)]], pad=5, priority=True, split=50)
         + hb.data(1, hb.grpc_msg(b"abc") * 3, pad=4) + cl.headers(1, [("x-t", "1")], end=True)
         + hb.request(cl, 3, "/b") + hb.request(cl, 5, "/refused"))
    s = (hb.settings() + hb.settings(ack=True)
         + sv.push_promise(1, 2, [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "a")])
         + hb.response(sv, 1, 100) + sv.headers(1, [(":status", "200"), ("content-type", "application/grpc")], split=3)
         + hb.data(1, hb.grpc_msg(b"r" * 100), pad=0) + hb.response(sv, 2, 200) + hb.data(2, b"pushed", end=True)
         + sv.headers(1, [("grpc-status", "0")], end=True) + hb.goaway(3, 0, b"bye"))
    return _rec("hand_h2_everything", 443, [(0, c[:70]), (0, c[70:]), (1, s[:33]), (1, s[33:]),
                                           (0, hb.rst(3, 8))])


def h2c_upgrade() -> Recording:
    sv = hb.Side()
    req = (b"POST /up HTTP/1.1\r\nHost: h2.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 4\r\n\r\nbody")
    resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    return _rec("hand_h2c_upgrade", 80, [
        (0, req), (1, resp + hb.settings()), (0, hb.PREFACE + hb.settings() + hb.settings(ack=True)),
        (1, hb.settings(ack=True) + hb.response(sv, 1, 200, [("content-length", "2")]) + hb.data(1, b"ok", end=True)),
    ])


def http1_edge() -> Recording:
    ws_req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return _rec("hand_http1_edge", 80, [
        (0, b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (1, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (0, b"5;x=y\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nGET /nm HTTP/1.1\r\n\r\n"),
        (1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-S: 1\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        (0, ws_req),
        (1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"),
        (0, b"\x81\x82abcd\x09\x0b"),
    ])


def all_handmade() -> list[Recording]:
    return [h2_everything(), h2c_upgrade(), http1_edge()]
