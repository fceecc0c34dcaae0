"""Ground-truth HTTP/1.1 server: a real peer that logs what it saw on each connection.

usage: gt_server.py LOG [--bind ADDR] [--mode MODE] [--tls CERT KEY] [--close] [--body sendfile|splice]

Modes (who does the I/O of an accepted connection):
  thread        a thread of the acceptor (default)
  prefork:N     N forked workers accept on the shared listening socket
  fork          the acceptor forks after accept; the child serves, the parent closes its copy
  forkingmixin  socketserver.ForkingTCPServer (fork per connection, the stdlib way)
  scm           the acceptor passes the fd over SCM_RIGHTS to a worker process started earlier
  exec          the acceptor forks and execs gt_exec_child.py, which inherits the fd and serves
  blocked       accept one connection, print BLOCKED, then block in recv (in-flight read at attach)

--bind ::     dual-stack (IPV6_V6ONLY=0); ::1 for IPv6 only.
--tls         TLS through ssl.MemoryBIO, so raw TCP bytes are counted exactly (the wire's truth).
--tls-socket  TLS through ssl.SSLSocket; raw bytes from TCP_INFO at close.
--close       answer `Connection: close` and close first.
Requests: GET/POST /any?n=N&status=S -> S with N body bytes; a path starting /reject with
`Expect: 100-continue` -> 417 without reading the body; `Upgrade: websocket` -> 101 then echo.
Each connection appends one JSON line to LOG: pid (who served), local, peer, rx, tx (raw TCP bytes),
reqs [[method, path, status, request_body, response_body]]. Prints "PORT <n>" once listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

TLS_SOCKET = False  # --tls-socket


class Stream:
    """recv/sendall over a socket (optionally TLS via MemoryBIO) counting raw bytes both ways."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.raw = sock
        self.rx = 0
        self.tx = 0
        self.tls: ssl.SSLObject | None = None
        self.kernel_counts = TLS_SOCKET and tls is not None
        if self.kernel_counts:
            assert tls is not None
            # The stdlib's SSLSocket (like http.server over ssl): raw bytes come from the kernel's TCP_INFO.
            self.sock = tls.wrap_socket(sock, server_side=True)
        elif tls is not None:
            self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = tls.wrap_bio(self.inc, self.out, server_side=True)
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._fill():
                        raise ConnectionError("eof in handshake") from None
            self._flush()

    def _raw_recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.rx += len(data)
        return data

    def _raw_send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.tx += len(data)

    def _fill(self) -> bool:
        data = self._raw_recv()
        if not data:
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self._raw_send(data)

    def recv(self) -> bytes:
        if self.tls is None:
            return self._raw_recv()
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def sendall(self, data: bytes) -> None:
        if self.tls is None:
            self._raw_send(data)
            return
        self.tls.write(data)
        self._flush()

    def final_counts(self) -> None:
        if self.kernel_counts:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            received, = struct.unpack_from("Q", info, 128)
            notsent, = struct.unpack_from("I", info, 144)
            sent, retrans = struct.unpack_from("QQ", info, 200)
            self.rx, self.tx = received, sent - retrans + notsent

    def close_notify(self) -> None:
        if self.tls is not None:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()
            self._flush()


def body_bytes(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def serve(sock: socket.socket, log: str, tls: ssl.SSLContext | None, close_first: bool, body_mode: str,
          pids: list[int] | None = None) -> None:
    peer = sock.getpeername()
    local = sock.getsockname()
    st: Stream | None = None
    reqs: list[list[Any]] = []
    end = "closed"
    try:
        st = Stream(sock, tls)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = st.recv()
                if not data:
                    raise EOFError
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ver = lines[0].split(b" ", 2)
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                hdrs[k.strip().lower()] = v.strip()
            path = target.decode("latin-1")
            q = parse_qs(urlsplit(path).query)
            n = int(q.get("n", ["100"])[0])
            status = int(q.get("status", ["200"])[0])
            cl = int(hdrs.get(b"content-length", b"0"))
            closing = close_first or hdrs.get(b"connection", b"").lower() == b"close"
            if hdrs.get(b"upgrade", b"").lower() == b"websocket":
                st.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: x\r\n\r\n")
                reqs.append([method.decode(), path, 101, 0, 0])
                if buf:
                    st.sendall(buf)
                while True:
                    data = st.recv()
                    if not data:
                        break
                    st.sendall(data)
                raise EOFError
            if hdrs.get(b"expect", b"").lower() == b"100-continue":
                if path.startswith("/reject"):
                    st.sendall(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    reqs.append([method.decode(), path, 417, 0, 0])
                    break
                st.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(buf) < cl:
                data = st.recv()
                if not data:
                    raise EOFError
                buf += data
            body_in, buf = buf[:cl], buf[cl:]
            head_out = (f"HTTP/1.1 {status} X\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\n"
                        + ("Connection: close\r\n" if closing else "") + "\r\n").encode()
            body = body_bytes(n)
            if body_mode == "sendfile" and st.tls is None:
                st.sendall(head_out)
                with tempfile.TemporaryFile() as f:
                    f.write(body)
                    f.flush()
                    off = 0
                    while off < n:
                        sent = os.sendfile(sock.fileno(), f.fileno(), off, n - off)
                        off += sent
                        st.tx += sent
            elif body_mode == "splice" and st.tls is None:
                st.sendall(head_out)
                pr, pw = os.pipe()
                off = 0
                while off < n:
                    left = os.write(pw, body[off: off + 65536])
                    while left:
                        m = os.splice(pr, sock.fileno(), left)
                        left -= m
                        off += m
                        st.tx += m
                os.close(pr)
                os.close(pw)
            else:
                st.sendall(head_out + body)
            reqs.append([method.decode(), path, status, len(body_in), n])
            if closing:
                break
        st.close_notify()
    except EOFError:
        pass
    except (ConnectionError, OSError, ssl.SSLError) as exc:
        end = f"error: {exc}"
    finally:
        if st is not None:
            st.final_counts()
        rec = {"pid": os.getpid(), "pids": pids or [os.getpid()], "local": list(local[:2]), "peer": list(peer[:2]),
               "rx": st.rx if st else 0, "tx": st.tx if st else 0, "reqs": reqs, "end": end}
        try:
            if st is not None:
                st.sock.close()
            sock.close()
        finally:
            line = (json.dumps(rec) + "\n").encode()
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, line)
            os.close(fd)


def listener(bind: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if bind != "::" else 0)
    s.bind((bind, 0))
    s.listen(4096)
    return s


def main() -> None:
    args = sys.argv[1:]
    log = args.pop(0)
    opts: dict[str, Any] = {"bind": "127.0.0.1", "mode": "thread", "tls": None, "close": False, "body": ""}
    while args:
        a = args.pop(0)
        if a in ("--tls", "--tls-socket"):
            global TLS_SOCKET
            TLS_SOCKET = a == "--tls-socket"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.pop(0), args.pop(0))
            opts["tls"] = ctx
        elif a == "--close":
            opts["close"] = True
        else:
            opts[a.lstrip("-")] = args.pop(0)
    tls, close, body, mode = opts["tls"], opts["close"], opts["body"], opts["mode"]
    if mode == "forkingmixin":
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                serve(self.request, log, tls, close, body)

        class Srv(socketserver.ForkingTCPServer):
            allow_reuse_address = True
            request_queue_size = 512
            address_family = socket.AF_INET6 if ":" in opts["bind"] else socket.AF_INET

        fs = Srv((opts["bind"], 0), Handler)
        print(f"PORT {fs.server_address[1]}", flush=True)
        fs.serve_forever(poll_interval=0.05)
        return
    ls = listener(opts["bind"])
    port = ls.getsockname()[1]
    if mode.startswith("prefork:"):
        workers = []
        for _ in range(int(mode.split(":")[1])):
            pid = os.fork()
            if pid == 0:
                while True:
                    c, _ = ls.accept()
                    serve(c, log, tls, close, body)
            workers.append(pid)
        print(f"PORT {port} WORKERS {' '.join(map(str, workers))}", flush=True)
        for _ in workers:
            os.wait()
        return
    if mode == "scm":
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        wpid = os.fork()
        if wpid == 0:
            ls.close()
            parent_end.close()
            while True:
                _msg, fds, _fl, _addr = socket.recv_fds(worker_end, 16, 1)
                if not fds:
                    os._exit(0)
                c = socket.socket(fileno=fds[0])
                threading.Thread(target=serve, args=(c, log, tls, close, body), daemon=True).start()
        worker_end.close()
        print(f"PORT {port} WORKER {wpid}", flush=True)
        while True:
            c, _ = ls.accept()
            socket.send_fds(parent_end, [b"x"], [c.fileno()])
            c.close()
    if mode == "blocked":
        print(f"PORT {port}", flush=True)
        c, _ = ls.accept()
        print("BLOCKED", flush=True)
        serve(c, log, tls, close, body)
        return
    print(f"PORT {port}", flush=True)
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # fork/exec children reap themselves
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gt_exec_child.py")
    while True:
        c, _ = ls.accept()
        if mode == "thread":
            threading.Thread(target=serve, args=(c, log, tls, close, body), daemon=True).start()
        elif mode == "fork":
            if os.fork() == 0:
                ls.close()
                serve(c, log, tls, close, body)
                os._exit(0)
            c.close()
        elif mode == "exec":
            if os.fork() == 0:
                ls.close()
                fd = c.detach()
                os.set_inheritable(fd, True)
                os.execv(sys.executable, [sys.executable, child, str(fd), log, "1" if close else "0"])
            c.close()
        else:
            raise SystemExit(f"unknown --mode {mode}")


if __name__ == "__main__":
    main()
