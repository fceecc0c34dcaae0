"""Find the TLS libraries that processes have mapped.

For each process: read /proc/PID/maps, take the executable file mappings, open each file through
/proc/PID/root/<path> (so files inside containers resolve in the process's own mount namespace), and
analyse it once per (dev, ino, size, mtime): a second process that maps the same libssl costs one
stat. Results are keyed by the file's identity (st_dev, st_ino): uprobes attach to files, not processes.

Nothing here raises for a process or a file: a vanished pid, a permission error, a file that changed
on disk or an unparsable ELF becomes a ScanProblem in ``Scanner.problems`` (and a debug log line).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from qtap_async.tls import boringssl
from qtap_async.tls.cache import AnalysisCache
from qtap_async.tls.elf import ElfFormatError
from qtap_async.tls.libraries import analyze_file, openssl_version_from_libcrypto
from qtap_async.tls.model import FileKey, ScanProblem, TlsLibrary

log = logging.getLogger(__name__)

CacheKey = tuple[int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns)"""


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    dev: int
    inode: int
    path: str
    deleted: bool


def parse_maps(text: str) -> list[Mapping]:
    """Parse /proc/PID/maps. Only file-backed mappings (inode != 0, absolute path) are returned."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        rng, perms, _off, dev, inode, path = parts
        if inode == "0" or not path.startswith("/"):
            continue
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[: -len(" (deleted)")]
        lo, hi = rng.split("-")
        maj, mnr = dev.split(":")
        out.append(
            Mapping(int(lo, 16), int(hi, 16), perms, os.makedev(int(maj, 16), int(mnr, 16)), int(inode), path, deleted)
        )
    return out


class Scanner:
    """Scans processes; keeps the per-file analysis cache. Thread-safe for concurrent scans."""

    def __init__(self, proc: str = "/proc", cache: AnalysisCache | None = None) -> None:
        self.proc = proc
        # In memory only unless the agent gives one with a state dir (kept across restarts).
        self.cache = cache if cache is not None else AnalysisCache()
        self._crypto_versions: dict[CacheKey, str] = {}
        self._lock = threading.Lock()
        self.problems: list[ScanProblem] = []
        self.analyses = 0
        """How many files were analysed (cache misses); tests use it to see the cache work."""

    # -- public ----------------------------------------------------------------------------------
    def scan_pid(self, pid: int) -> dict[FileKey, TlsLibrary]:
        """TLS libraries mapped by one process. Problems go to ``self.problems``; never raises."""
        try:
            return self._scan_pid(pid)
        except Exception as e:  # the contract: report, never raise out
            self._problem(pid, "", f"{type(e).__name__}: {e}")
            return {}

    def scan_all(self, pids: Iterable[int] | None = None) -> dict[FileKey, TlsLibrary]:
        """TLS libraries over every process in /proc (or ``pids``), each with all the pids mapping it."""
        result: dict[FileKey, TlsLibrary] = {}
        for pid in self._pids() if pids is None else pids:
            for key, lib in self.scan_pid(pid).items():
                have = result.get(key)
                if have is None:
                    result[key] = lib
                else:
                    result[key] = msgspec.structs.replace(have, pids=[*have.pids, *lib.pids])
        return result

    def clear_problems(self) -> list[ScanProblem]:
        with self._lock:
            out, self.problems = self.problems, []
        return out

    # -- internals -------------------------------------------------------------------------------
    def _pids(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.proc) if n.isdigit())
        except OSError as e:
            self._problem(0, self.proc, f"cannot list: {e}")
            return []

    def _problem(self, pid: int, path: str, error: str) -> None:
        log.debug("tls scan: pid %d %s: %s", pid, path, error)
        with self._lock:
            self.problems.append(ScanProblem(pid=pid, path=path, error=error))

    def _scan_pid(self, pid: int) -> dict[FileKey, TlsLibrary]:
        base = f"{self.proc}/{pid}"
        try:
            with open(f"{base}/maps") as f:
                maps = parse_maps(f.read())
        except FileNotFoundError:
            self._problem(pid, "", "process vanished")
            return {}
        except ProcessLookupError:
            self._problem(pid, "", "process vanished")
            return {}
        except PermissionError as e:
            self._problem(pid, "", f"permission denied reading maps: {e}")
            return {}
        except OSError as e:
            self._problem(pid, "", f"cannot read maps: {e}")
            return {}
        seen: set[tuple[int, int]] = set()
        out: dict[FileKey, TlsLibrary] = {}
        for m in maps:
            if "x" not in m.perms or (m.dev, m.inode) in seen:
                continue
            seen.add((m.dev, m.inode))
            got = self._file(pid, base, m, maps)
            if got is not None:
                out[got.key] = got
        return out

    def _open_path(self, pid: int, base: str, m: Mapping) -> tuple[str, os.stat_result] | None:
        """A path that opens exactly the mapped file, and its stat; None (with a problem) if none does."""
        candidates = []
        if not m.deleted:
            candidates.append(f"{base}/root{m.path}")
        candidates.append(f"{base}/map_files/{m.start:x}-{m.end:x}")
        last = ""
        for path in candidates:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                last = f"{path}: not found"
                continue
            except PermissionError as e:
                last = f"{path}: permission denied ({e.strerror})"
                continue
            except OSError as e:
                last = f"{path}: {e.strerror}"
                continue
            if st.st_ino == m.inode:
                return path, st
            last = f"{path}: inode {st.st_ino} != mapped inode {m.inode} (file replaced since mapped)"
        self._problem(pid, m.path, last or "no path opens the mapped file")
        return None

    def _file(self, pid: int, base: str, m: Mapping, maps: list[Mapping]) -> TlsLibrary | None:
        found = self._open_path(pid, base, m)
        if found is None:
            return None
        path, st = found
        ck: CacheKey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self.cache.get(ck)
        lib = entry.lib if entry is not None else None
        if entry is None:
            try:
                lib = analyze_file(path, FileKey(st.st_dev, st.st_ino), m.path)
            except ElfFormatError as e:
                # Executable mappings that are not x86-64 ELF (JIT images, other arches) are not TLS
                # libraries: remembered as such, not reported.
                log.debug("tls scan: %s: %s", m.path, e)
                lib = None
            except Exception as e:
                self._problem(pid, m.path, f"{type(e).__name__}: {e}")
                lib = None
            if lib is not None and lib.kind == "openssl" and (not lib.version or "symbol version" in lib.version):
                lib = self._with_libcrypto_version(lib, base, maps)
            self.cache.put(ck, path, lib)
            with self._lock:
                self.analyses += 1
        if lib is None:
            return None
        return msgspec.structs.replace(lib, pids=[pid], open_path=path, path=m.path)

    def scan_file(self, path: str, display_path: str | None = None) -> tuple[CacheKey, TlsLibrary | None, bool]:
        """Analyse one executable by path (PATH pre-scan, held exec): (cache key, library or None, cache hit).

        Files without any TLS marker (``might_be_tls``) are recorded as non-TLS without being parsed.
        Raises OSError when the file cannot be opened; a non-ELF file is a cached None."""
        st = os.stat(path)
        ck: CacheKey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self.cache.get(ck)
        if entry is not None:
            return ck, entry.lib, True
        lib = None
        try:
            if might_be_tls(path):
                lib = analyze_file(path, FileKey(st.st_dev, st.st_ino), display_path)
        except ElfFormatError:
            lib = None
        # The name to re-open it by after a restart: /proc/PID/exe dies with the process; the display path
        # (its target) is checked against the key before any use.
        self.cache.put(ck, display_path if display_path and display_path.startswith("/") else path, lib)
        with self._lock:
            self.analyses += 1
        return ck, lib, False

    def _with_libcrypto_version(self, lib: TlsLibrary, base: str, maps: list[Mapping]) -> TlsLibrary:
        """A shared libssl has no version string; the libcrypto the same process maps does."""
        libdir = os.path.dirname(lib.path)
        cryptos = [m for m in maps if os.path.basename(m.path).startswith("libcrypto.so")]
        cryptos.sort(key=lambda m: os.path.dirname(m.path) != libdir)
        for m in cryptos:
            path = f"{base}/root{m.path}"
            try:
                st = os.stat(path)
            except OSError:
                continue
            ck: CacheKey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if ck not in self._crypto_versions:
                self._crypto_versions[ck] = openssl_version_from_libcrypto(path)
            v = self._crypto_versions[ck]
            if v:
                return msgspec.structs.replace(lib, version=v, notes=[*lib.notes, f"version read from {m.path}"])
        return lib


# Byte strings every executable that analyze_file can recognise carries: OpenSSL/BoringSSL symbol or
# version strings, BoringSSL's ssl_lib.cc error-file name (stripped static copies), GnuTLS' record
# functions, Go's build info magic, rustls' mangled symbol names. One
# C-speed search each over the mapped file is far cheaper than parsing ELF tables of the many executables
# that have none of them.
TLS_MARKERS = (b"SSL_read", b"gnutls_record_recv", b"\xff Go buildinf:", b"OpenSSL ", b"BoringSSL", b"rustls..conn",
               boringssl.SSL_LIB_FILE)


def might_be_tls(path: str) -> bool:
    """False only when no TLS marker occurs in the file (then analysis would find nothing either)."""
    import mmap

    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return False
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            return True
        with mm:
            return any(mm.find(m) >= 0 for m in TLS_MARKERS)


_default = Scanner()


def scan_pid(pid: int) -> dict[FileKey, TlsLibrary]:
    """TLS libraries one process maps (shared cache; problems in ``default_scanner().problems``)."""
    return _default.scan_pid(pid)


def scan_all() -> dict[FileKey, TlsLibrary]:
    """TLS libraries over every process (shared cache; problems in ``default_scanner().problems``)."""
    return _default.scan_all()


def default_scanner() -> Scanner:
    return _default
