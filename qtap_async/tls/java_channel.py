"""The channel from qtap's Java agent inside each JVM to qtap: UNIX stream sockets, read without blocking.

One listening socket per file system the JVMs live in (the host's /tmp, a container's /tmp reached through
/proc/PID/root), named for this qtap process. Each JVM connects once; the kernel's peer credentials
(SO_PEERCRED) give its pid in qtap's pid namespace, so a JVM can only ever report its own connections.

A frame (little endian; java/qtap-agent/src/qtap/boot/Hooks.java writes it):
  u32 length of what follows | u8 version (1) | u8 kind | u8 dir | u8 0 | u64 thread id | u64 nanoTime |
  u64 stream id | u64 offset | u16 local port | u16 remote port | payload
Each frame becomes one raw record (abi.REC_JAVA_DATA) for the tracking stage, with the pid from the
credentials. System.nanoTime and the kernel's record times are both CLOCK_MONOTONIC, so the source can
merge the two kinds of records in time order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from qtap_async.bpf import abi

log = logging.getLogger("qtap.java")

FRAME = struct.Struct("<IBBBxQQQQHH")
FRAME_HEADER = FRAME.size  # 44, Hooks.HEADER
MAX_PAYLOAD = 65536  # Hooks.MAX_PAYLOAD
MAX_CLIENTS = 4096
_PEERCRED = struct.Struct("3i")
_hdr = abi.HDR.pack
_java = struct.Struct("<QHHBB").pack  # abi.JAVA_DATA without the header it skips


@dataclass
class _Client:
    sock: socket.socket
    pid: int
    buf: bytearray = field(default_factory=bytearray)


@dataclass
class JavaChannelStats:
    frames: int = 0
    bytes: int = 0
    bad_frames: int = 0  # a JVM that sent garbage is disconnected (and counted here)
    clients_refused: int = 0


class JavaChannel:
    """Listening sockets and the JVMs connected to them. `drain()` is called by the ring-buffer source."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f".qtap-java-{os.getpid()}.sock"
        self._listeners: dict[tuple[int, int], tuple[socket.socket, Path]] = {}
        self._clients: dict[int, _Client] = {}  # key: fileno
        self.stats = JavaChannelStats()

    @property
    def inside_path(self) -> str:
        """The socket's path as every JVM sees it."""
        return f"/tmp/{self.name}"

    def listen_in(self, root: Path) -> str:
        """Make sure a socket listens in the /tmp of the file system at `root` (a JVM's /proc/PID/root);
        returns the path the JVM connects to."""
        tmp = root / "tmp"
        st = tmp.stat()
        key = (st.st_dev, st.st_ino)
        if key not in self._listeners:
            path = tmp / self.name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            s.bind(str(path))
            os.chmod(path, 0o666)  # JVMs of every user connect; SO_PEERCRED says who they are
            s.listen(128)
            self._listeners[key] = (s, path)
        return self.inside_path

    def clients(self) -> dict[int, int]:
        """Connected JVMs: pid -> fileno."""
        return {c.pid: fd for fd, c in self._clients.items()}

    def drain(self) -> list[bytes]:
        """Every complete frame waiting, as raw records (in each JVM's order)."""
        out: list[bytes] = []
        for s, _ in list(self._listeners.values()):  # listen_in runs in the attach thread
            self._accept(s)
        for fd, c in list(self._clients.items()):
            try:
                while True:
                    chunk = c.sock.recv(262144)
                    if not chunk:
                        self._drop(fd)
                        break
                    c.buf += chunk
                    if len(chunk) < 262144:
                        break
            except BlockingIOError:
                pass
            except OSError:
                self._drop(fd)
            if not self._frames(c, out):
                self.stats.bad_frames += 1
                self._drop(fd)
        return out

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid, _uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 _PEERCRED.size))
            if len(self._clients) >= MAX_CLIENTS or pid <= 0:
                self.stats.clients_refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._clients[conn.fileno()] = _Client(conn, pid)
            log.debug("java agent connected: pid %d", pid)

    def _frames(self, c: _Client, out: list[bytes]) -> bool:
        buf = c.buf
        pos = 0
        n = len(buf)
        stats = self.stats
        while n - pos >= FRAME_HEADER:
            length, version, kind, direction, tid, ts, stream, offset, lport, rport = FRAME.unpack_from(buf, pos)
            size = length + 4
            if version != 1 or size < FRAME_HEADER or size > FRAME_HEADER + MAX_PAYLOAD or direction > 1:
                return False
            if n - pos < size:
                break
            payload = bytes(buf[pos + FRAME_HEADER : pos + size])
            out.append(_hdr(abi.REC_JAVA_DATA, abi.ABI_VERSION, 0, ts, stream, c.pid, tid & 0xFFFFFFFF)
                       + _java(offset, lport, rport, direction, kind) + payload)
            stats.frames += 1
            stats.bytes += len(payload)
            pos += size
        if pos:
            del buf[:pos]
        return True

    def _drop(self, fd: int) -> None:
        c = self._clients.pop(fd, None)
        if c is not None:
            c.sock.close()

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        for s, path in self._listeners.values():
            s.close()
            with contextlib.suppress(OSError):
                path.unlink()
        self._listeners.clear()
