"""struct.Struct mirrors of bpf/src/qtap.h (THE kernel/user ABI).

tests/bpf/test_abi.py compiles qtap.h with the system C compiler and checks every size and offset
here against it, so a change on one side without the other fails the suite.
"""

from __future__ import annotations

import enum
import struct

ABI_VERSION = 4
# Record files written by older agents still replay: ABI 1's conn_open had no uid, proc_exec no inode; ABI 2's
# conn_close had no reason; ABI 3 had no unbound TLS writes (nothing of it changed, it only lacked them).
READABLE_ABI_VERSIONS = (1, 2, 3, 4)
CHUNK_SIZE = 16384
MAX_CHUNKS = 8
MAX_IOV = 1024
COMM_LEN = 16
PATH_LEN = 256
TLS_HELLO_BYTES = 8192
MAX_MMSG = 4
MAX_MMSG_COUNTED = 64
# Unbound TLS writes: how long user space holds them after their object's last write, and how many bytes one
# object may hold back in the kernel.
TLS_PENDING_TTL_NS = 5_000_000_000
TLS_PENDING_MAX_BYTES = 1024 * 1024


class RecType(enum.IntEnum):
    CONN_OPEN = 1
    CONN_CLOSE = 2
    DATA = 3
    PROC_EXEC = 4
    PROC_EXIT = 5
    PROC_FORK = 6
    TLS_BIND = 7


class Dir(enum.IntEnum):
    SEND = 0
    RECV = 1


class Role(enum.IntEnum):
    UNKNOWN = 0
    CONNECT = 1
    ACCEPT = 2


class Source(enum.IntEnum):
    SYSCALL = 0
    OPENSSL = 1
    GNUTLS = 2
    GOTLS = 3
    RUSTLS = 4


class DataFlag(enum.IntFlag):
    TRUNCATED = 1
    READ_FAULT = 2
    NO_PAYLOAD = 4
    SENDFILE = 8
    SPLICE = 16
    IO_URING = 32
    MMSG_REST = 64
    DISCARDED = 128
    UNBOUND = 256  # TLS plaintext of an object with no socket yet: conn_id is the object, fd its generation


CONN_MIDSTREAM = 1
CONN_UDP = 2


class CloseReason(enum.IntEnum):
    """struct qtap_conn_close.reason: how the kernel found the connection's end."""

    SEEN = 0  # tcp_destroy_sock, close(2) of a UDP socket, or the sweep: released by every holder
    STALE = 1  # still in the table when its socket memory was born again
    SWEPT = 2  # the sweep found the socket freed: no hook saw its end


class Counter(enum.IntEnum):
    RECORDS = 0
    DROP_RINGBUF = 1
    DROP_INFLIGHT = 2
    TRUNCATED_BYTES = 3
    TLS_MUTED_BYTES = 4
    DROP_BYTES = 5
    TLS_UNASSOCIATED = 6
    TLS_BY_THREAD = 7
    STALE_SOCKS = 8
    CLOSED_SOCK_IO = 9
    MMSG_UNCOUNTED = 10
    IO_URING_BYTES = 11
    SWEPT_SOCKS = 12
    CLOSE_DEFERRED = 13
    DELETE_BUSY = 14
    TLS_HELD = 15
    TLS_BOUND_BY_SEND = 16
    TLS_STALE_BINDING = 17


COUNTER_SLOTS = 18


class IoKind(enum.IntEnum):
    """struct qtap_io_args.kind (only the ones user space writes are used here)."""

    BUF = 0
    IOV = 1
    MSG = 2
    CONNECT = 3
    PRE_MSG = 8

# struct qtap_hdr: type, abi, cpu, ts_ns, conn_id, pid, tid
HDR = struct.Struct("<HHIQQII")
# struct qtap_conn_open after the header
CONN_OPEN = struct.Struct("<32xQHBBHH16s16siI16s")  # ..., fd, uid (ABI 1: padding), comm
# struct qtap_conn_close after the header
CONN_CLOSE = struct.Struct("<32xQQQII")  # bytes_sent, bytes_received, open_ts_ns, reason, _pad
CONN_CLOSE_V2 = struct.Struct("<32xQQQ")
# struct qtap_data after the header, up to the payload
DATA = struct.Struct("<32xQIIBBHi")
DATA_PAYLOAD_OFFSET = DATA.size
PROC_EXEC = struct.Struct(f"<32xQII{COMM_LEN}s{PATH_LEN}sQII")
PROC_EXEC_V1 = struct.Struct(f"<32xQII{COMM_LEN}s{PATH_LEN}s")
PROC_FORK = struct.Struct("<32xQII")
# struct qtap_io_args: the value of the `inflight` map (user space writes it for calls blocked at attach)
IO_ARGS = struct.Struct("<QQIiBBBxIQ")
PROC_EXIT = struct.Struct("<32xiI")

# struct qtap_tls_bind after the header
TLS_BIND = struct.Struct("<32xQQQII")  # ssl, base, bytes, gen, _pad

# User-space records, with no qtap.h counterpart: the kernel never writes them. A plaintext chunk from qtap's
# Java agent (qtap_async/tls/java_channel.py) travels as this record in the raw batches, so `qtap record`
# files keep it and a replay reproduces the live output. Header as qtap_hdr, conn_id the agent's stream id.
REC_JAVA_DATA = 64
SOURCE_JAVA = 5  # Data.source of plaintext from the Java agent (abi.Source holds the kernel's sources)
JAVA_DATA = struct.Struct("<32xQHHBB")  # offset, lport (0: unknown), rport, dir, kind (1 SSLSocket, 2 SSLEngine)
JAVA_DATA_PAYLOAD_OFFSET = JAVA_DATA.size

# Sizes and field offsets as C lays them out; checked against the compiler in tests.
LAYOUT: dict[str, dict[str, int]] = {
    "qtap_hdr": {"__size__": HDR.size, "type": 0, "abi": 2, "cpu": 4, "ts_ns": 8, "conn_id": 16, "pid": 24,
                 "tid": 28},
    "qtap_conn_open": {"__size__": CONN_OPEN.size, "cgroup_id": 32, "family": 40, "role": 42, "flags": 43,
                       "lport": 44, "rport": 46, "laddr": 48, "raddr": 64, "fd": 80, "uid": 84, "comm": 88},
    "qtap_conn_close": {"__size__": CONN_CLOSE.size, "bytes_sent": 32, "bytes_received": 40, "open_ts_ns": 48,
                        "reason": 56},
    "qtap_data": {"__size__": DATA.size + CHUNK_SIZE, "offset": 32, "len": 40, "skipped": 44, "dir": 48,
                  "source": 49, "flags": 50, "fd": 52, "payload": 56},
    "qtap_proc_exec": {"__size__": PROC_EXEC.size, "cgroup_id": 32, "ppid": 40, "uid": 44, "comm": 48,
                       "filename": 64, "exe_ino": 320, "exe_dev": 328},
    "qtap_proc_fork": {"__size__": PROC_FORK.size, "cgroup_id": 32, "ppid": 40, "uid": 44},
    "qtap_io_args": {"__size__": IO_ARGS.size, "sk": 0, "buf": 8, "iovcnt": 16, "fd": 20, "dir": 24, "kind": 25,
                     "was_closed": 26, "nr": 28, "cap": 32},
    "qtap_proc_exit": {"__size__": PROC_EXIT.size, "exit_code": 32},
    "qtap_tls_bind": {"__size__": TLS_BIND.size, "ssl": 32, "base": 40, "bytes": 48, "gen": 56},
}
CONSTANTS = {
    "QTAP_ABI_VERSION": ABI_VERSION,
    "QTAP_CHUNK_SIZE": CHUNK_SIZE,
    "QTAP_MAX_CHUNKS": MAX_CHUNKS,
    "QTAP_MAX_IOV": MAX_IOV,
    "QTAP_COMM_LEN": COMM_LEN,
    "QTAP_PATH_LEN": PATH_LEN,
    "QTAP_TLS_HELLO_BYTES": TLS_HELLO_BYTES,
    "QTAP_MAX_MMSG": MAX_MMSG,
    "QTAP_MAX_MMSG_COUNTED": MAX_MMSG_COUNTED,
    "QTAP_TLS_PENDING_TTL_NS": TLS_PENDING_TTL_NS,
    "QTAP_TLS_PENDING_MAX_BYTES": TLS_PENDING_MAX_BYTES,
}

LOOPBACK4 = bytes([127, 0, 0, 1]) + bytes(12)  # 127.0.0.1 as the 16-byte address field holds it


def conn_open_record(ts_ns: int, conn_id: int, pid: int, *, lport: int, rport: int, laddr: bytes = LOOPBACK4,
                     raddr: bytes = LOOPBACK4, role: int = Role.UNKNOWN, family: int = 2, fd: int = 5, uid: int = 0,
                     comm: bytes = b"", cgroup_id: int = 0) -> bytes:
    """A conn_open record as the kernel writes it: records built in user space (benchmarks, tests) for the
    replay pipeline, which decodes them like ring-buffer records. ``role``: a ``Role``."""
    return (HDR.pack(RecType.CONN_OPEN, ABI_VERSION, 0, ts_ns, conn_id, pid, pid)
            + CONN_OPEN.pack(cgroup_id, family, role, 0, lport, rport, laddr, raddr, fd, uid, comm)[HDR.size:])


def data_record(ts_ns: int, conn_id: int, pid: int, payload: bytes, *, direction: int, offset: int = 0,
                fd: int = 5) -> bytes:
    """A data record of socket bytes (source 0, no flags, nothing skipped) as the kernel writes it."""
    return (HDR.pack(RecType.DATA, ABI_VERSION, 0, ts_ns, conn_id, pid, pid)
            + DATA.pack(offset, len(payload), 0, direction, 0, 0, fd)[HDR.size:] + payload)
