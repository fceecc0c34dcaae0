from __future__ import annotations

import contextlib
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtap_async.bpf import abi
from qtap_async.errors import DecodeError
from qtap_async.events.kernel import ConnClose, ConnOpen, Data, ProcExec, ProcExit, ProcFork
from qtap_async.sources.decode import decode


def hdr(t: int, conn: int = 7, pid: int = 100, tid: int = 101, ts: int = 5) -> bytes:
    return abi.HDR.pack(t, abi.ABI_VERSION, 0, ts, conn, pid, tid)


def data_record(payload: bytes, offset: int = 0, direction: int = 0, skipped: int = 0, flags: int = 0) -> bytes:
    body = struct.pack("<QIIBBHi", offset, len(payload), skipped, direction, 0, flags, 3)
    return hdr(3) + body + payload


def test_data() -> None:
    rec = decode(data_record(b"GET / HTTP/1.1\r\n", offset=10, direction=1, skipped=4, flags=1))
    assert isinstance(rec, Data)
    assert (rec.offset, rec.dir, rec.skipped, rec.flags, rec.fd) == (10, 1, 4, 1, 3)
    assert rec.payload == b"GET / HTTP/1.1\r\n" and rec.conn_id == 7 and rec.pid == 100


def test_conn_open_v4_and_v6_mapped() -> None:
    laddr = socket.inet_aton("10.1.2.3") + b"\0" * 12
    raddr = socket.inet_aton("93.184.216.34") + b"\0" * 12
    raw = hdr(1) + struct.pack("<QHBBHH16s16siI16s", 9, 2, 1, 0, 40000, 443, laddr, raddr, 5, 0, b"curl\0")
    rec = decode(raw)
    assert isinstance(rec, ConnOpen)
    assert (rec.laddr, rec.raddr, rec.lport, rec.rport, rec.comm, rec.role) == (
        "10.1.2.3", "93.184.216.34", 40000, 443, "curl", 1)
    mapped = b"\0" * 10 + b"\xff\xff" + socket.inet_aton("127.0.0.1")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    raw6 = hdr(1) + struct.pack("<QHBBHH16s16siI16s", 9, 10, 0, 1, 1, 2, mapped, v6, 5, 0, b"x")
    rec6 = decode(raw6)
    assert isinstance(rec6, ConnOpen)
    assert rec6.laddr == "127.0.0.1" and rec6.raddr == "2001:db8::1" and rec6.midstream
    assert rec6.family == 10  # one side mapped, the other real IPv6: an IPv6 connection
    # A dual-stack server's socket talking IPv4: both addresses mapped, reported as the IPv4 connection it is.
    both = hdr(1) + struct.pack("<QHBBHH16s16siI16s", 9, 10, 2, 0, 80, 5000, mapped, mapped, 5, 1000, b"x")
    dual = decode(both)
    assert isinstance(dual, ConnOpen) and (dual.family, dual.laddr, dual.raddr, dual.uid) == (
        2, "127.0.0.1", "127.0.0.1", 1000)


def test_close_exec_exit() -> None:
    c = decode(hdr(2) + struct.pack("<QQQII", 10, 20, 3, abi.CloseReason.SWEPT, 0))
    assert isinstance(c, ConnClose) and (c.bytes_sent, c.bytes_received, c.open_ts_ns) == (10, 20, 3)
    assert c.reason == abi.CloseReason.SWEPT
    # Record files of ABI 2 agents: no reason in close records (their ends were all seen).
    v2 = decode(abi.HDR.pack(2, 2, 0, 1, 7, 42, 0) + struct.pack("<QQQ", 10, 20, 3))
    assert isinstance(v2, ConnClose) and (v2.bytes_sent, v2.reason) == (10, abi.CloseReason.SEEN)
    e = decode(hdr(4, conn=0) + struct.pack("<QII16s256sQII", 1, 2, 0, b"sh", b"/bin/sh", 77, 5, 0))
    assert isinstance(e, ProcExec) and e.filename == "/bin/sh" and e.ppid == 2 and (e.exe_ino, e.exe_dev) == (77, 5)
    # Record files of ABI 1 agents: no inode in exec records.
    old = decode(abi.HDR.pack(4, 1, 0, 1, 0, 42, 42) + struct.pack("<QII16s256s", 1, 2, 0, b"sh", b"/bin/sh"))
    assert isinstance(old, ProcExec) and old.filename == "/bin/sh" and old.exe_ino == 0
    f = decode(hdr(6, conn=0) + struct.pack("<QII", 9, 2, 1000))
    assert isinstance(f, ProcFork) and (f.ppid, f.uid, f.cgroup_id) == (2, 1000, 9)
    x = decode(hdr(5, conn=0) + struct.pack("<iI", 256, 0))
    assert isinstance(x, ProcExit) and x.exit_code == 256


def test_errors_are_clear() -> None:
    with pytest.raises(DecodeError, match="unknown record type 99"):
        decode(hdr(99))
    with pytest.raises(DecodeError, match="ABI version"):
        decode(abi.HDR.pack(3, 99, 0, 0, 0, 0, 0))
    with pytest.raises(DecodeError, match="payload bytes"):
        decode(data_record(b"abc")[:-1])
    with pytest.raises(DecodeError, match="malformed"):
        decode(b"\x01\x00")


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(raw)
