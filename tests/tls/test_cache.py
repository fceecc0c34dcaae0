"""The on-disk TLS analysis cache: kept across restarts, private, never trusted when stale or broken."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec
import pytest

from qtap_async.tls.cache import ANALYZER_VERSION, AnalysisCache, CacheEntry, StateDirError, kernel_dev, key_of
from qtap_async.tls.discover import Scanner, might_be_tls
from qtap_async.tls.model import FileKey, TlsLibrary

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def _lib(path: str) -> TlsLibrary:
    st = os.stat(path)
    return TlsLibrary(key=FileKey(st.st_dev, st.st_ino), path=path, kind="openssl", version="3", linkage="shared",
                      functions=[], plans=[], pids=[1, 2], open_path="/proc/1/root" + path)


def test_entries_survive_a_restart_and_the_dir_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = AnalysisCache(str(state))
    k1 = key_of(os.stat(LIBSSL))
    k2 = key_of(os.stat("/bin/ls"))
    c.put(k1, LIBSSL, _lib(LIBSSL))
    c.put(k2, "/bin/ls", None)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "tls-analysis").st_mode) == 0o700
    again = AnalysisCache(str(state))
    assert again.loaded == 2 and len(again) == 2
    e1, e2 = again.get(k1), again.get(k2)
    assert e1 is not None and e1.lib is not None and e1.lib.kind == "openssl"
    assert e1.lib.pids == [] and e1.lib.open_path == ""  # per-scan fields are not cached
    assert e2 is not None and e2.lib is None  # negative results are kept too


def test_stale_and_broken_entries_are_dropped(tmp_path: Path) -> None:
    c = AnalysisCache(str(tmp_path))
    k = key_of(os.stat("/bin/ls"))
    c.put(k, "/bin/ls", None)
    d = tmp_path / "tls-analysis"
    (d / "1-2-3-4.json").write_bytes(b"{not json")
    old = CacheEntry(ANALYZER_VERSION - 1, (5, 6, 7, 8), "/x", None)
    (d / "5-6-7-8.json").write_bytes(msgspec.json.encode(old))
    # An entry whose name does not match its key (copied or planted) is not trusted either.
    (d / "9-9-9-9.json").write_bytes(msgspec.json.encode(CacheEntry(ANALYZER_VERSION, k, "/bin/ls", None)))
    again = AnalysisCache(str(tmp_path))
    assert again.loaded == 1 and again.read_errors == 1 and again.stale == 2
    assert sorted(os.listdir(d)) == [f"{'-'.join(map(str, k))}.json"]


def test_unsafe_state_dirs_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="symlink"):
        AnalysisCache(str(link))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StateDirError, match="state_dir"):
        AnalysisCache(str(f))
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o777)
    os.chmod(wide, 0o777)
    AnalysisCache(str(wide))
    assert stat.S_IMODE(os.stat(wide).st_mode) == 0o700  # tightened before use


def test_scanner_uses_the_disk_cache(tmp_path: Path) -> None:
    s1 = Scanner(cache=AnalysisCache(str(tmp_path)))
    _k, lib, hit = s1.scan_file(LIBSSL)
    assert lib is not None and not hit and s1.analyses == 1
    s2 = Scanner(cache=AnalysisCache(str(tmp_path)))
    _k, lib2, hit2 = s2.scan_file(LIBSSL)
    assert hit2 and s2.analyses == 0 and lib2 is not None and lib2.plans == lib.plans


def test_marker_prefilter(tmp_path: Path) -> None:
    assert might_be_tls(LIBSSL)
    assert not might_be_tls("/bin/ls")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho SSL_read\n")
    assert not might_be_tls(str(script))  # not ELF


def test_kernel_dev_encoding() -> None:
    st = os.stat("/")
    assert kernel_dev(st.st_dev) == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    assert kernel_dev(os.makedev(259, 300)) == (259 << 20) | 300


def test_the_cache_is_bounded_least_recently_used_first_in_memory_and_on_disk(tmp_path: Path) -> None:
    c = AnalysisCache(str(tmp_path), max_entries=3)
    keys = [(1, i, 100, 1000 + i) for i in range(5)]
    for k in keys[:3]:
        c.put(k, f"/bin/f{k[1]}", None)
    assert c.get(keys[0]) is not None  # used: the next put forgets keys[1], the least recently used
    c.put(keys[3], "/bin/f3", None)
    c.put(keys[4], "/bin/f4", None)
    assert len(c) == 3 and c.evicted == 2
    assert keys[0] in c and keys[1] not in c and keys[2] not in c
    files = sorted(p.name for p in (tmp_path / "tls-analysis").iterdir())
    assert files == sorted(os.path.basename(c._name(k)) for k in (keys[0], keys[3], keys[4]))
    smaller = AnalysisCache(str(tmp_path), max_entries=2)  # a lower bound at the next start: the disk follows
    assert len(smaller) == 2 and smaller.evicted == 1 and len(list((tmp_path / "tls-analysis").iterdir())) == 2
