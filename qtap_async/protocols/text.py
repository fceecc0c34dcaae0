"""Request targets as text without losing their bytes."""

from __future__ import annotations


def target_text(raw: bytes) -> str:
    """A request target (HTTP/1 start line, HTTP/2 ``:path``) as text: itself when it is UTF-8, else with
    every byte of 0x80 and above percent-encoded (``/caf%E9``): never latin-1 mojibake, and percent-decoding
    gives back the bytes the client sent."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)
