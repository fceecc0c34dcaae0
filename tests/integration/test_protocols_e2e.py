"""The protocol layer on real traffic: HTTP/2 over TLS and h2c, gRPC, DNS over TCP, through the real agent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtap_async.topology import AgentOptions
from tests.integration.harness import PEERS, AgentHarness, dns_server, free_port, wait_port

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"
NGHTTPD = shutil.which("nghttpd") or "/usr/bin/nghttpd"
DIG = shutil.which("dig") or "/usr/bin/dig"


def _http(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
            and all(e.get(k) == v for k, v in match.items())]


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello over h2\n")
    return root


@pytest.fixture
def nghttpd_tls(docroot: Path, cert: tuple[str, str]) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([NGHTTPD, "-d", str(docroot), str(port), cert[1], cert[0]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def nghttpd_h2c(docroot: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([NGHTTPD, "--no-tls", "-d", str(docroot), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_curl_http2_over_tls(nghttpd_tls: int) -> None:
    port = nghttpd_tls
    with AgentHarness(AgentOptions(http_level="full"), record=False) as h:
        out = subprocess.run([CURL, "-sSk", "--http2", f"https://127.0.0.1:{port}/hello.txt",
                              f"https://127.0.0.1:{port}/missing"], capture_output=True, check=True)
        assert out.stdout.startswith(b"hello over h2\n")
        assert h.wait_for(lambda: len(_http(h, comm="curl", dst_port=port)) >= 2)
    txs = sorted(_http(h, comm="curl", dst_port=port), key=lambda e: e["stream_id"])
    assert [t["protocol"] for t in txs] == ["h2", "h2"]
    assert [(t["method"], t["path"], t["status"]) for t in txs] == [("GET", "/hello.txt", 200),
                                                                    ("GET", "/missing", 404)]
    assert [t["stream_id"] for t in txs] == [1, 3]
    assert all(t["authority"] == f"127.0.0.1:{port}" and t["tls"] for t in txs)
    assert txs[0]["response_body"] == b"hello over h2\n"
    # The server side (nghttpd, on the same libssl) sees the same exchanges.
    server = _http(h, comm="nghttpd", dst_port=port)
    assert {(t["path"], t["status"]) for t in server} == {("/hello.txt", 200), ("/missing", 404)}


def test_curl_h2c_prior_knowledge(nghttpd_h2c: int) -> None:
    port = nghttpd_h2c
    with AgentHarness(AgentOptions(http_level="full"), record=False) as h:
        out = subprocess.run([CURL, "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/hello.txt"],
                             capture_output=True, check=True)
        assert out.stdout == b"hello over h2\n"
        assert h.wait_for(lambda: len(_http(h, comm="curl", dst_port=port)) >= 1)
    (tx,) = _http(h, comm="curl", dst_port=port)
    assert (tx["protocol"], tx["method"], tx["path"], tx["status"], tx["stream_id"]) == (
        "h2c", "GET", "/hello.txt", 200, 1)
    assert not tx["tls"] and tx["response_body"] == b"hello over h2\n"


def test_grpc_unary_streaming_and_error() -> None:
    srv = subprocess.Popen([sys.executable, str(PEERS / "grpc_peer.py"), "server"], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline().split()[1])
        with AgentHarness(AgentOptions(http_level="full"), record=False) as h:
            out = subprocess.run([sys.executable, str(PEERS / "grpc_peer.py"), "client", str(port)],
                                 capture_output=True, text=True, check=True, timeout=60)
            assert out.stdout.splitlines() == ["echo:hello", "part0:abc,part1:abc,part2:abc", "error 5"]
            assert h.wait_for(lambda: len([t for t in _http(h, dst_port=port) if t.get("grpc")]) >= 6)
    finally:
        srv.kill()
        srv.wait()
    for side in ("egress", "ingress"):
        calls = {t["grpc"]["method"]: t for t in _http(h, dst_port=port, direction=side) if t.get("grpc")}
        assert set(calls) == {"Unary", "Stream", "Fail"}, side
        assert all(t["grpc"]["service"] == "qtap.test.Echo" for t in calls.values())
        assert calls["Unary"]["grpc"]["grpc_status"] == 0
        assert calls["Unary"]["path"] == "/qtap.test.Echo/Unary"
        assert calls["Unary"]["grpc"]["response_messages"] == 1
        assert calls["Stream"]["grpc"]["response_messages"] == 3
        assert calls["Stream"]["grpc"]["streaming"] is True
        assert calls["Fail"]["grpc"]["grpc_status"] == 5
        assert calls["Fail"]["grpc"]["grpc_message"] == "no such thing"
        # Length-prefixed message bytes: 5-byte gRPC header then the payload.
        assert calls["Unary"]["response_body"].endswith(b"echo:hello")


def test_dns_over_tcp_names_later_connections() -> None:
    # Port 53 on a loopback address of its own, so nothing on the host is disturbed.
    addr = "127.0.0.53" if not _busy("127.0.0.53") else "127.0.0.54"
    with dns_server(addr), AgentHarness(record=False) as h:
        out = subprocess.run([DIG, "+tcp", "+short", f"@{addr}", "alias.test", "A"], capture_output=True,
                             text=True, check=True, timeout=30)
        assert out.stdout.split() == ["target.test.", "127.0.0.1"]
        assert h.wait_for(lambda: any(e.get("type") == "dns_message" and e.get("is_response")
                                      for e in h.events() if isinstance(e, dict) and e.get("comm") == "dig"))
    (resp,) = [e for e in h.events() if isinstance(e, dict) and e.get("type") == "dns_message"
               and e.get("is_response") and e.get("comm") == "dig"]
    assert resp["qname"] == "alias.test." and resp["transport"] == "tcp"
    assert [(a["type"], a["data"]) for a in resp["answers"]] == [("CNAME", "target.test."), ("A", "127.0.0.1")]
    # The answer is remembered: 127.0.0.1 is now known to dig's process as alias.test.
    assert h.agent.graph.enrich.dns.lookup(resp["pid"], "127.0.0.1") == "alias.test"


def _busy(addr: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 53))
        except OSError:
            return True
    return False


def test_dns_over_udp_dig_and_getent(tmp_path: Path) -> None:
    addr = "127.0.0.53" if not _busy("127.0.0.53") else "127.0.0.54"
    with dns_server(addr, system_resolver=True), AgentHarness(record=False) as h:
        out = subprocess.run([DIG, "+short", f"@{addr}", "alias.test", "A"], capture_output=True, text=True,
                             check=True, timeout=30)
        assert out.stdout.split() == ["target.test.", "127.0.0.1"]
        # getent goes through glibc's resolver (connected UDP socket to the nameserver).
        got = subprocess.run(["getent", "ahostsv4", "plain.test"], capture_output=True, text=True, timeout=30)
        assert "127.0.0.1" in got.stdout
        assert h.wait_for(lambda: {"dig", "getent"} <= {e.get("comm") for e in _dns(h)})
    dig = [e for e in _dns(h) if e["comm"] == "dig"]
    assert all(e["transport"] == "udp" for e in dig)
    assert [(a["type"], a["data"]) for a in dig[0]["answers"]] == [("CNAME", "target.test."), ("A", "127.0.0.1")]
    ge = [e for e in _dns(h) if e["comm"] == "getent"]
    assert {e["qname"] for e in ge} == {"plain.test."}
    conns = [e for e in h.connections("close") if e.comm == "getent"]
    assert conns and all(e.transport == "udp" and e.protocol == "dns" for e in conns)


def _dns(h: AgentHarness) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "dns_message" and e.get("is_response")]
