"""The held-exec watchdog continues stopped processes when the agent goes away or takes too long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from qtap_async.tls.watchdog import proc_starttime


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, want: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) == want:
            return True
        time.sleep(0.02)
    return _state(pid) == want


def _stopped_sleeper() -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["sleep", "60"])
    os.kill(p.pid, signal.SIGSTOP)
    assert _wait_state(p.pid, "T")
    return p


def _watchdog(max_hold: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qtap_async.tls.watchdog", str(max_hold)], stdin=subprocess.PIPE)


def test_eof_continues_everything_still_held() -> None:
    a, b = _stopped_sleeper(), _stopped_sleeper()
    wd = _watchdog(600)
    try:
        assert wd.stdin is not None
        wd.stdin.write(f"hold {a.pid} {proc_starttime(a.pid)}\nhold {b.pid} {proc_starttime(b.pid)}\n"
                       f"release {b.pid}\n".encode())
        wd.stdin.flush()
        time.sleep(0.3)
        assert _state(a.pid) == "T" and _state(b.pid) == "T"  # b was released by the agent: not the watchdog's
        wd.stdin.close()  # the agent died
        assert wd.wait(10) == 0
        assert _wait_state(a.pid, "S")
        assert _state(b.pid) == "T"
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_a_hold_past_the_limit_is_continued() -> None:
    a = _stopped_sleeper()
    wd = _watchdog(0.5)
    try:
        assert wd.stdin is not None
        wd.stdin.write(f"hold {a.pid} {proc_starttime(a.pid)}\n".encode())
        wd.stdin.flush()
        assert _wait_state(a.pid, "S")
        assert wd.poll() is None  # still watching
    finally:
        wd.kill()
        wd.wait()
        a.kill()
        a.wait()


def test_a_recycled_pid_is_left_alone() -> None:
    a = _stopped_sleeper()
    wd = _watchdog(600)
    try:
        assert wd.stdin is not None
        wd.stdin.write(f"hold {a.pid} {(proc_starttime(a.pid) or 0) + 1}\n".encode())  # another process' start
        wd.stdin.close()
        assert wd.wait(10) == 0
        time.sleep(0.2)
        assert _state(a.pid) == "T"
    finally:
        a.kill()
        a.wait()
