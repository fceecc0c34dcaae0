"""Recorded byte streams for the protocol tests: format, loading, replay, and the recorder itself.

A recording is the two byte streams of one TCP connection as a list of chunks in the order a
recording proxy received them: ``(direction, ts_ns, data)`` with direction 0 = client -> server
(what a local *client* process sends: ``Direction.SEND``) and 1 = server -> client; ``data=None``
marks the end of the connection. Files live in ``tests/data/streams/<name>.msgpack``.

Run ``python -m tests.protocols.record`` to re-record every scenario: it starts real servers and
clients on 127.0.0.1 (python http.server, nginx, nghttpd, curl, nghttp, dig, grpcio, node) with a
recording TCP proxy in between. Tests only read the files, they need none of those tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"


class Recording(msgspec.Struct):
    name: str
    description: str
    server_port: int
    events: list[tuple[int, int, bytes | None]]

    def stream(self, direction: int) -> bytes:
        return b"".join(d for dd, _, d in self.events if dd == direction and d is not None)


def save(rec: Recording) -> Path:
    STREAMS.mkdir(parents=True, exist_ok=True)
    p = STREAMS / f"{rec.name}.msgpack"
    p.write_bytes(msgspec.msgpack.encode(rec))
    return p


def load(name: str) -> Recording:
    return msgspec.msgpack.decode((STREAMS / f"{name}.msgpack").read_bytes(), type=Recording)


def all_names() -> list[str]:
    return sorted(p.stem for p in STREAMS.glob("*.msgpack"))


def replay(rec: Recording, *, local_is_client: bool = True, alpn: str | None = None, limits: Any = None,
           close: bool = True) -> list[Any]:
    """Feed a recording to a fresh ProtocolSession chunk by chunk; return every record."""
    from qtap_async.protocols import DEFAULT_LIMITS, ProtocolSession

    s = ProtocolSession(local_port=40000 if local_is_client else rec.server_port,
                        remote_port=rec.server_port if local_is_client else 40000, alpn=alpn,
                        limits=limits or DEFAULT_LIMITS)
    out: list[Any] = []
    last = 0
    for d, ts, data in rec.events:
        last = ts
        if data is None:
            continue
        out.extend(s.feed(d if local_is_client else 1 - d, data, ts))
    if close:
        out.extend(s.close(last + 1))
    return out


# --------------------------------------------------------------------------------------------------
# the recorder

class RecordingProxy:
    """TCP proxy on 127.0.0.1 that records every chunk of every connection it relays."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns: list[list[tuple[int, int, bytes | None]]] = []
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream_port))
            events: list[tuple[int, int, bytes | None]] = []
            with self.lock:
                self.conns.append(events)
            done = [0]
            for src, dst, d in ((c, u, 0), (u, c, 1)):
                t = threading.Thread(target=self._pump, args=(src, dst, d, events, done, c, u), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, d: int, events: list[Any], done: list[int],
              c: socket.socket, u: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                if data:
                    events.append((d, time.monotonic_ns(), data))
                else:
                    done[0] += 1
                    if done[0] == 1:
                        events.append((d, time.monotonic_ns(), None))
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                if done[0] == 2:
                    c.close()
                    u.close()
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def wait(self, n: int = 1, timeout: float = 10.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if len(self.conns) >= n and all(any(x[2] is None for x in ev) for ev in self.conns[:n]):
                    return
            time.sleep(0.02)

    def close(self) -> None:
        self.lsock.close()


def _normalize(events: list[tuple[int, int, bytes | None]]) -> list[tuple[int, int, bytes | None]]:
    t0 = events[0][1] if events else 0
    return [(d, ts - t0 + 1_000_000, data) for d, ts, data in events]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def _proc(args: list[str], port: int, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        _wait_port(port)
        yield p
    finally:
        p.terminate()
        p.wait(5)


def _record(name: str, description: str, upstream: int, client: Any, nconn: int = 1,
            server_port: int | None = None) -> None:
    proxy = RecordingProxy(upstream)
    try:
        client(proxy.port)
        proxy.wait(nconn)
    finally:
        proxy.close()
    for i, ev in enumerate(proxy.conns[:nconn]):
        nm = name if nconn == 1 else f"{name}_{i}"
        p = save(Recording(name=nm, description=description, server_port=server_port or upstream,
                           events=_normalize(ev)))
        sys.stderr.write(f"recorded {p.name}: {len(ev)} chunks, {sum(len(x[2] or b'') for x in ev)} bytes\n")


# -- scenarios -----------------------------------------------------------------------------------------

def _python_http_server(port: int) -> Any:
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/notmodified":
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Trailer", "X-Checksum")
                self.end_headers()
                for part in (b"hello ", b"chunked ", b"world"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\nX-Checksum: abc123\r\n\r\n")
                return
            body = b'{"path": "%s"}' % self.path.encode()
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", "a=1")
            self.send_header("Set-Cookie", "b=2")
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1234")
            self.end_headers()

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def rec_http1_python(tmp: Path) -> None:
    import http.client

    port = _free_port()
    srv = _python_http_server(port)

    def client(pport: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", pport)
        for method, path, body, hdrs in (
            ("GET", "/items?id=1", None, {}),
            ("HEAD", "/items", None, {}),
            ("POST", "/echo", b"x" * 3000, {"Content-Type": "application/octet-stream"}),
            ("GET", "/chunked", None, {}),
            ("GET", "/notmodified", None, {"If-None-Match": '"v1"'}),
            ("GET", "/missing", None, {}),
        ):
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            r.read()
        c.close()

    try:
        _record("http1_python_keepalive", "http.client -> http.server (HTTP/1.1 keep-alive): GET, HEAD, POST "
                "3000 B, chunked with trailer, 304, 404", port, client)
    finally:
        srv.shutdown()


def rec_http1_curl_expect(tmp: Path) -> None:
    port = _free_port()
    srv = _python_http_server(port)
    data = tmp / "upload.bin"
    data.write_bytes(os.urandom(2048))

    def client(pport: int) -> None:
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Expect: 100-continue", "--data-binary",
                        f"@{data}", f"http://127.0.0.1:{pport}/upload"], check=True)

    try:
        _record("http1_curl_expect100", "curl POST with Expect: 100-continue -> http.server", port, client)
    finally:
        srv.shutdown()


def _nginx(tmp: Path, port: int) -> list[str]:
    root = tmp / "www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(b"<html><body>" + b"hello nginx " * 400 + b"</body></html>\n")
    (root / "small.txt").write_bytes(b"small\n")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  gzip on; gzip_min_length 10; gzip_types text/plain text/html;
  server {{ listen 127.0.0.1:{port}; root {root}; etag on; }}
}}
""")
    return ["nginx", "-p", str(tmp), "-c", str(conf)]


def rec_http1_nginx(tmp: Path) -> None:
    port = _free_port()
    with _proc(_nginx(tmp, port), port):
        def client(pport: int) -> None:
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--compressed", f"http://127.0.0.1:{pport}/index.html",
                            "-o", "/dev/null", f"http://127.0.0.1:{pport}/small.txt"], check=True)

        _record("http1_nginx_gzip", "curl --compressed -> nginx: gzip + chunked response, then a small file on "
                "the same connection", port, client)

        def pipelined(pport: int) -> None:
            s = socket.create_connection(("127.0.0.1", pport))
            s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\nGET /missing HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"HEAD /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
            s.close()

        _record("http1_nginx_pipelined", "three pipelined requests in one write -> nginx", port, pipelined)


def rec_http1_close_delimited(tmp: Path) -> None:
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"body delimited by the end of the connection\n" * 20)

    port = _free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        def client(pport: int) -> None:
            subprocess.run(["curl", "-s", "-0", "-o", "/dev/null", f"http://127.0.0.1:{pport}/old"], check=True)

        _record("http1_close_delimited", "curl -0 -> HTTP/1.0 server without Content-Length", port, client)
    finally:
        srv.shutdown()


def rec_h2(tmp: Path) -> None:
    root = tmp / "h2www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(b"hello h2\n")
    (root / "big.bin").write_bytes(os.urandom(40_000))
    port = _free_port()
    with _proc(["nghttpd", "--no-tls", "-d", str(root), str(port)], port):
        def curl(pport: int) -> None:
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge",
                            f"http://127.0.0.1:{pport}/index.html"], check=True)

        _record("h2c_curl_prior_knowledge", "curl --http2-prior-knowledge -> nghttpd: GET /index.html", port, curl)

        def nghttp404(pport: int) -> None:
            subprocess.run(["nghttp", "-n", f"http://127.0.0.1:{pport}/index.html",
                            f"http://127.0.0.1:{pport}/missing"], check=True)

        _record("h2c_nghttp_two", "nghttp two URIs on one connection -> nghttpd (200, 404)", port, nghttp404)

        def nghttp(pport: int) -> None:
            subprocess.run(["nghttp", "-n", "-m", "20", f"http://127.0.0.1:{pport}/index.html"], check=True)

        _record("h2c_nghttp_concurrent", "nghttp -m 20: twenty concurrent streams -> nghttpd", port, nghttp)

        def big(pport: int) -> None:
            subprocess.run(["nghttp", "-n", "-d", "-", "-H", ":method: POST",
                            f"http://127.0.0.1:{pport}/big.bin"], input=b"u" * 5000, check=True)

        _record("h2c_nghttp_big", "nghttp POST 5000 B, 40 kB response over several DATA frames", port, big)


def _h2c_upgrade_shim(port: int, h2_port: int) -> socket.socket:
    """Answers an HTTP/1.1 ``Upgrade: h2c`` with 101 and splices the client onto a prior-knowledge
    HTTP/2 server (nghttpd has no Upgrade support): the upgraded request goes to the server as stream
    1, encoded without touching the HPACK table, so both peers' header contexts stay valid."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(4)

    def lit(name: bytes, value: bytes) -> bytes:  # literal header field without indexing, new name
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    def handle(c: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, path, _ = lines[0].split(b" ")
        host = next(v.strip() for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"host")
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        while len(rest) < 24 + 9 or len(rest) < 24 + 9 + int.from_bytes(rest[24:27], "big"):
            rest += c.recv(65536)
        first = 24 + 9 + int.from_bytes(rest[24:27], "big")  # client preface + its SETTINGS frame
        block = (lit(b":method", method) + lit(b":scheme", b"http") + lit(b":authority", host)
                 + lit(b":path", path))
        hdr = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big")  # END_STREAM|END_HEADERS
        u = socket.create_connection(("127.0.0.1", h2_port))
        u.sendall(rest[:first] + hdr + block + rest[first:])

        def pump(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(u, c), daemon=True)
        t.start()
        pump(c, u)
        t.join(5)
        c.close()
        u.close()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = ls.accept()
                threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls


def rec_h2c_upgrade(tmp: Path) -> None:
    root = tmp / "up"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(b"upgraded to h2c\n")
    h2_port = _free_port()
    port = _free_port()
    with _proc(["nghttpd", "--no-tls", "-d", str(root), str(h2_port)], h2_port):
        shim = _h2c_upgrade_shim(port, h2_port)
        try:
            def client(pport: int) -> None:
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2", f"http://127.0.0.1:{pport}/index.html"],
                               check=True)

            _record("h2c_curl_upgrade", "curl --http2 (Upgrade: h2c) -> 101 -> nghttpd answers stream 1 (via an "
                    "upgrade shim)", port, client)
        finally:
            shim.close()


def rec_websocket(tmp: Path) -> None:
    """node's WebSocket client (undici) -> a minimal RFC 6455 echo server."""
    import base64
    import hashlib

    port = _free_port()
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            c, _ = ls.accept()
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(65536)
            key = next(v.strip() for k, _, v in (x.partition(b":") for x in buf.split(b"\r\n")[1:])
                       if k.lower() == b"sec-websocket-key")
            acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            f = c.recv(65536)  # one small masked text frame
            n = f[1] & 0x7F
            mask, payload = f[2:6], f[6 : 6 + n]
            text = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            c.sendall(b"\x81" + bytes([len(text)]) + text)
            with contextlib.suppress(OSError):
                c.recv(65536)  # close frame
                c.sendall(b"\x88\x02\x03\xe8")
            c.close()

    threading.Thread(target=serve, daemon=True).start()

    def client(pport: int) -> None:
        js = (f"const ws = new WebSocket('ws://127.0.0.1:{pport}/chat');"
              "ws.onopen = () => ws.send('hello');"
              "ws.onmessage = () => ws.close(1000);"
              "ws.onclose = () => process.exit(0);"
              "setTimeout(() => process.exit(1), 3000);")
        subprocess.run(["node", "--experimental-websocket", "-e", js], check=True, stderr=subprocess.DEVNULL)

    _record("websocket_node", "node WebSocket client -> RFC 6455 echo server: upgrade, one message each way, "
            "close", port, client)
    ls.close()


def rec_grpc(tmp: Path) -> None:
    from concurrent import futures

    import grpc

    def unary(req: bytes, ctx: Any) -> bytes:
        if req == b"fail":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: ünïcode")
        return b"pong:" + req

    def server_stream(req: bytes, ctx: Any) -> Any:
        for i in range(3):
            yield b"item %d" % i

    def client_stream(it: Any, ctx: Any) -> bytes:
        return b"got %d" % sum(1 for _ in it)

    handlers = grpc.method_handlers_generic_handler("test.v1.Echo", {
        "Ping": grpc.unary_unary_rpc_method_handler(unary),
        "List": grpc.unary_stream_rpc_method_handler(server_stream),
        "Collect": grpc.stream_unary_rpc_method_handler(client_stream),
    })
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((handlers,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    opts = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    try:
        def calls(pport: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{pport}", options=opts) as ch:
                ping = ch.unary_unary("/test.v1.Echo/Ping")
                ping(b"hello", timeout=5)
                with contextlib.suppress(grpc.RpcError):
                    ping(b"fail", timeout=5)
                list(ch.unary_stream("/test.v1.Echo/List")(b"q", timeout=5))
                ch.stream_unary("/test.v1.Echo/Collect")(iter([b"a", b"b", b"c", b"d"]), timeout=5)

        _record("grpc_python", "grpcio client -> grpcio server: unary ok, unary NOT_FOUND, server streaming "
                "(3), client streaming (4)", port, calls)
    finally:
        srv.stop(0)


def rec_tls(tmp: Path) -> None:
    port = _free_port()
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(4)

    def sink() -> None:
        with contextlib.suppress(OSError):
            c, _ = ls.accept()
            c.settimeout(2)
            with contextlib.suppress(OSError):
                c.recv(65536)
            c.close()

    threading.Thread(target=sink, daemon=True).start()

    def client(pport: int) -> None:
        subprocess.run(["curl", "-s", "--max-time", "3", "--http2", "--resolve",
                        f"api.example.test:{pport}:127.0.0.1", f"https://api.example.test:{pport}/"], check=False)

    _record("tls_curl_clienthello", "curl https (ALPN h2, http/1.1; SNI api.example.test): the ClientHello",
            port, client)
    ls.close()


def _dns_answer(query: bytes) -> bytes:
    """A response with a CNAME chain and A/AAAA records, using compression pointers."""
    ident = query[:2]
    qend = 12
    while query[qend] != 0:
        qend += 1 + query[qend]
    question = query[12 : qend + 5]
    rr = b""
    # www.example.test -> CNAME edge.example.test (name by pointer to the question + new label)
    rr += b"\xc0\x0c" + b"\x00\x05\x00\x01" + (300).to_bytes(4, "big")
    cname = b"\x04edge\xc0\x10"  # 'edge' + pointer to 'example.test' inside the question
    rr += len(cname).to_bytes(2, "big") + cname
    cname_off = 12 + len(question) + 12
    rr += b"\xc0" + bytes([cname_off]) + b"\x00\x05\x00\x01" + (60).to_bytes(4, "big")
    cname2 = b"\x03cdn\x03net\x00"
    rr += len(cname2).to_bytes(2, "big") + cname2
    cname2_off = cname_off + len(cname) + 10 + 2
    for ip in (b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02"):
        rr += b"\xc0" + bytes([cname2_off]) + b"\x00\x01\x00\x01" + (30).to_bytes(4, "big") + b"\x00\x04" + ip
    return ident + b"\x81\x80\x00\x01\x00\x04\x00\x00\x00\x00" + question + rr


def rec_dns(tmp: Path) -> None:
    port = _free_port()
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            c, _ = ls.accept()
            n = int.from_bytes(c.recv(2), "big")
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            a = _dns_answer(q)
            c.sendall(len(a).to_bytes(2, "big") + a)
            c.recv(10)
            c.close()

    threading.Thread(target=serve, daemon=True).start()

    def client(pport: int) -> None:
        subprocess.run(["dig", "+tcp", "+tries=1", "+time=3", "-p", str(pport), "@127.0.0.1",
                        "www.example.test", "A"], check=False, stdout=subprocess.DEVNULL)

    _record("dns_tcp_dig", "dig +tcp www.example.test A -> responder: CNAME chain + 2 A, compression pointers "
            "(recorded on another port, stored as port 53)", port, client, server_port=53)
    ls.close()
    # UDP: the datagram dig sends, saved as a one-chunk recording
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind(("127.0.0.1", 0))
    uport = us.getsockname()[1]
    got: list[bytes] = []

    def udp() -> None:
        data, addr = us.recvfrom(4096)
        got.append(data)
        a = _dns_answer(data)
        got.append(a)
        us.sendto(a, addr)

    t = threading.Thread(target=udp, daemon=True)
    t.start()
    subprocess.run(["dig", "+tries=1", "+time=2", "-p", str(uport), "@127.0.0.1", "www.example.test", "A"],
                   check=False, stdout=subprocess.DEVNULL)
    t.join(3)
    us.close()
    save(Recording(name="dns_udp_dig", description="dig www.example.test A over UDP: query and response datagrams",
                   server_port=53, events=[(0, 1_000_000, got[0]), (1, 2_000_000, got[1])]))


SCENARIOS = [rec_http1_python, rec_http1_curl_expect, rec_http1_nginx, rec_http1_close_delimited, rec_h2,
             rec_h2c_upgrade, rec_websocket, rec_grpc, rec_tls, rec_dns]


def main() -> None:
    only = sys.argv[1:]  # scenario function names; all when empty
    for need in ("curl", "nghttp", "nghttpd", "nginx", "dig"):
        if shutil.which(need) is None:
            sys.stderr.write(f"missing {need}\n")
    for fn in SCENARIOS:
        if only and fn.__name__ not in only:
            continue
        with tempfile.TemporaryDirectory() as t:
            fn(Path(t))


if __name__ == "__main__":
    main()
