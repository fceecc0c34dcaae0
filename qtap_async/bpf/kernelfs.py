"""The kernel filesystems capture needs: tracefs (tracepoint ids, uprobe events) and bpffs.

A fresh host, a minimal VM or a container started without the host's /sys mounts may have neither. Rather
than letting libbpf fail later with a bare `No such file or directory` on a tracepoint, `ensure()` mounts what
is missing when we are root and, when we cannot, names what is missing and the command that fixes it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import msgspec

from qtap_async.errors import KernelFsError
from qtap_async.libc import libc

MOUNTS = Path("/proc/self/mounts")


class KernelFs(msgspec.Struct, frozen=True):
    name: str  # "tracefs" | "bpffs"
    fstype: str  # what /proc/self/mounts calls it
    path: str  # where it is mounted when we mount it
    alternatives: tuple[str, ...]  # other places that serve as well (debugfs's automount of tracefs)
    probe: str  # a file that exists inside a mounted instance ("" = any mount of fstype at path)
    required: bool  # capture cannot work without it

    @property
    def fix(self) -> str:
        source = "bpf" if self.fstype == "bpf" else "nodev"
        return f"mount -t {self.fstype} {source} {self.path}"


TRACEFS = KernelFs("tracefs", "tracefs", "/sys/kernel/tracing", ("/sys/kernel/debug/tracing",), "events", True)
# Nothing is pinned today, but libbpf and operators expect it (bpftool, map pinning across restarts).
BPFFS = KernelFs("bpffs", "bpf", "/sys/fs/bpf", (), "", False)
ALL = (TRACEFS, BPFFS)


class FsState(msgspec.Struct, frozen=True):
    name: str
    mounted: bool
    path: str  # where it was found (or would be mounted)
    action: str = ""  # "mounted" when ensure() mounted it now
    error: str = ""  # why it is missing and how to fix it


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount this process sees."""
    try:
        text = MOUNTS.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def find(fs: KernelFs) -> str:
    """Where ``fs`` is mounted and usable, or ''."""
    mounts = _mounts()
    for path in (fs.path, *fs.alternatives):
        if fs.probe:
            # The probe file tells a real, populated tracefs from an empty directory.
            if (Path(path) / fs.probe).is_dir():
                return path
        elif (path, fs.fstype) in mounts:
            return path
    return ""


def _mount(fs: KernelFs) -> None:
    c = libc(use_errno=True)
    source = b"bpf" if fs.fstype == "bpf" else b"nodev"
    data = b"mode=0700" if fs.fstype == "bpf" else None
    if c.mount(source, fs.path.encode(), fs.fstype.encode(), ctypes.c_ulong(0), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def state(fs: KernelFs, *, mount: bool) -> FsState:
    where = find(fs)
    if where:
        return FsState(fs.name, True, where)
    if not mount:
        return FsState(fs.name, False, fs.path, error=f"{fs.name} is not mounted at {fs.path}: run `{fs.fix}`")
    if os.geteuid() != 0:
        return FsState(fs.name, False, fs.path,
                       error=f"{fs.name} is not mounted at {fs.path} and only root can mount it: run `sudo {fs.fix}`")
    try:
        _mount(fs)
    except OSError as exc:
        hint = ""
        if not Path(fs.path).is_dir():
            hint = f" ({fs.path} does not exist: is /sys mounted from the host, e.g. `-v /sys:/sys`?)"
        return FsState(fs.name, False, fs.path,
                       error=f"{fs.name} is not mounted at {fs.path} and mounting it failed: {exc.strerror}{hint}; "
                             f"run `{fs.fix}` as root")
    if not find(fs):
        return FsState(fs.name, False, fs.path,
                       error=f"{fs.name} was mounted at {fs.path} but is not usable; run `{fs.fix}` as root")
    return FsState(fs.name, True, fs.path, action="mounted")


def states(*, mount: bool) -> list[FsState]:
    return [state(fs, mount=mount) for fs in ALL]


def ensure() -> list[FsState]:
    """Mount what is missing (when root); KernelFsError naming what is missing and the fix when a required
    filesystem cannot be had. Optional ones that are missing are reported in the returned states."""
    got = states(mount=True)
    missing = [s.error for s, fs in zip(got, ALL, strict=True) if fs.required and not s.mounted]
    if missing:
        raise KernelFsError("; ".join(missing))
    return got
