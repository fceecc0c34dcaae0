"""Ring-buffer bytes -> kernel records, with precompiled struct.Struct layouts from abi.py."""

from __future__ import annotations

import socket
import sys

from qtap_async.bpf import abi
from qtap_async.errors import DecodeError
from qtap_async.events.kernel import (
    ConnClose,
    ConnOpen,
    Data,
    JavaData,
    KernelRecord,
    ProcExec,
    ProcExit,
    ProcFork,
    TlsBind,
)

_hdr = abi.HDR.unpack_from
_open = abi.CONN_OPEN.unpack_from
_close = abi.CONN_CLOSE.unpack_from
_close_v2 = abi.CONN_CLOSE_V2.unpack_from
_data = abi.DATA.unpack_from
_exec = abi.PROC_EXEC.unpack_from
_exec_v1 = abi.PROC_EXEC_V1.unpack_from
_exit = abi.PROC_EXIT.unpack_from
_fork = abi.PROC_FORK.unpack_from
_bind = abi.TLS_BIND.unpack_from
_java = abi.JAVA_DATA.unpack_from
_JAVA_PAYLOAD = abi.JAVA_DATA_PAYLOAD_OFFSET
_READABLE = frozenset(abi.READABLE_ABI_VERSIONS)
_ntop = socket.inet_ntop
_intern = sys.intern
_PAYLOAD = abi.DATA_PAYLOAD_OFFSET
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
AF_INET = socket.AF_INET


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _addr(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return _ntop(AF_INET, raw[:4])
    if raw[:12] == _V4_MAPPED:  # an IPv6 socket talking IPv4: show the IPv4 address
        return _ntop(AF_INET, raw[12:16])
    return _ntop(socket.AF_INET6, raw)


def decode(raw: bytes) -> KernelRecord:
    """One ring-buffer record -> its typed record. Raises DecodeError for a malformed record."""
    try:
        rtype, version, _cpu, ts, conn_id, pid, tid = _hdr(raw)
        if version != abi.ABI_VERSION and version not in _READABLE:
            raise DecodeError(f"record ABI version {version}, expected {abi.ABI_VERSION}")
        if rtype == 3:
            offset, length, skipped, direction, source, flags, fd = _data(raw)
            payload = raw[_PAYLOAD : _PAYLOAD + length]
            if len(payload) != length:
                raise DecodeError(f"data record says {length} payload bytes, has {len(payload)}")
            return Data(ts, conn_id, pid, tid, offset, direction, source, flags, skipped, fd, payload)
        if rtype == 1:
            cg, family, role, flags, lport, rport, laddr, raddr, fd, uid, comm = _open(raw)
            if family != AF_INET and raddr[:12] == _V4_MAPPED and laddr[:12] == _V4_MAPPED:
                # A dual-stack socket talking IPv4 is an IPv4 connection, as the other end reports it.
                family = AF_INET
                laddr, raddr = laddr[12:], raddr[12:]
            # Interned: every tracked connection keeps these, and they repeat (one local address, a few
            # peers and program names), so 10k connections share a handful of strings.
            return ConnOpen(ts, conn_id, pid, tid, cg, family, role, bool(flags & abi.CONN_MIDSTREAM), lport,
                            rport, _intern(_addr(family, laddr)), _intern(_addr(family, raddr)), fd,
                            _intern(_cstr(comm)),
                            bool(flags & abi.CONN_UDP), uid if version >= 2 else -1)
        if rtype == 2:
            if version < 3:
                sent, received, open_ts = _close_v2(raw)
                return ConnClose(ts, conn_id, pid, sent, received, open_ts)
            sent, received, open_ts, reason, _pad = _close(raw)
            return ConnClose(ts, conn_id, pid, sent, received, open_ts, reason)
        if rtype == 4:
            if version < 2:
                cg, ppid, uid, comm, filename = _exec_v1(raw)
                return ProcExec(ts, pid, ppid, uid, cg, _cstr(comm), _cstr(filename))
            cg, ppid, uid, comm, filename, ino, dev, _pad = _exec(raw)
            return ProcExec(ts, pid, ppid, uid, cg, _cstr(comm), _cstr(filename), ino, dev)
        if rtype == 6:
            cg, ppid, uid = _fork(raw)
            return ProcFork(ts, pid, ppid, uid, cg)
        if rtype == 5:
            code, _pad = _exit(raw)
            return ProcExit(ts, pid, code)
        if rtype == 7:
            ssl, base, nbytes, gen, _pad = _bind(raw)
            return TlsBind(ts, conn_id, pid, tid, ssl, base, nbytes, gen)
        if rtype == abi.REC_JAVA_DATA:
            offset, lport, rport, direction, kind = _java(raw)
            return JavaData(ts, conn_id, pid, tid, offset, direction, kind, lport, rport, raw[_JAVA_PAYLOAD:])
    except DecodeError:
        raise
    except Exception as exc:  # struct.error, OSError from inet_ntop...
        raise DecodeError(f"malformed record ({len(raw)} bytes): {exc}") from exc
    raise DecodeError(f"unknown record type {rtype}")
