"""More TLS libraries and places, with real peers: OpenSSL 1.1 (a real 1.1.1 build from a PyPI wheel) and a
TLS client inside a podman container (probes attached to the container's file through /proc/PID/root)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.agent import AgentOptions
from qtap_async.sources.tls_manager import TlsOptions
from qtap_async.tls import analyze_file
from qtap_async.tls.model import FileKey
from tests.integration.harness import PEERS, AgentHarness, start_http_server
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("QTAP_SERVICES_CACHE") or ROOT / ".services" / "cache") / "tls-peers"
# psycopg2-binary 2.9.1's manylinux2014 wheel bundles OpenSSL 1.1.1k (libssl-*.so.1.1 + libcrypto-*.so.1.1,
# built by the psycopg project on CentOS 7): a real 1.1 library, shared, stripped of its .symtab.
PG_WHEEL = "psycopg2-binary==2.9.1"


@pytest.fixture(scope="module")
def libssl11() -> str:
    d = CACHE / "psycopg2-binary-2.9.1"
    found = glob.glob(str(d / "psycopg2_binary.libs" / "libssl-*.so.1.1"))
    if not found:
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), PG_WHEEL,
                        "--only-binary=:all:", "--python-version", "3.9", "--platform", "manylinux2014_x86_64"],
                       check=True, timeout=300)
        (wheel,) = glob.glob(str(d / "psycopg2_binary-2.9.1-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(d, [n for n in z.namelist() if n.startswith("psycopg2_binary.libs/")])
        for f in glob.glob(str(d / "psycopg2_binary.libs" / "*")):
            os.chmod(f, 0o755)
        found = glob.glob(str(d / "psycopg2_binary.libs" / "libssl-*.so.1.1"))
    assert found, f"no libssl 1.1 in {d}"
    return found[0]


@pytest.fixture
def https_server(cert: tuple[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_http_server("--tls", *cert)
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def test_openssl_11_is_analysed_with_fast_probes(libssl11: str) -> None:
    st = os.stat(libssl11)
    lib = analyze_file(libssl11, FileKey(st.st_dev, st.st_ino))
    assert lib is not None and lib.kind == "openssl" and lib.version == "1.1.1k", lib
    assert {p.function for p in lib.plans} == {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"}
    assert all(p.fast for p in lib.plans), [p.reason for p in lib.plans if not p.fast]


def test_openssl_11_client_plaintext(libssl11: str, https_server: tuple[subprocess.Popen[str], int],
                                     tmp_path: Path) -> None:
    _, port = https_server
    client = [sys.executable, "-S", str(PEERS / "ssl11_client.py"), libssl11, str(port)]
    opts = AgentOptions(tls_options=TlsOptions(state_dir=str(tmp_path / "state")))
    with AgentHarness(opts) as h:
        # The library is dlopen'ed after exec (no exec-time hook sees it): the first process waits until the
        # agent's rescan found it; the probes then stay on the file and cover the next processes from the start.
        first = subprocess.run([*client, "/bytes?n=100", "1.0"], capture_output=True, check=True, timeout=60)
        assert first.stdout.endswith(body_for(100))
        runs = []
        for n in (1234, 50_000, 7):
            p = subprocess.run([*client, f"/bytes?n={n}", "0"], capture_output=True, check=True, timeout=60)
            assert p.stdout.endswith(body_for(n))
            runs.append((n, p.stdout))
        assert h.wait_for(lambda: len(h.connections("close", comm="python", direction="egress", dst_port=port)) >= 4)
        assert h.agent.tls is not None
        assert any(s.version == "1.1.1k" and s.attached and not s.slow_functions for s in h.agent.tls.statuses())
    conns = sorted(h.connections("close", comm="python", direction="egress", dst_port=port), key=lambda c: c.ts_ns)
    plain = [h.recorded.get((c.conn_id, 1)) for c in conns]
    assert all(r is not None for r in plain), "a connection without TLS plaintext"
    for (n, response), rec in zip(runs, [r for r in plain[1:] if r is not None], strict=True):
        assert bytes(rec.data[0]) == (f"GET /bytes?n={n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                      "Connection: close\r\n\r\n").encode()
        assert bytes(rec.data[1]) == response  # byte-exact, headers and body
        assert rec.gaps == {0: 0, 1: 0}
