"""The analysis cache kept on disk: a file analysed once is never analysed again, across agent restarts.

Analysing a Go binary or node takes hundreds of milliseconds; a short-lived client speaks sooner than that.
With the result on disk, a restarted agent attaches every known TLS file at start-up, and the held-exec mode
(see tls/exec_hold.py) tells new executables from known ones without opening them.

Layout: ``<state_dir>/tls-analysis/<dev>-<ino>-<size>-<mtime_ns>.json``, one msgspec JSON entry per file,
written to a temporary name and renamed (a crash never leaves half an entry). The directory is created
0700 and refused when it is a symlink or group/world-writable: an entry decides where uprobes go, so
nobody but root may plant one. An entry from another analyser version is ignored (and overwritten).

Negative results ("not a TLS library") are kept too: they are what makes the next start-up and every
known executable's exec cost one stat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator

import msgspec

from qtap_async.errors import QtapError
from qtap_async.tls.model import TlsLibrary

log = logging.getLogger(__name__)

ANALYZER_VERSION = 3  # 3: stripped BoringSSL (grpcio) is recognised; earlier entries said "not TLS"
"""Bump when an analysis change makes earlier results wrong: older entries are then analysed again."""

CacheKey = tuple[int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns) in user space's st_dev encoding."""

MAX_ENTRIES = 20000
"""Entries kept at most, in memory and on disk (each is one small file): past it the least recently used one
is forgotten (its file analysed again if it is seen again). A host that deploys new binaries all the time
would otherwise grow the cache for as long as the agent runs."""


class StateDirError(QtapError):
    """The state directory cannot be used safely (not a directory, a symlink, writable by others)."""


class CacheEntry(msgspec.Struct, frozen=True, gc=False):
    analyzer: int
    key: CacheKey
    path: str
    """Host path the file was analysed through (for re-attaching after a restart); may be a /proc path."""
    lib: TlsLibrary | None
    build_id: str = ""


def ensure_private_dir(path: str) -> str:
    """Create ``path`` 0700 if missing; refuse one that others could write into. Returns the real path."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise StateDirError(f"state_dir {path!r}: cannot create: {e.strerror}") from e
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state_dir {path!r}: not a plain directory (symlinks are refused)")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"state_dir {path!r}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o022:
        # Made by someone else with a wide mode: tighten it rather than trust what may be in it.
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            raise StateDirError(f"state_dir {path!r}: group/world-writable and cannot chmod: {e.strerror}") from e
    return path


def key_of(st: os.stat_result) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def kernel_dev(st_dev: int) -> int:
    """st_dev as the kernel stores it in super_block.s_dev (what a BPF program reads): major << 20 | minor."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class AnalysisCache:
    """Entries in memory, written through to ``<state_dir>/tls-analysis`` when a state dir is given."""

    def __init__(self, state_dir: str | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self.dir: str | None = None
        self.max_entries = max_entries
        if state_dir:
            self.dir = ensure_private_dir(os.path.join(ensure_private_dir(state_dir), "tls-analysis"))
        self._mem: dict[CacheKey, CacheEntry] = {}
        self._lock = threading.Lock()
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(CacheEntry)
        self.loaded = 0
        self.stale = 0
        self.write_errors = 0
        self.read_errors = 0
        self.evicted = 0  # entries forgotten to stay within max_entries (their files removed)
        self.on_put: Callable[[CacheEntry], None] | None = None
        """Called (from the analysing thread) for every new entry: the held-exec mode marks the file known."""
        if self.dir:
            self._load()

    def _name(self, key: CacheKey) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, "-".join(str(k) for k in key) + ".json")

    def _load(self) -> None:
        assert self.dir is not None
        try:
            names = sorted(os.listdir(self.dir))
        except OSError as e:
            log.warning("TLS cache: cannot list %s: %s", self.dir, e)
            return
        for name in names[self.max_entries:]:  # left by a larger bound: the disk stays within this one
            if name.endswith(".json"):
                self.evicted += 1
                self._unlink(os.path.join(self.dir, name))
        for name in names[: self.max_entries]:
            if not name.endswith(".json"):
                continue
            full = os.path.join(self.dir, name)
            try:
                with open(full, "rb") as f:
                    entry = self._dec.decode(f.read())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
                self.read_errors += 1
                log.debug("TLS cache: dropping unreadable %s: %s", full, e)
                self._unlink(full)
                continue
            if entry.analyzer != ANALYZER_VERSION or self._name(entry.key) != full:
                self.stale += 1
                self._unlink(full)
                continue
            self._mem[entry.key] = entry
            self.loaded += 1

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def get(self, key: CacheKey) -> CacheEntry | None:
        with self._lock:
            entry = self._mem.pop(key, None)
            if entry is not None:
                self._mem[key] = entry  # most recently used last: eviction takes from the front
            return entry

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._mem

    def __len__(self) -> int:
        return len(self._mem)

    def entries(self) -> Iterator[CacheEntry]:
        with self._lock:
            items = list(self._mem.values())
        return iter(items)

    def put(self, key: CacheKey, path: str, lib: TlsLibrary | None, build_id: str = "") -> CacheEntry:
        if lib is not None:
            # Per-scan fields are not part of the file's analysis.
            lib = msgspec.structs.replace(lib, pids=[], open_path="")
        entry = CacheEntry(ANALYZER_VERSION, key, path, lib, build_id)
        with self._lock:
            self._mem.pop(key, None)
            self._mem[key] = entry
            evicted: list[CacheKey] = []
            while len(self._mem) > self.max_entries:
                oldest = next(iter(self._mem))
                del self._mem[oldest]
                evicted.append(oldest)
            self.evicted += len(evicted)
        if self.dir is not None:
            for oldest in evicted:
                self._unlink(self._name(oldest))
            name = self._name(key)
            tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self._enc.encode(entry))
                os.replace(tmp, name)
            except OSError as e:
                self.write_errors += 1
                log.warning("TLS cache: cannot write %s: %s", name, e)
                self._unlink(tmp)
        if self.on_put is not None:
            self.on_put(entry)
        return entry
