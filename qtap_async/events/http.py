"""Records produced by the protocol layer (``qtap_async.protocols``) for HTTP/1.x, HTTP/2, gRPC and TLS.

All records are frozen msgspec Structs, tagged (field ``kind``) so a stream of mixed records encodes
and decodes as one union. Directions are plain ints with the values of
``qtap_async.protocols.Direction``: 0 = SEND, 1 = RECV, from the local process's point of view.
Timestamps are the ``ts_ns`` values the caller passed to ``ProtocolSession.feed``.
"""

from __future__ import annotations

import msgspec

Headers = list[tuple[str, str]]


class GrpcInfo(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """gRPC details of an HTTP/2 exchange whose request ``content-type`` is ``application/grpc*``.

    ``streaming`` is what the wire shows: True when a side sent other than exactly one request
    message or more than one response message (a server-streaming call that returned one message
    looks unary).
    """

    service: str
    method: str
    grpc_status: int | None = None
    grpc_message: str | None = None
    grpc_encoding: str | None = None
    request_messages: int = 0
    response_messages: int = 0
    request_compressed_messages: int = 0
    response_compressed_messages: int = 0
    streaming: bool = False


class HttpTransaction(msgspec.Struct, frozen=True, gc=False, tag="http_transaction", tag_field="kind"):
    """One request/response exchange.

    ``protocol``: "http/1.0" | "http/1.1" | "h2" | "h2c". ``client_direction`` is the direction
    that carried the request (0: the local process is the client, 1: it is the server, None: not
    known). Header lists keep wire order, case (HTTP/1) and duplicates; HTTP/2 pseudo-headers are not
    in them but in ``method``/``path``/``authority``/``scheme``/``status``.

    Bodies: ``*_body`` holds at most ``Limits.max_body_bytes`` bytes, ``*_body_size`` counts every
    body byte seen (after de-chunking, before content decoding), ``*_body_truncated`` is True when
    bytes were left out (limit or gap). ``*_body_decoded`` is set only with ``Limits.decode_bodies``
    and a ``content-encoding`` the layer knows (gzip, deflate, br, zstd).

    Timing (ns): ``request_start_ns`` first request byte, ``request_end_ns`` last request byte,
    ``response_start_ns`` first byte of the final (non-1xx) response, ``response_end_ns`` its last
    byte. ``informational`` lists the 1xx statuses seen before the final response (e.g. 100).

    ``upgrade``: "websocket", "h2c", another Upgrade token, or "tunnel" for a successful CONNECT;
    the layer stops parsing the connection after it (h2c switches to HTTP/2).

    ``incomplete`` is True when the exchange was cut (connection closed, stream reset, gap, GOAWAY,
    limits, undecodable headers) and ``reason`` says why.

    The parsers build this positionally (about 6x cheaper than keywords on the hot path): the field
    order is part of the contract, pinned by tests/protocols/test_events.py.
    """

    protocol: str
    client_direction: int | None = None
    method: str | None = None
    path: str | None = None
    authority: str | None = None
    scheme: str | None = None
    status: int | None = None
    request_headers: Headers = []
    response_headers: Headers = []
    request_trailers: Headers = []
    response_trailers: Headers = []
    request_body: bytes = b""
    request_body_size: int = 0
    request_body_truncated: bool = False
    response_body: bytes = b""
    response_body_size: int = 0
    response_body_truncated: bool = False
    request_body_decoded: bytes | None = None
    response_body_decoded: bytes | None = None
    body_decode_error: str | None = None
    request_start_ns: int | None = None
    request_end_ns: int | None = None
    response_start_ns: int | None = None
    response_end_ns: int | None = None
    stream_id: int | None = None
    informational: list[int] = []
    upgrade: str | None = None
    grpc: GrpcInfo | None = None
    incomplete: bool = False
    reason: str | None = None
    # HTTP/2 server push: the exchange was promised by the server (PUSH_PROMISE on stream ``promised_by``),
    # not requested by the client; its request half is the promised request.
    pushed: bool = False
    promised_by: int | None = None


class ParseError(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="parse_error", tag_field="kind"):
    """Input a parser could not make sense of, or had to give up on.

    ``offset`` is the byte offset in ``direction``'s stream (gaps counted) where the problem was
    found; ``protocol`` names the parser ("http1", "http2", "tls", "dns", "session").
    """

    reason: str
    direction: int | None = None
    offset: int = 0
    ts_ns: int = 0
    protocol: str = "unknown"


class TlsClientHello(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="tls_client_hello",
                     tag_field="kind"):
    """A TLS ClientHello seen in plaintext (a connection no probe decrypts).

    ``version`` is the highest version offered ("TLS1.3" when supported_versions lists it, else the
    legacy version); ``cipher_suites`` and ``extensions`` keep wire order (GREASE values included)
    so fingerprints (JA3/JA4) can be computed downstream.
    """

    direction: int
    ts_ns: int
    sni: str | None = None
    alpn: list[str] = []
    version: str = ""
    legacy_version: str = ""
    supported_versions: list[str] = []
    cipher_suites: list[int] = []
    extensions: list[int] = []
