"""Socket calls already blocked when the agent attached.

A server blocked in recv() when the agent attaches passed sys_enter before the programs existed, so its
sys_exit finds no parked arguments and the bytes it returns would be lost. Right after attach, user space
reads /proc/PID/task/TID/syscall for every thread (the syscall number and arguments of a thread blocked in
a call), and for each one blocked in a socket data call (or connect) writes the entry sys_enter would have
written into the `inflight` map, with the socket left for sys_exit to resolve and the syscall number so
sys_exit can tell it is the same call. The thread is checked again after the write: if it already left
that call the entry is removed, so a later call can never consume it.

x86_64 syscall numbers only (the BPF objects are built for x86).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass

from qtap_async.bpf import abi
from qtap_async.bpf.object import BpfMap
from qtap_async.errors import BpfError

log = logging.getLogger("qtap.inflight")

_BPF_NOEXIST = 1
_SEND, _RECV = int(abi.Dir.SEND), int(abi.Dir.RECV)
# nr -> (direction, kind). For MSG, buf is the msghdr (read at sys_exit); for IOV/MMSG, iovcnt is arg 2.
_CALLS: dict[int, tuple[int, int]] = {
    0: (_RECV, int(abi.IoKind.BUF)),  # read
    1: (_SEND, int(abi.IoKind.BUF)),  # write
    19: (_RECV, int(abi.IoKind.IOV)),  # readv
    20: (_SEND, int(abi.IoKind.IOV)),  # writev
    44: (_SEND, int(abi.IoKind.BUF)),  # sendto
    45: (_RECV, int(abi.IoKind.BUF)),  # recvfrom
    46: (_SEND, int(abi.IoKind.PRE_MSG)),  # sendmsg
    47: (_RECV, int(abi.IoKind.PRE_MSG)),  # recvmsg
    42: (_SEND, int(abi.IoKind.CONNECT)),  # connect
    299: (_RECV, 6),  # recvmmsg (QTAP_IO_MMSG)
    307: (_SEND, 6),  # sendmmsg
}
_WITH_COUNT = {19, 20, 299, 307}


@dataclass
class InflightScan:
    threads: int = 0  # threads looked at
    parked: int = 0  # entries written for calls blocked on a socket
    withdrawn: int = 0  # written, then removed because the call had returned meanwhile


def _blocked_call(tid_dir: str) -> tuple[int, list[int]] | None:
    try:
        with open(f"{tid_dir}/syscall", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 7 or fields[0] in (b"running", b"-1"):
        return None
    try:
        nr = int(fields[0])
        args = [int(x, 16) for x in fields[1:7]]
    except ValueError:
        return None
    return nr, args


_MSG_PEEK = 0x2


def _peeks(nr: int, args: list[int]) -> bool:
    """A receive with MSG_PEEK: its bytes come again on the real read (see enter_io_flags in socket.bpf.c)."""
    flags = {45: args[3], 47: args[2], 299: args[3]}.get(nr, 0)
    return bool(flags & _MSG_PEEK)


def _is_socket(pid: str, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    except OSError:
        return False


# The plain data calls: the socket-tracepoint path (qtap_async/bpf/socket_path.py) reads their arguments when
# the bytes move, from the task's registers, so a call blocked since before the attach needs no entry there.
DATA_CALLS = frozenset({0, 1, 19, 20, 44, 45, 46, 47})


def park_blocked_calls(inflight: BpfMap, self_pid: int, target_pid: int = 0, *,
                       data_calls: bool = True) -> InflightScan:
    """Write `inflight` entries for threads blocked in a socket call right now (see the module doc);
    `data_calls=False` parks only connect and recvmmsg (the socket-tracepoint path)."""
    scan = InflightScan()
    if platform.machine() != "x86_64":
        log.info("in-flight calls at attach: not scanned on %s", platform.machine())
        return scan
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return scan
    for pid in pids:
        if int(pid) == self_pid or (target_pid and int(pid) != target_pid):
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            scan.threads += 1
            tid_dir = f"/proc/{pid}/task/{tid}"
            call = _blocked_call(tid_dir)
            if call is None or call[0] not in _CALLS or (not data_calls and call[0] in DATA_CALLS):
                continue
            nr, args = call
            if _peeks(nr, args):
                continue
            fd = args[0]
            if fd >= 1 << 31 or not _is_socket(pid, fd):
                continue
            direction, kind = _CALLS[nr]
            iovcnt = args[2] & 0xFFFFFFFF if nr in _WITH_COUNT else 0
            cap = args[2] if kind == abi.IoKind.BUF else 0
            value = abi.IO_ARGS.pack(0, args[1], iovcnt, fd, direction, kind, 0, nr, cap)
            key = int(tid).to_bytes(4, "little")
            try:
                inflight.update(key, value, _BPF_NOEXIST)
            except BpfError:
                continue  # the thread entered a new call since (its own entry is there): nothing to do
            if _blocked_call(tid_dir) != call:
                inflight.delete(key)
                scan.withdrawn += 1
            else:
                scan.parked += 1
    return scan
