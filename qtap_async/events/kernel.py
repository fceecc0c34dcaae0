"""Decoded kernel records (one per ring-buffer record), see bpf/src/qtap.h."""

from __future__ import annotations

import msgspec


class ConnOpen(msgspec.Struct, frozen=True, gc=False, tag="conn_open"):
    ts_ns: int
    conn_id: int
    pid: int
    tid: int
    cgroup_id: int
    family: int
    role: int  # abi.Role
    midstream: bool
    lport: int
    rport: int
    laddr: str
    raddr: str
    fd: int
    comm: str
    udp: bool = False  # a DNS socket: each data record is one datagram
    uid: int = -1  # of the task that connected/accepted; -1: unknown (ABI 1 record files)


class ConnClose(msgspec.Struct, frozen=True, gc=False, tag="conn_close"):
    ts_ns: int
    conn_id: int
    pid: int
    bytes_sent: int
    bytes_received: int
    open_ts_ns: int
    reason: int = 0  # abi.CloseReason (ABI 3; 0 in older record files)


class Data(msgspec.Struct, frozen=True, gc=False, tag="data"):
    ts_ns: int
    conn_id: int
    pid: int
    tid: int
    offset: int
    dir: int  # abi.Dir
    source: int  # abi.Source
    flags: int  # abi.DataFlag
    skipped: int
    fd: int
    payload: bytes


class TlsBind(msgspec.Struct, frozen=True, gc=False, tag="tls_bind"):
    """The unbound plaintext of TLS object ``ssl`` (process ``pid``, generation ``gen``) is connection
    ``conn_id``'s: its unbound byte x is the connection's send plaintext byte ``base + x``, x < ``nbytes``."""

    ts_ns: int
    conn_id: int
    pid: int
    tid: int
    ssl: int
    base: int
    nbytes: int
    gen: int


class JavaData(msgspec.Struct, frozen=True, gc=False, tag="java_data"):
    """A plaintext chunk reported by qtap's Java agent (not a kernel record): conntrack ties it to its connection
    by the JVM's pid and the socket's ports, then handles it as a Data record of source abi.SOURCE_JAVA."""

    ts_ns: int
    stream_id: int  # the Java agent's id of the SSLSocket or SSLEngine
    pid: int  # from the agent channel's peer credentials, not from the JVM's word
    tid: int  # the Java thread id (the JVM does not expose the OS one cheaply)
    offset: int
    dir: int
    kind: int  # 1 SSLSocket (both ports known), 2 SSLEngine (only the peer's port)
    lport: int
    rport: int
    payload: bytes


class ProcExec(msgspec.Struct, frozen=True, gc=False, tag="proc_exec"):
    ts_ns: int
    pid: int
    ppid: int
    uid: int
    cgroup_id: int
    comm: str
    filename: str
    exe_ino: int = 0  # 0: unknown (ABI 1 record files)
    exe_dev: int = 0


class ProcFork(msgspec.Struct, frozen=True, gc=False, tag="proc_fork"):
    """A new process (not a thread), running its parent's program until it execs."""

    ts_ns: int
    pid: int
    ppid: int
    uid: int
    cgroup_id: int


class ProcExit(msgspec.Struct, frozen=True, gc=False, tag="proc_exit"):
    ts_ns: int
    pid: int
    exit_code: int


KernelRecord = ConnOpen | ConnClose | Data | ProcExec | ProcExit | ProcFork | TlsBind | JavaData
