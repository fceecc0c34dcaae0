"""The record types: field order (the parsers build HttpTransaction positionally) and encoding."""

from __future__ import annotations

import msgspec

from qtap_async.protocols import DnsMessage, HttpTransaction, ParseError, Record, TlsClientHello

HTTP_TRANSACTION_FIELDS = (
    "protocol", "client_direction", "method", "path", "authority", "scheme", "status", "request_headers",
    "response_headers", "request_trailers", "response_trailers", "request_body", "request_body_size",
    "request_body_truncated", "response_body", "response_body_size", "response_body_truncated",
    "request_body_decoded", "response_body_decoded", "body_decode_error", "request_start_ns", "request_end_ns",
    "response_start_ns", "response_end_ns", "stream_id", "informational", "upgrade", "grpc", "incomplete", "reason",
    "pushed", "promised_by",
)


def test_http_transaction_field_order_is_pinned() -> None:
    assert HttpTransaction.__struct_fields__ == HTTP_TRANSACTION_FIELDS


def test_records_round_trip_as_a_tagged_union() -> None:
    recs = [
        HttpTransaction(protocol="h2", status=200, request_headers=[("a", "b")], response_body=b"\x00\xff"),
        ParseError(reason="x", direction=1, offset=3, ts_ns=4, protocol="http1"),
        TlsClientHello(direction=0, ts_ns=1, sni="a.test", alpn=["h2"]),
        DnsMessage(id=1, is_response=False, qname="a.", qtype="A"),
    ]
    for enc, dec in ((msgspec.json.encode, msgspec.json.decode), (msgspec.msgpack.encode, msgspec.msgpack.decode)):
        assert dec(enc(recs), type=list[Record]) == recs
