"""What this kernel supports, for `qtap inspect`: each hook type is tried for real (load, then attach)."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import tempfile
from pathlib import Path

import msgspec

from qtap_async.bpf.kernelfs import FsState, states
from qtap_async.bpf.loader import objects_dir
from qtap_async.bpf.object import BpfObject
from qtap_async.capabilities import report as capability_report
from qtap_async.errors import BpfError, QtapError
from qtap_async.libc import libc

# libbpf/kernel ABI numbers (enum bpf_prog_type, enum bpf_attach_type in linux/bpf.h).
_PROG_TYPE_TRACING, _PROG_TYPE_LSM = 26, 29
_TRACE_FEXIT, _LSM_MAC = 25, 27


class _Probe(msgspec.Struct, frozen=True):
    program: str  # in features.bpf.o
    required: bool  # needed by the agent
    # (program type, attach type, kernel function): the program's code loaded as another kind of program
    # (fexit and LSM share fentry's `return 0`), so one object file probes them all.
    retarget: tuple[int, int, str] | None = None
    # uprobe_multi: loaded for multi links and attached at offset 0 of the object file itself (a file nobody
    # runs, so the probe never fires): some kernels load such a program and refuse only the link.
    multi: bool = False


# hook label -> how it is tried
_PROBES: dict[str, _Probe] = {
    "tracepoint": _Probe("feat_tracepoint", True),
    "ringbuf": _Probe("feat_ringbuf", True),
    "raw_tracepoint": _Probe("feat_raw_tracepoint", False),
    "tp_btf": _Probe("feat_tp_btf", False),
    "uprobe": _Probe("feat_uprobe", True),
    "uprobe_multi": _Probe("feat_uprobe", False, multi=True),
    # The socket-tracepoint path (qtap_async/bpf/socket_path.py); without it the syscall pairs do the work.
    "sock_length": _Probe("feat_sock_length", False),
    "kprobe": _Probe("feat_kprobe", False),
    "fentry": _Probe("feat_fentry", False),
    "fexit": _Probe("feat_fentry", False, (_PROG_TYPE_TRACING, _TRACE_FEXIT, "do_nanosleep")),
    # An LSM program that returns 0 allows everything: attaching it changes no decision.
    "lsm": _Probe("feat_fentry", False, (_PROG_TYPE_LSM, _LSM_MAC, "file_open")),
}
_TRAMPOLINES = ("fentry", "fexit", "lsm")  # attached through a BPF trampoline


class HookSupport(msgspec.Struct, frozen=True):
    hook: str
    loads: bool
    attaches: bool | None  # None: not tried (the load failed, or uprobes: attached per library)
    required: bool
    error: str = ""
    errno: int = 0  # of the failed load or attach (0: none)


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
    lsm: str = ""  # the security modules the kernel runs (securityfs "lsm"), "" when unknown

    @property
    def capture_possible(self) -> bool:
        return self.btf and self.root and all(h.loads and h.attaches is not False for h in self.hooks if h.required)


SECURITYFS = Path("/sys/kernel/security")


def _read_securityfs(root: Path) -> tuple[str, str]:
    lockdown = "unknown"
    try:
        text = (root / "lockdown").read_text()
        lockdown = next((w.strip("[]") for w in text.split() if w.startswith("[")), text.strip())
    except OSError:
        pass
    try:
        lsm = (root / "lsm").read_text().strip()
    except OSError:
        lsm = ""
    return lockdown, lsm


def security() -> tuple[str, str]:
    """The kernel's lockdown mode and its list of security modules, from securityfs. Where securityfs is
    not mounted (minimal VMs and containers), root mounts a private instance in a temporary directory
    for the read and unmounts it: the answer often explains a refused program type, and nothing is left
    behind."""
    lockdown, lsm = _read_securityfs(SECURITYFS)
    if (lockdown != "unknown" and lsm) or os.geteuid() != 0:
        return lockdown, lsm
    c = libc(use_errno=True)
    with tempfile.TemporaryDirectory(prefix="qtap-securityfs-") as tmp:
        if c.mount(b"securityfs", tmp.encode(), b"securityfs", ctypes.c_ulong(0), None) != 0:
            return lockdown, lsm
        try:
            return _read_securityfs(Path(tmp))
        finally:
            c.umount2(tmp.encode(), 2)  # MNT_DETACH


def _probe(path: Path, probe: _Probe, attach: bool) -> tuple[bool, bool | None, str, int]:
    """(loads, attaches, first line of the error, errno) of one program tried for real."""
    try:
        with BpfObject.open(path) as obj:
            for name, p in obj.programs.items():
                p.set_autoload(name == probe.program)
            if probe.retarget is not None:
                obj.program(probe.program).retarget(*probe.retarget)
            if probe.multi:
                obj.use_uprobe_multi()
            obj.load()
            if not attach:
                return True, None, "", 0
            try:
                prog = obj.program(probe.program)
                if probe.multi:
                    prog.attach_uprobe_multi(str(path), [0], [0])
                else:
                    prog.attach()
            except BpfError as exc:
                return True, False, str(exc).splitlines()[0], exc.errno
            return True, True, "", 0
    except BpfError as exc:  # not loaded: attaching was not tried
        return False, None, str(exc).splitlines()[0], exc.errno


def _trampoline_reason(hooks: list[HookSupport], lockdown: str, lsm: str) -> str:
    """What the probes show when the trampoline hooks fail with EPERM although the capabilities are there:
    a BTF tracing program of another attach type (tp_btf) loads, so the kernel refuses these attach types
    themselves, not BPF or the program type. "" when the probes do not show that."""
    by_name = {h.hook: h for h in hooks}
    tp_btf = by_name.get("tp_btf")
    refused = [h.hook for h in hooks if h.hook in _TRAMPOLINES and not h.loads and h.errno == errno.EPERM]
    if tp_btf is None or not tp_btf.loads or not refused:
        return ""
    where = f"lockdown={lockdown}" + (f", LSMs {lsm}" if lsm else "")
    return (f"load refused: {os.strerror(errno.EPERM)} (errno {errno.EPERM}) with CAP_BPF and CAP_PERFMON held "
            f"while tp_btf loads: this kernel refuses BPF trampolines ({'/'.join(refused)}): {where}, a security "
            "module's policy or its configuration")


def _kprobe_reason(hook: HookSupport) -> str:
    # libbpf creates kprobes through the "kprobe" perf PMU; a kernel built without CONFIG_KPROBES has none,
    # and the attach fails with a bare ENOENT.
    if hook.errno == errno.ENOENT and not Path("/sys/bus/event_source/devices/kprobe").exists():
        return f"{hook.error}: this kernel has no kprobe PMU (built without kprobes)"
    return hook.error


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
    for hook, probe in _PROBES.items():
        if libbpf_version.startswith("missing"):
            hooks.append(HookSupport(hook, False, False, probe.required, "libbpf missing"))
            continue
        loads, attaches, err, code = _probe(path, probe, attach=hook != "uprobe")
        if hook == "uprobe_multi" and not (loads and attaches):
            err = f"{err} (TLS uprobes attach as classic links: the same capture, slower to detach)"
        hooks.append(HookSupport(hook, loads, attaches, probe.required, err, code))
    lockdown, lsm = security()
    reason = _trampoline_reason(hooks, lockdown, lsm) if capability_report().bpf else ""
    for i, h in enumerate(hooks):
        if reason and h.hook in _TRAMPOLINES and not h.loads and h.errno == errno.EPERM:
            hooks[i] = msgspec.structs.replace(h, error=reason)
        elif h.hook == "kprobe" and h.attaches is False:
            hooks[i] = msgspec.structs.replace(h, error=_kprobe_reason(h))
    return KernelFeatures(
        kernel=platform.release(),
        arch=platform.machine(),
        btf=Path("/sys/kernel/btf/vmlinux").exists(),
        lockdown=lockdown,
        tracefs=filesystems[0].mounted,
        bpffs=filesystems[1].mounted,
        root=root,
        libbpf=libbpf_version,
        hooks=hooks,
        filesystems=filesystems,
        lsm=lsm,
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
