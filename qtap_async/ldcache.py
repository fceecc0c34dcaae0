"""The dynamic loader's library cache (/etc/ld.so.cache), read directly.

``ldconfig -p`` prints the same list, but it is a child process: the agent would fork and exec for it, and
in held-exec mode a program the agent starts has to be kept out of its own hold (see bpf/src/tls.bpf.c).
Reading the file costs a few hundred microseconds and starts nothing. ``loader_entries`` is what callers
use (the system TLS libraries, mimalloc): the file, and ``ldconfig -p`` only for a format this module
does not know.

The format (glibc >= 2.32 writes only this one; older versions put it after an old-format table):
a 48-byte header (``glibc-ld.so.cache1.1``, the entry count, the string table's length, flags, an extension
offset, unused words), then 24-byte entries (flags, key and value as offsets from the start of the new-format
header, OS version, hwcap); key is the soname, value the path.
"""

from __future__ import annotations

import logging
import struct
import subprocess

from qtap_async.errors import QtapError

__all__ = ["CACHE", "LdCacheError", "entries", "loader_entries", "parse"]

log = logging.getLogger("qtap.ldcache")

CACHE = "/etc/ld.so.cache"
_OLD_MAGIC = b"ld.so-1.7.0"
_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_HEADER = struct.Struct("<20sII")  # magic, nlibs, len_strings (then flags, extension offset, unused: 20 bytes)
_HEADER_SIZE = 48
_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
_OLD_ENTRY_SIZE = 12  # flags, key, value


class LdCacheError(QtapError):
    """The file is not a loader cache this module can read (the caller falls back to ``ldconfig -p``)."""


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        raise LdCacheError(f"string offset {offset} outside the cache ({len(data)} bytes)")
    return data[offset:end].decode("utf-8", "surrogateescape")


def parse(data: bytes) -> list[tuple[str, str]]:
    """(soname, path) of every entry, in the cache's order (the order ``ldconfig -p`` prints)."""
    base = 0
    if data.startswith(_OLD_MAGIC):
        # The old table first (its own 16-byte header, 12-byte entries); the new format follows, aligned.
        if len(data) < 16:
            raise LdCacheError("old-format header cut short")
        (count,) = struct.unpack_from("<I", data, 12)
        base = (16 + count * _OLD_ENTRY_SIZE + 7) & ~7
    if not data.startswith(_NEW_MAGIC, base):
        raise LdCacheError(f"no {_NEW_MAGIC.decode()} header (found {data[base:base + 20]!r})")
    if len(data) < base + _HEADER_SIZE:
        raise LdCacheError("header cut short")
    _, count, _ = _HEADER.unpack_from(data, base)
    first = base + _HEADER_SIZE
    if first + count * _ENTRY.size > len(data):
        raise LdCacheError(f"{count} entries do not fit in {len(data)} bytes")
    out = []
    for i in range(count):
        _, key, value, _, _ = _ENTRY.unpack_from(data, first + i * _ENTRY.size)
        out.append((_string(data, base + key), _string(data, base + value)))
    return out


def entries(path: str = CACHE) -> list[tuple[str, str]]:
    """The cache's entries; OSError when it cannot be read, LdCacheError when it cannot be parsed."""
    with open(path, "rb") as f:
        return parse(f.read())


def loader_entries() -> list[tuple[str, str]]:
    """(soname, path) of the loader's cache: read from the file; ``ldconfig -p`` only when the file is in a
    format this module does not know (the child process is what reading the file avoids); [] without one."""
    try:
        return entries()
    except LdCacheError as e:
        log.debug("%s: %s; asking ldconfig -p", CACHE, e)
    except OSError:
        return []  # no cache (musl, a minimal image): nothing for ldconfig -p to list either
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [(line.strip().split(" ", 1)[0], line.rsplit("=>", 1)[1].strip()) for line in out.splitlines()
            if "=>" in line]
