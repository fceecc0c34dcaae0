"""tracefs uprobe events with fetch-args: a kernel-side check of probe plans without any BPF.

Events live in their own group and tracing instance and are removed on exit; tests attach them only to
private copies of libraries, so no other process on the machine is probed.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")


def available() -> bool:
    return (TRACEFS / "uprobe_events").exists() and os.geteuid() == 0


class UprobeEvents:
    def __init__(self, path: str) -> None:
        self.path = path
        self.group = "qtap_t" + uuid.uuid4().hex[:8]
        self.instance = TRACEFS / "instances" / self.group
        self.names: list[str] = []

    def _define(self, line: str) -> None:
        # O_APPEND without a seek: tracefs refuses lseek with EINVAL.
        fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    def __enter__(self) -> UprobeEvents:
        self.instance.mkdir()
        return self

    def add(self, name: str, offset: int, ret: bool, fetch: str) -> None:
        self._define(f"{'r' if ret else 'p'}:{self.group}/{name} {self.path}:{offset:#x} {fetch}")
        self.names.append(name)
        (self.instance / "events" / self.group / name / "enable").write_text("1\n")

    def events(self) -> list[tuple[str, dict[str, str]]]:
        out = []
        for line in (self.instance / "trace").read_bytes().decode("utf-8", "replace").splitlines():
            m = re.search(r" (\w+): \([^)]*\)(.*)$", line)
            if m and m.group(1) in self.names:
                out.append((m.group(1), dict(re.findall(r'(\w+)=("[^"]*"|\S+)', m.group(2)))))
        return out

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            with contextlib.suppress(OSError):
                (self.instance / "events" / self.group / name / "enable").write_text("0\n")
        for name in self.names:
            with contextlib.suppress(OSError):
                self._define(f"-:{self.group}/{name}")
        with contextlib.suppress(OSError):
            self.instance.rmdir()
