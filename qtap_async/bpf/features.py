"""What this kernel supports, for `qtap inspect`: each hook type is tried for real (load, then attach)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import msgspec

from qtap_async.bpf.kernelfs import FsState, states
from qtap_async.bpf.loader import objects_dir
from qtap_async.bpf.object import BpfObject
from qtap_async.errors import BpfError, QtapError

# program name in features.bpf.o -> (hook label, needed by the agent)
_PROBES: dict[str, tuple[str, bool]] = {
    "feat_tracepoint": ("tracepoint", True),
    "feat_ringbuf": ("ringbuf", True),
    "feat_raw_tracepoint": ("raw_tracepoint", False),
    "feat_tp_btf": ("tp_btf", False),
    "feat_uprobe": ("uprobe", True),
    "feat_kprobe": ("kprobe", False),
    "feat_fentry": ("fentry", False),
}


class HookSupport(msgspec.Struct, frozen=True):
    hook: str
    loads: bool
    attaches: bool | None  # None: not tried (uprobes are attached per library)
    required: bool
    error: str = ""


class KernelFeatures(msgspec.Struct, frozen=True):
    kernel: str
    arch: str
    btf: bool
    lockdown: str
    tracefs: bool
    bpffs: bool
    root: bool
    libbpf: str
    hooks: list[HookSupport]
    filesystems: list[FsState] = msgspec.field(default_factory=list)  # tracefs, bpffs: found, mounted or missing

    @property
    def capture_possible(self) -> bool:
        return self.btf and self.root and all(h.loads and h.attaches is not False for h in self.hooks if h.required)


def _lockdown() -> str:
    try:
        text = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return "unknown"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text.strip()


def _probe(path: Path, prog: str, attach: bool) -> tuple[bool, bool | None, str]:
    try:
        with BpfObject.open(path) as obj:
            for name, p in obj.programs.items():
                p.set_autoload(name == prog)
            obj.load()
            if not attach:
                return True, None, ""
            try:
                obj.program(prog).attach()
            except BpfError as exc:
                return True, False, str(exc).splitlines()[0]
            return True, True, ""
    except BpfError as exc:
        return False, False, str(exc).splitlines()[0]


def detect() -> KernelFeatures:
    from qtap_async.bpf._libbpf import libbpf

    try:
        lb = libbpf()
        libbpf_version = f"{lb.version[0]}.{lb.version[1]}"
    except QtapError as exc:
        libbpf_version = f"missing: {exc}"
    hooks: list[HookSupport] = []
    path = objects_dir() / "features.bpf.o"
    root = os.geteuid() == 0
    # Before the hooks are tried: attaching a tracepoint needs tracefs, which root mounts when it is missing.
    filesystems = states(mount=True)  # only root mounts; others get the command that fixes it
    for prog, (hook, required) in _PROBES.items():
        if libbpf_version.startswith("missing"):
            hooks.append(HookSupport(hook, False, False, required, "libbpf missing"))
            continue
        loads, attaches, err = _probe(path, prog, attach=hook != "uprobe")
        hooks.append(HookSupport(hook, loads, attaches, required, err))
    return KernelFeatures(
        kernel=platform.release(),
        arch=platform.machine(),
        btf=Path("/sys/kernel/btf/vmlinux").exists(),
        lockdown=_lockdown(),
        tracefs=filesystems[0].mounted,
        bpffs=filesystems[1].mounted,
        root=root,
        libbpf=libbpf_version,
        hooks=hooks,
        filesystems=filesystems,
    )


def explain(f: KernelFeatures) -> list[str]:
    """One line per reason capture would not work (empty when it will)."""
    why = []
    if not f.root:
        why.append("not running as root: BPF needs CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE")
    if not f.btf:
        why.append("no kernel BTF at /sys/kernel/btf/vmlinux: CO-RE programs cannot be relocated")
    for fs in f.filesystems:
        if fs.name == "tracefs" and not fs.mounted:
            why.append(fs.error)
    if not f.tracefs and not f.filesystems:
        why.append("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")
    if f.libbpf.startswith("missing"):
        why.append(f"libbpf {f.libbpf}")
    for h in f.hooks:
        if h.required and (not h.loads or h.attaches is False):
            why.append(f"required hook {h.hook} does not work here: {h.error}")
    return why
