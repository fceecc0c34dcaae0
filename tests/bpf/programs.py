"""Small BPF programs built for a test: compiled from C with the project's headers, loaded with the
project's bindings, so a test drives a real kernel object (a ring buffer, a map) whose behaviour it controls.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qtap_async.bpf.object import BpfObject

SRC = Path(__file__).resolve().parents[2] / "bpf" / "src"

# One record per getppid() of the target process, numbered in the order the kernel produced them; a full
# ring is counted in `drops`. getppid: a syscall nothing else in the test process makes by itself.
GETPPID_RING = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RING_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);  /* 0: records produced, 1: records the full ring refused */
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct rec {
	__u64 seq;
	__u32 tgid;
	__u32 pad;
};

SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_enter_getppid(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 k = 0;
	__u64 *n;
	struct rec *r;

	if (tgid != target_tgid)
		return 0;
	n = bpf_map_lookup_elem(&counts, &k);
	if (!n)
		return 0;
	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		k = 1;
		n = bpf_map_lookup_elem(&counts, &k);
		if (n)
			__sync_fetch_and_add(n, 1);
		return 0;
	}
	r->seq = __sync_fetch_and_add(n, 1);
	r->tgid = tgid;
	r->pad = 0;
	if (DISCARD_EVERY && r->seq % DISCARD_EVERY == 0)
		bpf_ringbuf_discard(r, 0);  /* reserved, then given up: readers must skip it */
	else
		bpf_ringbuf_submit(r, 0);
	return 0;
}
"""
REC = struct.Struct("<QI4x")


def compile_bpf(directory: Path, name: str, source: str, defines: dict[str, int] | None = None) -> Path:
    """`source` compiled to directory/name.bpf.o (clang, -target bpf, the project's bpf/src headers)."""
    c = directory / f"{name}.bpf.c"
    c.write_text(source)
    obj = directory / f"{name}.bpf.o"
    flags = [f"-D{k}={v}" for k, v in (defines or {}).items()]
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", *flags, "-I", str(SRC),
                    "-c", str(c), "-o", str(obj)], check=True)
    return obj


class GetppidRing:
    """The loaded GETPPID_RING program, attached, counting for this process."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.events = obj.map("events")

    def produce(self, n: int) -> None:
        for _ in range(n):
            os.getppid()

    def counts(self) -> tuple[int, int]:
        """(records produced, records the full ring refused)."""
        counts = self.obj.map("counts")
        produced, refused = (struct.unpack("<Q", counts.lookup(struct.pack("<I", i)) or bytes(8))[0] for i in (0, 1))
        return int(produced), int(refused)


def build_getppid_ring(directory: Path, ring_bytes: int = 256 * 1024, discard_every: int = 0) -> Path:
    """``discard_every`` > 0: every record whose seq is a multiple of it is reserved, then discarded."""
    return compile_bpf(directory, f"getppid_ring_{ring_bytes}_{discard_every}", GETPPID_RING,
                       {"RING_BYTES": ring_bytes, "DISCARD_EVERY": discard_every})


@contextmanager
def getppid_ring(obj_path: Path) -> Iterator[GetppidRing]:
    """The program of `build_getppid_ring`, loaded and attached for this process until the block ends."""
    obj = BpfObject.open(obj_path)
    try:
        obj.set_rodata(target_tgid=os.getpid())
        obj.load()
        obj.attach_all()
        yield GetppidRing(obj)
    finally:
        obj.close()


def seqs(records: list[bytes]) -> list[int]:
    return [REC.unpack(r)[0] for r in records]
