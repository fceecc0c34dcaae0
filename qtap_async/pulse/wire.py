"""The body codings of ``POST /v1/events``, both ends: the agent's client compresses, Pulse decompresses.

Neutral ground on purpose: the agent imports this module (through ``pulse.client``) and must not load
Pulse's server side (ingest, storage, chDB) to gzip a body, and keeping both directions here means the
codings one end sends are the codings the other end takes.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Literal

import zstandard

from qtap_async.errors import BodyError

Coding = Literal["gzip", "zstd", "none"]
GZIP_LEVEL = 5
ZSTD_LEVEL = 3


class Compressor:
    """Compresses request bodies with one coding; ``content_encoding`` is the header value (None: none)."""

    def __init__(self, coding: Coding) -> None:
        self.coding = coding
        self.content_encoding = None if coding == "none" else coding
        # One zstd context per client, reused for every batch (a new one per body costs its set-up each time).
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if coding == "zstd" else None

    def __call__(self, data: bytes) -> bytes:
        if self.coding == "gzip":
            return gzip.compress(data, compresslevel=GZIP_LEVEL)
        if self._zstd is not None:
            return self._zstd.compress(data)
        return data


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A request body in its Content-Encoding -> at most ``limit`` bytes; BodyError (400, 413, 415) otherwise.

    Never inflates more than ``limit + 1`` bytes, so a compression bomb costs its limit and no more."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        out = body
    elif enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(wbits=47)  # gzip or zlib header
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise BodyError(400, f"bad gzip body: {e}") from e
        if not d.eof and len(out) <= limit:
            raise BodyError(400, "bad gzip body: truncated (no end of stream)")
    elif enc == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as e:
            raise BodyError(400, f"bad zstd body: {e}") from e
    else:
        raise BodyError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, zstd or none")
    if len(out) > limit:
        raise BodyError(413, f"body decodes to more than {limit} bytes")
    return out
