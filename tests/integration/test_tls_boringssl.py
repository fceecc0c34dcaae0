"""gRPC over TLS between a real grpcio server and client: grpcio's BoringSSL is linked into cygrpc.so and
stripped, so its SSL_read/SSL_write are found by code signature (qtap_async.tls.boringssl). The plaintext
HTTP/2 (method path, message bytes) must come out for both processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from qtap_async.tls.manager import TlsOptions
from qtap_async.topology import AgentOptions
from tests.integration.harness import PEERS, AgentHarness
from tests.tls.grpcio_wheels import VERSIONS, grpcio_dir

pytestmark = pytest.mark.bpf

# An older grpcio than the one the venv installs (its BoringSSL is two years older): run from its wheel.
OLD_GRPCIO = VERSIONS[0]


def _http(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
            and all(e.get(k) == v for k, v in match.items())]


@pytest.mark.parametrize("grpcio", ["installed", OLD_GRPCIO])
def test_grpc_over_tls_plaintext_on_both_sides(grpcio: str, cert: tuple[str, str], tmp_path: Path) -> None:
    env = dict(os.environ)
    # Where the cygrpc.so the peers import lives: the venv's, or the unpacked older wheel (put first).
    where = os.path.dirname(os.path.dirname(grpc.__file__))
    if grpcio != "installed":
        where = env["PYTHONPATH"] = grpcio_dir(grpcio)
    crt, key = cert
    peer = [sys.executable, str(PEERS / "grpc_peer.py")]
    # The server maps cygrpc.so before the agent starts: the startup scan attaches to that file, and the
    # probes on the file then cover the client (same file) from its first byte.
    srv = subprocess.Popen([*peer, "server", "--tls", crt, key], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline().split()[1])
        opts = AgentOptions(http_level="full", tls_options=TlsOptions(state_dir=str(tmp_path / "state")))
        with AgentHarness(opts, record=False) as h:
            assert h.agent.tls is not None
            statuses = [s for s in h.agent.tls.statuses() if "cygrpc" in s.path and where in s.path]
            assert any(s.kind == "boringssl" and s.attached and set(s.fast_functions) == {"SSL_read", "SSL_write"}
                       for s in statuses), statuses
            cli = subprocess.Popen([*peer, "client", str(port), "--tls", crt], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
            out, err = cli.communicate(timeout=60)
            assert cli.returncode == 0, err
            assert out.splitlines() == ["echo:hello", "part0:abc,part1:abc,part2:abc", "error 5"]
            assert h.wait_for(lambda: len([t for t in _http(h) if t.get("grpc") and t.get("tls")]) >= 6), (
                [(t.get("pid"), t.get("direction"), t.get("path")) for t in _http(h)])
    finally:
        srv.kill()
        srv.wait()
    sides = {"egress": cli.pid, "ingress": srv.pid}
    for side, pid in sides.items():
        calls = {t["grpc"]["method"]: t for t in _http(h, direction=side, pid=pid) if t.get("grpc")}
        assert set(calls) == {"Unary", "Stream", "Fail"}, (side, [(t["pid"], t["direction"]) for t in _http(h)])
        assert all(t["tls"] for t in calls.values())
        assert calls["Unary"]["path"] == "/qtap.test.Echo/Unary"
        assert calls["Unary"]["grpc"]["grpc_status"] == 0
        # The message bytes themselves: 5-byte gRPC length prefix, then the payload.
        assert calls["Unary"]["request_body"] == b"\x00\x00\x00\x00\x05hello", calls["Unary"]
        assert calls["Unary"]["response_body"] == b"\x00\x00\x00\x00\x0aecho:hello", calls["Unary"]
        assert calls["Stream"]["grpc"]["response_messages"] == 3
        assert calls["Fail"]["grpc"]["grpc_status"] == 5
        assert calls["Fail"]["grpc"]["grpc_message"] == "no such thing"


def test_grpc_tls_concurrent_connections_keep_their_own_plaintext(cert: tuple[str, str], tmp_path: Path) -> None:
    """gRPC's TLS runs on a BIO pair (no socket I/O inside SSL_read/SSL_write), and one thread serves several
    connections: a new connection's first SSL_write comes before its sendmsg, after the thread's last I/O on
    another connection. Its plaintext must wait for its own send (held unbound, then bound), never go to the
    thread's last socket. Several connections of one process calling at once must each carry their own
    request and response (a mix-up shows as a request paired with another's response)."""
    crt, key = cert
    peer = [sys.executable, str(PEERS / "grpc_peer.py")]
    n = 6
    srv = subprocess.Popen([*peer, "server", "--tls", crt, key], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        port = int(srv.stdout.readline().split()[1])
        opts = AgentOptions(http_level="full", tls_options=TlsOptions(state_dir=str(tmp_path / "state")))
        with AgentHarness(opts, record=False) as h:
            cli = subprocess.run([*peer, "many", str(port), str(n), crt], capture_output=True, text=True,
                                 timeout=60, check=True)
            assert cli.stdout.strip() == ",".join(f"echo:many-{i}" for i in range(n))
            assert h.wait_for(lambda: len([t for t in _http(h, dst_port=port) if t.get("grpc")]) >= 2 * n)
            m = h.agent.snapshot()
    finally:
        srv.kill()
        srv.wait()
    for side in ("egress", "ingress"):
        txs = [t for t in _http(h, dst_port=port, direction=side) if t.get("grpc")]
        got = sorted((t["request_body"][5:], t["response_body"][5:]) for t in txs)
        assert got == sorted((f"many-{i}".encode(), f"echo:many-{i}".encode()) for i in range(n)), (side, got)
        assert len({t["conn_id"] for t in txs}) == n, side
    # The clients' first writes went up unbound and their own sends bound them; nothing was left unbound.
    assert m["qtap_kernel_tls_held_total"] >= n, m
    assert m["qtap_kernel_tls_bound_by_send_total"] >= n, m
    assert m["qtap_tls_unbound_bound_records_total"] >= n, m
    assert m["qtap_tls_unbound_dropped_records_total"] == 0, m
