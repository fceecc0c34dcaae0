"""Opens N keep-alive connections to 127.0.0.1:PORT, makes one small request on each, keeps them idle.

Prints "READY <n>" once every connection has its response, then waits for EOF on stdin and closes all.
Usage: python benchmarks/_idle_clients.py PORT N
"""

from __future__ import annotations

import resource
import socket
import sys


def main() -> None:
    port, n = int(sys.argv[1]), int(sys.argv[2])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10k sockets need more than the usual 1024
    req = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        while len(body) < length:
            body += s.recv(4096)
        conns.append(s)
    print(f"READY {len(conns)}", flush=True)
    sys.stdin.read()
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
