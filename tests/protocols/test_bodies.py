"""Message bodies: bounded accumulation across chunks and gaps, and content-encoding decoding with the
real compressors (gzip, zlib, brotli, zstandard), stacked codings, decompression bombs and cut streams."""

from __future__ import annotations

import gzip
import os
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from qtap_async.protocols.bodies import Body, decode_content

TEXT = b"".join(b"line %d of a compressible body\n" % i for i in range(2000))


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_each_coding_round_trips(coding: str) -> None:
    assert decode_content(ENCODERS[coding](TEXT), coding, len(TEXT), False) == (TEXT, None)
    assert decode_content(ENCODERS[coding](TEXT), f" {coding.upper()} ", len(TEXT), False) == (TEXT, None)


def test_raw_deflate_as_some_servers_send_it() -> None:
    assert decode_content(_raw_deflate(TEXT), "deflate", len(TEXT), False) == (TEXT, None)


def test_codings_are_undone_in_reverse_order_of_application() -> None:
    applied = brotli.compress(gzip.compress(TEXT))  # gzip first, then br
    assert decode_content(applied, "gzip, br", len(TEXT), False) == (TEXT, None)
    data, err = decode_content(applied, "br, gzip", len(TEXT), False)  # the wrong order cannot decode
    assert data is None and err is not None and err.startswith("gzip:")


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_several_members_or_frames_are_one_body(coding: str) -> None:
    two = ENCODERS[coding](TEXT[:1000]) + ENCODERS[coding](TEXT[1000:])
    assert decode_content(two, coding, len(TEXT), False) == (TEXT, None)
    data, err = decode_content(two[:-5], coding, len(TEXT), False)  # the second one cut
    assert data is not None and TEXT.startswith(data)
    assert err is not None and "incomplete" in err


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_decompression_bomb_stops_at_the_limit(coding: str) -> None:
    bomb = ENCODERS[coding](bytes(4 << 20))  # 4 MiB of zeros in a few KiB
    assert len(bomb) < 64 << 10
    data, err = decode_content(bomb, coding, 4096, False)
    assert data == bytes(4096)
    assert err == "decoded body larger than 4096 bytes"


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_cut_stream_gives_its_prefix_and_says_so(coding: str) -> None:
    noise = os.urandom(1000)  # incompressible: the cut is in the data, not in a trailer
    cut = ENCODERS[coding](TEXT + noise)
    cut = cut[: len(cut) * 2 // 3]
    data, err = decode_content(cut, coding, 1 << 20, True)
    assert data is not None and (TEXT + noise).startswith(data) and len(data) < len(TEXT) + len(noise)
    assert err is not None and err.startswith("body truncated before decoding")
    data, err = decode_content(cut, coding, 1 << 20, False)
    assert err is not None and ("incomplete" in err or "zstd" in err)


def test_identity_unknown_and_garbage() -> None:
    assert decode_content(TEXT, "identity", 10, False) == (None, None)
    assert decode_content(TEXT, "", 10, False) == (None, None)
    assert decode_content(TEXT, "compress", 10, False) == (None, "unsupported content-encoding 'compress'")
    assert decode_content(TEXT, "gzip, lzma", 10, False) == (None, "unsupported content-encoding 'lzma'")
    for coding in ("gzip", "deflate", "br"):
        data, err = decode_content(b"\xff not compressed at all \xff", coding, 100, False)
        assert data is None and err is not None and err.startswith(f"{coding}:")
    data, err = decode_content(b"\xff not compressed at all \xff", "zstd", 100, False)
    assert data == b"" and err is not None and err.startswith("zstd:")
    assert decode_content(gzip.compress(TEXT), "gzip", len(TEXT), True)[1] == (
        "body truncated before decoding (decoded a prefix)")


def test_body_keeps_the_limit_and_counts_everything() -> None:
    b = Body(limit=10)
    b.add(b"hello ")
    b.add_view(b"__world__", 2, 7)
    assert (b.data(), b.kept, b.size, b.truncated) == (b"hello worl", 10, 11, True)
    b.add(b"more")
    assert (b.data(), b.size) == (b"hello worl", 15)
    assert b.data() is b.data()  # joined once


def test_body_keeps_nothing_after_a_gap() -> None:
    b = Body(limit=100)
    b.add(b"before")
    b.add_gap(50)
    b.add(b"after")
    b.add_view(b"after", 0, 5)
    assert (b.data(), b.size, b.gap, b.truncated) == (b"before", 66, 50, True)
    empty = Body(limit=0)
    empty.add(b"x")
    assert (empty.data(), empty.size) == (b"", 1)
