"""HTTP framing on real traffic, both ends: an HTTP/2 server push, a message head over the 64 KiB limit on a
keep-alive connection, `Expect: 100-continue` answered 417 without the body, and a request target that is
not UTF-8."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtap_async.topology import AgentOptions
from tests.integration.harness import AgentHarness, free_port, wait_port

pytestmark = pytest.mark.bpf

NGHTTPD = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
NGHTTP = shutil.which("nghttp") or "/usr/bin/nghttp"
CURL = shutil.which("curl") or "/usr/bin/curl"


def _http(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
            and all(e.get(k) == v for k, v in match.items())]


def _errors(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "parse_error"
            and all(e.get(k) == v for k, v in match.items())]


@pytest.fixture
def pushing_server(tmp_path: Path) -> Iterator[int]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<html>pushed css follows</html>\n")
    (root / "style.css").write_bytes(b"body { color: red }\n")
    port = free_port()
    proc = subprocess.Popen([NGHTTPD, "--no-tls", "-d", str(root), "-p", "/index.html=/style.css", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_http2_server_push_is_marked_pushed_with_its_parent_stream(pushing_server: int) -> None:
    port = pushing_server
    with AgentHarness(AgentOptions(http_level="full"), record=False) as h:
        out = subprocess.run([NGHTTP, "-v", f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True,
                             check=True, timeout=30)
        assert "PUSH_PROMISE" in out.stdout  # the server did push
        assert h.wait_for(lambda: len(_http(h, dst_port=port)) >= 4)
    for comm in ("nghttp", "nghttpd"):
        txs = {t["path"]: t for t in _http(h, dst_port=port, comm=comm)}
        assert set(txs) == {"/index.html", "/style.css"}, (comm, txs)
        page, pushed = txs["/index.html"], txs["/style.css"]
        # (nghttp opens idle streams for its priority tree first: the request is not stream 1)
        assert "pushed" not in page and page["stream_id"] % 2 == 1
        assert pushed["pushed"] is True and pushed["promised_by"] == page["stream_id"]
        assert pushed["stream_id"] % 2 == 0  # a server-initiated stream
        assert pushed["status"] == 200 and pushed["response_body"] == b"body { color: red }\n"
        assert not pushed.get("incomplete")


# A keep-alive HTTP/1.1 server that refuses every `Expect: 100-continue` with 417 (without reading the body)
# and answers anything else with its path. Python's server takes header lines of up to 64 KiB each.
_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle_expect_100(self):
        self.send_response(417)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        return False

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""

# One keep-alive connection: a request whose head is over 64 KiB, then a plain one, then one whose target is
# not UTF-8. Reads each response before the next request. Prints its pid.
_CLIENT = r"""
import os, socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
big = b"".join(b"X-Big-%d: " % i + b"v" * 30000 + b"\r\n" for i in range(3))
reqs = [b"GET /big HTTP/1.1\r\nHost: framing.test\r\n" + big + b"Accept: */*\r\n\r\n",
        b"GET /after-big HTTP/1.1\r\nHost: framing.test\r\n\r\n",
        b"GET /caf\xe9/\xff HTTP/1.1\r\nHost: framing.test\r\n\r\n"]
for r in reqs:
    s.sendall(r)
    data = b""
    while not data.endswith(b"ok"):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("server closed")
        data += chunk
print(os.getpid())
"""


@pytest.fixture
def framing_server() -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_head_over_64k_is_reported_cut_and_the_connection_goes_on(framing_server: tuple[int, int]) -> None:
    port, server_pid = framing_server
    with AgentHarness(record=False) as h:
        out = subprocess.run([sys.executable, "-c", _CLIENT, str(port)], capture_output=True, text=True,
                             check=True, timeout=60)
        client_pid = int(out.stdout)
        assert h.wait_for(lambda: len(_http(h, dst_port=port)) >= 6)
    for pid in (client_pid, server_pid):
        txs = _http(h, dst_port=port, pid=pid)
        assert [(t["path"], t["status"]) for t in txs] == [("/big", 200), ("/after-big", 200),
                                                          ("/caf%E9/%FF", 200)], (pid, txs)
        big, after, odd = txs
        assert big["incomplete"] and "larger than 65536 bytes (limit max_header_bytes)" in big["reason"]
        assert big["authority"] == "framing.test"
        assert not after.get("incomplete") and not odd.get("incomplete")
        (err,) = [e for e in _errors(h, pid=pid) if "max_header_bytes" in e["reason"]]
        assert err["protocol"] == "http1"


def test_expect_100_continue_refused_with_417_is_reported_on_both_sides(
        framing_server: tuple[int, int], tmp_path: Path) -> None:
    port, server_pid = framing_server
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * 200_000)
    with AgentHarness(record=False) as h:
        subprocess.run([CURL, "-sS", "-o", "/dev/null", "-X", "PUT", "-H", "Expect: 100-continue",
                        "--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/up"], timeout=60, check=False)
        assert h.wait_for(lambda: {e.get("pid") for e in _http(h, dst_port=port, status=417)} >= {server_pid}
                          and any(e.get("comm") == "curl" for e in _http(h, dst_port=port, status=417)))
    for match in ({"comm": "curl"}, {"pid": server_pid}):
        refused = [t for t in _http(h, dst_port=port, **match) if t["status"] == 417]
        assert refused, (match, _http(h, dst_port=port))
        t = refused[0]
        assert t["method"] == "PUT" and t["path"] == "/up" and t["request_body_size"] == 0
        assert not t.get("incomplete"), t.get("reason")
