"""More TLS libraries and places, with real peers: OpenSSL 1.1 (a real 1.1.1 build from a PyPI wheel) and a
TLS client inside a podman container (probes attached to the container's file through /proc/PID/root)."""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.tls import analyze_file
from qtap_async.tls.manager import TlsOptions
from qtap_async.tls.model import FileKey
from qtap_async.topology import AgentOptions
from tests.integration.harness import PEERS, AgentHarness, free_port, wait_port
from tests.integration.peers.http_server import body_for
from tests.integration.test_tls_first_bytes import _h2_request, _http

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


PODMAN = "podman"


@pytest.fixture(scope="module")
def container_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scratch image holding only a static OpenSSL HTTP/2 client, built offline (no registry)."""
    root = tmp_path_factory.mktemp("rootfs")
    subprocess.run(["gcc", "-O1", "-static", "-o", str(root / "tls_h2_client"),
                    str(PEERS / "tlsh2c" / "tls_h2_client.c"), "-lssl", "-lcrypto", "-lpthread"],
                   check=True, capture_output=True, timeout=300)
    tar = tmp_path_factory.mktemp("img") / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    name = f"localhost/qtap-tls-client:{os.getpid()}"
    subprocess.run([PODMAN, "import", str(tar), name], check=True, capture_output=True, timeout=120)
    try:
        yield name
    finally:
        subprocess.run([PODMAN, "rmi", "-f", name], capture_output=True, timeout=120)


def test_tls_client_in_a_container(container_image: str, cert: tuple[str, str], tmp_path: Path) -> None:
    h2root = tmp_path / "www"
    h2root.mkdir()
    (h2root / "hello.txt").write_bytes(b"from the host\n")
    port = free_port()
    srv = subprocess.Popen(["nghttpd", "-d", str(h2root), str(port), cert[1], cert[0]],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reqs = tmp_path / "req"
    reqs.mkdir()
    for i in range(3):
        (reqs / f"{i}.bin").write_bytes(_h2_request(port, i))
    try:
        wait_port(port)
        opts = AgentOptions(http_level="details", tls_options=TlsOptions(state_dir=str(tmp_path / "state")))
        with AgentHarness(opts, record=False) as h:
            for i, delay in enumerate(("1500", "0", "0")):
                # The first run waits before it speaks (the agent finds the file through /proc/PID/root after
                # the exec); later containers of the image map the same file, whose probes stayed attached.
                subprocess.run([PODMAN, "run", "--runtime", "runc", "--rm", "--network", "host", "-v",
                                f"{reqs}:/req:ro", container_image, "/tls_h2_client", "127.0.0.1", str(port),
                                f"/req/{i}.bin", delay], check=True, capture_output=True, timeout=120)
            assert h.wait_for(lambda: len(_http(h, dst_port=port, direction="egress")) >= 3)
            assert h.agent.tls is not None
            st = [s for s in h.agent.tls.statuses() if s.path == "/tls_h2_client"]
            assert st and st[0].attached and not st[0].slow_functions, h.agent.tls.statuses()
            lib = next(e.lib for e in h.agent.tls.probes.files.values() if e.lib.path == "/tls_h2_client")
            assert lib.open_path.startswith("/proc/") and "/root/" in lib.open_path, lib.open_path
        txs = sorted(_http(h, dst_port=port, direction="egress"), key=lambda e: e["ts"])
        for i, tx in enumerate(txs):
            assert tx["container_id"], tx  # the process context says it ran in a container
            assert (tx["method"], tx["path"], tx["status"]) == ("GET", "/hello.txt", 200), tx
            assert ("x-qtap-run", str(i)) in [tuple(x) for x in tx["request_headers"]], tx
            assert not tx.get("incomplete"), tx
    finally:
        srv.kill()
        srv.wait()


@pytest.fixture(scope="module")
def rustls_client() -> str:
    """The rustls peer, built by the test with cargo from crates.io (target dir cached beside the other peers)."""
    import shutil
    import time

    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    target = CACHE / "rustls-target"
    t = time.monotonic()
    subprocess.run([cargo, "build", "--release", "-q", "--manifest-path", str(PEERS / "rustls_client" / "Cargo.toml")],
                   env=dict(os.environ, CARGO_TARGET_DIR=str(target)), check=True, timeout=1200)
    logging.getLogger(__name__).info("rustls peer build: %.1f s", time.monotonic() - t)
    return str(target / "release" / "rustls_client")


def test_rustls_client_plaintext(rustls_client: str, https_server: tuple[subprocess.Popen[str], int],
                                 tmp_path: Path) -> None:
    _, port = https_server
    exe = tmp_path / "rustls_client"
    exe.write_bytes(Path(rustls_client).read_bytes())  # a file no agent has seen
    exe.chmod(0o755)
    # Held exec: the fresh binary is analysed and probed before its first instruction, no delay needed.
    opts = AgentOptions(tls_options=TlsOptions(state_dir=str(tmp_path / "state"), hold_exec=True,
                                               hold_children_of=os.getpid()))
    sizes = (5, 70_000, 1234)
    with AgentHarness(opts) as h:
        outs = []
        for n in sizes:
            p = subprocess.run([str(exe), str(port), f"/bytes?n={n}", "0"], capture_output=True, check=True,
                               timeout=60)
            assert p.stdout.endswith(body_for(n)), p.stdout[:200]
            outs.append(p.stdout)
        assert h.wait_for(lambda: len(h.connections("close", exe=str(exe), dst_port=port)) >= len(sizes))
        assert h.agent.tls is not None
        st = [s for s in h.agent.tls.statuses() if s.path == str(exe)]
        assert st and st[0].kind == "rustls" and st[0].attached and not st[0].slow_functions, st
    conns = sorted(h.connections("close", exe=str(exe), dst_port=port), key=lambda c: c.ts_ns)
    for n, out, c in zip(sizes, outs, conns, strict=True):
        rec = h.recorded.get((c.conn_id, 1))
        assert rec is not None, f"no plaintext for the rustls connection of /bytes?n={n}"
        assert bytes(rec.data[0]) == (f"GET /bytes?n={n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                      "Connection: close\r\n\r\n").encode()
        assert bytes(rec.data[1]) == out
        assert rec.gaps == {0: 0, 1: 0}
