"""A deterministic load for the overload accounting: one process, a loopback TCP pair, N sends of K bytes.

Started before the agent (so the agent can trace exactly this pid), it waits for a line on stdin, then
sends, drains the other end, closes both sockets, prints DONE and waits for EOF on stdin.
Usage: python blaster.py MESSAGES BYTES
"""

from __future__ import annotations

import socket
import sys
import threading


def main() -> None:
    n, size = int(sys.argv[1]), int(sys.argv[2])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print("READY", flush=True)
    sys.stdin.readline()
    cli = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    total = n * size
    got = 0

    def drain() -> None:
        nonlocal got
        while got < total:
            b = peer.recv(65536)
            if not b:
                break
            got += len(b)

    t = threading.Thread(target=drain)
    t.start()
    msg = b"x" * size
    for _ in range(n):
        cli.sendall(msg)
    t.join()
    cli.close()
    peer.close()
    srv.close()
    print(f"DONE {got}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
