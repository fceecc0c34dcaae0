"""Property fuzzing of every input parser, sized by the Hypothesis profile (tests/conftest.py):
``ci`` (the default) fits the CI budget, ``fuzz`` (``just fuzz``) runs a hundred times longer.

Each property: arbitrary input gives a result or the component's own clear error, never another
exception (and, for the wire parsers, never an "internal error" parse record).
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from qtap_async.config import ConfigError, loads_config
from qtap_async.errors import BodyError
from qtap_async.events.http import HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.events.tls import TlsClientHello
from qtap_async.protocols import ProtocolSession
from qtap_async.pulse.config import IngestLimits
from qtap_async.pulse.ingest import decode_body
from qtap_async.rulekit import RuleSyntaxError, compile_rule
from tests.protocols.helpers import no_internal_errors

_HTTP1_BITS = [b"GET ", b"POST ", b"HTTP/1.1", b"\r\n", b"\r\n\r\n", b"Host: x", b"Content-Length: ",
               b"Transfer-Encoding: chunked", b"0\r\n\r\n", b"FFFFFFFFFFFFFFFF", b"Expect: 100-continue",
               b"HTTP/1.1 200 OK", b"HTTP/1.1 100 Continue", b":", b" ", b"\n", b"1"]
_H2_BITS = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"\x00\x00\x05\x01\x04\x00\x00\x00\x01", b"\x82\x86\x84\x41\x01x", b"\x3f\xe1\xff\xff\xff\x0f",
            b"\x00\x40\x00\x09\x00\x00\x00\x00\x01", b"\xff\xff\xff", b"\x00\x00\x00\x00\x01\x00\x00\x00\x01"]
_TLS_BITS = [b"\x16\x03\x01", b"\x16\x03\x03\x00\x30", b"\x01\x00\x00\x2c", b"\x03\x03", b"\x00" * 32,
             b"\xff\xff", b"\x00\x00", b"\x00\x10\x00\x05\x00\x03\x02h2"]


def _chunks(bits: list[bytes]) -> Any:
    piece = st.one_of(st.sampled_from(bits), st.binary(max_size=64))
    return st.lists(st.tuples(st.integers(0, 1), st.lists(piece, max_size=12).map(b"".join)), max_size=16)


def _feed(chunks: list[tuple[int, bytes]], remote_port: int, alpn: str | None = None) -> list[Any]:
    s = ProtocolSession(local_port=40000, remote_port=remote_port, alpn=alpn)
    out: list[Any] = []
    ts = 0
    for direction, data in chunks:
        ts += 1000
        out.extend(s.feed(direction, data, ts))
        if data[:1] == b"\xff":  # now and then a gap
            out.extend(s.gap(direction, len(data), ts))
    out.extend(s.close(ts + 1000))
    return out


@given(chunks=_chunks(_HTTP1_BITS))
def test_http1_wire_bytes(chunks: list[tuple[int, bytes]]) -> None:
    out = _feed(chunks, 8080)
    no_internal_errors(out)
    assert all(isinstance(r, (HttpTransaction, ParseError, TlsClientHello)) or hasattr(r, "kind") for r in out)


@given(chunks=_chunks(_H2_BITS))
def test_http2_wire_bytes(chunks: list[tuple[int, bytes]]) -> None:
    no_internal_errors(_feed(chunks, 8443, alpn="h2"))
    no_internal_errors(_feed(chunks, 8080))


@given(chunks=_chunks(_TLS_BITS))
def test_tls_wire_bytes(chunks: list[tuple[int, bytes]]) -> None:
    no_internal_errors(_feed(chunks, 443))


@given(chunks=st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=600)), max_size=6))
def test_dns_wire_bytes(chunks: list[tuple[int, bytes]]) -> None:
    no_internal_errors(_feed(chunks, 53))


_RULE_BITS = ["http.req.method", "http.res.status", "==", "!=", ">=", "and", "or", "not", "(", ")", "5xx",
              '"GET"', "in", "[", "]", ",", "matches", "contains", "request.headers", ".", "42", "-", "$m", "@"]


@given(text=st.one_of(st.text(max_size=120), st.lists(st.sampled_from(_RULE_BITS), max_size=14).map(" ".join)))
def test_rule_language(text: str) -> None:
    try:
        compile_rule(text, {"m": "http.res.status == 500"})
    except RuleSyntaxError as exc:
        assert str(exc)


_yaml_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["type", "id", "level", "rules", "expr", "name",
                                                             "http", "stack", "plugins", "config", "x"]),
                                            inner, max_size=4)),
    max_leaves=20)
# msgpack has no integers outside int64/uint64: the same shapes with integers msgpack can carry.
_msgpack_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["type", "id", "level", "ts", "x"]), inner, max_size=4)),
    max_leaves=20)
_top = st.fixed_dictionaries({"version": st.sampled_from([2, 2, 1, "2"])},
                             optional={"services": _yaml_value, "stacks": _yaml_value, "tap": _yaml_value,
                                       "rulekit": _yaml_value})


@given(doc=_top)
def test_config_loader_structured(doc: dict[str, Any]) -> None:
    try:
        loads_config(yaml.safe_dump(doc), "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc)


@example(text="\x1f")  # found by this test: the YAML reader refused it with a raw ReaderError
@given(text=st.text(max_size=300))
def test_config_loader_text(text: str) -> None:
    try:
        loads_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc)


_small = IngestLimits(max_body_bytes=1 << 16, max_decoded_bytes=1 << 18, max_batch_events=50)


@given(body=st.one_of(st.binary(max_size=400),
                      _yaml_value.map(lambda v: msgspec.json.encode(v)),
                      _msgpack_value.map(lambda v: msgspec.msgpack.encode(v))),
       ctype=st.sampled_from(["application/json", "application/msgpack", "text/plain", ""]),
       enc=st.sampled_from(["", "gzip", "zstd", "br"]))
def test_pulse_body_decoder(body: bytes, ctype: str, enc: str) -> None:
    try:
        decode_body(body, ctype, enc, _small)
    except BodyError as exc:
        assert 400 <= exc.status < 500 and str(exc)
