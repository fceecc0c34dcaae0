"""gRPC over HTTP/2: names from :path, grpc-message decoding, and the length-prefixed message counter on
bodies cut into DATA frames anywhere, including inside a 5-byte message header, and after a gap."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from qtap_async.protocols.grpc import MessageCounter, is_grpc, parse_grpc_message, split_path


def _frame(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def test_content_types() -> None:
    assert is_grpc("application/grpc")
    assert is_grpc("application/grpc+proto") and is_grpc("Application/GRPC-Web")
    assert not is_grpc("application/json") and not is_grpc(None) and not is_grpc("application/grp")


def test_paths_and_messages() -> None:
    assert split_path("/helloworld.Greeter/SayHello") == ("helloworld.Greeter", "SayHello")
    assert split_path("/svc") == ("svc", "")
    assert split_path("svc/Method") == ("", "") and split_path(None) == ("", "") and split_path("") == ("", "")
    assert parse_grpc_message("not found") == "not found"
    assert parse_grpc_message("caf%C3%A9%20%F0%9F%98%80") == "café 😀"
    assert parse_grpc_message("bad%FFbyte") == "bad\ufffdbyte"
    assert parse_grpc_message(None) is None


@given(st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=12), st.data())
def test_counts_messages_however_the_body_is_cut(messages: list[tuple[bytes, bool]], data: st.DataObject) -> None:
    body = b"".join(_frame(p, c) for p, c in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    counter = MessageCounter()
    start = 0
    for cut in [*cuts, len(body)]:
        # A DATA frame's payload is handed over as (buffer, start, end): no copy of the message bytes.
        counter.feed(body, start, cut)
        start = cut
    assert counter.messages == len(messages)
    assert counter.compressed == sum(c for _, c in messages)
    assert not counter.partial


def test_a_message_still_coming_is_partial_and_a_gap_ends_the_count() -> None:
    body = _frame(b"a" * 10) + _frame(b"b" * 10)
    c = MessageCounter()
    c.feed(body, 0, 17)  # the first message and 2 bytes of the second's header
    assert (c.messages, c.partial) == (1, True)
    c.feed(body, 17, len(body))
    assert (c.messages, c.partial) == (2, False)
    c.skip(100)  # bytes lost: where the next message starts is unknown
    c.feed(_frame(b"c"), 0, 6)
    assert (c.messages, c.partial) == (2, True)
