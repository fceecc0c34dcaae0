"""gRPC over HTTP/2: service/method from ``:path``, length-prefixed message counting, status.

A gRPC body is a sequence of messages, each ``[compressed flag: 1 byte][length: 4 bytes big-endian]``
then ``length`` bytes. ``MessageCounter`` follows that framing across DATA frames of any size
without copying the payloads.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["MessageCounter", "is_grpc", "parse_grpc_message", "split_path"]


def is_grpc(content_type: str | None) -> bool:
    return content_type is not None and content_type[:16].lower() == "application/grpc"


def split_path(path: str | None) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method'); ('', '') when it is not of that form."""
    if not path or path[0] != "/":
        return "", ""
    service, _, method = path[1:].partition("/")
    return service, method


def parse_grpc_message(value: str | None) -> str | None:
    """grpc-message is percent-encoded UTF-8."""
    if value is None:
        return None
    return unquote(value, errors="replace") if "%" in value else value


class MessageCounter:
    """Counts length-prefixed gRPC messages in a body delivered in pieces."""

    __slots__ = ("compressed", "hdr", "messages", "need")

    def __init__(self) -> None:
        self.messages = 0
        self.compressed = 0
        self.need = 0  # payload bytes of the current message still to come
        self.hdr = b""  # partial 5-byte message header

    def feed(self, buf: bytes, start: int, end: int) -> None:
        while start < end:
            need = self.need
            if need:
                take = end - start
                if take >= need:
                    start += need
                    self.need = 0
                else:
                    self.need = need - take
                    return
                continue
            hdr = self.hdr
            if hdr:
                # Never past `end`: a header may arrive a byte at a time, and what follows `end` in
                # the buffer is not this body's (the next HTTP/2 frame, padding).
                piece = buf[start : min(start + 5 - len(hdr), end)]
                hdr += piece
                start += len(piece)
                if len(hdr) < 5:
                    self.hdr = hdr
                    return
                self.hdr = b""
            elif end - start >= 5:
                hdr = buf[start : start + 5]
                start += 5
            else:
                self.hdr = buf[start:end]
                return
            self.messages += 1
            if hdr[0] & 1:
                self.compressed += 1
            self.need = int.from_bytes(hdr[1:5], "big")

    def skip(self, n: int) -> None:
        """``n`` bytes were lost: the message framing is unknown from here on."""
        self.need = 1 << 62
        self.hdr = b""

    @property
    def partial(self) -> bool:
        return bool(self.need or self.hdr)
