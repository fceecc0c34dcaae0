"""The loader cache read from /etc/ld.so.cache: the same list as ``ldconfig -p``, with no child process."""

from __future__ import annotations

import functools
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from qtap_async import ldcache
from qtap_async.tls import attach


def _ldconfig() -> list[tuple[str, str]]:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    return [(line.strip().split(" ", 1)[0], line.rsplit("=>", 1)[1].strip()) for line in out.splitlines()
            if "=>" in line]


def test_the_cache_reads_as_ldconfig_prints_it() -> None:
    got = ldcache.entries()
    assert len(got) > 10
    assert got == _ldconfig()


def test_an_old_format_table_in_front_is_skipped() -> None:
    # glibc before 2.32 wrote an old-format table (its own header, 12-byte entries) and the new one after it,
    # 8-byte aligned; string offsets in the new entries count from the new header.
    new = Path(ldcache.CACHE).read_bytes()
    old_entries = 3
    old = b"ld.so-1.7.0" + b"\0" + struct.pack("<I", old_entries) + bytes(12 * old_entries)
    old += bytes(-len(old) % 8)
    assert ldcache.parse(old + new) == ldcache.parse(new)


@pytest.mark.parametrize(("cut", "reason"), [
    (lambda d: b"not a cache" + d[11:], "no glibc-ld.so.cache1.1 header"),
    (lambda d: d[:30], "header cut short"),
    (lambda d: d[:200], "entries do not fit"),
])
def test_a_broken_cache_says_what_is_wrong(cut: Callable[[bytes], bytes], reason: str) -> None:
    data = Path(ldcache.CACHE).read_bytes()
    with pytest.raises(ldcache.LdCacheError, match=reason):
        ldcache.parse(cut(data))


def test_a_string_offset_outside_the_file_is_refused() -> None:
    data = bytearray(Path(ldcache.CACHE).read_bytes())
    struct.pack_into("<I", data, 48 + 4, len(data) + 100)  # the first entry's key
    with pytest.raises(ldcache.LdCacheError, match="outside the cache"):
        ldcache.parse(bytes(data))


def test_system_tls_libraries_start_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [p for name, p in _ldconfig() if name.startswith("libssl.so")]
    assert expected, "no libssl in ldconfig -p (scripts/bootstrap installs OpenSSL)"

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a child process was started: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    found = attach.system_tls_libraries()
    assert any(Path(p).resolve() == Path(e).resolve() for p in found for e in expected), found


def test_an_unreadable_cache_falls_back_to_ldconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bogus = tmp_path / "ld.so.cache"
    bogus.write_bytes(b"something else entirely" * 4)
    monkeypatch.setattr(ldcache, "entries", functools.partial(ldcache.entries, str(bogus)))
    assert ldcache.loader_entries() == _ldconfig()
