"""What an idle connection keeps: 10k idle keep-alive connections are 10k of these, so each must hold
no detection buffers and no consumed bytes, and resuming after idling must parse exactly as before."""

from __future__ import annotations

from qtap_async.events.http import HttpTransaction
from qtap_async.protocols import Direction, Limits, ProtocolSession
from qtap_async.protocols.http1 import Http1Connection
from qtap_async.protocols.session import _ParkedHttp1

C, S = Direction.SEND, Direction.RECV
REQ = b"POST /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nServer: x\r\n\r\nworld!!"


def _txs(records: list[object]) -> list[HttpTransaction]:
    return [r for r in records if isinstance(r, HttpTransaction)]


def test_a_session_keeps_detection_state_only_while_detecting() -> None:
    s = ProtocolSession(local_port=40000, remote_port=80)
    assert s._det is None  # opened, no byte yet: nothing allocated for detection
    assert s.feed(C, b"PO", 1) == []  # not enough to tell: held for detection
    assert s._det is not None and s._det.buf[0] == b"PO"
    assert s.feed(C, REQ[2:], 2) == []
    assert s.protocol == "http1" and s._det is None  # detected: the parser has the bytes, detection is gone
    (tx,) = _txs(s.feed(S, RESP, 3))
    assert (tx.method, tx.path, tx.request_body, tx.status, tx.response_body) == ("POST", "/a", b"hello", 200,
                                                                                  b"world!!")


def test_an_unrecognized_connection_keeps_no_buffers() -> None:
    s = ProtocolSession(local_port=40000, remote_port=5432)
    s.feed(C, b"\x00\x00\x00\x08\x04\xd2\x16\x2f" * 4000, 1)  # binary, over the detection limit
    s.feed(S, b"N" + b"\x00" * 30000, 2)
    assert s.detection_failed and s.protocol == "unknown"
    assert s._det is not None and s._det.buf == [b"", b""]
    assert s.feed(C, b"GET / HTTP/1.1\r\n\r\n", 3) == []  # dead: ignored


def test_the_first_exchange_parks_later_ones_wait_for_quiet_and_parsing_resumes_byte_exact() -> None:
    s = ProtocolSession(local_port=40000, remote_port=80)
    s.feed(C, REQ, 1)
    assert isinstance(s._handler, Http1Connection)  # request pending: a live parser
    assert s.park() is False and isinstance(s._handler, Http1Connection)  # not at rest: kept whole
    assert len(_txs(s.feed(S, RESP, 2))) == 1
    parked = s._handler
    assert isinstance(parked, _ParkedHttp1) and s.protocol == "http1"  # the first exchange done: parked at once
    assert s.park() is False  # already parked
    assert parked.offsets == (len(REQ), 1, len(RESP), 2)
    # The next exchange, in odd pieces: the parser comes back with its offsets and parses it exactly.
    req2 = b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n"
    resp2 = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    out: list[object] = []
    for i in range(0, len(req2), 7):
        out += s.feed(C, req2[i:i + 7], 10 + i)
        assert isinstance(s._handler, Http1Connection)
    for i in range(0, len(resp2), 5):
        out += s.feed(S, resp2[i:i + 5], 100 + i)
    (tx,) = _txs(out)
    assert (tx.method, tx.path, tx.status, tx.response_body) == ("GET", "/b", 404, b"abc")
    assert (tx.request_start_ns, tx.response_start_ns) == (10, 100)
    assert isinstance(s._handler, Http1Connection)  # a busy connection keeps its parser between exchanges
    assert s.park() is True  # until it goes quiet (conntrack's idle pass)
    parked = s._handler
    assert isinstance(parked, _ParkedHttp1)
    assert parked.offsets[0::2] == (len(REQ) + len(req2), len(RESP) + len(resp2))
    # Closed while parked: nothing was pending, so nothing to report, exactly as the whole parser says.
    assert parked.resume(Limits()).close(300) == [] and s.close(300) == []


def test_a_parked_parser_reports_a_gap_and_a_close_like_a_live_one() -> None:
    def run(park: bool) -> list[object]:
        s = ProtocolSession(local_port=40000, remote_port=80)
        out = s.feed(C, REQ, 1) + s.feed(S, RESP, 2)
        assert isinstance(s._handler, _ParkedHttp1)
        if not park:  # the same state, unparked by hand
            s._handler = s._handler.resume(Limits())
        out += s.gap(C, 100, 3)  # a lost request
        out += s.feed(S, RESP, 4)  # its response
        out += s.feed(C, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        out += s.close(6)  # closed with that request unanswered
        return [(type(r).__name__, getattr(r, "path", None), getattr(r, "status", None),
                 getattr(r, "offset", None), getattr(r, "reason", None)) for r in out]

    assert run(park=True) == run(park=False)
    assert ("HttpTransaction", "/c", None, None, "connection closed before the response") in run(park=True)


def test_a_partial_head_is_kept_until_it_completes() -> None:
    s = ProtocolSession(local_port=40000, remote_port=80)
    s.feed(C, REQ, 1)
    s.feed(S, RESP[:20], 2)
    h = s._handler
    assert isinstance(h, Http1Connection)
    assert h.readers[1].buf == RESP[:20]  # not consumed yet: kept
    (tx,) = _txs(s.feed(S, RESP[20:], 3))
    assert tx.response_body == b"world!!"

