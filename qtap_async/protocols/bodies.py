"""Message bodies: bounded accumulation and content-encoding decoding (gzip, deflate, br, zstd)."""

from __future__ import annotations

import zlib

__all__ = ["Body", "decode_content"]


class Body:
    """Body bytes of one message: keeps at most ``limit`` bytes, counts all of them."""

    __slots__ = ("gap", "kept", "limit", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.kept = 0
        self.size = 0
        self.limit = limit
        self.gap = 0

    def add(self, data: bytes) -> None:
        n = len(data)
        self.size += n
        room = self.limit - self.kept
        if room <= 0:
            return
        if n > room:
            data = data[:room]
            n = room
        self.parts.append(data)
        self.kept += n

    def add_view(self, buf: bytes, start: int, end: int) -> None:
        """Add ``buf[start:end]`` copying only the bytes kept."""
        n = end - start
        self.size += n
        room = self.limit - self.kept
        if room <= 0:
            return
        if n > room:
            end = start + room
            n = room
        self.parts.append(buf[start:end])
        self.kept += n

    def add_gap(self, n: int) -> None:
        """``n`` body bytes were lost: count them; the kept bytes stop here (never glue across a gap)."""
        self.size += n
        self.gap += n
        self.limit = self.kept  # keep nothing after the hole

    @property
    def truncated(self) -> bool:
        return self.kept < self.size

    def data(self) -> bytes:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return b""
        joined = b"".join(parts)
        self.parts = [joined]
        return joined


def _gunzip(data: bytes, limit: int) -> tuple[bytes, str | None]:
    out: list[bytes] = []
    total = 0
    while data:
        d = zlib.decompressobj(wbits=31)
        chunk = d.decompress(data, limit + 1 - total)
        out.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(out)[:limit], f"decoded body larger than {limit} bytes"
        if not d.eof:
            return b"".join(out), "gzip stream incomplete"
        data = d.unused_data  # gzip allows several members
    return b"".join(out), None


def _inflate(data: bytes, limit: int) -> tuple[bytes, str | None]:
    try:
        d = zlib.decompressobj(wbits=15)
        out = d.decompress(data, limit + 1)
    except zlib.error:
        d = zlib.decompressobj(wbits=-15)  # raw deflate, as some servers send
        out = d.decompress(data, limit + 1)
    if len(out) > limit:
        return out[:limit], f"decoded body larger than {limit} bytes"
    if not d.eof:
        return out, "deflate stream incomplete"
    return out, None


def _unbrotli(data: bytes, limit: int) -> tuple[bytes, str | None]:
    import brotli  # type: ignore[import-untyped]

    d = brotli.Decompressor()
    try:
        out = d.process(data, output_buffer_limit=limit + 1)
    except TypeError:  # brotli < 1.2 has no output bound: feed small pieces and stop at the limit
        parts = []
        total = 0
        for i in range(0, len(data), 256):
            p = d.process(data[i : i + 256])
            parts.append(p)
            total += len(p)
            if total > limit:
                break
        out = b"".join(parts)
    if len(out) > limit:
        return out[:limit], f"decoded body larger than {limit} bytes"
    if not d.is_finished():
        return out, "brotli stream incomplete"
    return out, None


def _unzstd(data: bytes, limit: int) -> tuple[bytes, str | None]:
    import io

    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    parts = []
    total = 0
    err = None
    try:
        while total <= limit:
            p = reader.read(min(65536, limit + 1 - total))
            if not p:
                break
            parts.append(p)
            total += len(p)
    except zstandard.ZstdError as e:
        err = f"zstd: {e}"
    out = b"".join(parts)
    if len(out) > limit:
        return out[:limit], f"decoded body larger than {limit} bytes"
    if err is None and not _zstd_frames_complete(data):
        err = "zstd stream incomplete"
    return out, err


def _zstd_frames_complete(data: bytes) -> bool:
    """Whether every frame ends: the stream reader returns a cut frame's prefix as if it were whole. Only
    called once the reader decoded everything within the limit, so this second pass is bounded too."""
    import zstandard

    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            d.decompress(data)
        except zstandard.ZstdError:
            return False
        if not d.eof:
            return False
        data = d.unused_data
    return True


_DECODERS = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def decode_content(data: bytes, encoding: str, limit: int, truncated: bool) -> tuple[bytes | None, str | None]:
    """Undo a ``content-encoding`` (codings listed in the order applied). Returns (decoded, error).

    ``decoded`` is None when a coding is not supported; on a decoding error it holds what could be
    decoded. ``truncated`` says the input is a prefix of the body (limit or gap): the output is then
    a prefix too and the error says so.
    """
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None, None
    for c in codings:
        if c not in _DECODERS:
            return None, f"unsupported content-encoding {c!r}"
    err: str | None = None
    for c in reversed(codings):
        try:
            data, e = _DECODERS[c](data, limit)
        except Exception as ex:  # zlib.error, brotli.error, ...: undecodable input
            return None, f"{c}: {ex}"
        if e:
            err = e
    if truncated and err is None:
        err = "body truncated before decoding (decoded a prefix)"
    elif truncated:
        err = f"body truncated before decoding: {err}"
    return data, err
