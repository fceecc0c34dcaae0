"""TLS discovery driven by the agent: at start-up (ld.so cache + every process) and after each exec.

ELF analysis runs in a worker thread (it reads files and disassembles); attaching happens on the
event loop thread, where the BPF objects live.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time

from qtap_async.bpf.loader import Capture
from qtap_async.sources.tls_probes import AttachStatus, TlsProbes, system_tls_libraries
from qtap_async.tls import FileKey, Scanner, TlsLibrary, analyze_file

log = logging.getLogger("qtap.tls")

# At exec the kernel has mapped the executable (static TLS: node, Go) but the dynamic loader maps shared
# libraries a little later: look right away, then a few times more.
RESCAN_DELAYS_S = (0.0, 0.1, 0.5)
# A file whose last user exited keeps its probes this long (the same binary is often run again).
DETACH_GRACE_S = 60.0


def system_libraries() -> list[TlsLibrary]:
    out = []
    for path in system_tls_libraries():
        try:
            st = os.stat(path)
            lib = analyze_file(path, FileKey(st.st_dev, st.st_ino))
        except Exception as exc:  # a broken file must not stop the agent
            log.warning("TLS: cannot analyze %s: %s", path, exc)
            continue
        if lib is not None:
            out.append(lib)
    return out


class TlsManager:
    def __init__(self, capture: Capture) -> None:
        self.probes = TlsProbes(capture)
        self.scanner = Scanner()
        self._tasks: set[asyncio.Task[None]] = set()
        # One worker: the scanner's caches are not thread-safe, and scans are cheap once files are cached.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tls-scan")
        self.scans = 0
        self.scan_errors = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        libs = await loop.run_in_executor(self._pool, system_libraries)
        for lib in libs:
            self.probes.attach(lib, system=True)
        found = await loop.run_in_executor(self._pool, self.scanner.scan_all)
        self._attach_found(found)

    def _attach_found(self, found: dict[FileKey, TlsLibrary]) -> None:
        for lib in found.values():
            status = None
            for pid in lib.pids or [None]:  # type: ignore[list-item]
                status = self.probes.attach(lib, pid)
            if status is not None and not status.attached:
                log.debug("TLS: %s not attached: %s", lib.path, status.error)

    def on_exec(self, pid: int) -> None:
        task = asyncio.get_running_loop().create_task(self._scan_new(pid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_exit(self, pid: int) -> None:
        now = time.monotonic()
        self.probes.process_exited(pid, now)
        self.probes.detach_unused(now, DETACH_GRACE_S)

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

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.probes.close()
