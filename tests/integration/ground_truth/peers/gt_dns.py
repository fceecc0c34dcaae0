"""Ground-truth DNS server on UDP: `gt_dns.py ADDR PORT LOG [--blocked]`. Answers like
tests/integration/peers/dns_server.py and appends one JSON line per datagram to LOG:
{"pid", "peer": [ip, port], "rx", "tx", "qname", "qtype"}. Prints READY once bound (with --blocked, it is
then blocked in recvfrom: an in-flight read when an agent attaches later)."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "peers"))

from dns_server import _name, answer  # type: ignore[import-not-found]


def main() -> None:
    addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    print("READY", flush=True)
    while True:
        data, peer = u.recvfrom(4096)
        reply = answer(data)
        u.sendto(reply, peer)
        qname, off = _name(data, 12)
        qtype, = struct.unpack_from("!H", data, off)
        rec = {"pid": os.getpid(), "peer": list(peer), "rx": len(data), "tx": len(reply), "qname": qname,
               "qtype": qtype}
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps(rec) + "\n").encode())
        os.close(fd)


if __name__ == "__main__":
    main()
