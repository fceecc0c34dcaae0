"""The capture engine against real peers: a Python HTTP server and curl, in their own processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness import PEERS, AgentHarness, start_http_server
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_http_server()
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def _pair(h: AgentHarness, client_pid: int, server_pid: int, port: int) -> tuple[object, object]:
    client = h.connections("close", pid=client_pid, dst_port=port)
    srv = h.connections("close", pid=server_pid, dst_port=port)
    assert len(client) == 1, f"client connections: {client}"
    match = [c for c in srv if c.src_port == client[0].src_port]
    assert len(match) == 1, f"server connections: {srv}"
    return client[0], match[0]


def test_curl_and_server_seen_from_both_sides_byte_exact(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    n = 5 * 1024 * 1024
    with AgentHarness() as h:
        curl = subprocess.run(
            [CURL, "-sS", "-o", "-", "-H", "X-Test: yes", f"http://127.0.0.1:{port}/bytes?n={n}&chunk=65536"],
            capture_output=True,
            check=True,
        )
        assert curl.stdout == body_for(n)
        assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 2)
    client_pid = _curl_pid(h, port)
    c, s = _pair(h, client_pid, proc.pid, port)
    assert c.direction == "egress" and s.direction == "ingress"  # type: ignore[attr-defined]
    assert c.exe == CURL and s.exe == os.path.realpath(sys.executable)  # type: ignore[attr-defined]
    assert (c.src_ip, c.dst_ip) == ("127.0.0.1", "127.0.0.1")  # type: ignore[attr-defined]
    # Byte counts agree across the two ends.
    assert c.bytes_sent == s.bytes_received > 0  # type: ignore[attr-defined]
    assert c.bytes_received == s.bytes_sent > n  # type: ignore[attr-defined]
    rc = h.recorded[(c.conn_id, 0)]  # type: ignore[attr-defined]
    rs = h.recorded[(s.conn_id, 0)]  # type: ignore[attr-defined]
    # Reassembled streams: what curl sent is what the server received, byte for byte, and vice versa.
    assert rc.gaps == {0: 0, 1: 0} and rs.gaps == {0: 0, 1: 0}
    assert bytes(rc.data[0]) == bytes(rs.data[1])
    assert bytes(rc.data[1]) == bytes(rs.data[0])
    assert rc.data[0].startswith(f"GET /bytes?n={n}&chunk=65536 HTTP/1.1\r\n".encode())
    assert b"\r\nX-Test: yes\r\n" in rc.data[0]
    head, _, body = bytes(rc.data[1]).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") or head.startswith(b"HTTP/1.1 200 OK")
    assert body == body_for(n)
    assert len(rc.data[1]) == c.bytes_received  # type: ignore[attr-defined]


def _curl_pid(h: AgentHarness, port: int) -> int:
    pids = {e.pid for e in h.connections("close", dst_port=port, direction="egress")}
    assert len(pids) == 1, pids
    return pids.pop()


def test_large_single_write_is_truncated_and_reported_not_glued(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    n = 3 * 1024 * 1024
    with AgentHarness() as h:
        # One 3 MiB write() on the server side: more than 8 chunks x 16 KiB per syscall.
        out = subprocess.run([CURL, "-sS", f"http://127.0.0.1:{port}/bytes?n={n}&chunk={n}"], capture_output=True,
                             check=True)
        assert out.stdout == body_for(n)
        assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 2)
    s = [e for e in h.connections("close", pid=proc.pid, dst_port=port)]
    assert len(s) == 1
    rs = h.recorded[(s[0].conn_id, 0)]
    sent = bytes(rs.data[0])
    assert rs.gaps[0] > 0, "a truncated write must be reported as a gap"
    assert len(sent) + rs.gaps[0] == s[0].bytes_sent
    # What was captured is a true prefix of the header+body, not bytes glued across the hole.
    head_len = sent.index(b"\r\n\r\n") + 4
    captured_body = sent[head_len:]
    assert body_for(n).startswith(captured_body)
    assert h.agent.snapshot()["qtap_stream_gaps_total"] >= 1


def test_200_concurrent_connections(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    urls = [f"http://127.0.0.1:{port}/bytes?n={1000 + i * 37}&chunk=4096" for i in range(200)]
    with AgentHarness() as h:
        cmd = [CURL, "-sS", "--parallel", "--parallel-max", "200", "--parallel-immediate"]
        for u in urls:
            cmd += ["-o", "/dev/null", u]
        subprocess.run(cmd, check=True, timeout=120)
        assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 400, timeout=30)
    clients = h.connections("close", dst_port=port, direction="egress")
    servers = {e.src_port: e for e in h.connections("close", pid=proc.pid, dst_port=port)}
    assert len(clients) == 200 and len(servers) == 200
    seen_sizes = set()
    for c in clients:
        s = servers[c.src_port]
        rc, rs = h.recorded[(c.conn_id, 0)], h.recorded[(s.conn_id, 0)]
        assert bytes(rc.data[0]) == bytes(rs.data[1])
        assert bytes(rc.data[1]) == bytes(rs.data[0])
        req = bytes(rc.data[0])
        size = int(req.split(b"n=", 1)[1].split(b"&", 1)[0])
        assert bytes(rc.data[1]).endswith(body_for(size))
        seen_sizes.add(size)
    assert seen_sizes == {1000 + i * 37 for i in range(200)}
    snap = h.agent.snapshot()
    assert snap["qtap_source_dropped_records_total"] == 0


def test_connection_opened_before_agent_started(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    client = subprocess.Popen(
        [sys.executable, str(PEERS / "keepalive_client.py"), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline().strip() == "first done"
        with AgentHarness() as h:
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "second done"
            client.stdin.close()
            client.wait(10)
            assert h.wait_for(lambda: len(h.connections("close", pid=client.pid)) >= 1)
        c = h.connections("close", pid=client.pid)[0]
        opened = h.connections("open", pid=client.pid)
        assert opened and opened[0].midstream
        assert c.dst_port == port and c.direction == "egress"
        rec = h.recorded[(c.conn_id, 0)]
        assert bytes(rec.data[0]).startswith(b"GET /bytes?n=777&chunk=65536 HTTP/1.1\r\n")
        assert bytes(rec.data[1]).endswith(body_for(777))
        # The server side of the same old connection is seen too (accepted before the agent: ingress).
        s = [e for e in h.connections("close", pid=proc.pid) if e.src_port == c.src_port]
        assert len(s) == 1 and s[0].direction == "ingress"
    finally:
        client.kill()


def test_agent_ignores_its_own_traffic_and_its_far_end(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    with AgentHarness() as h:
        # This test process is the agent's process: its connection is the agent's own (like a sink's).
        with socket.create_connection(("127.0.0.1", port)) as s:
            own_port = s.getsockname()[1]
            s.sendall(b"GET /bytes?n=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
        # A connection by another process to the same server is seen, from both ends.
        subprocess.run([CURL, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/bytes?n=5"], check=True)
        assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 2)
    own = [e for e in h.events() if getattr(e, "pid", None) == os.getpid()]
    assert own == []
    # The server's end of the agent's own connection is not traced either (no feedback loop through a
    # local Kafka/MinIO/Pulse).
    far = [e for e in h.connections("open", pid=proc.pid) if e.src_port == own_port]
    assert far == []
    assert len(h.connections("close", pid=proc.pid, dst_port=port)) == 1
