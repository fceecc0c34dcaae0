"""A deterministic TLS load: one process, a loopback TLS pair (Python's ssl, the system libssl), N writes of
K bytes, read on the other end.

It prints READY once libssl is mapped (the caller can then compute the process's TLS probe plan), waits for
a line on stdin, sends, prints DONE and waits for EOF on stdin.
Usage: python tls_blaster.py CERT KEY MESSAGES BYTES
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading


def main() -> None:
    cert, key, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print("READY", flush=True)
    sys.stdin.readline()
    total, got = n * size, 0

    def serve() -> None:
        nonlocal got
        peer, _ = srv.accept()
        with server_ctx.wrap_socket(peer, server_side=True) as tls:
            while got < total:
                b = tls.recv(65536)
                if not b:
                    break
                got += len(b)

    t = threading.Thread(target=serve)
    t.start()
    with client_ctx.wrap_socket(socket.create_connection(srv.getsockname())) as cli:
        msg = b"y" * size
        for _ in range(n):
            cli.sendall(msg)
        t.join()
    print(f"DONE {got}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
