"""Both socket I/O paths of socket.bpf.o (qtap_async/bpf/socket_path.py), loaded for real against a real peer:
every data syscall's bytes arrive byte-exact at the right offsets, a MSG_PEEK is not counted twice, and bytes
written to files, pipes and AF_UNIX sockets are never captured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from qtap_async.bpf import abi, socket_path
from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.errors import ConfigError
from qtap_async.events.kernel import ConnOpen, Data
from qtap_async.sources.decode import decode

# One process, both ends of one loopback TCP connection: each request goes out through another send call and
# is read by another receive call; the replies likewise the other way.
PEER = r'''
import os, socket, sys
sys.stdin.readline()  # the test attaches first
with open(sys.argv[1], "wb") as f:
    f.write(b"NOTSOCKET file")
r, w = os.pipe(); os.write(w, b"NOTSOCKET pipe"); os.read(r, 64)
u1, u2 = socket.socketpair(); u1.send(b"NOTSOCKET unix"); u2.recv(64)
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
c = socket.create_connection(ls.getsockname()); s, _ = ls.accept()

def exact(n, call):
    out = b""
    while len(out) < n:
        out += call(n - len(out))
    return out

def readv(sock):
    def call(n):
        a, b = bytearray(n // 2), bytearray(n - n // 2)
        got = os.readv(sock.fileno(), [a, b])
        return (bytes(a) + bytes(b))[:got]
    return call

sends = [
    lambda sock, m: os.write(sock.fileno(), m),
    lambda sock, m: sock.sendall(m),
    lambda sock, m: sock.sendmsg([m[:3], m[3:]]),
    lambda sock, m: os.writev(sock.fileno(), [m[:5], m[5:]]),
]
recvs = [
    lambda sock: (lambda n: os.read(sock.fileno(), n)),
    lambda sock: (lambda n: sock.recv(n)),
    lambda sock: (lambda n: sock.recvmsg(n)[0]),
    readv,
]
for i in range(4):
    for src, dst, side in ((c, s, b"req"), (s, c, b"rsp")):
        m = b"%s-%d-" % (side, i) + bytes([65 + i]) * (100 + 37 * i)
        sends[i](src, m)
        if i == 1:  # a peek first: the same bytes come again on the real read
            assert dst.recv(len(m), socket.MSG_PEEK)
        got = exact(len(m), recvs[(i + 1) % 4](dst))
        assert got == m, (got, m)
        sys.stdout.write(m.hex() + " " + side.decode() + "\n")
c.close(); s.close(); ls.close()
sys.stdout.flush()
'''


def _streams(records: list[bytes], pid: int) -> dict[tuple[int, int], bytes]:
    """(conn_id, dir) -> the bytes of that direction, placed by offset (holes would fail the comparison)."""
    pieces: dict[tuple[int, int], dict[int, bytes]] = defaultdict(dict)
    for raw in records:
        rec = decode(raw)
        if isinstance(rec, Data) and rec.pid == pid:
            pieces[(rec.conn_id, rec.dir)][rec.offset] = rec.payload
    out = {}
    for key, parts in pieces.items():
        buf = b""
        for off in sorted(parts):
            assert off == len(buf), f"{key}: hole or overlap at {off} (have {len(buf)})"
            buf += parts[off]
        out[key] = buf
    return out


@pytest.mark.bpf
@pytest.mark.parametrize("path", [socket_path.SOCK, socket_path.SYSCALLS])
def test_every_data_call_byte_exact(path: str, tmp_path: Path) -> None:
    if path == socket_path.SOCK and socket_path.tracepoints_missing():
        pytest.skip(socket_path.tracepoints_missing())
    child = subprocess.Popen([sys.executable, "-c", PEER, str(tmp_path / "f")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        with Capture(CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid, wakeup_bytes=0,
                                     socket_path=path)) as cap:
            assert cap.socket_path == path
            loaded = {n for n, p in cap.socket_object.programs.items() if p.autoload}
            assert socket_path.PROGRAMS[path] <= loaded
            other = socket_path.SYSCALLS if path == socket_path.SOCK else socket_path.SOCK
            assert not socket_path.PROGRAMS[other] & loaded
            out, _ = child.communicate("go\n", timeout=60)
            assert child.returncode == 0
            for obj in cap.objects:
                obj.detach_all()
            assert cap.ringbuf is not None
            records: list[bytes] = []
            while batch := cap.ringbuf.consume():
                records += batch
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    sent = {"req": b"", "rsp": b""}
    lines = out.splitlines()
    for line in lines:
        hexed, side = line.split()
        sent[side] += bytes.fromhex(hexed)
    assert len(lines) == 8
    opens = [r for r in map(decode, records) if isinstance(r, ConnOpen) and r.pid == child.pid]
    assert len(opens) == 2  # client and server end; the pipe, file and AF_UNIX pair open nothing
    streams = _streams(records, child.pid)
    assert all(b"NOTSOCKET" not in b for b in streams.values())
    by_dir: dict[int, list[bytes]] = defaultdict(list)
    for (_conn, d), data in streams.items():
        by_dir[d].append(data)
    # Each stream is seen from both ends: sent by one socket, received by the other, byte for byte (the peeked
    # bytes once).
    assert sorted(by_dir[int(abi.Dir.SEND)]) == sorted([sent["req"], sent["rsp"]])
    assert sorted(by_dir[int(abi.Dir.RECV)]) == sorted([sent["req"], sent["rsp"]])


def test_choice_honours_the_setting_and_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_btf = tmp_path / "none"
    old = tmp_path / "btf"
    old.write_bytes(b"\0btf_trace_sched_switch\0")
    new = tmp_path / "btf6"
    new.write_bytes(b"\0btf_trace_sock_send_length\0btf_trace_sock_recv_length\0")
    assert socket_path.choose("auto", new)[0] == socket_path.SOCK
    path, why = socket_path.choose("auto", old)
    assert path == socket_path.SYSCALLS and "sock_send_length/sock_recv_length" in why
    assert socket_path.choose("auto", no_btf)[0] == socket_path.SYSCALLS
    assert socket_path.choose("syscalls", new)[0] == socket_path.SYSCALLS
    with pytest.raises(ConfigError, match=r"Linux < 6\.3"):
        socket_path.choose("sock", old)
    monkeypatch.setenv(socket_path.ENV, "syscalls")
    assert CaptureSettings().socket_path == "syscalls"
    monkeypatch.setenv(socket_path.ENV, "kprobes")
    with pytest.raises(ConfigError, match="QTAP_SOCKET_PATH"):
        CaptureSettings()
