"""The local output's formatter: each protocol record as one JSON-ready line with its connection and
process context; HTTP shaped by level; a pure function of its input (it names nothing, learns nothing)."""

from __future__ import annotations

from typing import Any

import msgspec

from qtap_async.events.dns import DnsAnswer, DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.events.tls import TlsClientHello
from qtap_async.plugins.redact import Redactor
from qtap_async.transforms.output import ProtocolOutput
from tests.transforms.test_conntrack import _ct, _open

TX = HttpTransaction(protocol="http/1.1", method="GET", authority="api.test:8080", path="/a?token=s3cret",
                     status=201, request_headers=[("Authorization", "Bearer s3cret"), ("X-A", "1")],
                     response_headers=[("Content-Type", "text/plain")], request_body=b"", response_body=b"hi",
                     response_body_size=2, request_start_ns=100, response_start_ns=150, response_end_ns=400)


def _conn() -> tuple[Any, Any]:
    ct, _ = _ct()
    ct.handle(_open(1))
    return ct, ct.conns[1]


def _json(events: list[Any]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(msgspec.json.encode(e)) for e in events]


def test_http_by_level_with_the_connection_context() -> None:
    ct, conn = _conn()
    summary, details, full = (_json(ProtocolOutput(ct, lv).convert(conn, TX, 0))[0]  # type: ignore[arg-type]
                              for lv in ("summary", "details", "full"))
    for ev in (summary, details, full):
        assert (ev["type"], ev["method"], ev["status"], ev["host"], ev["scheme"]) == (
            "http_transaction", "GET", 201, "api.test", "http")
        assert (ev["conn_id"], ev["direction"], ev["src_port"], ev["dst_ip"], ev["dst_port"], ev["tls"]) == (
            1, "egress", 40000, "10.0.0.1", 80, False)
        assert (ev["duration_ns"], ev["ttfb_ns"]) == (300, 50) and ev["ts"] == ct.rfc3339(100)
        assert "s3cret" not in ev["path"]  # secret query values redacted by default
    assert "request_headers" not in summary and "request_body" not in details
    assert ["X-A", "1"] in details["request_headers"]
    assert all("s3cret" not in v for _, v in details["request_headers"])
    assert full["response_body"] == "aGk=" and full["response_body_truncated"] is False  # bytes: base64 in JSON


def test_show_secrets_and_tls_layer() -> None:
    ct, conn = _conn()
    (ev,) = _json(ProtocolOutput(ct, "details", Redactor(enabled=False)).convert(conn, TX, 1))
    assert ev["path"] == "/a?token=s3cret" and ["Authorization", "Bearer s3cret"] in ev["request_headers"]
    assert ev["tls"] is True and ev["scheme"] == "https"


def test_other_records_keep_their_fields_under_the_event_names() -> None:
    ct, conn = _conn()
    out = ProtocolOutput(ct)
    dns = DnsMessage(id=77, is_response=True, qname="a.test.", answers=[DnsAnswer(name="a.test", type="A", ttl=5,
                                                                                   data="10.0.0.1")], ts_ns=500)
    hello = TlsClientHello(direction=0, ts_ns=600, sni="a.test", alpn=["h2"])
    perr = ParseError(protocol="http1", direction=1, reason="bad status line", ts_ns=700)
    d, h, p = (_json(out.convert(conn, r, 0))[0] for r in (dns, hello, perr))
    assert (d["type"], d["dns_id"], d["qname"], d["ts"]) == ("dns_message", 77, "a.test.", ct.rfc3339(500))
    assert "kind" not in d and "ts_ns" not in d and d["id"] != 77
    assert (h["type"], h["sni"], h["alpn"]) == ("tls_client_hello", "a.test", ["h2"])
    assert (p["type"], p["reason"], p["conn_id"]) == ("parse_error", "bad status line", 1)
    assert len({d["id"], h["id"], p["id"]}) == 3


def test_formatting_changes_nothing_about_the_connection() -> None:
    ct, conn = _conn()
    out = ProtocolOutput(ct)
    out.convert(conn, TX, 0)
    out.convert(conn, TlsClientHello(direction=0, ts_ns=1, sni="sni.test"), 0)
    assert (conn.domain, conn.domain_source) == ("", "")  # naming is transforms/enrich.py's job
    assert out.convert(conn, object(), 0) == []  # not a record: nothing
