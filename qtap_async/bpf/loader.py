"""Loads and attaches the agent's BPF objects as one unit.

socket.bpf.o owns the shared maps (ring buffer, socket table, counters, TLS call state); the other
objects reuse them by fd, so there is one ring buffer to drain and one socket table.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qtap_async.bpf import abi, socket_path
from qtap_async.bpf.object import BpfObject, possible_cpus
from qtap_async.bpf.ringbuf import RingBuffer
from qtap_async.errors import BpfError

log = logging.getLogger(__name__)


def objects_dir() -> Path:
    """Where the compiled objects are: inside the installed package (bpf/build links here in a checkout)."""
    override = os.environ.get("QTAP_BPF_DIR")
    if override:
        return Path(override)
    return Path(str(resources.files("qtap_async.bpf") / "objects"))


@dataclass(frozen=True)
class CaptureSettings:
    self_tgid: int = 0
    target_tgid: int = 0
    capture_payload: bool = True
    max_chunks: int = abi.MAX_CHUNKS
    ring_buffer_bytes: int = 16 << 20
    tls_hello_bytes: int = abi.TLS_HELLO_BYTES
    # The kernel wakes the drain each time the bytes waiting pass a multiple of this (0: every record); see
    # rb_flags in bpf/src/common.bpf.h. The drain's timer (RingBufferSource.poll_interval_s) bounds the delay.
    wakeup_bytes: int = 64 * 1024
    # Which programs capture socket I/O: "auto", "sock" or "syscalls" (qtap_async/bpf/socket_path.py);
    # $QTAP_SOCKET_PATH when not given.
    socket_path: str = field(default_factory=lambda: socket_path.requested())


class Capture:
    """The loaded, attached programs and the ring buffer to drain."""

    def __init__(self, settings: CaptureSettings | None = None, objects: Path | None = None) -> None:
        self.settings = settings or CaptureSettings(self_tgid=os.getpid())
        directory = objects or objects_dir()
        self.directory = directory
        # One random base per run, shared by every object: ids do not repeat across agent restarts.
        self._conn_id_base = random.getrandbits(24) << 32
        self.objects: list[BpfObject] = []
        self.socket_path = ""  # socket_path.SOCK or SYSCALLS once loaded
        self.socket_path_reason = ""
        self.ringbuf: RingBuffer | None = None
        try:
            self._load(directory)
        except BaseException:
            self.close()
            raise

    def configure(self, obj: BpfObject) -> None:
        """Write the agent's settings into an object's .rodata (before its load)."""
        s = self.settings
        wanted = {
            "self_tgid": s.self_tgid,
            "target_tgid": s.target_tgid,
            "capture_payload": int(s.capture_payload),
            "max_chunks": max(1, min(s.max_chunks, abi.MAX_CHUNKS)),
            "tls_hello_bytes": s.tls_hello_bytes,
            "wakeup_bytes": s.wakeup_bytes,
            "conn_id_base": self._conn_id_base,
        }
        known = obj.rodata_vars()
        obj.set_rodata(**{k: v for k, v in wanted.items() if k in known})

    def _open_socket(self, directory: Path, path: str) -> BpfObject:
        """socket.bpf.o with the programs of one socket I/O path (the other set is not loaded)."""
        sock = BpfObject.open(directory / "socket.bpf.o")
        other = socket_path.PROGRAMS[socket_path.SYSCALLS if path == socket_path.SOCK else socket_path.SOCK]
        for name, prog in sock.programs.items():
            if name in other:
                prog.set_autoload(False)
        size = self.settings.ring_buffer_bytes
        sock.map("events").set_max_entries(size)
        sock.map("scratch").set_max_entries(possible_cpus())
        self.configure(sock)
        return sock

    def _load(self, directory: Path) -> None:
        size = self.settings.ring_buffer_bytes
        if size & (size - 1) or size < 4096:
            raise ValueError(f"ring_buffer_bytes must be a power of two >= 4096, got {size}")
        path, why = socket_path.choose(self.settings.socket_path)
        sock = self._open_socket(directory, path)
        try:
            sock.load()
        except BpfError as exc:
            # The kernel has the tracepoints but refuses the programs (a verifier or helper it lacks): on
            # "auto" the syscall set does the same work, so capture goes on; a forced path fails loudly.
            if path != socket_path.SOCK or socket_path.requested(self.settings.socket_path) != socket_path.AUTO:
                sock.close()
                raise
            sock.close()
            path, why = socket_path.SYSCALLS, f"fallback: the sock programs did not load: {str(exc).splitlines()[0]}"
            sock = self._open_socket(directory, path)
            sock.load()
        self.socket_path, self.socket_path_reason = path, why
        self.objects.append(sock)
        log.info("socket I/O path: %s (%s)", socket_path.describe(path), why)
        proc = BpfObject.open(directory / "process.bpf.o")
        self.objects.append(proc)
        self.share_maps(proc)
        self.configure(proc)
        proc.load()
        for obj in self.objects:
            obj.attach_all()
        self.ringbuf = RingBuffer(sock.map("events"))

    def share_maps(self, obj: BpfObject) -> None:
        """Make `obj` use the socket object's maps of the same name (call before obj.load()): every map
        declared in maps.bpf.h is shared; a map only `obj` has (go_calls) and its own settings stay its own."""
        owner = self.objects[0]
        for name, m in obj.maps.items():
            if name in owner.maps and "." not in name:  # ".rodata"/".bss" are per object
                m.reuse_fd(owner.map(name).fd)

    @property
    def socket_object(self) -> BpfObject:
        return self.objects[0]

    def counters(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs, by name (records, drops, truncation...), and the events the
        kernel never ran a program for (recursion_misses: the program was busy on that CPU)."""
        m = self.socket_object.map("counters")
        out = {c.name.lower(): sum(m.percpu_u64(int(c))) for c in abi.Counter}
        out["program_misses"] = sum(p.recursion_misses() for obj in self.objects for p in obj.programs.values()
                                    if p.autoload)
        return out

    def close(self) -> None:
        if self.ringbuf is not None:
            self.ringbuf.close()
            self.ringbuf = None
        for obj in reversed(self.objects):
            obj.close()
        self.objects.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
