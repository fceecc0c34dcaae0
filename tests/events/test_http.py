"""The ``http_transaction`` event Struct holds exactly the line ``qtap run`` prints, at every capture level,
for recorded real transactions (HTTP/1, HTTP/2, gRPC, Upgrade) and made ones (server push, cut), and the
other protocol lines (TLS hello, DNS, parse error) decode as their events without losing a field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from qtap_async.events import (
    DnsAnswer,
    DnsMessage,
    DnsMessageEvent,
    Event,
    HttpTransactionEvent,
    ParseError,
    ParseErrorEvent,
    TlsClientHello,
    TlsClientHelloEvent,
)
from qtap_async.transforms.output import ProtocolOutput
from tests.plugins.helpers import recorded, tx
from tests.transforms.test_conntrack import _ct, _open

NAMES = ["http1_curl_expect100", "http1_nginx_gzip", "h2c_curl_upgrade", "h2c_nghttp_two", "grpc_python",
         "websocket_node"]


def _lines(level: str, records: list[Any]) -> list[dict[str, Any]]:
    ct, _ = _ct()
    ct.handle(_open(1, role=1, rport=443))
    out = ProtocolOutput(ct, level)  # type: ignore[arg-type]
    # Through JSON, as a consumer reads the line (bytes become base64 text, tuples arrays).
    return [msgspec.json.decode(msgspec.json.encode(e)) for r in records for e in out.convert(ct.conns[1], r, 1)]


def _transactions() -> list[Any]:
    out = [tx(), tx(status=None, method=None, authority=None, path=None, incomplete=True, reason="gap"),
           tx(pushed=True, promised_by=1, stream_id=2, response_trailers=[("grpc-status", "0")])]
    for name in NAMES:
        try:
            out += recorded(name, decode_bodies=True)
        except FileNotFoundError:
            pytest.fail(f"recorded transactions {name!r} missing")
    return out


@pytest.mark.parametrize("level", ["summary", "details", "full"])
def test_http_transaction_struct_encodes_the_printed_line(level: str) -> None:
    lines = _lines(level, _transactions())
    assert len(lines) > 5 and any("grpc" in ln for ln in lines) and any(ln.get("pushed") for ln in lines)
    for line in lines:
        ev = msgspec.json.decode(msgspec.json.encode(line), type=HttpTransactionEvent)
        assert msgspec.json.decode(msgspec.json.encode(ev)) == line
        assert isinstance(msgspec.json.decode(msgspec.json.encode(line), type=Event), HttpTransactionEvent)


def test_a_field_the_struct_lacks_would_fail() -> None:
    (line,) = _lines("details", [tx()])
    line["brand_new"] = 1
    ev = msgspec.json.decode(msgspec.json.encode(line), type=HttpTransactionEvent)
    assert msgspec.json.decode(msgspec.json.encode(ev)) != line


def test_protocol_record_lines_decode_as_their_events() -> None:
    hello = TlsClientHello(direction=0, ts_ns=20, sni="sni.test", alpn=["h2"], version="TLS1.3",
                           legacy_version="TLS1.2", supported_versions=["TLS1.3"], cipher_suites=[4865],
                           extensions=[0, 16])
    dns = DnsMessage(id=7, is_response=True, qname="a.test.", qtype="A", qdcount=1, ts_ns=21,
                     answers=[DnsAnswer(name="a.test.", type="A", ttl=60, data="127.0.0.1")])
    perr = ParseError(reason="bad", direction=0, offset=9, ts_ns=22, protocol="http1")
    lines = _lines("summary", [hello, dns, perr])
    kinds = [TlsClientHelloEvent, DnsMessageEvent, ParseErrorEvent]
    assert [ln["type"] for ln in lines] == ["tls_client_hello", "dns_message", "parse_error"]
    for line, kind in zip(lines, kinds, strict=True):
        ev = msgspec.json.decode(msgspec.json.encode(line), type=Event)
        assert type(ev) is kind
        assert msgspec.json.decode(msgspec.json.encode(ev)) == line
