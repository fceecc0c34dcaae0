"""Process context from /proc, completed by what the kernel said: exe, cmdline, user, cgroup, container id.

Read once per pid and cached; the exec record of the kernel invalidates the entry (same pid, new
program). A process can be gone before user space looks (a short-lived curl, a child forked after
accept() that exits at once), so the kernel's own records carry what naming it needs: the exec record has
the uid, the cgroup id and the executable's inode; the fork record names the parent whose program the
child runs; the connection open record has the uid and cgroup id of the task that opened it. /proc, when
it is still there, wins; the kernel's hints fill in what it cannot tell any more.

An exited process is remembered for the next EXITED_KEEP exits (its connections can still close, and records
it wrote can still be behind its exit record), then forgotten: a host that runs short-lived programs (a curl
per request, a shell per cron job) would otherwise fill the cache with the dead up to its LRU bound, a few
hundred bytes per exit (the soak benchmark grew 0.9 MiB/min that way). ``stats()`` counts what was forgotten.
"""

from __future__ import annotations

import os
import pwd
import re
from collections import OrderedDict

import msgspec

#: Exited processes still remembered: a record about one comes at most a ring-buffer drain behind its exit.
EXITED_KEEP = 1024

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


class _Hint(msgspec.Struct, gc=False):
    """What the kernel told about a pid (exec or fork record), for when /proc no longer can."""

    comm: str = ""
    filename: str = ""
    uid: int = -1
    cgroup_id: int = 0
    exe_key: tuple[int, int] | None = None  # (dev, inode) of the executable
    parent: ProcessInfo | None = None  # forked, not exec'd since: the parent's program


def container_id_from_cgroup(text: str) -> str:
    """The container id in /proc/PID/cgroup content, or '' for a host process."""
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        m = _CONTAINER_RE.search(path)
        if m:
            return m.group(1)
    return ""


def cgroup_path(text: str) -> str:
    """The cgroup v2 path in /proc/PID/cgroup content (the `0::` line); on a v1-only host, the first line's."""
    first = ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
        if not first:
            first = line.rsplit(":", 1)[-1]
    return first


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def user_name(uid: int) -> str:
    """The user name of a uid, or the number as text when it has none."""
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
    return ProcessInfo(
        pid=pid,
        exe=exe,
        comm=comm,
        cmdline=cmdline,
        uid=uid,
        user=user_name(uid) if uid >= 0 else "",
        container_id=container_id_from_cgroup(cgroup_text),
        cgroup=cgroup_path(cgroup_text),
    )


def _cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on a hybrid host)."""
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 "):
            return left.split()[4]
    return ""


class CgroupPaths:
    """cgroup v2 id (what bpf_get_current_cgroup_id() returns: the inode of the cgroup's directory) -> path.

    Filled by walking the hierarchy, again on a miss but at most once per `rescan_ns` (100 ms: a container's
    cgroup is often younger than its first connection), so a burst of unknown ids costs one walk. Bounded by
    the number of cgroups on the host.
    """

    def __init__(self, root: str | None = None, rescan_ns: int = 100_000_000, max_entries: int = 65536) -> None:
        self.root = _cgroup2_root() if root is None else root
        self.rescan_ns = rescan_ns
        self.max_entries = max_entries
        self._paths: dict[int, str] = {}
        self._last_scan_ns = -rescan_ns

    def _scan(self, now_ns: int) -> None:
        self._last_scan_ns = now_ns
        if not self.root:
            return
        paths: dict[int, str] = {}
        cut = len(self.root.rstrip("/"))
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            paths[ino] = dirpath[cut:] or "/"
            if len(paths) >= self.max_entries:
                break
        self._paths = paths

    def path(self, cgroup_id: int, now_ns: int) -> str:
        if not cgroup_id:
            return ""
        p = self._paths.get(cgroup_id)
        if p is None and now_ns - self._last_scan_ns >= self.rescan_ns:
            self._scan(now_ns)
            p = self._paths.get(cgroup_id)
        return p or ""


class ProcessCacheStats(msgspec.Struct, gc=False):
    entries: int = 0  # processes cached now
    evicted_full: int = 0  # entries (processes, hints) pushed out by the LRU bound
    evicted_exited: int = 0  # exited processes forgotten EXITED_KEEP exits later


class ProcessCache:
    """pid -> ProcessInfo, bounded (LRU), with the kernel's hints for processes /proc no longer shows; an
    exited pid is forgotten `exited_keep` exits after its own (module docstring)."""

    def __init__(self, max_entries: int = 16384, cgroups: CgroupPaths | None = None,
                 exited_keep: int = EXITED_KEEP) -> None:
        self._cache: OrderedDict[int, ProcessInfo] = OrderedDict()
        self._hints: OrderedDict[int, _Hint] = OrderedDict()
        # Executables by (dev, inode): the path /proc gave for a live process, reused for a gone one, so
        # the same binary is always named the same (/usr/bin/python3 vs python3.11).
        self._exe_paths: dict[tuple[int, int], str] = {}
        self.cgroups = cgroups if cgroups is not None else CgroupPaths()
        self.max_entries = max_entries
        #: Bumped for a pid each time it execs: a connection compares it to notice a new program.
        self.exec_gen: dict[int, int] = {}
        # Exited pids, oldest exit first; a pid leaves it when it is forgotten or reused (forked again).
        self._exited: OrderedDict[int, None] = OrderedDict()
        self.exited_keep = exited_keep
        self.evicted_full = 0
        self.evicted_exited = 0

    def stats(self) -> ProcessCacheStats:
        return ProcessCacheStats(len(self._cache), self.evicted_full, self.evicted_exited)

    def tracked_pids(self) -> int:
        """Pids with anything remembered (an entry, a hint or an exec generation): what memory follows."""
        return len(self._cache.keys() | self._hints.keys() | self.exec_gen.keys())

    def _hint(self, pid: int) -> _Hint:
        h = self._hints.get(pid)
        if h is None:
            h = self._hints[pid] = _Hint()
            if len(self._hints) > self.max_entries:
                self._hints.popitem(last=False)
                self.evicted_full += 1
        return h

    def get(self, pid: int, comm_hint: str = "", *, uid: int = -1, cgroup_id: int = 0, now_ns: int = 0) -> ProcessInfo:
        """The process; `uid`/`cgroup_id` are what a kernel record said about it (used when /proc is gone)."""
        info = self._cache.get(pid)
        if info is not None:
            self._cache.move_to_end(pid)
            return info
        hint = self._hints.get(pid)
        info = read_process(pid, (hint.comm if hint else "") or comm_hint)
        if hint is not None or uid >= 0 or cgroup_id:
            info = self._complete(info, hint, uid, cgroup_id, now_ns)
        self._cache[pid] = info
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.evicted_full += 1
        return info

    def as_seen(self, pid: int, comm: str, *, uid: int = -1, cgroup_id: int = 0, now_ns: int = 0) -> ProcessInfo:
        """The process as a kernel record that says `comm` saw it. User space reads /proc later than the
        kernel wrote the record; if the process exec'd meanwhile (bash -c '...; exec head'), /proc already
        names the new program while the exec record is still queued behind this one. Then the kernel's own
        exec or fork hint, whose comm matches, names the program that made the call."""
        info = self.get(pid, comm, uid=uid, cgroup_id=cgroup_id, now_ns=now_ns)
        if not comm or not info.comm or info.comm[:15] == comm[:15]:
            return info
        hint = self._hints.get(pid)
        if hint is None or hint.comm[:15] != comm[:15]:
            return info  # a renamed thread, or nothing better known
        if hint.parent is not None:
            return msgspec.structs.replace(hint.parent, pid=pid)
        return msgspec.structs.replace(info, exe=self._hint_exe(hint), comm=hint.comm, cmdline="")

    def _hint_exe(self, hint: _Hint) -> str:
        """The executable an exec hint names: the path /proc gave for the same file, else the exec filename."""
        known = self._exe_paths.get(hint.exe_key) if hint.exe_key is not None else None
        return known or _normalize(hint.filename)

    def _complete(self, info: ProcessInfo, hint: _Hint | None, uid: int, cgroup_id: int, now_ns: int) -> ProcessInfo:
        changes: dict[str, object] = {}
        exe_key = hint.exe_key if hint else None
        if info.exe:
            # /proc names the file the hint's inode is only if the process has not exec'd again since the
            # hint (bash -c '...; exec head'): else the path of the new program would name the old file.
            if exe_key is not None and _exe_key_of(info.pid) == exe_key:
                if exe_key not in self._exe_paths and len(self._exe_paths) >= self.max_entries:
                    self._exe_paths.pop(next(iter(self._exe_paths)))  # a host that builds binaries all day
                self._exe_paths[exe_key] = info.exe
        else:  # gone: name it from what the kernel said
            parent = hint.parent if hint else None
            if parent is not None:
                changes.update(exe=parent.exe, cmdline=info.cmdline or parent.cmdline,
                               comm=info.comm or parent.comm, container_id=parent.container_id)
            elif hint is not None:
                changes["exe"] = self._hint_exe(hint)
        if info.uid < 0:
            u = uid if uid >= 0 else (hint.uid if hint else -1)
            if u < 0 and hint is not None and hint.parent is not None:
                u = hint.parent.uid
            if u >= 0:
                changes.update(uid=u, user=user_name(u))
        if not info.cgroup:
            cg = self.cgroups.path(cgroup_id or (hint.cgroup_id if hint else 0), now_ns)
            if not cg and hint is not None and hint.parent is not None:
                cg = hint.parent.cgroup
            if cg:
                changes["cgroup"] = cg
                if not info.container_id and "container_id" not in changes:
                    changes["container_id"] = container_id_from_cgroup(cg)
        return msgspec.structs.replace(info, **changes) if changes else info

    def snapshot_at_start(self) -> int:
        """Read every process now: one that was running before the agent attached and exits before its first
        record is looked at is still named. Bounded by max_entries; returns how many were read."""
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return 0
        n = 0
        for pid in pids[: self.max_entries]:
            if pid in self._cache:
                continue
            info = read_process(pid)
            if info.exe or info.cmdline:  # a kernel thread or an already gone process says nothing
                self._cache[pid] = info
                n += 1
        return n

    def on_exec(self, pid: int, comm: str, filename: str, uid: int = -1, cgroup_id: int = 0,
                exe_ino: int = 0, exe_dev: int = 0) -> None:
        # Same pid, new program: forget the old one; keep what the kernel said in case it exits fast.
        self._cache.pop(pid, None)
        self._exited.pop(pid, None)  # (an exit record behind this one, reordered: the pid runs again)
        self.exec_gen[pid] = self.exec_gen.get(pid, 0) + 1
        if len(self.exec_gen) > self.max_entries:
            self.exec_gen.pop(next(iter(self.exec_gen)))
        h = self._hint(pid)
        h.comm, h.filename, h.uid, h.cgroup_id = comm, filename, uid, cgroup_id
        h.exe_key = (exe_dev, exe_ino) if exe_ino else None
        h.parent = None

    def on_fork(self, pid: int, ppid: int, uid: int = -1, cgroup_id: int = 0, now_ns: int = 0) -> None:
        """A new process running its parent's program (until it execs)."""
        self._cache.pop(pid, None)
        self._exited.pop(pid, None)  # a reused pid: a new, live process
        parent = self._cache.get(ppid)
        if parent is None:
            parent = self.get(ppid, now_ns=now_ns)
        h = self._hint(pid)
        h.comm, h.uid, h.cgroup_id = parent.comm, uid, cgroup_id
        h.filename, h.exe_key, h.parent = parent.exe, None, msgspec.structs.replace(parent, pid=pid)

    def on_exit(self, pid: int) -> None:
        # Connections of this pid may still close after it: remembered for the next exited_keep exits.
        self._exited[pid] = None
        self._exited.move_to_end(pid)
        while len(self._exited) > self.exited_keep:
            old, _ = self._exited.popitem(last=False)
            self._forget(old)

    def _forget(self, pid: int) -> None:
        found = self._cache.pop(pid, None) is not None
        found = self._hints.pop(pid, None) is not None or found
        found = self.exec_gen.pop(pid, None) is not None or found
        if found:
            self.evicted_exited += 1


def _exe_key_of(pid: int) -> tuple[int, int] | None:
    """(dev, inode) of the file /proc/PID/exe refers to, dev encoded as the kernel's s_dev (MAJOR << 20 |
    MINOR, what the exec record carries), not as stat's st_dev."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return (os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino


def _normalize(filename: str) -> str:
    """An exec filename as /proc/PID/exe would name it: absolute, symlinks resolved (host paths only)."""
    if not filename.startswith("/"):
        return filename
    try:
        return os.path.realpath(filename)
    except OSError:
        return filename
