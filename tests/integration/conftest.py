"""Fixtures for the real-peer tests: a self-signed certificate, the Go TLS peer built with `go`, the test HTTP
server."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import start_http_server

PEERS = Path(__file__).parent / "peers"


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("cert")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(crt), str(key)


@pytest.fixture(scope="session")
def gotls(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Go crypto/tls peer, built by the test with the `go` toolchain."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        pytest.fail("the go toolchain is needed to build the Go TLS peer")
    out = tmp_path_factory.mktemp("go") / "gotls"
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    subprocess.run([go, "build", "-o", str(out), "."], cwd=PEERS / "gotls", env=env, check=True, timeout=300)
    return str(out)


@pytest.fixture
def http_server() -> Iterator[int]:
    """The test HTTP server (peers/http_server.py) in its own process: its port."""
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def https_server(cert: tuple[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The test HTTP server over TLS (the session's self-signed certificate): the process and its port."""
    proc, port = start_http_server("--tls", *cert)
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.wait()
