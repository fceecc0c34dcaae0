"""HPACK decoder: RFC 7541 Appendix C vectors, cross-check against an independent encoder, unknown mode."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtap_async.errors import ProtocolError
from qtap_async.protocols import HpackDecoder, huffman_decode

# RFC 7541 C.4: requests with Huffman coding (table sizes after each block: 57, 110, 164)
C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")], 57),
    ("828684be5886a8eb10649cbf",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
      ("cache-control", "no-cache")], 110),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
      ("custom-key", "custom-value")], 164),
]
# RFC 7541 C.3: the same without Huffman
C3 = [
    ("828684410f7777772e6578616d706c652e636f6d", C4[0][1], 57),
    ("828684be58086e6f2d6361636865", C4[1][1], 110),
    ("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565", C4[2][1], 164),
]
# RFC 7541 C.6.1: a response with Huffman coding, dynamic table of 256 octets
C61 = ("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
       [(":status", "302"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com")])


@pytest.mark.parametrize("vectors", [C3, C4], ids=["C3-plain", "C4-huffman"])
def test_rfc7541_request_examples(vectors: list[tuple[str, list[tuple[str, str]], int]]) -> None:
    d = HpackDecoder()
    for hexblock, expected, size in vectors:
        assert d.decode(bytes.fromhex(hexblock)) == (expected, 0)
        assert d.table_size == size


def test_rfc7541_response_example_with_small_table() -> None:
    d = HpackDecoder()
    d.decode(b"\x3f\xe1\x01")  # dynamic table size update to 256 (5-bit prefix, 31 + 225)
    assert d.decode(bytes.fromhex(C61[0])) == (C61[1], 0)
    assert d.table_size == 222


def test_huffman_rejects_eos_and_long_padding() -> None:
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    with pytest.raises(ProtocolError):
        huffman_decode(b"\xff\xff\xff\xff")  # EOS (30 ones) inside the string
    with pytest.raises(ProtocolError):
        huffman_decode(b"\xf1\xe3\xff")  # padding longer than 7 bits
    with pytest.raises(ProtocolError):
        huffman_decode(b"\x00")  # '0' (00000) then 3 zero bits: padding not all ones


def test_malformed_blocks_raise_protocol_error() -> None:
    for bad in (b"\x80", b"\xbf", b"\x40\x05ab", b"\x7f\xff\xff\xff\xff\xff\x7f", b"\x00\x85\xff\xff"):
        with pytest.raises(ProtocolError):
            HpackDecoder().decode(bad)


def test_unknown_tail_counts_missing_and_keeps_seen_entries() -> None:
    enc = hpack.Encoder()
    enc.encode([("x-old", "before capture")])  # the decoder never sees this block
    blk1 = enc.encode([("x-new", "seen"), ("x-old", "before capture")])
    blk2 = enc.encode([("x-new", "seen"), ("x-old", "before capture"), (":method", "GET")])
    d = HpackDecoder(known=False)
    assert d.decode(blk1) == ([("x-new", "seen")], 1)
    assert d.decode(blk2) == ([("x-new", "seen"), (":method", "GET")], 1)
    # a size update to 0 empties the table: state fully known again
    d.decode(b"\x20")
    assert not d.unknown_tail


def test_decoded_size_bound() -> None:
    enc = hpack.Encoder()
    big = enc.encode([("x", "y" * 3000)])
    bomb = b"\xbe" * 200  # index 62 (the big entry) over and over
    d = HpackDecoder(max_decoded_bytes=100_000)
    d.decode(big)
    with pytest.raises(ProtocolError):
        d.decode(bomb)


header = st.tuples(
    st.sampled_from(["content-type", "x-custom", "cookie", ":path", "set-cookie", "date", "x-trace-id"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(header, max_size=12), st.booleans(),
                          st.sampled_from([None, 0, 64, 256, 4096]))))
def test_cross_check_with_independent_encoder(blocks: list[tuple[list[tuple[str, str]], bool, int | None]]) -> None:
    enc = hpack.Encoder()
    dec = HpackDecoder()
    for headers, huff, resize in blocks:
        if resize is not None:
            enc.header_table_size = resize
        got, missing = dec.decode(enc.encode(headers, huffman=huff))
        assert missing == 0
        assert got == headers


@pytest.mark.parametrize("huffman", [True, False])
def test_non_utf8_path_is_percent_encoded_other_values_unchanged(huffman: bool) -> None:
    enc = hpack.Encoder()
    block = enc.encode([(b":method", b"GET"), (b":path", b"/caf\xe9/\xff?x=1"), (b"x-l1", b"caf\xe9"),
                        (b":authority", "é.test".encode())], huffman=huffman)
    dec = HpackDecoder()
    fields, _ = dec.decode(block)
    assert dict(fields)[":path"] == "/caf%E9/%FF?x=1"
    assert dict(fields)["x-l1"] == "caf\xe9"  # header values keep their latin-1 reading
    assert dict(fields)[":authority"] == "é.test"
    # The same field again from the dynamic table: the same text.
    fields, _ = dec.decode(enc.encode([(b":path", b"/caf\xe9/\xff?x=1")], huffman=huffman))
    assert fields == [(":path", "/caf%E9/%FF?x=1")]
    # UTF-8 stays text.
    fields, _ = HpackDecoder().decode(hpack.Encoder().encode([(":path", "/café")], huffman=huffman))
    assert fields == [(":path", "/café")]
