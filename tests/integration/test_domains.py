"""A connection's domain on real traffic, with its source: the hosts file (and its reload), the
request's Host against another process's DNS answer, the same process's DNS answer, and SNI.
Both ends of each loopback connection are checked: they must agree."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PEERS, AgentHarness

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"
DIG = shutil.which("dig") or "/usr/bin/dig"
HOSTS = Path("/etc/hosts")


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def named_server(tmp_path: Path) -> Iterator[tuple[str, str, int, subprocess.Popen[bytes]]]:
    """An HTTP server on a loopback address of its own, and a unique name for that address (not yet in
    /etc/hosts: the test adds it while the agent runs, and the file is restored afterwards)."""
    addr = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    name = f"gt-{os.getpid()}-{random.randint(0, 10**6)}.hosts.test"
    port = _free_port(addr)
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "-b", addr, str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((addr, port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.05)
    saved = HOSTS.read_bytes()
    try:
        yield addr, name, port, proc
    finally:
        HOSTS.write_bytes(saved)
        proc.kill()
        proc.wait()


def _ends(h: AgentHarness, port: int, client_pid: int | None = None) -> tuple[list[tuple[str, str]], ...]:
    closes = h.connections("close", dst_port=port)
    egress = [(e.domain, e.domain_source) for e in closes if e.direction == "egress"
              and (client_pid is None or e.pid == client_pid)]
    ingress = [(e.domain, e.domain_source) for e in closes if e.direction == "ingress"]
    return egress, ingress


def test_hosts_file_names_reach_domain_and_a_change_is_picked_up(
        named_server: tuple[str, str, int, subprocess.Popen[bytes]]) -> None:
    addr, name, port, _ = named_server
    with AgentHarness(record=False) as h:
        # Added while the agent runs: the file is looked at again when it changes.
        HOSTS.write_bytes(HOSTS.read_bytes().rstrip(b"\n") + f"\n{addr} {name}\n".encode())
        time.sleep(1.2)  # the agent looks at a hosts file again at most once a second
        # No Host header (curl -H 'Host:'): only the hosts file names the address. glibc resolves the name
        # from the same file, so no DNS query is made.
        a = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-H", "Host:", f"http://{name}:{port}/"],
                           check=True, timeout=30)
        assert a.returncode == 0
        # With the Host header the request names itself.
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://{name}:{port}/"], check=True, timeout=30)
        assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 4), [
            (e.event, e.pid, e.direction, e.src_port, e.dst_ip, e.domain) for e in h.connections("open", dst_port=port)
            + h.connections("close", dst_port=port)]
    egress, ingress = _ends(h, port)
    assert sorted(egress) == sorted(ingress) == [(name, "host"), (name, "hosts")], (egress, ingress)


def _dns_addr() -> str:
    for addr in ("127.0.0.53", "127.0.0.54", "127.0.0.55"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 53))
            except OSError:
                continue
        return addr
    pytest.fail("no free loopback address for a DNS server on port 53: every candidate is taken")


@pytest.fixture
def dns_server() -> Iterator[str]:
    addr = _dns_addr()
    proc = subprocess.Popen([sys.executable, str(PEERS / "dns_server.py"), addr, "53"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        yield addr
    finally:
        proc.kill()
        proc.wait()


# A client that resolves a name itself (one UDP DNS query) and connects to the answer without a Host
# header: its own DNS answer is all that names the connection. Prints its pid.
_RESOLVE_AND_CONNECT = r"""
import os, socket, struct, sys
dns, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((dns, 53))  # as glibc's resolver does
u.send(q)
ans = u.recv(4096)
ip = socket.inet_ntoa(ans[-4:])
s = socket.create_connection((ip, port))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
while s.recv(65536):
    pass
print(os.getpid())
"""


def test_host_header_beats_another_process_dns_and_own_dns_names_a_connection(
        dns_server: str) -> None:
    """Issue 19: a DNS answer another process got for the address named the egress record over the
    request's own Host header, and the ingress record said something else."""
    from tests.integration.harness import start_http_server

    srv, port = start_http_server()  # on 127.0.0.1, the address every name resolves to
    other, own = f"other-{port}.dns.test", f"own-{port}.dns.test"
    try:
        with AgentHarness(record=False) as h:
            subprocess.run([DIG, "+short", f"@{dns_server}", other, "A"], check=True, capture_output=True,
                           timeout=30)
            assert h.wait_for(lambda: any(isinstance(e, dict) and e.get("type") == "dns_message"
                                          and e.get("qname") == other + "." and e.get("is_response")
                                          for e in h.events()))
            subprocess.run([CURL, "-sS", "-o", "/dev/null", "-H", "Host: api.mine.test",
                            f"http://127.0.0.1:{port}/bytes?n=10"], check=True, timeout=30)
            assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 2)
            first = _ends(h, port)
            out = subprocess.run([sys.executable, "-c", _RESOLVE_AND_CONNECT, dns_server, own, str(port)],
                                 check=True, capture_output=True, text=True, timeout=30)
            client = int(out.stdout.strip())
            assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 4)
    finally:
        srv.kill()
        srv.wait()
    assert first == ([("api.mine.test", "host")], [("api.mine.test", "host")])
    closes = h.connections("close", dst_port=port)
    (mine,) = [(e.domain, e.domain_source) for e in closes if e.pid == client]
    assert mine == (own, "dns")
    # The server did not resolve anything: the client's answer names its end, as a host-wide one.
    later = [e for e in closes if e.direction == "ingress" and e.domain_source != "host"]
    assert [(e.domain, e.domain_source) for e in later] == [(own, "dns_host")]


def test_sni_names_both_ends() -> None:
    from tests.integration.harness import start_http_server

    srv, port = start_http_server()
    try:
        with AgentHarness(record=False) as h:
            # curl's ClientHello to a plain-HTTP server: the handshake fails, the hello names the connection.
            subprocess.run([CURL, "-sk", "-o", "/dev/null", "--resolve", f"sni.domains.test:{port}:127.0.0.1",
                            f"https://sni.domains.test:{port}/"], timeout=30, check=False)
            assert h.wait_for(lambda: len(h.connections("close", dst_port=port)) >= 2)
    finally:
        srv.kill()
        srv.wait()
    assert _ends(h, port) == ([("sni.domains.test", "sni")], [("sni.domains.test", "sni")])


