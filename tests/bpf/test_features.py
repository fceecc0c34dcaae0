"""`qtap inspect`'s kernel report, on this kernel: each hook type is tried for real, and the verdict and
its reasons follow from what was tried."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import msgspec
import pytest

from qtap_async.bpf.features import HookSupport, KernelFeatures, detect, explain


@pytest.mark.bpf
def test_detect_tries_every_hook_on_this_kernel() -> None:
    f = detect()
    assert (f.kernel, f.arch, f.root) == (platform.release(), platform.machine(), os.geteuid() == 0)
    assert f.btf == Path("/sys/kernel/btf/vmlinux").exists()
    hooks = {h.hook: h for h in f.hooks}
    assert set(hooks) == {"tracepoint", "ringbuf", "raw_tracepoint", "tp_btf", "uprobe", "kprobe", "fentry"}
    # What the agent itself runs on (the bpf tests of this suite use all of them): they must work here.
    for name in ("tracepoint", "ringbuf", "tp_btf"):
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
