"""Held-exec mode (opt-in): a never-analysed executable is stopped at exec until its TLS probes are attached.

The kernel half is ``tp_btf_hold_exec`` in tls.bpf.c: on exec of a file missing from ``known_files`` it
sends the process SIGSTOP (taken before its first user instruction) and reports it on ``held_execs``.
This side reads those reports, lets the manager analyse and attach the file, marks it known and sends
SIGCONT. Three guards keep anything from staying stopped:

- the manager releases every hold after ``max_hold_s`` at the latest, attached or not;
- the BPF program holds only while the heartbeat written here every HEARTBEAT_S is fresh (a stuck event
  loop stops new holds), and its link dies with the agent's process;
- a watchdog process (qtap_async.tls.watchdog) continues whatever is still held when the agent exits,
  crashes or is killed, and whatever is held longer than ``max_hold_s`` + WATCHDOG_SLACK_S.

Side effect to know: a parent that waits with WUNTRACED (an interactive shell with job control) sees the
stop; it is over once the probes are attached (first run of a new binary only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qtap_async.bpf.link import Link
from qtap_async.bpf.object import BpfObject
from qtap_async.bpf.ringbuf import RingBuffer
from qtap_async.errors import QtapError
from qtap_async.tls.watchdog import continue_process, proc_starttime

log = logging.getLogger("qtap.tls")

HOLD_REC = struct.Struct("<QQQII")  # struct qtap_exec_hold: ts_ns, dev, ino, pid, _pad
FILE_KEY = struct.Struct("<QQ")  # struct qtap_file_key
HOLD_CTL = struct.Struct("<QQ")  # struct qtap_hold_ctl: heartbeat_ns, max_age_ns
HEARTBEAT_S = 0.25
HEARTBEAT_MAX_AGE_S = 2.0
WATCHDOG_SLACK_S = 1.0


@dataclass
class HoldStats:
    held: int = 0
    released: int = 0
    released_by_timeout: int = 0
    vanished: int = 0
    known_files: int = 0
    known_files_full: int = 0
    hold_ns_total: int = 0
    hold_ns_max: int = 0


class ExecHold:
    def __init__(
        self,
        obj: BpfObject,
        on_held: Callable[[int, int, int], Awaitable[None]],
        max_hold_s: float = 5.0,
    ) -> None:
        """``on_held(pid, kernel_dev, ino)`` analyses and attaches; the process is released when it returns."""
        self.obj = obj
        self.on_held = on_held
        self.max_hold_s = max_hold_s
        self.stats = HoldStats()
        self._known = obj.map("known_files")
        self._ctl = obj.map("hold_ctl")
        self._rb: RingBuffer | None = None
        self._link: Link | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._held: dict[int, tuple[int, int]] = {}  # pid -> (starttime, kernel ts of the hold)
        self._noticed: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- known files ---------------------------------------------------------------------------
    def mark_known(self, kdev: int, ino: int) -> None:
        """Never hold this file again (thread-safe: one map update syscall)."""
        try:
            self._known.update(FILE_KEY.pack(kdev, ino), b"\x01")
            self.stats.known_files += 1
        except QtapError:
            self.stats.known_files_full += 1  # map full: that file may be held again, briefly

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The watchdog first: from the moment the program is attached, something must be able to continue.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "qtap_async.tls.watchdog", str(self.max_hold_s + WATCHDOG_SLACK_S)],
            stdin=subprocess.PIPE, start_new_session=True, close_fds=True,
        )
        self._rb = RingBuffer(self.obj.map("held_execs"))
        self._loop.add_reader(self._rb.fileno(), self._drain)
        self._beat()
        self._link = self.obj.program("tp_btf_hold_exec").attach()
        log.info("TLS: held-exec mode on (max hold %.1f s, watchdog pid %d)", self.max_hold_s, self._watchdog.pid)

    def _beat(self) -> None:
        self._ctl.update(struct.pack("<I", 0), HOLD_CTL.pack(time.monotonic_ns(), int(HEARTBEAT_MAX_AGE_S * 1e9)))
        assert self._loop is not None
        self._beat_handle = self._loop.call_later(HEARTBEAT_S, self._beat)

    def _tell_watchdog(self, line: str) -> None:
        wd = self._watchdog
        if wd is None or wd.stdin is None:
            return
        try:
            wd.stdin.write(line.encode() + b"\n")
            wd.stdin.flush()
        except OSError:
            log.warning("TLS: held-exec watchdog is gone")

    def _drain(self) -> None:
        assert self._rb is not None and self._loop is not None
        for rec in self._rb.consume():
            ts, kdev, ino, pid, _ = HOLD_REC.unpack_from(rec)
            start = proc_starttime(pid)
            if start is None:
                self.stats.vanished += 1
                continue
            self.stats.held += 1
            self._held[pid] = (start, ts)
            self._noticed[pid] = time.monotonic_ns()
            self._tell_watchdog(f"hold {pid} {start}")
            task = self._loop.create_task(self._handle(pid, kdev, ino))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, pid: int, kdev: int, ino: int) -> None:
        try:
            await asyncio.wait_for(self.on_held(pid, kdev, ino), self.max_hold_s)
        except TimeoutError:
            self.stats.released_by_timeout += 1
            log.warning("TLS: released pid %d after %.1f s without attaching", pid, self.max_hold_s)
        except Exception:
            log.exception("TLS: handling held pid %d failed", pid)
        finally:
            # Known even when analysis failed: a file that cannot be analysed must not be held at every exec.
            self.mark_known(kdev, ino)
            self.release(pid)

    def release(self, pid: int) -> None:
        got = self._held.pop(pid, None)
        if got is None:
            return
        start, ts = got
        if continue_process(pid, start):
            held_ns = time.monotonic_ns() - ts
            if held_ns > 1e9:
                log.info("TLS: pid %d was held %.0f ms (noticed after %.0f ms)", pid, held_ns / 1e6,
                         (self._noticed.pop(pid, ts) - ts) / 1e6)
            self.stats.released += 1
            self.stats.hold_ns_total += held_ns
            self.stats.hold_ns_max = max(self.stats.hold_ns_max, held_ns)
        self._noticed.pop(pid, None)
        self._tell_watchdog(f"release {pid}")

    async def stop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if getattr(self, "_beat_handle", None) is not None:
            self._beat_handle.cancel()
        with contextlib.suppress(QtapError):
            self._ctl.update(struct.pack("<I", 0), HOLD_CTL.pack(0, 0))
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pid in list(self._held):
            self.release(pid)
        if self._rb is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._rb.fileno())
            self._rb.close()
            self._rb = None
        wd = self._watchdog
        if wd is not None:
            if wd.stdin is not None:
                wd.stdin.close()  # EOF: it continues anything left and exits
            try:
                wd.wait(5)
            except subprocess.TimeoutExpired:
                wd.kill()
                wd.wait()
            self._watchdog = None

    def held_pids(self) -> list[int]:
        return sorted(self._held)


def kernel_key_of(path: str) -> tuple[int, int]:
    """(kernel dev, ino) of a file, as tp_btf_hold_exec reads them from the exec'd file."""
    from qtap_async.tls.cache import kernel_dev

    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino
