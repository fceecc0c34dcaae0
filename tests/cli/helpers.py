"""Running `qtap` as a user would: a subprocess of `python -m cli.main`, optionally on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QTAP = [sys.executable, "-m", "cli.main"]


def qtap(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
         prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *QTAP, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


class PtyRun:
    """`qtap ARGS` with stdout (and stdin) on a pseudo-terminal and stderr in a file."""

    def __init__(self, args: Sequence[str], workdir: Path) -> None:
        self.master, slave = pty.openpty()
        self.err_path = workdir / "stderr.log"
        self.buf = bytearray()
        env = dict(os.environ)
        for k in ("container", "KUBERNETES_SERVICE_HOST"):
            env.pop(k, None)
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen([*QTAP, *args], cwd=ROOT, stdin=slave, stdout=slave, stderr=err, env=env,
                                         close_fds=True)
        os.close(slave)

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def read(self) -> str:
        while self.master >= 0:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            self.buf += chunk
        return self.buf.decode(errors="replace")

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            if pred():
                return True
            if self.proc.poll() is not None:
                return pred()
            time.sleep(0.1)
        return pred()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.read()
        os.close(self.master)
        self.master = -1
        return self.proc.returncode


class AgentRun:
    """`qtap ARGS` with stdout to a file (a user's `qtap run > out.jsonl`); waits for the start message."""

    def __init__(self, args: Sequence[str], workdir: Path, *, wait: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.out_path = workdir / "stdout.txt"
        self.err_path = workdir / "stderr.log"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen([*QTAP, *args], cwd=ROOT, stdout=out, stderr=err,
                                         env=None if env is None else {**os.environ, **env})
        if wait and not wait_until(lambda: "Ctrl-C to stop" in self.log(), 90, self.proc):
            self.stop()
            raise AssertionError(f"qtap did not start:\n{self.log()}")

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_until(pred: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return pred()
        time.sleep(0.1)
    return pred()


def curl(url: str, *extra: str) -> None:
    subprocess.run(["/usr/bin/curl", "-sS", "-o", "/dev/null", *extra, url], check=True, timeout=30)


def pty_output(args: Sequence[str], timeout: float = 120) -> tuple[int, str]:
    """Run `qtap ARGS` with stdout on a pseudo-terminal; its exit code and what it printed there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*QTAP, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, close_fds=True)
    os.close(slave)
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=30)
    return code, buf.decode(errors="replace").replace("\r\n", "\n")
