"""Request targets as text: UTF-8 as is, any other byte percent-encoded so that decoding gives back the
bytes the client sent."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from hypothesis import given
from hypothesis import strategies as st

from qtap_async.protocols.text import target_text


def test_utf8_and_latin1_targets() -> None:
    assert target_text(b"/search?q=caf\xc3\xa9") == "/search?q=café"
    assert target_text(b"/caf\xe9") == "/caf%E9"  # latin-1 é: not "cafÃ©", not "café"
    assert target_text(b"/a%20b\xff") == "/a%20b%FF"
    assert target_text(b"") == ""


@given(st.binary(max_size=200).filter(lambda b: b"%" not in b))
def test_decoding_gives_back_the_bytes(raw: bytes) -> None:
    text = target_text(raw)
    try:
        utf8: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        utf8 = None
    if utf8 is not None:
        assert text == utf8
    else:
        assert unquote_to_bytes(text) == raw  # a target without "%" of its own: the escapes are ours
