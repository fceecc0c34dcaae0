"""Test HTTP/1.1 server (a real peer, run as its own process).

GET /bytes?n=N&chunk=C -> N deterministic bytes, written C bytes per write() call (one sendall each);
                          &cookie=V adds "Set-Cookie: sid=V" to the response
POST /echo             -> the request body back
Prints "PORT <n>" on stdout once listening.
"""

from __future__ import annotations

import random
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def body_for(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        u = urlparse(self.path)
        q = parse_qs(u.query)
        n = int(q.get("n", ["100"])[0])
        chunk = int(q.get("chunk", ["65536"])[0])
        status = int(q.get("status", ["200"])[0])
        body = body_for(n)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        if "cookie" in q:  # a response credential, for the redaction tests
            self.send_header("Set-Cookie", f"sid={q['cookie'][0]}; Path=/; HttpOnly")
        self.end_headers()
        for i in range(0, n, chunk):
            self.wfile.write(body[i : i + chunk])

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    # usage: http_server.py [PORT] [--tls CERT KEY] [--host ADDR]
    args = sys.argv[1:]
    host = "127.0.0.1"
    if "--host" in args:
        i = args.index("--host")
        host = args[i + 1]
        del args[i : i + 2]
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = (args[i + 1], args[i + 2])
        del args[i : i + 3]
    srv = Server((host, int(args[0]) if args else 0), Handler)
    if tls is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
