"""Sans-IO protocol parsers: reassembled byte streams in, transactions and other records out.

No I/O, no asyncio, no logging. Per connection the agent creates one ``ProtocolSession`` and feeds
it both directions; see ``session`` for the contract and ``limits`` for the hostile-input bounds
(``Limits``: max_header_bytes, max_body_bytes, max_concurrent_streams, max_pending_requests,
decode_bodies, max_decoded_body_bytes, max_hpack_table_bytes, max_detect_bytes).

Modules: ``detect`` (first bytes -> protocol), ``http1`` (HTTP/1.x), ``http2`` (frames, streams),
``hpack`` (RFC 7541 with Huffman), ``grpc``, ``tls`` (ClientHello: SNI, ALPN), ``dns`` (UDP and
TCP), ``bodies`` (bounded bodies, content-encoding decoding).
"""

from qtap_async.events.dns import DnsAnswer, DnsMessage
from qtap_async.events.http import GrpcInfo, HttpTransaction
from qtap_async.events.parse_error import ParseError
from qtap_async.events.tls import TlsClientHello
from qtap_async.protocols.dns import parse_dns_datagram
from qtap_async.protocols.hpack import HpackDecoder, huffman_decode
from qtap_async.protocols.limits import DEFAULT_LIMITS, Limits
from qtap_async.protocols.session import Direction, ProtocolSession, Record
from qtap_async.protocols.tls import parse_client_hello

__all__ = [
    "DEFAULT_LIMITS",
    "Direction",
    "DnsAnswer",
    "DnsMessage",
    "GrpcInfo",
    "HpackDecoder",
    "HttpTransaction",
    "Limits",
    "ParseError",
    "ProtocolSession",
    "Record",
    "TlsClientHello",
    "huffman_decode",
    "parse_client_hello",
    "parse_dns_datagram",
]
