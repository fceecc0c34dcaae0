"""Ground-truth client: drives one socket lifecycle and prints what it saw, one JSON line per connection:
{"pid", "local": [ip, port], "peer": [ip, port], "tx", "rx", "paths"} (bytes as its own syscalls counted them).

usage: gt_client.py HOST PORT MODE [ARGS...]
  get PATH [PATH...]     one keep-alive connection, one request per path, sequentially
  pipeline PATH [...]    every request in one write, then every response
  rst PATH               request, response, then close with RST (SO_LINGER 0)
  dup PATH               request written and response read through a dup2'ed fd; the original closed first
  writev K PATH          POST whose body goes out as K iovecs in one writev
  halfclose PATH         request, shutdown(SHUT_WR), read to EOF, then recv again after the peer closed
  refused                non-blocking connect to PORT where nothing listens, poll, then a send on it
  tfo PATH               sendto(MSG_FASTOPEN) without connect
  ws                     WebSocket upgrade, 3 frames echoed, close
  splice PATH            request out through splice(pipe->socket), response in through splice(socket->pipe)
  bighead SIZE PATH PATH a request whose head is SIZE bytes, then a normal one on the same connection
  raw HEXBYTES           send these bytes as the request head (non-UTF-8 paths), read one response
  burst C PATH           C connections at once, one Connection: close request each
  load C N RATE PREFIX   C keep-alive connections, N requests in total at RATE req/s, paths PREFIX<i>
  pause SECS PATH PATH   one request, SECS idle, another on the same connection; "segments" = bytes per part
  wait PATH [PATH...]    connect, print CONNECTED, wait for a line on stdin, then like get
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any


def emit(rec: dict[str, Any]) -> None:
    rec.setdefault("pid", os.getpid())
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tx = 0
        self.rx = 0
        self.buf = b""
        self.local = list(sock.getsockname()[:2])
        self.peer = list(sock.getpeername()[:2])
        self.paths: list[str] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.tx += len(data)

    def _more(self) -> bool:
        d = self.sock.recv(65536)
        self.rx += len(d)
        self.buf += d
        return bool(d)

    def response(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise EOFError("eof before response head")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        cl = 0
        for ln in head.split(b"\r\n")[1:]:
            k, _, v = ln.partition(b":")
            if k.strip().lower() == b"content-length":
                cl = int(v)
        while len(self.buf) < cl:
            if not self._more():
                raise EOFError("eof in body")
        self.buf = self.buf[cl:]
        return status

    def drain(self) -> None:
        while self._more():
            pass

    def record(self, **kw: Any) -> dict[str, Any]:
        return {"local": self.local, "peer": self.peer, "tx": self.tx, "rx": self.rx, "paths": self.paths, **kw}


def req(path: str, host: str, extra: str = "", method: str = "GET", body: bytes = b"") -> bytes:
    h = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body:
        h += f"Content-Length: {len(body)}\r\n"
    return (h + "\r\n").encode() + body


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=30)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main() -> None:
    host, port, mode, *args = sys.argv[1:]
    p = int(port)
    hp = hostport(host, p)
    if mode in ("get", "pipeline"):
        c = Conn(connect(host, p))
        if mode == "get":
            for path in args:
                c.send(req(path, hp))
                c.paths.append(path)
                c.response()
        else:
            c.send(b"".join(req(path, hp) for path in args))
            c.paths += args
            for _ in args:
                c.response()
        c.sock.close()
        emit(c.record())
    elif mode == "rst":
        c = Conn(connect(host, p))
        c.send(req(args[0], hp))
        c.paths.append(args[0])
        c.response()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        emit(c.record())
    elif mode == "dup":
        s = connect(host, p)
        c = Conn(s)
        fd = os.dup2(s.fileno(), 100 + os.getpid() % 50)
        s2 = socket.socket(fileno=fd)
        s2.settimeout(30)
        s.close()
        c.sock = s2
        c.send(req(args[0], hp))
        c.paths.append(args[0])
        c.response()
        s2.close()
        emit(c.record())
    elif mode == "writev":
        k = int(args[0])
        c = Conn(connect(host, p))
        parts = [f"{i:04d}".encode() * 3 for i in range(k - 1)]
        body = b"".join(parts)
        head = req(args[1], hp, method="POST", body=body)[: -len(body)]
        total = os.writev(c.sock.fileno(), [head, *parts])
        assert total == len(head) + len(body), total
        c.tx += total
        c.paths.append(args[1])
        c.response()
        c.sock.close()
        emit(c.record(iovecs=k))
    elif mode == "halfclose":
        c = Conn(connect(host, p))
        c.send(req(args[0], hp, "Connection: close\r\n"))
        c.paths.append(args[0])
        c.sock.shutdown(socket.SHUT_WR)
        c.drain()
        time.sleep(0.05)  # the peer's close has moved this socket to TCP_CLOSE by now
        extra = [c.sock.recv(100), c.sock.recv(100)]
        assert extra == [b"", b""], extra
        c.sock.close()
        emit(c.record())
    elif mode == "refused":
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setblocking(False)
        rc = s.connect_ex((host, p))
        select.select([], [s], [], 5)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            s.send(b"after refused")
        except OSError as exc:
            second = exc.errno
        else:
            second = 0
        with contextlib.suppress(OSError):
            s.recv(10)
        s.close()
        emit({"refused": True, "connect_rc": rc, "so_error": err, "send_errno": second})
    elif mode == "tfo":
        s = socket.socket(socket.AF_INET)
        data = req(args[0], hp, "Connection: close\r\n")
        n = s.sendto(data, socket.MSG_FASTOPEN, (host, p))
        c = Conn(s)
        c.tx += n
        if n < len(data):
            c.send(data[n:])
        c.paths.append(args[0])
        c.drain()
        s.close()
        emit(c.record())
    elif mode == "ws":
        c = Conn(connect(host, p))
        c.send(req("/ws", hp, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: eA==\r\n"
                                "Sec-WebSocket-Version: 13\r\n"))
        c.paths.append("/ws")
        while b"\r\n\r\n" not in c.buf:
            c._more()
        c.buf = c.buf.partition(b"\r\n\r\n")[2]
        for i in range(3):
            payload = f"frame {i}".encode() * (i + 1)
            mask = b"\x01\x02\x03\x04"
            frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload))
            c.send(frame)
            while len(c.buf) < len(frame):
                c._more()
            c.buf = c.buf[len(frame):]
        c.sock.shutdown(socket.SHUT_WR)
        c.drain()
        c.sock.close()
        emit(c.record())
    elif mode == "splice":
        c = Conn(connect(host, p))
        data = req(args[0], hp, "Connection: close\r\n")
        c.sock.setblocking(True)  # splice on a non-blocking socket returns EAGAIN
        r, w = os.pipe()
        os.write(w, data)
        sent = 0
        while sent < len(data):
            sent += os.splice(r, c.sock.fileno(), len(data) - sent)
        c.tx += sent
        c.paths.append(args[0])
        while True:
            n = os.splice(c.sock.fileno(), w, 65536)
            if n == 0:
                break
            c.rx += n
            os.read(r, n)
        c.sock.close()
        emit(c.record())
    elif mode == "bighead":
        size = int(args[0])
        c = Conn(connect(host, p))
        first = req(args[1], hp, "X-Big: " + "b" * size + "\r\n")
        c.send(first)
        c.paths.append(args[1])
        c.response()
        c.send(req(args[2], hp))
        c.paths.append(args[2])
        c.response()
        c.sock.close()
        emit(c.record(head_bytes=len(first)))
    elif mode == "raw":
        c = Conn(connect(host, p))
        c.send(bytes.fromhex(args[0]))
        c.response()
        c.sock.close()
        emit(c.record())
    elif mode == "pause":
        c = Conn(connect(host, p))
        c.send(req(args[1], hp))
        c.paths.append(args[1])
        c.response()
        part1 = (c.tx, c.rx)
        time.sleep(float(args[0]))
        c.send(req(args[2], hp))
        c.paths.append(args[2])
        c.response()
        c.sock.close()
        emit(c.record(segments=[part1, (c.tx - part1[0], c.rx - part1[1])]))
    elif mode == "wait":
        c = Conn(connect(host, p))
        print("CONNECTED", flush=True)
        sys.stdin.readline()
        for path in args:
            c.send(req(path, hp))
            c.paths.append(path)
            c.response()
        c.sock.close()
        emit(c.record())
    elif mode in ("burst", "load"):
        asyncio.run(many(host, p, hp, mode, args))
    else:
        raise SystemExit(f"unknown mode {mode}")


async def many(host: str, port: int, hp: str, mode: str, args: list[str]) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a burst needs more fds than the default 1024
    recs: list[dict[str, Any]] = []

    async def one(paths: list[str], close: bool, start_at: list[float] | None) -> None:
        r, w = await asyncio.open_connection(host, port, limit=1 << 20)
        sock = w.get_extra_info("socket")
        rec: dict[str, Any] = {"local": list(sock.getsockname()[:2]), "peer": list(sock.getpeername()[:2]),
                               "tx": 0, "rx": 0, "paths": []}
        for i, path in enumerate(paths):
            if start_at is not None:
                delay = start_at[i] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            data = req(path, hp, "Connection: close\r\n" if close else "")
            w.write(data)
            rec["tx"] += len(data)
            head = await r.readuntil(b"\r\n\r\n")
            cl = 0
            for ln in head.split(b"\r\n")[1:]:
                k, _, v = ln.partition(b":")
                if k.strip().lower() == b"content-length":
                    cl = int(v)
            body = await r.readexactly(cl)
            rec["rx"] += len(head) + len(body)
            rec["paths"].append(path)
        if close:
            rest = await r.read()
            rec["rx"] += len(rest)
        w.close()
        await w.wait_closed()
        recs.append(rec)

    if mode == "burst":
        n = int(args[0])
        await asyncio.gather(*(one([f"{args[1]}{i}"], True, None) for i in range(n)))
    else:
        conns, total, rate, prefix = int(args[0]), int(args[1]), float(args[2]), args[3]
        t0 = time.monotonic()
        plan: list[list[str]] = [[] for _ in range(conns)]
        times: list[list[float]] = [[] for _ in range(conns)]
        for i in range(total):
            plan[i % conns].append(f"{prefix}{i}")
            times[i % conns].append(t0 + i / rate)
        await asyncio.gather(*(one(plan[k], False, times[k]) for k in range(conns)))
    for rec in recs:
        emit(rec)


if __name__ == "__main__":
    main()
