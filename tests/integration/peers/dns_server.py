"""A tiny authoritative DNS server for tests, on UDP and TCP: `dns_server.py ADDR PORT`.

Every name resolves: `alias.test.` -> CNAME `target.test.` -> A 127.0.0.1; any other name -> A 127.0.0.1 and
AAAA ::1 (by query type). Prints READY once both sockets listen.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading


def _name(data: bytes, off: int) -> tuple[str, int]:
    labels = []
    while data[off]:
        n = data[off]
        labels.append(data[off + 1 : off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels) + ".", off + 1


def _encode(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def answer(query: bytes) -> bytes:
    qid, _flags, qd = struct.unpack_from("!HHH", query)
    qname, off = _name(query, 12)
    qtype, _qclass = struct.unpack_from("!HH", query, off)
    question = query[12 : off + 4]
    rrs = []
    name = qname
    if qname == "alias.test.":
        target = "target.test."
        rrs.append(_encode(name) + struct.pack("!HHIH", 5, 1, 300, len(_encode(target))) + _encode(target))
        name = target
    if qtype == 1:
        rrs.append(_encode(name) + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton("127.0.0.1"))
    elif qtype == 28:
        rrs.append(_encode(name) + struct.pack("!HHIH", 28, 1, 300, 16) + socket.inet_pton(socket.AF_INET6, "::1"))
    header = struct.pack("!HHHHHH", qid, 0x8180, qd, len(rrs), 0, 0)
    return header + question + b"".join(rrs)


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(answer(data), peer)


def serve_tcp(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            buf = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    msg, buf = buf[2 : 2 + n], buf[2 + n :]
                    reply = answer(msg)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(16)
    threading.Thread(target=serve_udp, args=(u,), daemon=True).start()
    print("READY", flush=True)
    serve_tcp(t)


if __name__ == "__main__":
    main()
