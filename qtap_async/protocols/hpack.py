"""HPACK (RFC 7541) header block decoding, Huffman included. Decoding only: the agent never encodes.

One ``HpackDecoder`` per direction of an HTTP/2 connection. Besides the normal mode, the decoder has
an *unknown tail* mode for streams whose start was not seen (capture began mid-connection, or a gap
lost a header block): the dynamic table then holds entries inserted before we started listening,
so a reference past the entries we saw inserted cannot be resolved. Such a field is counted as
missing, never guessed. Entries we do see inserted stay exact, because HPACK indexes the dynamic
table newest-first and evicts oldest-first: an entry's index does not depend on how many older
entries exist. A dynamic table size update to 0 empties the table and ends the unknown mode.

Huffman decoding walks a byte-wide state machine whose transitions (state, byte) are computed on
first use from the code tree and memoized, so a string costs one list lookup per byte; decoded
strings are cached as well (header values repeat a lot).
"""

from __future__ import annotations

from qtap_async.errors import ProtocolError
from qtap_async.protocols._hpack_tables import HUFFMAN_CODES, STATIC_TABLE
from qtap_async.protocols.text import target_text

__all__ = ["HpackDecoder", "huffman_decode"]

_STATIC = STATIC_TABLE
_NSTATIC = len(STATIC_TABLE)  # 61
_ENTRY_OVERHEAD = 32


def _build_tree() -> tuple[list[list[int]], frozenset[int]]:
    children: list[list[int]] = [[0, 0]]  # 0 = unset child (root is never a child)
    for sym, (code, length) in enumerate(HUFFMAN_CODES):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = -(sym + 1)
            else:
                nxt = children[node][bit]
                if nxt == 0:
                    children.append([0, 0])
                    nxt = len(children) - 1
                    children[node][bit] = nxt
                node = nxt
    accept = {0}
    node = 0
    for _ in range(7):  # padding: up to 7 bits, all ones (the EOS prefix)
        node = children[node][1]
        accept.add(node)
    return children, frozenset(accept)


_CHILDREN, _ACCEPT = _build_tree()
_DEAD = len(_CHILDREN)  # 256 internal nodes; state 256 = decoding failed
_TRANS: list[tuple[int, bytes] | None] = [None] * ((_DEAD + 1) << 8)


def _transition(state: int, byte: int) -> tuple[int, bytes]:
    if state == _DEAD:
        result: tuple[int, bytes] = (_DEAD, b"")
    else:
        out = bytearray()
        node = state
        for i in range(7, -1, -1):
            c = _CHILDREN[node][(byte >> i) & 1]
            if c < 0:
                sym = -c - 1
                if sym == 256:  # EOS inside a string is a decoding error
                    node = _DEAD
                    break
                out.append(sym)
                node = 0
            else:
                node = c
        result = (node, bytes(out))
    _TRANS[(state << 8) | byte] = result
    return result


def huffman_decode(data: bytes) -> bytes:
    """Decode an HPACK Huffman string; raises ProtocolError on EOS or bad padding."""
    trans = _TRANS
    state = 0
    parts = []
    for b in data:
        t = trans[(state << 8) | b]
        if t is None:
            t = _transition(state, b)
        state = t[0]
        if t[1]:
            parts.append(t[1])
    if state not in _ACCEPT:
        raise ProtocolError("hpack: invalid Huffman padding or EOS")
    return b"".join(parts)


_STR_CACHE: dict[bytes, tuple[str, int]] = {}
_HUFF_CACHE: dict[bytes, tuple[str, int]] = {}
_CACHE_MAX = 8192


def _to_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _huff_str(raw: bytes) -> tuple[str, int]:
    """Huffman-decode to (text, decoded octet length)."""
    r = _HUFF_CACHE.get(raw)
    if r is None:
        dec = huffman_decode(raw)
        r = (_to_str(dec), len(dec))
        if len(_HUFF_CACHE) >= _CACHE_MAX:
            _HUFF_CACHE.clear()
        _HUFF_CACHE[raw] = r
    return r


def _plain_str(raw: bytes) -> tuple[str, int]:
    r = _STR_CACHE.get(raw)
    if r is None:
        r = (_to_str(raw), len(raw))
        if len(_STR_CACHE) >= _CACHE_MAX:
            _STR_CACHE.clear()
        _STR_CACHE[raw] = r
    return r


class HpackDecoder:
    """Decoder state for the header blocks of one direction.

    ``decode(block)`` returns ``(headers, missing)``: the decoded fields in order and the number of
    fields that could not be decoded because they refer to table entries inserted before the
    decoder started (only in unknown-tail mode). Malformed blocks raise ProtocolError; the caller
    must then give up on the direction, since the table state is lost.
    """

    __slots__ = ("_cap", "_dyn", "_max_decoded", "_max_size", "_size", "unknown_tail")

    def __init__(self, *, known: bool = True, max_table_bytes: int = 65536, max_decoded_bytes: int = 131072):
        # entries newest first: (name | None, value | None, size, name octets)
        self._dyn: list[tuple[str | None, str | None, int, int]] = []
        self._size = 0
        self._max_size = 4096
        self._cap = max_table_bytes
        self._max_decoded = max_decoded_bytes
        self.unknown_tail = not known

    def forget(self) -> None:
        """The table state is lost (gap): keep nothing, resolve only entries inserted from now on."""
        self._dyn.clear()
        self._size = 0
        self.unknown_tail = True

    @property
    def table_size(self) -> int:
        return self._size

    def _insert(self, name: str | None, value: str | None, size: int, nlen: int) -> None:
        dyn = self._dyn
        limit = self._max_size if not self.unknown_tail else self._cap
        if size > limit:
            # an entry larger than the table empties it (RFC 7541 4.4)
            dyn.clear()
            self._size = 0
            return
        dyn.insert(0, (name, value, size, nlen))
        self._size += size
        while self._size > limit:
            self._size -= dyn.pop()[2]

    def _resize(self, new_max: int) -> None:
        if new_max == 0:
            self._dyn.clear()
            self._size = 0
            self.unknown_tail = False
            self._max_size = 0
            return
        if new_max > self._cap:
            # the peer may keep more than we are willing to; what we drop becomes unknown
            self.unknown_tail = True
            new_max = self._cap
        self._max_size = new_max
        if not self.unknown_tail:
            dyn = self._dyn
            while self._size > new_max:
                self._size -= dyn.pop()[2]

    def decode(self, data: bytes) -> tuple[list[tuple[str, str]], int]:
        out: list[tuple[str, str]] = []
        missing = 0
        pos = 0
        n = len(data)
        dyn = self._dyn
        static = _STATIC
        total = 0
        max_decoded = self._max_decoded
        while pos < n:
            b = data[pos]
            pos += 1
            if b & 0x80:  # indexed header field
                idx = b & 0x7F
                if idx == 0x7F:
                    idx, pos = _read_int(data, pos, 0x7F)
                if idx == 0:
                    raise ProtocolError("hpack: index 0")
                if idx <= _NSTATIC:
                    f = static[idx - 1]
                    out.append(f)
                    total += len(f[0]) + len(f[1]) + 32
                else:
                    d = idx - _NSTATIC - 1
                    if d < len(dyn):
                        e = dyn[d]
                        if e[0] is None or e[1] is None:
                            missing += 1
                        else:
                            out.append((e[0], e[1]))
                            total += e[2]
                    elif self.unknown_tail:
                        missing += 1
                    else:
                        raise ProtocolError(f"hpack: index {idx} past the dynamic table")
            else:
                if b & 0x40:  # literal with incremental indexing, 6-bit name index
                    idx = b & 0x3F
                    if idx == 0x3F:
                        idx, pos = _read_int(data, pos, 0x3F)
                    indexing = True
                elif b & 0x20:  # dynamic table size update, 5-bit
                    sz = b & 0x1F
                    if sz == 0x1F:
                        sz, pos = _read_int(data, pos, 0x1F)
                    self._resize(sz)
                    dyn = self._dyn
                    continue
                else:  # literal without indexing (0000) or never indexed (0001), 4-bit name index
                    idx = b & 0x0F
                    if idx == 0x0F:
                        idx, pos = _read_int(data, pos, 0x0F)
                    indexing = False
                name: str | None
                if idx == 0:
                    name, nlen, pos = _read_str(data, pos, n)
                elif idx <= _NSTATIC:
                    name = static[idx - 1][0]
                    nlen = len(name)  # static names are ASCII
                else:
                    d = idx - _NSTATIC - 1
                    if d < len(dyn):
                        e = dyn[d]
                        name = e[0]
                        nlen = e[3]
                    elif self.unknown_tail:
                        name = None
                        nlen = -1
                    else:
                        raise ProtocolError(f"hpack: name index {idx} past the dynamic table")
                vpos = pos
                value, vlen, pos = _read_str(data, pos, n)
                if name == ":path" and not value.isascii():
                    # Text decoding fell back to latin-1 for a non-UTF-8 target: keep its bytes instead.
                    value = target_text(_read_octets(data, vpos))
                if name is None:
                    missing += 1
                    if indexing:
                        # keep the indexes aligned; the entry itself stays unresolvable
                        self._insert(None, None, 32 + vlen, 0)
                        dyn = self._dyn
                    continue
                size = nlen + vlen + _ENTRY_OVERHEAD
                out.append((name, value))
                total += size
                if indexing:
                    self._insert(name, value, size, nlen)
                    dyn = self._dyn
            if total > max_decoded:
                raise ProtocolError(f"hpack: decoded header list larger than {max_decoded} bytes")
        return out, missing


def _read_int(data: bytes, pos: int, prefix_max: int) -> tuple[int, int]:
    value = prefix_max
    shift = 0
    n = len(data)
    while True:
        if pos >= n:
            raise ProtocolError("hpack: truncated integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise ProtocolError("hpack: integer too large")


def _read_octets(data: bytes, pos: int) -> bytes:
    """The octets of the (valid, already read once) string literal at ``pos``, Huffman-decoded."""
    b = data[pos]
    length = b & 0x7F
    start = pos + 1
    if length == 0x7F:
        length, start = _read_int(data, start, 0x7F)
    raw = data[start:start + length]
    return huffman_decode(raw) if b & 0x80 else raw


def _read_str(data: bytes, pos: int, n: int) -> tuple[str, int, int]:
    """Read a string literal; returns (text, octet length after Huffman decoding, new pos)."""
    if pos >= n:
        raise ProtocolError("hpack: truncated string")
    b = data[pos]
    pos += 1
    length = b & 0x7F
    if length == 0x7F:
        length, pos = _read_int(data, pos, 0x7F)
    end = pos + length
    if end > n:
        raise ProtocolError("hpack: string past the end of the block")
    raw = data[pos:end]
    if b & 0x80:
        s, blen = _huff_str(raw)
    else:
        s, blen = _plain_str(raw)
    return s, blen, end
