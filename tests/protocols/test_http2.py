"""HTTP/2 and gRPC: recorded real streams and hand-built frame sequences."""

from __future__ import annotations

from qtap_async.protocols import Direction, Limits, ProtocolSession
from tests.protocols import h2build as hb
from tests.protocols.helpers import errors, no_internal_errors, run, txs
from tests.protocols.record import load, replay

C, S = Direction.SEND, Direction.RECV


def _conn(client_frames: bytes = b"", server_frames: bytes = b"") -> list[tuple[int, bytes]]:
    return [(C, hb.PREFACE + hb.settings() + client_frames), (S, hb.settings() + hb.settings(ack=True)
                                                              + server_frames)]


# -- recorded -----------------------------------------------------------------------------------------

def test_recorded_curl_prior_knowledge() -> None:
    (t,) = txs(replay(load("h2c_curl_prior_knowledge")))
    assert (t.protocol, t.method, t.path, t.scheme, t.status, t.stream_id) == ("h2c", "GET", "/index.html", "http",
                                                                                200, 1)
    assert t.response_body == b"hello h2\n" and not t.incomplete
    assert ("user-agent", "curl/7.88.1") in t.request_headers
    assert all(not k.startswith(":") for k, _ in t.request_headers + t.response_headers)


def test_recorded_nghttp_concurrent_streams() -> None:
    t = txs(replay(load("h2c_nghttp_concurrent")))
    assert len(t) == 20 and len({x.stream_id for x in t}) == 20
    assert all(x.status == 200 and x.response_body == b"hello h2\n" and not x.incomplete for x in t)


def test_recorded_two_requests_200_404() -> None:
    t = txs(replay(load("h2c_nghttp_two")))
    assert sorted((x.path, x.status) for x in t) == [("/index.html", 200), ("/missing", 404)]


def test_recorded_big_bodies_over_many_frames() -> None:
    (t,) = txs(replay(load("h2c_nghttp_big"), limits=Limits(max_body_bytes=1 << 20)))
    assert t.method == "POST" and t.request_body == b"u" * 5000 and t.response_body_size == 40000
    assert len(t.response_body) == 40000 and not t.response_body_truncated


def test_recorded_grpc() -> None:
    t = txs(replay(load("grpc_python")))
    assert [(x.grpc.method, x.grpc.grpc_status) for x in t if x.grpc] == [("Ping", 0), ("Ping", 5), ("List", 0),
                                                                          ("Collect", 0)]
    ok, fail, lst, collect = t
    assert ok.grpc is not None and ok.grpc.service == "test.v1.Echo" and not ok.grpc.streaming
    assert (ok.grpc.request_messages, ok.grpc.response_messages) == (1, 1)
    assert ok.response_body == hb.grpc_msg(b"pong:hello")
    assert fail.grpc is not None and fail.grpc.grpc_message == "no such thing: ünïcode"
    assert fail.grpc.response_messages == 0
    assert lst.grpc is not None and lst.grpc.response_messages == 3 and lst.grpc.streaming
    assert collect.grpc is not None and collect.grpc.request_messages == 4 and collect.grpc.streaming


def test_recorded_local_process_is_server() -> None:
    t = txs(replay(load("grpc_python"), local_is_client=False))
    assert len(t) == 4 and all(x.client_direction == Direction.RECV for x in t)


# -- hand-built ---------------------------------------------------------------------------------------

def test_padding_priority_and_continuation() -> None:
    cl, sv = hb.Side(), hb.Side()
    big = [(f"x-big-{i}", "v" * 50) for i in range(40)]
    pseudo = [(":method", "GET"), (":scheme", "https"), (":authority", "a.test"), (":path", "/p")]
    client = cl.headers(1, [*pseudo, *big], end=True, pad=7, priority=True, split=100)
    server = sv.headers(1, [(":status", "200")], pad=3, split=1) + hb.data(1, b"abc", pad=10) + hb.data(
        1, b"def", end=True, pad=0)
    (t,) = txs(run(_conn(client, server)))
    assert t.path == "/p" and t.request_headers == big and t.response_body == b"abcdef" and not t.incomplete
    assert t.protocol == "h2"  # :scheme https


def test_trailers_and_interim_response() -> None:
    cl, sv = hb.Side(), hb.Side()
    client = hb.request(cl, 1, "/u", "POST", end=False) + hb.data(1, b"body") + cl.headers(1, [("x-sum", "9")],
                                                                                             end=True)
    server = (hb.response(sv, 1, 100) + hb.response(sv, 1, 200) + hb.data(1, b"r")
              + sv.headers(1, [("x-done", "1")], end=True))
    (t,) = txs(run(_conn(client, server)))
    assert t.request_trailers == [("x-sum", "9")] and t.response_trailers == [("x-done", "1")]
    assert t.informational == [100] and t.status == 200 and t.request_body == b"body"


def test_rst_stream_marks_incomplete() -> None:
    cl, sv = hb.Side(), hb.Side()
    client = hb.request(cl, 1, "/slow") + hb.request(cl, 3, "/fast")
    server = hb.response(sv, 3, 200, end=True) + hb.response(sv, 1, 200) + hb.data(1, b"part")
    out = run([*_conn(client, server), (C, hb.rst(1, 8))])
    t = {x.stream_id: x for x in txs(out)}
    assert not t[3].incomplete
    assert t[1].incomplete and "reset by client: CANCEL" in (t[1].reason or "") and t[1].response_body == b"part"


def test_rst_after_complete_response_is_not_incomplete() -> None:
    cl, sv = hb.Side(), hb.Side()
    client = hb.request(cl, 1, "/upload", "POST", end=False) + hb.data(1, b"xx")
    server = hb.response(sv, 1, 413, end=True) + hb.rst(1, 0)
    (t,) = txs(run(_conn(client, server)))
    assert t.status == 413 and not t.incomplete


def test_goaway_refuses_higher_streams() -> None:
    cl, sv = hb.Side(), hb.Side()
    client = hb.request(cl, 1, "/a") + hb.request(cl, 3, "/b") + hb.request(cl, 5, "/c")
    server = hb.goaway(1, 0) + hb.response(sv, 1, 200, end=True)
    t = {x.path: x for x in txs(run(_conn(client, server), close=False))}
    assert not t["/a"].incomplete
    assert t["/b"].incomplete and "GOAWAY" in (t["/b"].reason or "") and "NO_ERROR" in (t["/b"].reason or "")
    assert t["/c"].incomplete


def test_close_reports_open_streams() -> None:
    cl = hb.Side()
    (t,) = txs(run(_conn(hb.request(cl, 1, "/never"))))
    assert t.incomplete and t.status is None and "closed" in (t.reason or "")


def test_push_promise() -> None:
    cl, sv = hb.Side(), hb.Side()
    client = hb.request(cl, 1, "/index")
    server = (sv.push_promise(1, 2, [(":method", "GET"), (":scheme", "http"), (":authority", "a"),
                                     (":path", "/style.css")])
              + hb.response(sv, 1, 200) + hb.data(1, b"<html>", end=True)
              + hb.response(sv, 2, 200) + hb.data(2, b"css", end=True))
    t = {x.stream_id: x for x in txs(run(_conn(client, server)))}
    assert t[2].path == "/style.css" and t[2].response_body == b"css" and t[2].client_direction == C
    assert t[1].response_body == b"<html>"
    # The pushed exchange says so, with the stream that promised it; the client's own request does not.
    assert t[2].pushed and t[2].promised_by == 1 and not t[2].incomplete
    assert not t[1].pushed and t[1].promised_by is None


def test_many_concurrent_streams_interleaved_and_limit() -> None:
    cl, sv = hb.Side(), hb.Side()
    sids = range(1, 2 * 150, 2)
    client = b"".join(hb.request(cl, i, f"/{i}") for i in sids)
    server = b"".join(hb.response(sv, i, 200) for i in sids)
    server += b"".join(hb.data(i, b"%d" % i, end=True) for i in reversed(sids))
    t = txs(run(_conn(client, server)))
    assert sorted(x.stream_id for x in t) == list(sids)
    assert all(x.response_body == b"%d" % x.stream_id for x in t)
    out = run(_conn(client, server), limits=Limits(max_concurrent_streams=10))
    assert len(txs(out)) == 10 and any("concurrent" in e.reason for e in errors(out))


def test_grpc_trailers_only_and_compressed_flag() -> None:
    cl, sv = hb.Side(), hb.Side()
    g = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-encoding", "gzip")]
    client = hb.request(cl, 1, "/pkg.Svc/Get", "POST", extra=g, end=False) + hb.data(
        1, hb.grpc_msg(b"\x1f\x8bzz", compressed=True), end=True)
    server = sv.headers(1, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "7"),
                            ("grpc-message", "permission%20denied")], end=True)
    (t,) = txs(run(_conn(client, server)))
    assert t.grpc is not None
    assert (t.grpc.service, t.grpc.method, t.grpc.grpc_status, t.grpc.grpc_message) == (
        "pkg.Svc", "Get", 7, "permission denied")
    assert t.grpc.request_compressed_messages == 1 and t.grpc.grpc_encoding == "gzip"


def test_grpc_messages_split_across_frames() -> None:
    cl, sv = hb.Side(), hb.Side()
    body = b"".join(hb.grpc_msg(b"m%d" % i * 300) for i in range(5))
    client = hb.request(cl, 1, "/p.S/Stream", "POST", extra=[("content-type", "application/grpc")], end=False)
    client += b"".join(hb.data(1, body[i : i + 7]) for i in range(0, len(body), 7)) + hb.data(1, b"", end=True)
    server = hb.response(sv, 1, 200, [("content-type", "application/grpc")]) + hb.data(1, hb.grpc_msg(b"ok"))
    server += sv.headers(1, [("grpc-status", "0")], end=True)
    (t,) = txs(run(_conn(client, server)))
    assert t.grpc is not None and t.grpc.request_messages == 5 and t.grpc.streaming


def test_mid_connection_start_never_invents_headers() -> None:
    cl, sv = hb.Side(), hb.Side()
    # earlier traffic (not captured) fills both dynamic tables
    hidden_c = hb.request(cl, 1, "/first", extra=[("x-secret", "s1")])
    hidden_s = hb.response(sv, 1, 200, [("x-server", "srv")], end=True)
    # captured: a request using indexed fields from the unseen table state
    seen_c = hb.request(cl, 3, "/second", extra=[("x-secret", "s1")])
    seen_s = hb.response(sv, 3, 200, [("x-server", "srv")]) + hb.data(3, b"ok", end=True)
    assert hidden_c and hidden_s
    out = run([(C, seen_c + hb.frame(hb.PING, 0, 0, b"\0" * 8)), (S, seen_s)])
    no_internal_errors(out)
    (t,) = txs(out)
    assert t.stream_id == 3 and t.status == 200 and t.method == "GET" and t.response_body == b"ok"
    assert t.incomplete and "not decodable" in (t.reason or "")
    assert ("x-secret", "s1") not in t.request_headers and ("x-server", "srv") not in t.response_headers


def test_mid_connection_via_alpn_and_data_before_headers() -> None:
    sv = hb.Side()
    out = run([(S, hb.data(5, b"tail", end=True) + hb.response(sv, 7, 204, end=True)),
               (C, hb.data(7, b"", end=True))], alpn="h2")
    t = {x.stream_id: x for x in txs(out)}
    assert t[5].incomplete and "before the capture" in (t[5].reason or "")
    assert t[7].status == 204


def test_gap_inside_data_frame_keeps_sync() -> None:
    cl, sv = hb.Side(), hb.Side()
    frame = hb.data(1, b"A" * 100)
    chunks = _conn(hb.request(cl, 1, "/"), hb.response(sv, 1, 200))
    chunks += [(S, frame[:30]), (S, 50), (S, frame[80:] + hb.data(1, b"Z", end=True))]
    (t,) = txs(run(chunks))
    assert t.response_body_size == 101 and t.response_body == b"A" * 21 and t.incomplete
    assert "gap" in (t.reason or "")


def test_gap_across_frames_resyncs_with_unknown_hpack() -> None:
    cl, sv = hb.Side(), hb.Side()
    chunks = _conn(hb.request(cl, 1, "/a"), hb.response(sv, 1, 200))
    lost_c = hb.request(cl, 3, "/b", extra=[("x-new", "inserted into the table")])  # never reaches us
    lost_s = hb.response(sv, 3, 200, [("x-new", "server side too")], end=True)
    chunks += [(C, len(lost_c)), (C, hb.request(cl, 5, "/c", extra=[("x-new", "inserted into the table")]))]
    chunks += [(S, len(lost_s)), (S, hb.data(1, b"a", end=True) + hb.response(sv, 5, 201) + hb.data(5, b"c", end=True))]
    out = run(chunks)
    no_internal_errors(out)
    assert len([e for e in errors(out) if "gap" in e.reason]) == 2
    t = {x.stream_id: x for x in txs(out)}
    assert t[1].incomplete and "gap" in (t[1].reason or "")
    c = t[5]
    assert c.status == 201 and c.response_body == b"c" and c.path == "/c"
    # the field indexed from the lost block cannot be decoded: counted, not guessed
    assert ("x-new", "inserted into the table") not in c.request_headers and "not decodable" in (c.reason or "")


def test_malformed_frames_give_up_cleanly() -> None:
    out = run([(C, hb.PREFACE + hb.settings() + hb.frame(hb.CONTINUATION, 4, 1, b"\x82"))])
    assert any("CONTINUATION" in e.reason for e in errors(out))
    out = run([(C, hb.PREFACE + hb.frame(hb.HEADERS, 4, 1, b"\xff\xff\xff\xff\xff\xff"))])
    assert errors(out)
    out = run([(C, hb.PREFACE + hb.settings()), (S, b"HTTP/1.1 400 Bad Request\r\n\r\n")])
    assert any("not HTTP/2" in e.reason for e in errors(out))
    no_internal_errors(out)


def test_header_block_limit() -> None:
    cl = hb.Side()
    client = cl.headers(1, [(":method", "GET"), (":path", "/"), ("x", "y" * 5000)], end=True, split=1000)
    out = run(_conn(client), limits=Limits(max_header_bytes=2000))
    assert any("larger than 2000" in e.reason for e in errors(out))


def test_h2_decodes_content_encoding() -> None:
    import gzip

    cl, sv = hb.Side(), hb.Side()
    gz = gzip.compress(b"hello h2 gzip")
    server = hb.response(sv, 1, 200, [("content-encoding", "gzip")]) + hb.data(1, gz, end=True)
    (t,) = txs(run(_conn(hb.request(cl, 1, "/"), server), limits=Limits(decode_bodies=True)))
    assert t.response_body_decoded == b"hello h2 gzip"


def test_session_protocol_property() -> None:
    s = ProtocolSession(local_port=1, remote_port=2)
    assert s.protocol == "unknown"
    s.feed(C, hb.PREFACE[:10], 1)
    assert s.protocol == "unknown"
    s.feed(C, hb.PREFACE[10:], 2)
    assert s.protocol == "http2"


def test_server_settings_before_client_preface() -> None:
    """TLS h2 servers write SETTINGS at once: it may be the first thing seen on the connection."""
    cl, sv = hb.Side(), hb.Side()
    for alpn in ("h2", None):
        out = run([(S, hb.settings(max_concurrent_streams=100)),
                   (C, hb.PREFACE + hb.settings() + hb.request(cl, 1, "/x", extra=[("x-a", "1")])),
                   (S, hb.settings(ack=True) + hb.response(sv, 1, 200, end=True))], alpn=alpn)
        (t,) = txs(out)
        assert t.path == "/x" and t.status == 200 and not t.incomplete and ("x-a", "1") in t.request_headers
        assert t.protocol == "h2" if alpn else t.protocol == "h2c"
        assert t.client_direction == C
        cl, sv = hb.Side(), hb.Side()


def test_recorded_stream_with_server_chunks_first() -> None:
    rec = load("h2c_nghttp_two")
    server_first = sorted(rec.events, key=lambda e: -e[0])  # every server chunk before any client chunk
    s = ProtocolSession(local_port=40000, remote_port=rec.server_port)
    out = [r for d, ts, b in server_first if b for r in s.feed(d, b, ts)] + s.close(0)
    no_internal_errors(out)
    assert sorted((x.path, x.status) for x in txs(out)) == [("/index.html", 200), ("/missing", 404)]
