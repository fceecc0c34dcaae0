"""Which set of socket.bpf.o programs captures plaintext socket I/O: the socket tracepoints or the syscall pairs.

- "sock": two tp_btf programs on sock:sock_send_length and sock:sock_recv_length (Linux >= 6.3). They run only
  when a socket sends or receives, so reads and writes on files, pipes and terminals cost nothing; the
  syscall's buffers come from the task's saved user registers (bpf/src/socket.bpf.c, sock_length).
- "syscalls": sys_enter/sys_exit tracepoint pairs on read, write, readv, writev, sendto, recvfrom, sendmsg and
  recvmsg, which run on every call on any fd. The fallback for older kernels.

"auto" (the default) takes "sock" where the kernel has the tracepoints; QTAP_SOCKET_PATH (or the
capture setting) forces either. Both sets leave the other programs (connect, accept, close, sendfile, splice,
sendmmsg/recvmmsg, io_uring, TCP state) as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtap_async.errors import ConfigError

ENV = "QTAP_SOCKET_PATH"
SOCK, SYSCALLS, AUTO = "sock", "syscalls", "auto"
CHOICES = (AUTO, SOCK, SYSCALLS)

_CALLS = ("read", "recvfrom", "readv", "recvmsg", "write", "sendto", "writev", "sendmsg")
PROGRAMS: dict[str, frozenset[str]] = {
    SOCK: frozenset({"tp_sock_send_length", "tp_sock_recv_length"}),
    SYSCALLS: frozenset(f"tp_{edge}_{call}" for edge in ("enter", "exit") for call in _CALLS),
}
TRACEPOINTS = ("sock_send_length", "sock_recv_length")
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def requested(setting: str | None = None) -> str:
    """The path asked for: the setting if given, else $QTAP_SOCKET_PATH, else auto. Unknown names are refused."""
    value = (setting if setting is not None else os.environ.get(ENV, AUTO)).strip().lower() or AUTO
    if value not in CHOICES:
        raise ConfigError(f"socket path {value!r} (from {'the capture setting' if setting is not None else ENV}) "
                          f"is none of {', '.join(CHOICES)}")
    return value


def tracepoints_missing(btf: Path = VMLINUX_BTF) -> str:
    """Why the kernel cannot run the sock path ("" when it can): tp_btf programs attach by the tracepoint's
    BTF type (btf_trace_<name>), which a kernel without the tracepoints lacks."""
    try:
        data = btf.read_bytes()
    except OSError as exc:
        return f"no kernel BTF ({btf}: {exc.strerror})"
    missing = [t for t in TRACEPOINTS if b"\0btf_trace_" + t.encode() + b"\0" not in data]
    if missing:
        return f"the kernel has no sock:{'/'.join(missing)} tracepoint (Linux < 6.3)"
    return ""


def choose(setting: str | None = None, btf: Path = VMLINUX_BTF) -> tuple[str, str]:
    """(path, why): the path the agent loads and one line saying why."""
    want = requested(setting)
    if want == SYSCALLS:
        return SYSCALLS, f"forced ({ENV}=syscalls or the capture setting)"
    missing = tracepoints_missing(btf)
    if want == SOCK:
        if missing:
            raise ConfigError(f"socket path 'sock' was asked for, but {missing}")
        return SOCK, "forced"
    if missing:
        return SYSCALLS, f"fallback: {missing}"
    return SOCK, "sock:sock_send_length/sock_recv_length present"


def describe(path: str) -> str:
    if path == SOCK:
        return "socket tracepoints (tp_btf sock:sock_send_length + sock:sock_recv_length)"
    return "syscall tracepoints (sys_enter/sys_exit of read, write, readv, writev, sendto, recvfrom, sendmsg, recvmsg)"


# Both paths alike: what neither captures as payload (their byte counts and gaps are reported).
NOT_COVERED = ("sendfile, splice and io_uring: bytes counted as gaps, not captured; sendmmsg/recvmmsg: their own "
               "syscall programs; 32-bit (compat) syscalls and kernel-internal sends: not seen")


def effective(setting: str | None, probe_works: bool, probe_error: str = "") -> tuple[str, str]:
    """choose(), knowing whether the sock programs load here (qtap inspect's probe): what the agent would run."""
    path, why = choose(setting)
    if path == SOCK and not probe_works:
        if requested(setting) == SOCK:
            raise ConfigError(f"socket path 'sock' was asked for, but its program does not load: {probe_error}")
        return SYSCALLS, f"fallback: the sock tracepoint program does not load or attach: {probe_error}"
    return path, why
