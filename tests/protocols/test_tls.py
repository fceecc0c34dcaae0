"""TLS seen in plaintext: the ClientHello (recorded from curl, made by OpenSSL through Python's ssl, hand-made
and hostile), the role from the first record, the size limit."""

from __future__ import annotations

import ssl

import pytest

from qtap_async.protocols import (
    Direction,
    ParseError,
    ProtocolSession,
    TlsClientHello,
    parse_client_hello,
)
from qtap_async.protocols.limits import Limits
from qtap_async.protocols.tls import ROLE_CLIENT, ROLE_SERVER, looks_like_tls
from tests.protocols.helpers import errors, run
from tests.protocols.record import load, replay

C, S = Direction.SEND, Direction.RECV


def test_recorded_curl_client_hello() -> None:
    out = replay(load("tls_curl_clienthello"))
    (h,) = [r for r in out if isinstance(r, TlsClientHello)]
    assert h.sni == "api.example.test" and h.alpn == ["h2", "http/1.1"] and h.version == "TLS1.3"
    assert h.direction == C and 0 in h.extensions and h.cipher_suites


def test_client_hello_split_across_records_and_chunks() -> None:
    rec = load("tls_curl_clienthello")
    raw = rec.stream(0)
    body = raw[5 : 5 + int.from_bytes(raw[3:5], "big")]
    # re-frame the handshake message into 3 records, fed one byte at a time
    recs = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in (body[:10], body[10:200], body[200:]))
    s = ProtocolSession(local_port=40000, remote_port=443)
    out = [r for i in range(len(recs)) for r in s.feed(C, recs[i : i + 1], i)]
    (h,) = out
    assert isinstance(h, TlsClientHello) and h.sni == "api.example.test" and h.ts_ns == 0
    assert s.protocol == "tls" and s.feed(S, b"\x16\x03\x03\x00\x10" + b"\0" * 16, 9) == []


def test_local_server_sees_client_hello_on_recv() -> None:
    out = replay(load("tls_curl_clienthello"), local_is_client=False)
    (h,) = [r for r in out if isinstance(r, TlsClientHello)]
    assert h.direction == S


def test_client_hello_without_extensions_and_garbage() -> None:
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    h = parse_client_hello(body)
    assert isinstance(h, TlsClientHello) and h.sni is None and h.version == "TLS1.2"
    assert isinstance(parse_client_hello(b"\x03\x03\x00"), str)
    out = run([(C, b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00")])  # truncated hello
    assert errors(out)


def _openssl_hellos(sni: str, alpn: list[str], maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
                    ) -> tuple[bytes, bytes]:
    """(the client's first flight, the server's answer) as OpenSSL writes them, through memory BIOs."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = maximum
    client_ctx.set_alpn_protocols(alpn)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    first = c_out.read()
    # A server without a certificate still answers the hello: with an alert, a TLS record from the server.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    s_in.write(first)
    with pytest.raises(ssl.SSLError):
        server.do_handshake()
    return first, s_out.read()


@pytest.mark.parametrize("maximum, version", [(ssl.TLSVersion.MAXIMUM_SUPPORTED, "TLS1.3"),
                                              (ssl.TLSVersion.TLSv1_2, "TLS1.2")])
def test_openssl_client_hello(maximum: ssl.TLSVersion, version: str) -> None:
    first, answer = _openssl_hellos("svc.example.test", ["h2", "http/1.1"], maximum)
    assert looks_like_tls(first) == (True, ROLE_CLIENT)
    assert looks_like_tls(answer)[0] is True
    s = ProtocolSession(local_port=40000, remote_port=443)
    (h,) = s.feed(C, first, 5)
    assert isinstance(h, TlsClientHello)
    assert (h.sni, h.alpn, h.version, h.direction, h.ts_ns) == ("svc.example.test", ["h2", "http/1.1"], version, C, 5)
    assert 0 in h.extensions and 16 in h.extensions  # server_name, ALPN
    assert h.cipher_suites and not any((c & 0x0F0F) == 0x0A0A for c in h.cipher_suites)
    assert s.protocol == "tls"
    assert s.feed(S, answer, 6) == []  # after the hello nothing more is parsed


def test_role_and_partial_record_headers() -> None:
    first, _ = _openssl_hellos("a.test", ["http/1.1"])
    for n in range(1, 5):
        assert looks_like_tls(first[:n])[0] is None  # too short to tell
    assert looks_like_tls(b"\x16\x03\x03\x00\x10\x02") == (True, ROLE_SERVER)  # a ServerHello
    assert looks_like_tls(b"\x17\x03\x03\x00\x10")[0] is True  # application data: role unknown
    assert looks_like_tls(b"\x17\x03\x03\x00\x10")[1] not in (ROLE_CLIENT, ROLE_SERVER)
    assert looks_like_tls(b"GET / HTTP/1.1\r\n")[0] is False
    assert looks_like_tls(b"\x16\x02\x00")[0] is False  # not SSL3/TLS
    assert looks_like_tls(b"\x16\x03\x01\x00\x00")[0] is False  # an empty record
    assert looks_like_tls(b"\x16\x03\x01\xff\xff")[0] is False  # longer than any TLS record


def test_a_client_hello_larger_than_the_limit_is_an_error_not_a_buffer() -> None:
    first, _ = _openssl_hellos("b.test", ["h2"])
    s = ProtocolSession(local_port=40000, remote_port=443, limits=Limits(max_header_bytes=64))
    out = s.feed(C, first, 1)
    assert [type(r) for r in out] == [ParseError]
    assert isinstance(out[0], ParseError) and out[0].protocol == "tls"
