from __future__ import annotations

import pytest

from qtap_async.plugins import host_of, join_headers
from qtap_async.rulekit import compile_rule
from tests.plugins.helpers import conn, exchange, recorded, tx


def test_context_fields_of_a_built_transaction() -> None:
    t = tx(path="/v1/items?page=2&q=a", authority="API.example.com:8443",
           request_headers=[("Host", "API.example.com:8443"), ("X-Trace", "a"), ("x-trace", "b"),
                            ("Content-Type", "text/plain")],
           response_headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], status=503)
    ctx = exchange(t, conn(direction="egress-internal", remote_ip="10.1.2.3", pid=99, exe="/bin/x")).context
    assert ctx.get("http.req.method") == "GET"
    assert ctx.get("http.req.path") == "/v1/items?page=2&q=a"
    assert ctx.get("http.req.host") == "API.example.com"
    assert ctx.get("http.req.url") == "https://API.example.com:8443/v1/items?page=2&q=a"
    assert ctx.get("http.req.headers.x-trace") == "a, b"
    assert ctx.get("http.req.headers.content-type") == "text/plain"
    assert ctx.get("http.res.headers.set-cookie") == "a=1, b=2"
    assert ctx.get("http.res.status") == 503
    assert ctx.get("process.exe") == "/bin/x"
    assert ctx.get("process.pid") == 99
    assert ctx.get("conn.direction") == "egress-internal"
    assert ctx.get("conn.remote_ip") == "10.1.2.3"
    assert ctx.get("http.req.headers.missing") is None
    assert ctx.get("no.such.field") is None


def test_missing_response_reads_as_null() -> None:
    ctx = exchange(tx(status=None, response_headers=[], incomplete=True, reason="closed")).context
    assert ctx.get("http.res.status") is None
    assert compile_rule("not http.res.status").evaluate(ctx)
    assert not compile_rule("http.res.status >= 400").evaluate(ctx)


def test_host_falls_back_to_connection_domain_and_plain_scheme() -> None:
    ex = exchange(tx(authority=None, request_headers=[]), conn(domain="sni.example.org", tls=False))
    assert ex.host == "sni.example.org"
    assert ex.url == "http://sni.example.org/v1/items"


@pytest.mark.parametrize(("authority", "host"), [
    ("a.b:80", "a.b"), ("a.b", "a.b"), ("[::1]:8080", "::1"), ("::1", "::1"), ("", ""), (None, ""),
])
def test_host_of(authority: str | None, host: str) -> None:
    assert host_of(authority) == host


def test_join_headers_lowercases_and_joins() -> None:
    assert join_headers([("A", "1"), ("a", "2"), ("B", "")]) == {"a": "1, 2", "b": ""}


def test_rules_on_recorded_http2_transactions() -> None:
    txs = recorded("h2c_nghttp_two")
    rule = compile_rule('http.res.status == 4xx and http.req.headers.user-agent startswith "nghttp2"')
    matched = [t.path for t in txs if rule.evaluate(exchange(t).context)]
    assert matched == ["/missing"]
    assert [exchange(t).context.get("http.req.host") for t in txs] == ["127.0.0.1", "127.0.0.1"]
