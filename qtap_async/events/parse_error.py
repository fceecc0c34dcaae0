"""Parse errors: input a parser could not make sense of, as the protocol layer records it and as an event."""

from __future__ import annotations

import msgspec

from qtap_async.events.context import ConnContext, Timestamp

__all__ = ["ParseError", "ParseErrorEvent"]


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



class ParseErrorEvent(ConnContext, frozen=True, gc=False, kw_only=True, tag="parse_error", tag_field="type",
                      omit_defaults=True):
    """A ``ParseError`` with its connection context (``direction`` is the connection's, the stream is
    ``stream``; ``ts`` is the record's time on the wall clock)."""

    id: str
    ts: Timestamp
    reason: str
    offset: int
    protocol: str
    stream: str = ""  # "send" | "recv"; "" when the error is not about one stream
