"""TLS seen in plaintext (a connection no probe decrypts): the ClientHello's SNI, ALPN and versions.

The ClientHello may span several records and chunks; it is reassembled up to
``Limits.max_header_bytes``. After it the connection is encrypted and nothing more is parsed.
"""

from __future__ import annotations

from qtap_async.events.parse_error import ParseError
from qtap_async.events.tls import TlsClientHello
from qtap_async.protocols.limits import Limits

__all__ = ["TlsConnection", "looks_like_tls", "parse_client_hello"]

_VERSIONS = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2", 0x0304: "TLS1.3"}
ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN = 0, 1, 2


def _vname(v: int) -> str:
    return _VERSIONS.get(v, f"0x{v:04x}")


def _is_grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def looks_like_tls(data: bytes) -> tuple[bool | None, int]:
    """(matches, role): a TLS record header; role from the handshake type when there is one."""
    if not data:
        return None, ROLE_UNKNOWN
    t = data[0]
    if t not in (20, 21, 22, 23):
        return False, ROLE_UNKNOWN
    if len(data) < 3:
        return None, ROLE_UNKNOWN
    if data[1] != 3 or data[2] > 4:
        return False, ROLE_UNKNOWN
    if len(data) < 5:
        return None, ROLE_UNKNOWN
    length = (data[3] << 8) | data[4]
    if length == 0 or length > 16384 + 2048:
        return False, ROLE_UNKNOWN
    if t != 22:
        return True, ROLE_UNKNOWN
    if len(data) < 6:
        return None, ROLE_UNKNOWN
    if data[5] == 1:
        return True, ROLE_CLIENT
    if data[5] == 2:
        return True, ROLE_SERVER
    return True, ROLE_UNKNOWN


class _Cur:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        p = self.pos
        if p + n > len(self.data):
            raise ValueError("truncated")
        self.pos = p + n
        return self.data[p : p + n]

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")


def parse_client_hello(body: bytes, *, direction: int = 0, ts_ns: int = 0) -> TlsClientHello | str:
    """Parse a ClientHello handshake body (after the 4-byte handshake header). Returns a reason on error."""
    try:
        c = _Cur(body)
        legacy = c.u16()
        c.take(32)
        c.take(c.u8())  # session id
        cs = c.take(c.u16())
        suites = [int.from_bytes(cs[i : i + 2], "big") for i in range(0, len(cs) - 1, 2)]
        c.take(c.u8())  # compression methods
        sni = None
        alpn: list[str] = []
        versions: list[int] = []
        exts: list[int] = []
        if c.pos < len(body):
            ext_len = c.u16()
            ext_end = min(c.pos + ext_len, len(body))
            while c.pos + 4 <= ext_end:
                et = c.u16()
                ed = _Cur(c.take(c.u16()))
                exts.append(et)
                if et == 0 and ed.data:  # server_name
                    end = 2 + ed.u16()
                    while ed.pos < end:
                        kind = ed.u8()
                        name = ed.take(ed.u16())
                        if kind == 0 and sni is None:
                            sni = name.decode("ascii", "replace")
                elif et == 16 and ed.data:  # ALPN
                    end = 2 + ed.u16()
                    while ed.pos < end:
                        alpn.append(ed.take(ed.u8()).decode("ascii", "replace"))
                elif et == 43 and ed.data:  # supported_versions
                    n = ed.u8()
                    raw = ed.take(n)
                    versions = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, n - 1, 2)]
    except ValueError:
        return "truncated or malformed ClientHello"
    real = [v for v in versions if not _is_grease(v)]
    top = max(real) if real else legacy
    return TlsClientHello(
        direction=direction,
        ts_ns=ts_ns,
        sni=sni,
        alpn=alpn,
        version=_vname(top),
        legacy_version=_vname(legacy),
        supported_versions=[_vname(v) for v in real],
        cipher_suites=suites,
        extensions=exts,
    )


class TlsConnection:
    """Reassembles the client's first handshake message and reports it; ignores everything else."""

    protocol = "tls"
    switch_to = None

    def __init__(self, limits: Limits, client_dir: int | None) -> None:
        self.limits = limits
        self.client_dir = client_dir
        self.buf = b""
        self.hs = b""
        self.first_ts: int | None = None
        self.done = client_dir is None
        self.offset = 0  # stream offset of buf[0]

    def feed(self, direction: int, data: bytes, ts: int) -> list[object]:
        if self.done or direction != self.client_dir:
            return []
        if self.first_ts is None:
            self.first_ts = ts
        buf = self.buf + data
        out: list[object] = []
        pos = 0
        while len(buf) - pos >= 5:
            typ = buf[pos]
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if typ != 22 or buf[pos + 1] != 3:
                return self._fail(f"expected a handshake record, got type {typ}", pos, ts)
            if len(buf) - pos < 5 + length:
                break
            self.hs += buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if len(self.hs) >= 4:
                if self.hs[0] != 1:
                    return self._fail("first handshake message is not a ClientHello", pos, ts)
                need = 4 + int.from_bytes(self.hs[1:4], "big")
                if need > self.limits.max_header_bytes:
                    return self._fail(f"ClientHello larger than {self.limits.max_header_bytes} bytes", pos, ts)
                if len(self.hs) >= need:
                    r = parse_client_hello(self.hs[4:need], direction=direction, ts_ns=self.first_ts)
                    self.offset += pos
                    pos = 0
                    self.done = True
                    self.buf = self.hs = b""
                    if isinstance(r, str):
                        return self._fail(r, pos, ts)
                    out.append(r)
                    return out
        self.buf = buf[pos:]
        self.offset += pos
        pos = 0
        if len(self.buf) + len(self.hs) > self.limits.max_header_bytes + 5:
            return self._fail("ClientHello too large", pos, ts)
        return out

    def _fail(self, reason: str, pos: int, ts: int) -> list[object]:
        self.done = True
        self.buf = self.hs = b""
        return [ParseError(reason=reason, direction=self.client_dir, offset=self.offset + pos, ts_ns=ts,
                           protocol="tls")]

    def gap(self, direction: int, nbytes: int, ts: int) -> list[object]:
        if not self.done and direction == self.client_dir:
            return self._fail(f"gap of {nbytes} bytes inside the ClientHello", 0, ts)
        return []

    def close(self, ts: int) -> list[object]:
        if not self.done and (self.buf or self.hs):
            return self._fail("connection closed inside the ClientHello", 0, ts)
        self.done = True
        return []
