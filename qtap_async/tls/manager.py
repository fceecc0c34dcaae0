"""TLS discovery driven by the agent: at start-up and after each exec, so that a process started after the
agent has its TLS bytes captured from its first write.

How the first bytes are not lost (issue 16):
1. An analysis is done once per file (dev, ino, size, mtime) and kept on disk under ``state_dir``
   (tls/cache.py); a restarted agent re-attaches every known TLS file at start-up without analysing it.
2. Probes stay attached on analysed files: a uprobe costs nothing while no process runs the file, and it
   covers every later process from its first instruction. Only past MAX_ATTACHED_FILES are the longest-idle
   files detached.
3. At start-up, the executables found in PATH are analysed (bounded by PATH_MAX_FILES and PATH_BUDGET_S,
   in the background, cached) and attached: a Go or node program from PATH is covered before it first runs.
4. For a file never seen before, the opt-in held-exec mode (tls/exec_hold.py) stops the process at exec
   until the probes are attached.

ELF analysis runs in worker threads (it reads files and disassembles): one for execs and holds, one for the
PATH pre-scan, which pauses while a held process waits; attaching happens on the event loop thread, where
the BPF objects live.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from qtap_async.bpf.loader import Capture
from qtap_async.telemetry import metrics
from qtap_async.tls import FileKey, Scanner, TlsLibrary, analyze_file
from qtap_async.tls.attach import AttachStatus, TlsProbes, system_tls_libraries
from qtap_async.tls.cache import AnalysisCache, CacheEntry, StateDirError, kernel_dev
from qtap_async.tls.exec_hold import ExecHold, HoldStats

log = logging.getLogger("qtap.tls")

# At exec the kernel has mapped the executable (static TLS: node, Go) but the dynamic loader maps shared
# libraries a little later: look right away, then a few times more.
RESCAN_DELAYS_S = (0.0, 0.1, 0.5)
# Attached files kept at most; beyond, the longest-idle ones (no process using them) are detached.
MAX_ATTACHED_FILES = 512
# PATH pre-scan bounds (files and wall time; cached files cost one stat each on later start-ups).
PATH_MAX_FILES = 6000
PATH_BUDGET_S = 120.0
PATH_MAX_FILE_BYTES = 1 << 30
DEFAULT_PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class TlsOptions:
    state_dir: str | None = None
    """Where the analysis cache lives (kept across restarts); None: in memory only."""
    preattach_path: bool = False
    """Off for embedded agents (tests); `qtap run` and the config (tap.tls.preattach_path) turn it on."""
    path_dirs: tuple[str, ...] | None = None
    """Directories to pre-scan; None: $PATH plus the standard system directories."""
    hold_exec: bool = False
    max_hold_s: float = 5.0
    hold_children_of: int = 0
    """Hold only children of this pid (0: every process); tests use it on machines shared with others."""
    java: bool = False
    """Load qtap's Java agent into running HotSpot JVMs (qtap_async/tls/java_manager.py)."""
    java_pids: frozenset[int] | None = None
    """Only these JVMs (None: every JVM found); tests use it on machines shared with others."""
    uprobe_multi: bool = field(default_factory=lambda: os.environ.get("QTAP_UPROBE_MULTI", "1") != "0")
    """uprobe_multi links where the kernel has them (>= 6.6), else classic ones; QTAP_UPROBE_MULTI=0 forces
    classic links (one perf event per probe: the same capture, ~10x slower to detach)."""


@dataclass
class PathScanStats:
    files: int = 0
    analysed: int = 0
    cached: int = 0
    tls: int = 0
    errors: int = 0
    seconds: float = 0.0
    done: bool = False
    truncated: str = ""


@dataclass
class ManagerStats:
    restored: int = 0
    """TLS files attached at start-up straight from the on-disk cache."""
    path: PathScanStats = field(default_factory=PathScanStats)


def system_libraries(scanner: Scanner | None = None) -> list[TlsLibrary]:
    out = []
    for path in system_tls_libraries():
        try:
            if scanner is not None:
                _ck, lib, _hit = scanner.scan_file(path)
            else:
                st = os.stat(path)
                lib = analyze_file(path, FileKey(st.st_dev, st.st_ino))
        except Exception as exc:  # a broken file must not stop the agent
            log.warning("TLS: cannot analyze %s: %s", path, exc)
            continue
        if lib is not None:
            out.append(lib)
    return out


def path_candidates(dirs: tuple[str, ...] | None = None, max_files: int = PATH_MAX_FILES) -> tuple[list[str], str]:
    """Executable regular files in ``dirs`` ($PATH + system dirs by default), one path per (dev, ino)."""
    if dirs is None:
        env = [d for d in os.environ.get("PATH", "").split(":") if d.startswith("/")]
        dirs = tuple(dict.fromkeys([*env, *DEFAULT_PATH_DIRS]))
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for d in dirs:
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat()  # follows symlinks: /usr/bin/node -> the real file
                except OSError:
                    continue
                if not (st.st_mode & 0o111) or not e.is_file() or st.st_size > PATH_MAX_FILE_BYTES:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                out.append(e.path)
                if len(out) >= max_files:
                    return out, f"stopped at {max_files} files"
    return out, ""


class TlsManager:
    def __init__(self, capture: Capture, options: TlsOptions | None = None) -> None:
        self.options = options or TlsOptions()
        self.probes = TlsProbes(capture, self.options.hold_children_of, multi=self.options.uprobe_multi)
        try:
            self.cache = AnalysisCache(self.options.state_dir)
        except StateDirError as exc:
            # Capture still works without it; only restarts and holds get slower (everything is analysed again).
            log.warning("TLS: analysis cache kept in memory only: %s", exc)
            self.cache = AnalysisCache()
        self.scanner = Scanner(cache=self.cache)
        self.stats = ManagerStats()
        self.hold: ExecHold | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tls-scan")
        self._path_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tls-path")
        self._urgent = 0  # held processes waiting: the PATH pre-scan pauses meanwhile
        self._no_urgent = asyncio.Event()  # set while _urgent is 0, so the pre-scan awaits it instead of polling
        self._no_urgent.set()
        self.scans = 0
        self.scan_errors = 0
        self.path_scan_done = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._restore()
        libs = await loop.run_in_executor(self._pool, system_libraries, self.scanner)
        for lib in libs:
            self.probes.attach(lib, system=True)
        found = await loop.run_in_executor(self._pool, self.scanner.scan_all)
        self._attach_found(found)
        if self.options.hold_exec:
            self.hold = ExecHold(self.probes.obj, self._on_held, self.options.max_hold_s)
            for entry in self.cache.entries():
                self.hold.mark_known(kernel_dev(entry.key[0]), entry.key[1])
            self.cache.on_put = self._cache_put
            self.hold.start()
        if self.options.preattach_path:
            self._spawn(self._path_scan())
        else:
            self.path_scan_done.set()

    # -- start-up --------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Attach every TLS file the on-disk cache knows whose path still names the same, unchanged file."""
        for entry in self.cache.entries():
            if entry.lib is None or not entry.path or entry.path.startswith("/proc/"):
                continue
            try:
                st = os.stat(entry.path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != entry.key:
                continue
            status = self.probes.attach(entry.lib, system=True)
            if status.attached:
                self.stats.restored += 1

    def _cache_put(self, entry: CacheEntry) -> None:
        if self.hold is not None:
            self.hold.mark_known(kernel_dev(entry.key[0]), entry.key[1])

    async def _path_scan(self) -> None:
        loop = asyncio.get_running_loop()
        st = self.stats.path
        t0 = time.monotonic()
        try:
            paths, st.truncated = await loop.run_in_executor(self._path_pool, path_candidates, self.options.path_dirs)
            for path in paths:
                await self._no_urgent.wait()
                if time.monotonic() - t0 > PATH_BUDGET_S:
                    st.truncated = f"time budget of {PATH_BUDGET_S:.0f} s spent after {st.files} files"
                    break
                st.files += 1
                try:
                    _ck, lib, hit = await loop.run_in_executor(self._path_pool, self.scanner.scan_file, path)
                except Exception as exc:
                    st.errors += 1
                    log.debug("TLS: PATH pre-scan of %s: %s", path, exc)
                    continue
                st.cached += hit
                st.analysed += not hit
                if lib is not None:
                    st.tls += 1
                    self.probes.attach(lib, system=True)
        finally:
            st.seconds = time.monotonic() - t0
            st.done = True
            self.path_scan_done.set()
            log.info("TLS: PATH pre-scan: %d files (%d analysed, %d cached), %d TLS, %.1f s%s", st.files,
                     st.analysed, st.cached, st.tls, st.seconds, f" ({st.truncated})" if st.truncated else "")

    # -- held exec ---------------------------------------------------------------------------------
    async def _on_held(self, pid: int, kdev: int, ino: int) -> None:
        loop = asyncio.get_running_loop()
        self._urgent += 1
        self._no_urgent.clear()
        try:
            exe = f"/proc/{pid}/exe"
            try:
                display = os.readlink(exe)
            except OSError:
                return  # gone
            _ck, lib, _hit = await loop.run_in_executor(self._pool, self.scanner.scan_file, exe, display)
            if lib is not None:
                import msgspec

                lib = msgspec.structs.replace(lib, path=display, open_path=exe, pids=[pid])
                self.probes.attach(lib, pid)
        finally:
            self._urgent -= 1
            if not self._urgent:
                self._no_urgent.set()

    # -- runtime ---------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _attach_found(self, found: dict[FileKey, TlsLibrary]) -> None:
        for lib in found.values():
            status = None
            for pid in lib.pids or [None]:  # type: ignore[list-item]
                status = self.probes.attach(lib, pid)
            if status is not None and not status.attached:
                log.debug("TLS: %s not attached: %s", lib.path, status.error)

    def on_exec(self, pid: int) -> None:
        self._spawn(self._scan_new(pid))

    def on_exit(self, pid: int) -> None:
        now = time.monotonic()
        self.probes.process_exited(pid, now)
        self.probes.detach_unused(now, 0.0, keep=MAX_ATTACHED_FILES)

    async def _scan_new(self, pid: int) -> None:
        loop = asyncio.get_running_loop()
        for delay in RESCAN_DELAYS_S:
            await asyncio.sleep(delay)
            try:
                found = await loop.run_in_executor(self._pool, self._scan_pid, pid)
                self.scans += 1
                if found:
                    self._attach_found(found)
            except Exception:
                self.scan_errors += 1
                log.exception("TLS: scanning pid %d failed", pid)

    def _scan_pid(self, pid: int) -> dict[FileKey, TlsLibrary]:
        found = self.scanner.scan_pid(pid)
        self.scanner.clear_problems()  # vanished processes are normal here; keep memory bounded
        return found

    def statuses(self) -> list[AttachStatus]:
        return self.probes.statuses()

    def metrics(self) -> dict[str, int]:
        """Counters for Agent.snapshot(): the analysis cache, the PATH pre-scan, the held-exec mode."""
        p = self.stats.path
        m = {
            metrics.TLS_FILES_ATTACHED.name: len(self.probes.files),
            metrics.TLS_FILES_FAILED.name: len(self.probes.failed),
            metrics.TLS_ANALYSES.name: self.scanner.analyses,
            metrics.TLS_CACHE_ENTRIES.name: len(self.cache),
            metrics.TLS_CACHE_WRITE_ERRORS.name: self.cache.write_errors,
            metrics.TLS_CACHE_EVICTED.name: self.cache.evicted,
            metrics.TLS_RESTORED_FILES.name: self.stats.restored,
            metrics.TLS_PATH_FILES.name: p.files,
            metrics.TLS_PATH_ERRORS.name: p.errors,
            metrics.TLS_SCAN_ERRORS.name: self.scan_errors,
        }
        # Zeros while exec hold is off: the same series whatever the options, so dashboards need no special case.
        h = self.hold_stats() or HoldStats()
        m.update({
            metrics.TLS_EXEC_HELD.name: h.held,
            metrics.TLS_EXEC_RELEASED.name: h.released,
            metrics.TLS_EXEC_RELEASED_BY_TIMEOUT.name: h.released_by_timeout,
            metrics.TLS_EXEC_HOLD_VANISHED.name: h.vanished,
            metrics.TLS_EXEC_HOLD_NS.name: h.hold_ns_total,
            metrics.TLS_EXEC_HOLD_NS_MAX.name: h.hold_ns_max,
            metrics.TLS_KNOWN_FILES_FULL.name: h.known_files_full,
        })
        return m

    def hold_stats(self) -> HoldStats | None:
        return None if self.hold is None else self.hold.stats

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.hold is not None:
            await self.hold.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._path_pool.shutdown(wait=False, cancel_futures=True)
        self.probes.close()
