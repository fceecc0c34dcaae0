"""HTTPS plaintext capture with real TLS libraries, clients and servers started by the tests."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.events.connection import ConnectionEvent
from tests.integration.harness import AgentHarness, Recorded
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"
WGET = shutil.which("wget") or "/usr/bin/wget"
NODE = shutil.which("node") or "/usr/bin/node"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _one(h: AgentHarness, **match: object) -> ConnectionEvent:
    if not h.wait_for(lambda: len(h.connections("close", **match)) >= 1):
        port = match.get("dst_port", match.get("src_port"))
        seen = [(e.event, e.pid, e.exe, e.direction, e.src_port, e.dst_port) for e in h.connections("open")
                + h.connections("close") if port in (e.src_port, e.dst_port)]
        raise AssertionError(f"no closed connection {match}; seen on that port: {seen}")
    conns = h.connections("close", **match)
    assert len(conns) == 1, conns
    return conns[0]


def _plain(h: AgentHarness, c: ConnectionEvent) -> Recorded:
    rec = h.recorded.get((c.conn_id, 1))
    assert rec is not None, f"no TLS plaintext for {c.exe} connection {c.conn_id}"
    return rec


def _assert_no_plaintext_in_ciphertext(h: AgentHarness, c: ConnectionEvent, *needles: bytes) -> None:
    raw = h.recorded.get((c.conn_id, 0))
    if raw is None:
        return
    for d in (0, 1):
        data = bytes(raw.data[d])
        # Only the handshake may go up in the clear (for SNI/ALPN), never the application data.
        assert len(data) <= 8192 + 16384, f"{len(data)} ciphertext bytes sent to user space"
        for n in needles:
            assert n not in data


def _request_response_check(rec: Recorded, client_side: bool, path: bytes, body: bytes) -> None:
    req, resp = (rec.data[0], rec.data[1]) if client_side else (rec.data[1], rec.data[0])
    assert bytes(req).startswith(b"GET " + path + b" HTTP/1.1\r\n"), bytes(req[:200])
    head, _, got = bytes(resp).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n", 1)[0]
    assert got == body
    assert rec.gaps == {0: 0, 1: 0}


def test_curl_openssl_client_and_python_ssl_server(https_server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = https_server
    n = 300_000
    path = f"/bytes?n={n}&chunk=65536".encode()
    with AgentHarness() as h:
        url = f"https://127.0.0.1:{port}{path.decode()}"
        out = subprocess.run([CURL, "-sSk", url], capture_output=True, check=True)
        assert out.stdout == body_for(n)
        client = _one(h, exe=CURL, dst_port=port)
        server = _one(h, pid=proc.pid, src_port=client.src_port)
    assert client.tls and server.tls
    crec, srec = _plain(h, client), _plain(h, server)
    _request_response_check(crec, True, path, body_for(n))  # curl: SSL_write / SSL_read
    _request_response_check(srec, False, path, body_for(n))  # Python ssl: SSL_read_ex / SSL_write_ex
    assert bytes(crec.data[0]) == bytes(srec.data[1]) and bytes(crec.data[1]) == bytes(srec.data[0])
    _assert_no_plaintext_in_ciphertext(h, client, path, body_for(n)[:64])
    _assert_no_plaintext_in_ciphertext(h, server, path, body_for(n)[:64])
    assert h.agent.snapshot()["qtap_kernel_tls_unassociated_total"] == 0


def test_python_urllib_client(https_server: tuple[subprocess.Popen[str], int]) -> None:
    _, port = https_server
    code = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl._create_unverified_context()\n"
        f"d = urllib.request.urlopen('https://127.0.0.1:{port}/bytes?n=4321', context=ctx).read()\n"
        "sys.stdout.buffer.write(d)\n"
    )
    with AgentHarness() as h:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        assert p.stdout == body_for(4321)
        c = _one(h, comm="python", direction="egress", dst_port=port)
    _request_response_check(_plain(h, c), True, b"/bytes?n=4321", body_for(4321))


def test_wget_gnutls_client(https_server: tuple[subprocess.Popen[str], int], tmp_path: Path) -> None:
    _, port = https_server
    with AgentHarness() as h:
        subprocess.run([WGET, "-q", "--no-check-certificate", "-O", str(tmp_path / "out"),
                        f"https://127.0.0.1:{port}/bytes?n=20000"], check=True, timeout=60)
        assert (tmp_path / "out").read_bytes() == body_for(20000)
        c = _one(h, exe=WGET, dst_port=port)
    rec = _plain(h, c)
    assert bytes(rec.data[0]).startswith(b"GET /bytes?n=20000 HTTP/1.1\r\n")
    assert bytes(rec.data[1]).endswith(body_for(20000))
    _assert_no_plaintext_in_ciphertext(h, c, b"/bytes?n=20000")


def test_node_static_openssl_client(https_server: tuple[subprocess.Popen[str], int]) -> None:
    _, port = https_server
    js = (
        "const https = require('https');"
        # The request goes out 1 s after exec: a process started after the agent is covered by then.
        f"setTimeout(() => https.get({{host: '127.0.0.1', port: {port}, path: '/bytes?n=7777', "
        "rejectUnauthorized: false}, r => {"
        "const parts = []; r.on('data', d => parts.push(d));"
        "r.on('end', () => { process.stdout.write(Buffer.concat(parts)); });}), 1000);"
    )
    with AgentHarness() as h:
        p = subprocess.run([NODE, "-e", js], capture_output=True, check=True, timeout=60)
        assert p.stdout == body_for(7777)
        c = _one(h, comm="node", dst_port=port)
    rec = _plain(h, c)
    assert bytes(rec.data[0]).startswith(b"GET /bytes?n=7777 HTTP/1.1\r\n")
    assert bytes(rec.data[1]).endswith(body_for(7777))


def _go_body(n: int) -> bytes:
    return bytes((i * 7 + n) % 251 for i in range(n))


def test_go_client_and_server_started_after_agent(gotls: str, cert: tuple[str, str]) -> None:
    n = 50_000
    with AgentHarness() as h:
        srv = subprocess.Popen([gotls, "server", *cert], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None
            port = int(srv.stdout.readline().split()[1])
            time.sleep(1.0)  # a process started after the agent is covered within 1 s of its exec
            # 20 requests on one keep-alive connection: the Go program must keep working with the probes.
            out = subprocess.run([gotls, "client", f"https://127.0.0.1:{port}/bytes?n={n}", "20", "0"],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            want = f"200 {n} {hashlib.sha256(_go_body(n)).hexdigest()}"
            assert out.stdout.splitlines() == [want] * 20
            assert srv.poll() is None, "the Go server died under the probes"
        finally:
            srv.kill()
            srv.wait()
        client = _one(h, exe=gotls, direction="egress", dst_port=port)
        server = _one(h, exe=gotls, direction="ingress", src_port=client.src_port)
    crec, srec = _plain(h, client), _plain(h, server)
    assert bytes(crec.data[0]) == bytes(srec.data[1])
    assert bytes(crec.data[1]) == bytes(srec.data[0])
    assert bytes(crec.data[0]).count(b"GET /bytes?n=50000 HTTP/1.1\r\n") == 20
    assert bytes(crec.data[1]).count(_go_body(n)) == 20
    _assert_no_plaintext_in_ciphertext(h, client, b"/bytes?n=50000")


@pytest.fixture
def nginx_tls(cert: tuple[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, bytes]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "www"
    root.mkdir()
    content = body_for(200_000)
    (root / "big.bin").write_bytes(content)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body;
  proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fastcgi;
  uwsgi_temp_path {tmp_path}/uwsgi;
  scgi_temp_path {tmp_path}/scgi;
  sendfile on;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert[0]};
    ssl_certificate_key {cert[1]};
    root {root};
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield proc, port, content
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_tls_server(nginx_tls: tuple[subprocess.Popen[bytes], int, bytes]) -> None:
    _, port, content = nginx_tls
    with AgentHarness() as h:
        out = subprocess.run([CURL, "-sSk", f"https://127.0.0.1:{port}/big.bin"], capture_output=True, check=True)
        assert out.stdout == content
        client = _one(h, exe=CURL, dst_port=port)
        server = _one(h, comm="nginx", direction="ingress", src_port=client.src_port)
    srec = _plain(h, server)
    _request_response_check(srec, False, b"/big.bin", content)
    assert bytes(srec.data[0]) == bytes(_plain(h, client).data[1])
    _assert_no_plaintext_in_ciphertext(h, server, b"/big.bin", content[:64])
