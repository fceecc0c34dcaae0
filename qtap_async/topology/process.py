"""Process context from /proc: exe, cmdline, user, container id.

Read once per pid and cached; the exec record of the kernel invalidates the entry (same pid, new
program). A process that is already gone keeps what the kernel told us (comm, exec filename).
"""

from __future__ import annotations

import os
import pwd
import re
from collections import OrderedDict

import msgspec

# Container ids as runtimes put them in cgroup paths: docker-<64hex>.scope, /docker/<64hex>,
# cri-containerd-<64hex>.scope, crio-<64hex>.scope, libpod-<64hex>.scope, kubepods .../<64hex>.
_CONTAINER_RE = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")


class ProcessInfo(msgspec.Struct, frozen=True, gc=False):
    pid: int
    exe: str
    comm: str
    cmdline: str
    uid: int
    user: str
    container_id: str
    cgroup: str


def container_id_from_cgroup(text: str) -> str:
    """The container id in /proc/PID/cgroup content, or '' for a host process."""
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        m = _CONTAINER_RE.search(path)
        if m:
            return m.group(1)
    return ""


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def read_process(pid: int, comm_hint: str = "", exe_hint: str = "") -> ProcessInfo:
    base = f"/proc/{pid}"
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = exe_hint
    cmdline = _read(f"{base}/cmdline").replace("\0", " ").strip()
    comm = _read(f"{base}/comm").strip() or comm_hint
    uid = -1
    for line in _read(f"{base}/status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    cgroup_text = _read(f"{base}/cgroup")
    cgroup = cgroup_text.splitlines()[0].rsplit(":", 1)[-1] if cgroup_text else ""
    return ProcessInfo(
        pid=pid,
        exe=exe,
        comm=comm,
        cmdline=cmdline,
        uid=uid,
        user=_user(uid) if uid >= 0 else "",
        container_id=container_id_from_cgroup(cgroup_text),
        cgroup=cgroup,
    )


class ProcessCache:
    """pid -> ProcessInfo, bounded (LRU)."""

    def __init__(self, max_entries: int = 16384) -> None:
        self._cache: OrderedDict[int, ProcessInfo] = OrderedDict()
        self._hints: dict[int, tuple[str, str]] = {}
        self._parents: dict[int, int] = {}  # pid -> ppid from the exec record (for processes gone too soon)
        self.max_entries = max_entries

    def get(self, pid: int, comm_hint: str = "") -> ProcessInfo:
        info = self._cache.get(pid)
        if info is not None:
            self._cache.move_to_end(pid)
            return info
        comm, exe = self._hints.get(pid, (comm_hint, ""))
        info = read_process(pid, comm or comm_hint, exe)
        ppid = self._parents.get(pid, 0)
        if not info.cgroup and ppid > 0:
            # Gone before we looked (a `wget` in a shell loop lives a millisecond): its parent, still there,
            # is in the same cgroup, so the same container.
            parent = read_process(ppid)
            if parent.cgroup:
                info = msgspec.structs.replace(info, container_id=parent.container_id, cgroup=parent.cgroup)
        self._cache[pid] = info
        if len(self._cache) > self.max_entries:
            old, _ = self._cache.popitem(last=False)
            self._hints.pop(old, None)
            self._parents.pop(old, None)
        return info

    def on_exec(self, pid: int, comm: str, filename: str, ppid: int = 0) -> None:
        # Same pid, new program: forget the old one; keep what the kernel said in case it exits fast.
        self._cache.pop(pid, None)
        self._hints[pid] = (comm, filename)
        if ppid:
            self._parents[pid] = ppid
        if len(self._hints) > self.max_entries:
            old = next(iter(self._hints))
            self._hints.pop(old)
            self._parents.pop(old, None)

    def on_exit(self, pid: int) -> None:
        # Connections of this pid may still close after it; the entry ages out of the LRU.
        pass
