"""HTTP/1.x: recorded real streams and hand-built edge cases."""

from __future__ import annotations

import gzip
import zlib

import brotli
import msgspec
import pytest
import zstandard

from qtap_async.events.http import HttpTransaction
from qtap_async.protocols import Direction, Limits, ProtocolSession
from tests.protocols.helpers import errors, no_internal_errors, run, txs
from tests.protocols.record import all_names, load, replay

C, S = Direction.SEND, Direction.RECV


# -- recorded streams ----------------------------------------------------------------------------------

def test_recorded_python_keepalive() -> None:
    out = replay(load("http1_python_keepalive"))
    t = txs(out)
    assert [x.method for x in t] == ["GET", "HEAD", "POST", "GET", "GET", "GET"]
    assert [x.status for x in t] == [200, 200, 201, 200, 304, 404]
    assert all(not x.incomplete and x.protocol == "http/1.1" and x.client_direction == 0 for x in t)
    get, head, post, chunked, notmod, _missing = t
    assert get.path == "/items?id=1" and get.response_body == b'{"path": "/items?id=1"}'
    assert get.authority is not None and get.authority.startswith("127.0.0.1:")
    # duplicates kept in order
    assert [v for k, v in get.response_headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert head.response_body == b"" and ("Content-Length", "1234") in head.response_headers
    assert post.request_body == b"x" * 3000 and post.request_body_size == 3000 and post.response_body_size == 3000
    assert chunked.response_body == b"hello chunked world" and chunked.response_trailers == [("X-Checksum", "abc123")]
    assert notmod.response_body == b""
    for x in t:
        assert x.request_start_ns <= x.request_end_ns <= x.response_start_ns <= x.response_end_ns
    assert not errors(out)


def test_recorded_expect_100_continue() -> None:
    (t,) = txs(replay(load("http1_curl_expect100")))
    assert t.informational == [100] and t.status == 201
    assert ("Expect", "100-continue") in t.request_headers
    assert t.request_body_size == 2048 and t.request_body == t.response_body
    assert t.request_end_ns is not None and t.response_start_ns is not None
    assert t.response_start_ns >= t.request_end_ns  # final response, not the interim one


def test_recorded_nginx_gzip_chunked_decoded() -> None:
    t = txs(replay(load("http1_nginx_gzip"), limits=Limits(decode_bodies=True)))
    assert len(t) == 2
    page = t[0]
    assert ("Transfer-Encoding", "chunked") in page.response_headers
    assert ("Content-Encoding", "gzip") in page.response_headers
    assert page.response_body[:2] == b"\x1f\x8b"
    assert page.response_body_decoded is not None and page.response_body_decoded.startswith(b"<html><body>hello")
    assert page.body_decode_error is None
    assert t[1].path == "/small.txt" and t[1].response_body == b"small\n" and t[1].response_body_decoded is None
    # decoding is off by default
    assert txs(replay(load("http1_nginx_gzip")))[0].response_body_decoded is None


def test_recorded_nginx_pipelined() -> None:
    rec = load("http1_nginx_pipelined")
    assert len([e for e in rec.events if e[0] == 0 and e[2]]) == 1  # the three requests in one chunk
    t = txs(replay(rec))
    assert [(x.method, x.path, x.status) for x in t] == [("GET", "/small.txt", 200), ("GET", "/missing", 404),
                                                         ("HEAD", "/small.txt", 200)]
    assert t[0].response_body == b"small\n" and t[2].response_body == b""


def test_recorded_body_delimited_by_close() -> None:
    (t,) = txs(replay(load("http1_close_delimited")))
    assert t.protocol == "http/1.0" and not t.incomplete
    assert t.response_body_size == 880 and t.response_body.startswith(b"body delimited")


def test_local_process_is_the_server() -> None:
    t = txs(replay(load("http1_python_keepalive"), local_is_client=False))
    assert len(t) == 6 and all(x.client_direction == Direction.RECV for x in t)


# -- hand-built edge cases -----------------------------------------------------------------------------

def test_chunked_request_with_trailers_and_extensions() -> None:
    req = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    (t,) = txs(run([(C, req), (S, resp)]))
    assert t.request_body == b"hello!" and t.request_trailers == [("X-A", "1"), ("X-B", "2")]
    assert not t.incomplete


def test_pipelining_across_odd_chunk_boundaries() -> None:
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    resps = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(b"r%d" % i), b"r%d" % i)
                     for i in range(5))
    chunks = [(C, reqs[i : i + 7]) for i in range(0, len(reqs), 7)]
    chunks += [(S, resps[i : i + 11]) for i in range(0, len(resps), 11)]
    t = txs(run(chunks))
    assert [(x.path, x.response_body) for x in t] == [(f"/{i}", b"r%d" % i) for i in range(5)]


def test_head_304_204_and_1xx_have_no_body() -> None:
    out = run([
        (C, b"HEAD /a HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        (C, b"GET /b HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        (C, b"DELETE /c HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (C, b"GET /d HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
    ])
    t = txs(out)
    assert [(x.status, x.response_body) for x in t] == [(200, b""), (304, b""), (204, b""), (200, b"x")]
    assert t[3].informational == [103] and not any(x.incomplete for x in t)


def test_websocket_upgrade_then_stop() -> None:
    req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello")
    s = ProtocolSession(local_port=40000, remote_port=80)
    out = s.feed(C, req, 1) + s.feed(S, resp, 2)
    (t,) = txs(out)
    assert t.status == 101 and t.upgrade == "websocket" and not t.incomplete
    # websocket frames afterwards are not parsed and produce nothing
    assert s.feed(C, b"\x81\x85abcd" + b"\x00" * 5, 3) == [] and s.feed(S, b"\x81\x02hi", 4) == []
    assert s.close(5) == []


def test_upgrade_declined_resumes_http1() -> None:
    out = run([
        (C, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /next HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"),
    ])
    t = txs(out)
    assert [(x.path, x.upgrade, x.response_body) for x in t] == [("/", None, b"no"), ("/next", None, b"yes")]


def test_connect_tunnel() -> None:
    s = ProtocolSession(local_port=40000, remote_port=3128)
    out = s.feed(C, b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", 1)
    out += s.feed(S, b"HTTP/1.1 200 Connection established\r\n\r\n", 2)
    out += s.feed(C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3)
    (t,) = txs(out)
    assert t.method == "CONNECT" and t.authority == "example.test:443" and t.upgrade == "tunnel"
    assert s.close(4) == []


def test_absolute_form_target_sets_scheme_and_authority() -> None:
    (t,) = txs(run([(C, b"GET http://proxy.test:8080/x?y HTTP/1.1\r\nHost: other\r\n\r\n"),
                    (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]))
    assert (t.scheme, t.authority, t.path) == ("http", "proxy.test:8080", "/x?y")


def test_alpn_means_https() -> None:
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
                   alpn="http/1.1"))
    assert t.scheme == "https"


def test_bare_lf_and_obs_fold_tolerated() -> None:
    (t,) = txs(run([(C, b"GET / HTTP/1.1\nHost: h\nX-Long: a\n  b\n\n"),
                    (S, b"HTTP/1.1 200 OK\nContent-Length: 1\n\nz")]))
    assert ("X-Long", "a b") in t.request_headers and t.response_body == b"z"


def test_body_limit_truncates_and_counts() -> None:
    body = bytes(range(256)) * 40
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"),
                    (S, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)],
                   limits=Limits(max_body_bytes=100)))
    assert t.response_body == body[:100] and t.response_body_size == len(body) and t.response_body_truncated
    assert not t.incomplete


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15) if False else zlib.compressobj(wbits=-15).compress(b)
     + zlib.compressobj(wbits=-15).flush()),
    ("br", brotli.compress),
    ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_content_encodings_decoded(coding: str, encode: object) -> None:
    plain = b"the quick brown fox " * 50
    enc = encode(plain)  # type: ignore[operator]
    if coding == "deflate" and enc[:1] != b"x":
        c = zlib.compressobj(wbits=-15)
        enc = c.compress(plain) + c.flush()
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"),
                    (S, b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                     % (coding.encode(), len(enc)) + enc)], limits=Limits(decode_bodies=True)))
    assert t.response_body_decoded == plain and t.body_decode_error is None


def test_decompression_bomb_is_bounded() -> None:
    enc = gzip.compress(b"\0" * 5_000_000)
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"),
                    (S, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(enc)
                     + enc)], limits=Limits(decode_bodies=True, max_body_bytes=1 << 20,
                                            max_decoded_body_bytes=1000)))
    assert t.response_body_decoded == b"\0" * 1000 and "larger than 1000" in (t.body_decode_error or "")


def test_unknown_content_encoding_reported() -> None:
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"),
                    (S, b"HTTP/1.1 200 OK\r\nContent-Encoding: compress\r\nContent-Length: 1\r\n\r\nx")],
                   limits=Limits(decode_bodies=True)))
    assert t.response_body_decoded is None and "unsupported" in (t.body_decode_error or "")


def test_close_before_response_reports_incomplete() -> None:
    out = run([(C, b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")])
    t = txs(out)
    assert [x.path for x in t] == ["/a", "/b"] and all(x.incomplete for x in t)
    assert t[1].request_body == b"12345" and t[1].request_body_size == 5
    assert "request body" in (t[1].reason or "")


def test_close_mid_response_body() -> None:
    (t,) = txs(run([(C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")]))
    assert t.incomplete and t.response_body == b"abc" and t.response_end_ns is None


def test_response_without_request_mid_connection() -> None:
    out = run([(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), (C, b"GET /x HTTP/1.1\r\n\r\n"),
               (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!")])
    t = txs(out)
    assert t[0].method is None and t[0].incomplete and "request not seen" in (t[0].reason or "")
    assert t[1].path == "/x" and t[1].response_body == b"!" and not t[1].incomplete


def test_mid_connection_start_in_body_resyncs() -> None:
    out = run([(S, b"...tail of an earlier body..."), (C, b"GET /x HTTP/1.1\r\n\r\n"),
               (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!")])
    (t,) = txs(out)
    assert t.path == "/x" and t.response_body == b"!" and not t.incomplete
    assert any("not recognized" in e.reason for e in errors(out))


def test_gap_inside_known_length_body_keeps_sync() -> None:
    out = run([(C, b"GET /a HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"),
               (S, 5), (S, b"cde"), (C, b"GET /b HTTP/1.1\r\n\r\n"),
               (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")])
    a, b = txs(out)
    assert a.incomplete and a.response_body == b"ab" and a.response_body_size == 10 and a.response_body_truncated
    assert "gap" in (a.reason or "")
    assert b.path == "/b" and not b.incomplete and b.response_body == b"z"


def test_gap_in_headers_resyncs_on_next_message() -> None:
    out = run([(C, b"GET /a HTTP/1.1\r\nHo"), (C, 40), (C, b"GET /b HTTP/1.1\r\n\r\n"),
               (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")])
    assert any("gap" in e.reason for e in errors(out))
    (t,) = txs(out)
    assert t.path == "/b" and t.response_body == b"b"
    assert not any(b"Ho" in (v.encode()) for _, v in t.request_headers)  # never glued across the gap


def test_gap_drops_response_and_pairs_by_time() -> None:
    # the answer to /a is lost in a gap; the answer seen next belongs to /b, not /a
    out = run([(C, b"GET /a HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Le"), (S, 100),
               (C, b"GET /b HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb")])
    t = {x.path: x for x in txs(out)}
    assert t["/b"].status == 201 and not t["/b"].incomplete
    assert t["/a"].incomplete and t["/a"].status != 201


def test_malformed_input_is_a_parse_error() -> None:
    out = run([(C, b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), (S, b"HTTP/1.1 400 Bad\r\n\r\n")])
    assert any("Content-Length" in e.reason for e in errors(out))
    out = run([(C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n")])
    assert any("chunk size" in e.reason for e in errors(out))
    assert txs(out)[0].incomplete
    no_internal_errors(out)


def test_conflicting_content_lengths_rejected() -> None:
    out = run([(C, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")])
    assert any("Content-Length" in e.reason for e in errors(out))


def test_header_limit() -> None:
    out = run([(C, b"GET / HTTP/1.1\r\nX: " + b"a" * 5000)], limits=Limits(max_header_bytes=1024))
    assert any("larger than 1024" in e.reason for e in errors(out))


def test_pipelining_limit_gives_up() -> None:
    reqs = b"GET / HTTP/1.1\r\n\r\n" * 5
    out = run([(C, reqs)], limits=Limits(max_pending_requests=3))
    assert any("pipelined" in e.reason for e in errors(out))
    assert len(txs(out)) == 3 and all(x.incomplete for x in txs(out))


def test_h2c_upgrade_switches_to_http2() -> None:
    from tests.protocols.h2build import PREFACE, Side, data, response, settings

    srv = Side()
    req = (b"GET /up HTTP/1.1\r\nHost: h2.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    s = ProtocolSession(local_port=40000, remote_port=80)
    out = s.feed(C, req, 1)
    out += s.feed(S, resp + settings(), 2)
    assert s.protocol == "http2"
    out += s.feed(C, PREFACE + settings() + settings(ack=True), 3)
    out += s.feed(S, settings(ack=True) + response(srv, 1, 200, [("content-length", "2")])
                  + data(1, b"ok", end=True), 4)
    t = txs(out)
    assert t[0].protocol == "http/1.1" and t[0].status == 101 and t[0].upgrade == "h2c"
    assert t[1].protocol == "h2c" and t[1].stream_id == 1 and t[1].path == "/up" and t[1].status == 200
    assert t[1].authority == "h2.test" and t[1].response_body == b"ok" and not t[1].incomplete
    assert s.close(5) == []


def test_recorded_curl_h2c_upgrade() -> None:
    s_events = load("h2c_curl_upgrade")
    up, h2 = txs(replay(s_events))
    assert (up.protocol, up.status, up.upgrade, up.path) == ("http/1.1", 101, "h2c", "/index.html")
    assert ("Upgrade", "h2c") in up.request_headers
    assert (h2.protocol, h2.stream_id, h2.method, h2.path, h2.status) == ("h2c", 1, "GET", "/index.html", 200)
    assert h2.response_body == b"upgraded to h2c\n" and not h2.incomplete
    assert h2.request_start_ns == up.request_start_ns  # stream 1 is the upgraded request
    assert not any(k.lower() in ("upgrade", "http2-settings", "connection") for k, _ in h2.request_headers)


def test_recorded_node_websocket() -> None:
    out = replay(load("websocket_node"))
    (t,) = out  # the frames after the 101 produce nothing
    assert isinstance(t, type(txs(out)[0])) and t.upgrade == "websocket" and t.status == 101 and not t.incomplete
    assert ("upgrade", "websocket") in t.request_headers


# -- issue 19: heads over the limit, 100-continue answered by a final status, non-UTF-8 targets ---------

def _big_get(path: str, filler: int, extra: bytes = b"") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: big.test\r\n".encode() + b"X-Big: " + b"b" * filler + b"\r\n"
            + extra + b"Accept: */*\r\n\r\n")


@pytest.mark.parametrize("chunk", [None, 1000, 7])
def test_head_over_limit_is_reported_cut_and_keepalive_goes_on(chunk: int | None) -> None:
    limits = Limits(max_header_bytes=4096)
    req = (_big_get("/big", 10_000) + b"GET /next HTTP/1.1\r\nHost: big.test\r\n\r\n"
           + b"POST /body HTTP/1.1\r\nX-Pad: " + b"p" * 9000 + b"\r\nContent-Length: 5\r\nHost: big.test\r\n\r\nhello"
           + b"GET /last HTTP/1.1\r\n\r\n")
    resp = (b"HTTP/1.1 431 Too Large\r\nContent-Length: 2\r\n\r\nno"
            + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"
            + b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"c" * 9000 + b"\r\nContent-Length: 4\r\n\r\nbody"
            + b"HTTP/1.1 204 No Content\r\n\r\n")
    steps: list[tuple[Direction, bytes]] = []
    for d, data in ((C, req), (S, resp)):
        size = chunk or len(data)
        steps += [(d, data[i:i + size]) for i in range(0, len(data), size)]
    out = run(steps, limits=limits)
    t = txs(out)
    assert [(x.method, x.path, x.status) for x in t] == [("GET", "/big", 431), ("GET", "/next", 200),
                                                         ("POST", "/body", 200), ("GET", "/last", 204)]
    big, nxt, post, last = t
    assert big.incomplete and "larger than 4096 bytes (limit max_header_bytes)" in (big.reason or "")
    assert big.authority == "big.test" and ("Accept", "*/*") in big.request_headers
    assert not any(k == "X-Big" for k, _ in big.request_headers)  # the line past the limit is dropped
    assert not nxt.incomplete and nxt.response_body == b"yes"
    # framing headers are kept wherever they are: the body after the cut head is framed right
    assert post.request_body == b"hello" and post.response_body == b"body" and post.incomplete
    assert not last.incomplete
    cut = [e for e in errors(out) if "max_header_bytes" in e.reason]
    assert len(cut) == 3 and {e.direction for e in cut} == {C, S}
    no_internal_errors(out)


def test_start_line_over_limit_keeps_method_and_version() -> None:
    out = run([(C, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
               (S, b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\n\r\n")], limits=Limits(max_header_bytes=4096))
    (t,) = txs(out)
    assert t.method == "GET" and t.status == 414 and t.incomplete and t.authority == "x"
    assert t.path is not None and t.path.startswith("/aaaa") and len(t.path) < 4200


def test_expect_100_answered_by_final_status_without_the_body() -> None:
    head = b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n"
    # The server refuses before the body; the client does not send it and goes on with another request.
    out = run([(C, head), (S, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"),
               (C, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")])
    t = txs(out)
    assert [(x.method, x.path, x.status) for x in t] == [("PUT", "/up", 417), ("GET", "/after", 200)]
    assert t[0].request_body_size == 0 and not t[0].incomplete and t[0].request_end_ns is not None
    assert t[1].response_body == b"ok" and not t[1].incomplete
    no_internal_errors(out)
    # A client that sends the body anyway after the final answer: the body is consumed, sync is kept.
    out = run([(C, head.replace(b"1048576", b"4")), (S, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"),
               (C, b"abcd" + b"GET /after HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert [(x.path, x.status) for x in txs(out)] == [("/up", 413), ("/after", 200)]
    # The server side of the same exchange (the local process is the server) reports it the same way.
    out = run([(S, head), (C, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")],
              local_port=8080, remote_port=40000)
    (srv,) = txs(out)
    assert srv.client_direction == S
    assert (srv.method, srv.status, srv.request_body_size, srv.incomplete) == ("PUT", 417, 0, False)


def test_non_utf8_target_is_percent_encoded_utf8_kept() -> None:
    out = run([(C, b"GET /caf\xe9/\xff?q=\xe9 HTTP/1.1\r\nHost: x\r\n\r\n"
                   + b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nX-L1: \xe9\r\n\r\n"),
               (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2)])
    a, b = txs(out)
    assert a.path == "/caf%E9/%FF?q=%E9"
    assert b.path == "/café"  # valid UTF-8 stays text, even when a header is not UTF-8


# -- without header lists (Limits.headers False: the local output at summary level) ---------------------

def _without_headers(records: list[object]) -> list[object]:
    return [msgspec.structs.replace(r, request_headers=[], response_headers=[]) if isinstance(r, HttpTransaction)
            else r for r in records]


_NO_LISTS = Limits(headers=False)


@pytest.mark.parametrize("name", [n for n in all_names() if n.startswith("http1")])
def test_recorded_streams_same_without_header_lists(name: str) -> None:
    rec = load(name)
    full = replay(rec)
    lean = replay(rec, limits=_NO_LISTS)
    assert txs(full), name
    assert all(x.request_headers == [] and x.response_headers == [] for x in txs(lean))
    assert lean == _without_headers(full)


@pytest.mark.parametrize("chunks", [
    [(C, b"GET / HTTP/1.1\nHost: h\nX-Long: a\n  b\n\n"), (S, b"HTTP/1.1 200 OK\nContent-Length: 1\n\nz")],  # folding
    [(C, b"GET / HTTP/1.1\r\nHost: h\r\nbroken line\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
    [(C, b"GET / HTTP/1.1\r\n: empty name\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\n\r\n")],
    [(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\nno colon"),
     (S, b"\r\n\r\nok")],
    [(C, b"GET /caf\xe9 HTTP/1.1\r\nHost: x\r\nX-L1: \xe9\r\n\r\n"),
     (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
    [(C, b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n"), (S, b"HTTP/1.1 200 \xc3\xa9\r\nContent-Length: 0\r\n\r\n")],
    [(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n")],
    [(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
     (S, b"HTTP/1.1 204 No Content\r\n\r\n")],
])
def test_edge_cases_same_without_header_lists(chunks: list[tuple[int, bytes]]) -> None:
    """Malformed header lines are found (ParseError, resync) exactly as when the lists are built."""
    full = run(chunks)
    lean = run(chunks, limits=_NO_LISTS)
    assert lean == _without_headers(full)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\nHost: h\r\nX:  y \t", b"GET / HTTP/1.1\nA:b\nC: d\r",
    b"GET / HTTP/1.1\r\nX-Long: a\r\n  b", b"GET / HTTP/1.1\r\nno colon", b"GET / HTTP/1.1\r\n: v",
    b"GET / HTTP/1.1\r\n\r\nA: b", b"GET / HTTP/1.1\r\nA: b\r\n", b"GET / HTTP/1.1\r\n\tA: b", b"GET / HTTP/1.1\r\nA:",
    b"GET / HTTP/1.1\r\nA\xe9: \xe9\r\nB: c",
])
def test_head_fast_path_agrees_with_the_line_by_line_parse(head: bytes) -> None:
    from qtap_async.protocols.http1 import _header_list, _parse_head

    text = head.decode("latin-1") if b"\xe9" in head else head.decode()
    lines = text.split("\n")
    assert _parse_head(head) == (lines[0].removesuffix("\r"), _header_list(lines))


# -- header lookups on the latin-1 text of a head (one character per byte) ---------------------------------

@pytest.mark.parametrize("headers", [True, False])
def test_non_ascii_bytes_in_framing_headers_are_not_taken_for_digits_or_whitespace(headers: bool) -> None:
    lim = Limits(headers=headers)
    # "\xb2" (superscript two) is a digit to str.isdigit: as a Content-Length it is invalid, as on the wire.
    bad = run([(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n")],
              limits=lim)
    assert [e.reason for e in errors(bad)] == ["invalid Content-Length"]
    # "\xa0" (no-break space) is whitespace to str.strip, not to bytes.strip: "100-continue\xa0" is no such
    # expectation, so the request waits for its body as framed.
    req = b"PUT /u HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\xa0\r\n\r\n"
    out = run([(C, req), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), (C, b"ok")], limits=lim)
    (t,) = txs(out)
    assert t.request_body_size == 2 and t.status == 200
    # A non-ASCII Host byte keeps its latin-1 character; Upgrade is compared case-insensitively.
    up = run([(C, b"GET /ws HTTP/1.1\r\nHost: caf\xe9\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"),
              (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\r\n")], limits=lim)
    (t,) = txs(up)
    assert (t.authority, t.status, t.upgrade) == ("caf\xe9", 101, "websocket")
    # Chunked is the final coding whatever its case; a latin-1 space around it does not make it chunked.
    ch = run([(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
              (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n")], limits=lim)
    assert [(t.response_body_size, t.incomplete) for t in txs(ch)] == [(3, False)]
