"""Small helpers shared by the protocol tests."""

from __future__ import annotations

from typing import Any

import msgspec

from qtap_async.protocols import (
    DEFAULT_LIMITS,
    HttpTransaction,
    Limits,
    ParseError,
    ProtocolSession,
)


def run(chunks: list[tuple[int, bytes]], *, local_port: int = 40000, remote_port: int = 8080,
        alpn: str | None = None, limits: Limits = DEFAULT_LIMITS, close: bool = True,
        session: ProtocolSession | None = None) -> list[Any]:
    """Feed ``(direction, bytes)`` chunks with ts 1000, 2000, ...; ``(direction, -n)``-style gaps are
    given as ``(direction, n)`` with an int payload."""
    s = session or ProtocolSession(local_port=local_port, remote_port=remote_port, alpn=alpn, limits=limits)
    out: list[Any] = []
    ts = 0
    for d, payload in chunks:
        ts += 1000
        if isinstance(payload, int):
            out.extend(s.gap(d, payload, ts))
        else:
            out.extend(s.feed(d, payload, ts))
    if close:
        out.extend(s.close(ts + 1000))
    return out


def txs(records: list[Any]) -> list[HttpTransaction]:
    return [r for r in records if isinstance(r, HttpTransaction)]


def errors(records: list[Any]) -> list[ParseError]:
    return [r for r in records if isinstance(r, ParseError)]


_TS_FIELDS = ("request_start_ns", "request_end_ns", "response_start_ns", "response_end_ns", "ts_ns")


def normalized(records: list[Any]) -> list[Any]:
    """Records as plain data with timestamps and byte offsets removed (chunking-independent view)."""
    out = []
    for r in records:
        d = msgspec.to_builtins(r)
        for k in _TS_FIELDS:
            d.pop(k, None)
        if d.get("kind") == "parse_error":
            d.pop("offset", None)
        out.append(d)
    return out


def no_internal_errors(records: list[Any]) -> None:
    for r in records:
        assert not (isinstance(r, ParseError) and r.reason.startswith("internal error")), r
