"""Protocol detection from the first bytes of one direction, on the recorded streams of real clients and
servers (curl, nginx, nghttp, grpcio, node, dig): the right protocol and side from a whole first flight,
and from every prefix of it either the same answer or "need more", never a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtap_async.protocols.detect import MATCH, NEED_MORE, NO_MATCH, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, detect
from qtap_async.protocols.http2 import PREFACE
from tests.protocols.record import load

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"
# What each recording's two directions are, by the name's prefix. An HTTP/2 upgrade starts as HTTP/1;
# a WebSocket too. DNS is recognised by port, not by its bytes (see protocols/session.py).
EXPECTED = {"http1_": "http1", "h2c_curl_upgrade": "http1", "websocket_": "http1", "h2c_": "http2",
            "grpc_": "http2", "tls_": "tls", "dns_": None}
NAMES = sorted(p.stem for p in STREAMS.glob("*.msgpack"))


def _expected(name: str) -> str | None:
    for prefix, proto in EXPECTED.items():
        if name.startswith(prefix):
            return proto
    raise AssertionError(f"recording {name}: add its protocol to EXPECTED")


def test_every_recording_is_looked_at() -> None:
    assert len(NAMES) >= 10 and {_expected(n) for n in NAMES} == {"http1", "http2", "tls", None}


@pytest.mark.parametrize("name", NAMES)
def test_recorded_first_flights(name: str) -> None:
    rec = load(name)
    proto = _expected(name)
    for direction, role in ((0, ROLE_CLIENT), (1, ROLE_SERVER)):
        data = rec.stream(direction)
        if not data:
            assert detect(data)[0] == NEED_MORE
            continue
        status, got, got_role = detect(data)
        if proto is None:
            assert status == NO_MATCH and got == "unknown"
            continue
        assert (status, got, got_role) == (MATCH, proto, role), f"{name} direction {direction}"
        # Every prefix: the same answer, or a request for more bytes; never a wrong protocol or side.
        for n in range(min(len(data), 64)):
            s, p, r = detect(data[:n])
            assert s == NEED_MORE or (s, p, r) == (MATCH, proto, role), f"{name} dir {direction}, {n} bytes: {s, p, r}"


def test_alpn_h2_names_a_mid_connection_http2_stream() -> None:
    frame = bytes.fromhex("000004" "08" "00" "00000000") + b"\0\0\0\1"  # WINDOW_UPDATE on stream 0
    assert detect(frame, alpn="h2") == (MATCH, "http2", ROLE_UNKNOWN)
    assert detect(frame[:5], alpn="h2") == (NEED_MORE, "http2", ROLE_UNKNOWN)
    # Without ALPN one frame is not enough to call it HTTP/2; two are.
    assert detect(frame)[0] != MATCH
    assert detect(frame + frame) == (MATCH, "http2", ROLE_UNKNOWN)


def test_the_preface_is_judged_on_its_24_bytes() -> None:
    assert detect(PREFACE) == (MATCH, "http2", ROLE_CLIENT)
    assert detect(PREFACE[:23]) == (NEED_MORE, "unknown", ROLE_UNKNOWN)
    assert detect(PREFACE[:3] + b"X" * 21)[1] != "http2"  # "PRI" starts a request line, not a preface


@pytest.mark.parametrize("data", [b"\x00" * 64, b"SSH-2.0-OpenSSH_9.6\r\n", b"\xff\xfe garbage \x01\x02" * 4,
                                  b"get / http/1.1\r\n\r\n", b"HTTP/2 200\r\n\r\n"])
def test_other_protocols_and_garbage_do_not_match(data: bytes) -> None:
    assert detect(data) == (NO_MATCH, "unknown", ROLE_UNKNOWN)
