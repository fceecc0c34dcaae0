"""Watchdog of the held-exec mode: nothing stays stopped, whatever happens to the agent.

Runs as a separate process (``python -m qtap_async.tls.watchdog MAX_HOLD_S``) that the agent starts before
it attaches the hold program, with a pipe on its stdin. The agent writes one line per event::

    hold PID STARTTIME      a process the kernel stopped at exec (STARTTIME: field 22 of /proc/PID/stat)
    release PID             the agent continued it

The watchdog continues (SIGCONT) every process still held when the pipe reaches EOF (the agent exited,
crashed or was killed: the kernel closes its end) and every process held longer than MAX_HOLD_S (an agent
that hangs). STARTTIME guards against continuing a recycled pid. It ignores SIGINT/SIGTERM/SIGHUP, so a
Ctrl-C sent to the agent's process group cannot kill it before it has done its job.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def continue_process(pid: int, starttime: int) -> bool:
    """SIGCONT ``pid`` if it is still the process that was held. True if a signal was sent."""
    if proc_starttime(pid) != starttime:
        return False
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return False
    return True


def run(fd: int, max_hold_s: float) -> int:
    held: dict[int, tuple[int, float]] = {}
    buf = b""
    while True:
        now = time.monotonic()
        for pid, (start, since) in list(held.items()):
            if now - since >= max_hold_s:
                continue_process(pid, start)
                del held[pid]
        timeout = min((since + max_hold_s - now for _s, since in held.values()), default=None)
        ready, _, _ = select.select([fd], [], [], None if timeout is None else max(0.0, timeout))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            for pid, (start, _since) in held.items():
                continue_process(pid, start)
            return 0
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"hold":
                held[int(parts[1])] = (int(parts[2]), time.monotonic())
            elif len(parts) == 2 and parts[0] == b"release":
                held.pop(int(parts[1]), None)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    max_hold_s = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    return run(sys.stdin.fileno(), max_hold_s)


if __name__ == "__main__":
    sys.exit(main())
