"""Error paths of the libbpf bindings: clear typed errors, never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async.bpf.loader import Capture, CaptureSettings, objects_dir
from qtap_async.bpf.object import BpfObject
from qtap_async.errors import BpfError, BpfLoadError

SRC = Path(__file__).resolve().parents[2] / "bpf" / "src"

BROKEN = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vals SEC(".maps");
SEC("tracepoint/syscalls/sys_enter_getpid")
int tp_broken(void *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&vals, &k);
	/* no NULL check: the verifier must reject this */
	return *v;
}
"""


def _compile(tmp_path: Path, src: str) -> Path:
    c = tmp_path / "broken.bpf.c"
    c.write_text(src)
    obj = tmp_path / "broken.bpf.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", str(SRC), "-c", str(c),
                    "-o", str(obj)], check=True)
    return obj


@pytest.mark.bpf
def test_verifier_rejection_is_a_clear_error_with_the_log(tmp_path: Path) -> None:
    obj = _compile(tmp_path, BROKEN)
    with BpfObject.open(obj) as o, pytest.raises(BpfLoadError) as info:
        o.load()
    err = info.value
    assert err.errno > 0
    assert "broken.bpf.o" in str(err)
    assert "tp_broken" in err.log or "invalid" in err.log.lower()


@pytest.mark.bpf
def test_broken_socket_object_fails_capture_cleanly(tmp_path: Path) -> None:
    # A directory whose socket.bpf.o is broken: the loader raises and leaves nothing attached.
    _compile(tmp_path, BROKEN).rename(tmp_path / "socket.bpf.o")
    with pytest.raises(BpfError):
        Capture(CaptureSettings(self_tgid=os.getpid()), objects=tmp_path)


def test_missing_and_garbage_objects(tmp_path: Path) -> None:
    with pytest.raises(BpfError, match="file not found"):
        BpfObject.open(tmp_path / "nope.bpf.o")
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an elf file at all")
    with pytest.raises(BpfLoadError, match=r"junk\.bpf\.o"):
        BpfObject.open(junk)


def test_misuse_is_refused_not_crashing() -> None:
    obj = BpfObject.open(objects_dir() / "socket.bpf.o")
    with pytest.raises(BpfError, match="unknown"):
        obj.set_rodata(no_such_setting=1)
    with pytest.raises(BpfError, match="not loaded"):
        obj.program("tp_enter_read").attach()
    with pytest.raises(BpfError, match="not loaded"):
        _ = obj.map("events").fd
    with pytest.raises(BpfError, match="no such program"):
        obj.program("nope")
    assert obj.rodata_vars()["self_tgid"][1] == 4
    obj.close()
    obj.close()
    with pytest.raises(BpfError, match="closed"):
        obj.load()


@pytest.mark.bpf
def test_cli_reports_broken_objects(tmp_path: Path) -> None:
    _compile(tmp_path, BROKEN).rename(tmp_path / "socket.bpf.o")
    env = dict(os.environ, QTAP_BPF_DIR=str(tmp_path))
    qtap = str(Path(sys.executable).parent / "qtap")
    out = subprocess.run([qtap, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "socket.bpf.o" in out.stderr and "Traceback" not in out.stderr
