"""The status server on a real socket: routes, Prometheus text that prometheus-client parses back, and hostile
input (malformed, huge, binary, slow) answered with a 4xx or a close, never a 5xx."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qtap_async.errors import StatusServerError
from qtap_async.telemetry import DEFAULT_LISTEN, MetricRegistry, Readiness, StatusServer, parse_listen

SNAPSHOT = {
    "qtap_kernel_records_total": 12,
    "qtap_channel_raw_depth_events": 3,
    'qtap_sink_delivered_events_total{store="event:pulse"}': 5,
    'qtap_transactions_total{protocol="h2"}': 2,
    'qtap_transactions_total{protocol="http/1.1"}': 7,
    "not a metric name": 1,
}


async def start(ready: bool = True) -> StatusServer:
    reg = MetricRegistry([lambda: SNAPSHOT], info={"version": "9.9.9"})
    st = Readiness(ready, [] if ready else ["store event:x is unreachable: refused"], {})
    server = StatusServer("127.0.0.1", 0, reg, lambda: st)
    await server.start()
    return server


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    try:
        return await asyncio.wait_for(reader.read(), 15)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1 ") else 0


async def test_routes_and_metrics_parse() -> None:
    server = await start()
    try:
        resp = await request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(resp) == 200 and b'"status":"alive"' in resp
        resp = await request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 200 and b'"ready":true' in resp
        resp = await request(server.port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 200
        head, _, body = resp.partition(b"\r\n\r\n")
        assert b"Content-Type: text/plain; version=0.0.4" in head
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert fams["qtap_kernel_records"].type == "counter"
        assert fams["qtap_kernel_records"].samples[0].value == 12
        assert fams["qtap_channel_raw_depth_events"].type == "gauge"
        protos = {s.labels["protocol"]: s.value for s in fams["qtap_transactions"].samples}
        assert protos == {"h2": 2, "http/1.1": 7}
        assert fams["qtap_sink_delivered_events"].samples[0].labels == {"store": "event:pulse"}
        assert fams["qtap_build_info"].samples[0].labels == {"version": "9.9.9"}
        resp = await request(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 200 and resp.endswith(b"\r\n\r\n")
        resp = await request(server.port, b"GET /nope HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 404
    finally:
        await server.close()


async def test_not_ready_is_503_with_reason() -> None:
    server = await start(ready=False)
    try:
        resp = await request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 503
        assert b"store event:x is unreachable: refused" in resp
    finally:
        await server.close()


HOSTILE = [
    (b"garbage\r\n\r\n", 400),
    (b"GET /healthz\r\n\r\n", 400),
    (b"GET /healthz HTTP/9\r\n\r\n", 400),
    (b"G\xffT /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /h\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    (b"GET healthz HTTP/1.1\r\n\r\n", 400),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
    (b"DELETE /readyz HTTP/1.1\r\n\r\n", 405),
    (b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n", 431),
    (b"\x00\x01\x02\x03", 400),
    (b"", 400),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE, ids=[f"case{i}" for i in range(len(HOSTILE))])
async def test_hostile_input_gets_4xx(raw: bytes, expected: int) -> None:
    server = await start()
    try:
        resp = await request(server.port, raw)
        assert status_of(resp) == expected, resp[:200]
        # and the server still serves
        assert status_of(await request(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200
    finally:
        await server.close()


async def test_random_bytes_never_5xx() -> None:
    rng = random.Random(1313)
    server = await start()
    try:
        for _ in range(200):
            n = rng.choice([1, 10, 100, 1000, 9000])
            raw = bytes(rng.getrandbits(8) for _ in range(n))
            if rng.random() < 0.5:
                raw = b"GET /" + raw + b" HTTP/1.1\r\n\r\n"
            resp = await request(server.port, raw)
            code = status_of(resp)
            assert code == 0 or 200 <= code < 500, resp[:200]
        assert all(code < 500 for code in server.requests), server.requests
    finally:
        await server.close()


def test_listen_parsing_and_loopback_default() -> None:
    assert parse_listen(DEFAULT_LISTEN) == ("127.0.0.1", 10001)
    assert parse_listen("off") is None
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad, why in (("10001", "HOST:PORT"), ("x:y", "port must be a number"), ("h:70000", "0..65535")):
        with pytest.raises(StatusServerError, match=why):
            parse_listen(bad)


async def test_port_in_use_is_a_clear_error() -> None:
    first = await start()
    try:
        reg = MetricRegistry([], info={})
        second = StatusServer("127.0.0.1", first.port, reg, lambda: Readiness(True, [], {}))
        with pytest.raises(StatusServerError, match=r"cannot listen on 127\.0\.0\.1"):
            await second.start()
    finally:
        await first.close()
