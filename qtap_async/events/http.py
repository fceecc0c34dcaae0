"""HTTP: the transaction record the protocol layer (``qtap_async.protocols``) produces for HTTP/1.x,
HTTP/2 and gRPC, and the ``http_transaction`` event made of it.

All records are frozen msgspec Structs, tagged (field ``kind``) so a stream of mixed records encodes
and decodes as one union. Directions are plain ints with the values of
``qtap_async.protocols.Direction``: 0 = SEND, 1 = RECV, from the local process's point of view.
Timestamps are the ``ts_ns`` values the caller passed to ``ProtocolSession.feed``.
"""

from __future__ import annotations

import msgspec

from qtap_async.events.context import ConnContext, Timestamp

__all__ = ["GrpcInfo", "Headers", "HttpTransaction", "HttpTransactionEvent"]

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


class HttpTransactionEvent(ConnContext, frozen=True, gc=False, kw_only=True, tag="http_transaction",
                           tag_field="type", omit_defaults=True):
    """One HTTP transaction with its connection context: what ``qtap run`` prints and what the
    ``http_capture`` plugin sends to the event stores.

    The fields from ``method`` to ``response_body_size`` are always written (``null`` when the wire did not
    show them); the rest only when set. ``duration_ns`` runs from the first request byte to the last
    response byte, ``ttfb_ns`` to the first response byte. Headers, trailers and bodies are set only at
    the capture levels that allow them (``details``: headers, ``full``: bodies too), already redacted;
    Pulse never stores them. ``transaction_id``, ``level``, ``rule`` and ``object_digest`` are
    http_capture's: the transaction's id across its events and object, the level a rule chose, and the
    object that holds the headers and bodies.
    """

    id: str
    ts: Timestamp
    protocol: str
    method: str | None
    scheme: str
    authority: str | None
    host: str
    path: str | None  # query values redacted (qtap run) or masked (http_capture)
    status: int | None
    request_body_size: int
    response_body_size: int
    duration_ns: int = 0
    ttfb_ns: int = 0
    stream_id: int | None = None
    pushed: bool = False  # HTTP/2 server push: promised by the server on stream promised_by
    promised_by: int | None = None
    grpc: GrpcInfo | None = None
    upgrade: str | None = None
    informational: list[int] = []
    incomplete: bool = False
    reason: str | None = None
    request_headers: Headers | None = None
    response_headers: Headers | None = None
    request_trailers: Headers | None = None
    response_trailers: Headers | None = None
    request_body: bytes | None = None
    response_body: bytes | None = None
    request_body_truncated: bool | None = None
    response_body_truncated: bool | None = None
    transaction_id: str = ""
    level: str = ""  # http_capture: "summary", "details" or "full"
    rule: str = ""  # http_capture: the rule that chose the level ("" = the plugin's level)
    object_digest: str = ""  # sha256 of the object holding headers/bodies, when one was made
    # The request's W3C trace context (not a secret: ids only), so a span made of this event joins the
    # caller's trace; "" when absent, malformed or redacted (tap.redaction.headers names it).
    traceparent: str = ""
