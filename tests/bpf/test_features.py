"""`qtap inspect`'s kernel report, on this kernel: each hook type is tried for real, and the verdict and
its reasons follow from what was tried."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from qtap_async.bpf.features import _PROBES, HookSupport, KernelFeatures, _trampoline_reason, detect, explain
from qtap_async.bpf.loader import objects_dir
from qtap_async.bpf.object import BpfObject
from qtap_async.capabilities import report
from qtap_async.errors import BpfError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bpf
def test_detect_tries_every_hook_on_this_kernel() -> None:
    f = detect()
    assert (f.kernel, f.arch, f.root) == (platform.release(), platform.machine(), os.geteuid() == 0)
    assert f.btf == Path("/sys/kernel/btf/vmlinux").exists()
    hooks = {h.hook: h for h in f.hooks}
    assert set(hooks) == {"tracepoint", "ringbuf", "raw_tracepoint", "tp_btf", "uprobe", "uprobe_multi", "kprobe",
                          "fentry", "fexit", "lsm", "sock_length"}
    # What the agent itself runs on (the bpf tests of this suite use all of them): they must work here.
    for name in ("tracepoint", "ringbuf", "tp_btf", "uprobe_multi", "sock_length"):
        assert hooks[name].loads and hooks[name].attaches, hooks[name]
    assert hooks["uprobe"].loads and hooks["uprobe"].attaches is None  # attached per library, not here
    assert {h.hook for h in f.hooks if h.required} == {"tracepoint", "ringbuf", "uprobe"}
    assert f.capture_possible and explain(f) == []
    assert [fs.name for fs in f.filesystems] == ["tracefs", "bpffs"] and f.tracefs
    assert msgspec.json.decode(msgspec.json.encode(f), type=KernelFeatures) == f


def test_explain_names_each_reason_capture_would_fail() -> None:
    broken = KernelFeatures(
        kernel="6.1", arch="x86_64", btf=False, lockdown="none", tracefs=False, bpffs=True, root=False,
        libbpf="missing: libbpf.so.1 not found",
        hooks=[HookSupport("tracepoint", True, False, True, "attach failed: ENOENT"),
               HookSupport("kprobe", False, False, False, "not needed")])
    why = explain(broken)
    assert not broken.capture_possible
    assert why[0].startswith("not running as root") and why[1].startswith("no kernel BTF")
    assert "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing" in why
    assert "libbpf missing: libbpf.so.1 not found" in why
    assert "required hook tracepoint does not work here: attach failed: ENOENT" in why
    assert not any("kprobe" in w for w in why)  # an optional hook that fails is no reason


def _try(hook: str) -> tuple[bool, bool, int]:
    """(loads, attaches, errno) of the hook's probe program, tried here directly with libbpf (the same
    object and program inspect uses, without inspect's code)."""
    probe = _PROBES[hook]
    with BpfObject.open(objects_dir() / "features.bpf.o") as obj:
        for name, p in obj.programs.items():
            p.set_autoload(name == probe.program)
        if probe.retarget is not None:
            obj.program(probe.program).retarget(*probe.retarget)
        try:
            obj.load()
        except BpfError as exc:
            return False, False, exc.errno
        try:
            obj.program(probe.program).attach()
        except BpfError as exc:
            return True, False, exc.errno
        return True, True, 0


@pytest.mark.bpf
@pytest.mark.parametrize("hook", ["fentry", "fexit", "lsm"])
def test_inspect_says_what_the_kernel_answered_for_trampolines(hook: str) -> None:
    """`qtap inspect`'s line for fentry/fexit/lsm is the kernel's real answer: ok when it loads and attaches,
    else the errno the kernel gave and, with the capabilities held, never "needs root"."""
    loads, attaches, code = _try(hook)
    r = subprocess.run([sys.executable, "-m", "cli.main", "inspect"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    (line,) = [ln for ln in r.stdout.splitlines() if ln.split()[:1] == [hook]]
    if loads and attaches:
        assert line.split()[1] == "ok", line
        return
    assert line.split()[1] == "NO" and f"{os.strerror(code)} (errno {code})" in line, (code, line)
    assert ("load fails, attach not tried" if not loads else "load ok, attach fails") in line
    assert "needs root" not in line
    if report().bpf and code == errno.EPERM and not loads:
        assert "with CAP_BPF and CAP_PERFMON held" in line, line
        tp_btf = _try("tp_btf")
        if tp_btf[0]:
            assert "this kernel refuses BPF trampolines" in line and "lockdown=" in line, line


@pytest.mark.bpf
def test_without_the_capabilities_the_refusal_names_them() -> None:
    """As root with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped, a load's EPERM is explained by the
    capabilities that are missing, not by the kernel's policy."""
    drop = "-bpf,-perfmon,-sys_admin"
    r = subprocess.run(["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", sys.executable, "-m",
                        "cli.main", "inspect", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    hooks = {h["hook"]: h for h in msgspec.json.decode(r.stdout)["features"]["hooks"]}
    for name in ("fentry", "tp_btf", "tracepoint"):
        assert not hooks[name]["loads"] and hooks[name]["errno"] == errno.EPERM, hooks[name]
        assert "missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)" in hooks[name]["error"], hooks[name]
        assert "trampolines" not in hooks[name]["error"]


def test_trampoline_reason_needs_the_evidence() -> None:
    """The kernel-policy explanation is given only when tp_btf loaded and the trampolines failed with EPERM."""
    eperm = [HookSupport(h, False, None, False, "x", errno.EPERM) for h in ("fentry", "fexit", "lsm")]
    tp_ok, tp_bad = HookSupport("tp_btf", True, True, False), HookSupport("tp_btf", False, None, False, "y", 1)
    why = _trampoline_reason([tp_ok, *eperm], "integrity", "lockdown,bpf")
    assert "(fentry/fexit/lsm)" in why and "lockdown=integrity, LSMs lockdown,bpf" in why
    assert _trampoline_reason([tp_bad, *eperm], "integrity", "") == ""
    enoent = [HookSupport("fentry", False, None, False, "x", errno.ENOENT)]
    assert _trampoline_reason([tp_ok, *enoent], "none", "") == ""
