"""Hostile-input limits of the protocol layer.

Every parser in ``qtap_async.protocols`` bounds the memory one connection can make it hold. The
bounds live in one ``Limits`` Struct (one instance is shared by all sessions):

``max_header_bytes`` (default 64 KiB)
    Largest header section kept for one message: an HTTP/1 request/response head or trailer
    section, an HTTP/2 header block (HEADERS + CONTINUATION, HPACK-compressed bytes), a TLS
    ClientHello. Larger: a ``ParseError`` and the connection is given up.
``max_body_bytes`` (default 64 KiB)
    Body bytes kept per message (after de-chunking). The rest is counted in ``*_body_size`` and the
    transaction has ``*_body_truncated=True``.
``max_concurrent_streams`` (default 256)
    HTTP/2 streams tracked at once per connection. Frames of streams past the bound are counted,
    not parsed; the first refusal is reported as a ``ParseError``.
``max_pending_requests`` (default 64)
    HTTP/1 pipelined requests waiting for their response. Past the bound the connection is given up
    (its exchanges are reported incomplete).
``decode_bodies`` (default False)
    Decode gzip/x-gzip/deflate/br/zstd ``content-encoding`` into ``*_body_decoded``.
``max_decoded_body_bytes`` (default 1 MiB)
    Output bound of that decoding (decompression bombs stop there, with ``body_decode_error``).
``max_hpack_table_bytes`` (default 64 KiB)
    Largest HPACK dynamic table a peer may make the decoder keep (the protocol's own bound is the
    SETTINGS_HEADER_TABLE_SIZE the receiver advertised; this caps it for memory).
``max_detect_bytes`` (default 20 KiB)
    Bytes buffered per direction while the protocol is still being detected (enough for a
    16 KiB HTTP/2 frame plus the next frame header when a capture starts mid-connection).
``headers`` (default True)
    Build the HTTP/1 header lists of transactions. False when nothing downstream reads them (the
    local output at summary level): heads are still framed from their raw bytes and a malformed
    header line is still a ``ParseError``; ``request_headers``/``response_headers`` are empty.
"""

from __future__ import annotations

import msgspec


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on what one connection can make the parsers hold. See the module docstring."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024
    max_concurrent_streams: int = 256
    max_pending_requests: int = 64
    decode_bodies: bool = False
    max_decoded_body_bytes: int = 1024 * 1024
    max_hpack_table_bytes: int = 64 * 1024
    max_detect_bytes: int = 20 * 1024
    headers: bool = True


DEFAULT_LIMITS = Limits()
