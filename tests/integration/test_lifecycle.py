"""Socket lifecycles against the processes' own truth: each kernel-side mechanism of connection identity,
byte accounting and process attribution, with real peers (tests/integration/peers/lifecycle.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qtap_async.bpf import socket_path
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.transforms.conntrack import default_session_factory
from tests.integration.harness import PEERS, AgentHarness, dns_server

pytestmark = pytest.mark.bpf

PEER = [sys.executable, str(PEERS / "lifecycle.py")]
CURL = shutil.which("curl") or "/usr/bin/curl"


class Peer:
    """A peer process and the JSON lines it prints about itself."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*PEER, *args], stdout=subprocess.PIPE, text=True)

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise AssertionError(f"peer {self.proc.args} ended without saying anything")
        out: dict[str, Any] = json.loads(text)
        return out

    def finish(self, timeout: float = 30) -> None:
        self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _run(*args: str) -> dict[str, Any]:
    out = subprocess.run([*PEER, *args], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _curls(port: int, n: int) -> list[tuple[int, int]]:
    """n sequential curls, each in a fresh process whose pid the shell prints: [(pid, bytes of body)]."""
    out = []
    for i in range(n):
        r = subprocess.run(["sh", "-c", f'echo $$; exec {CURL} -s "http://127.0.0.1:{port}/bytes?n={100 + i}"'],
                           capture_output=True, check=True, timeout=30)
        pid_line, _, body = r.stdout.partition(b"\n")
        out.append((int(pid_line), len(body)))
    return out


def _conns(h: AgentHarness, event: str = "close") -> list[ConnectionEvent]:
    return [e for e in h.events() if isinstance(e, ConnectionEvent) and e.event == event]


def _txs(h: AgentHarness) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"]


def test_calls_after_tcp_close_make_no_phantom_and_later_connections_stay_their_own(http_server: int) -> None:
    with AgentHarness(record=False, session_factory=default_session_factory) as h:
        for _ in range(3):
            srv = Peer("halfclose-server")
            port = srv.line()["port"]
            client = _run("halfclose-client", str(port))
            server = srv.line()
            srv.finish()
            closed_port = Peer("halfclose-server")  # a port nothing will accept on once it exits
            dead = closed_port.line()["port"]
            closed_port.kill()
            refused = _run("refused", str(dead))
            truth = _curls(http_server, 6)
            pids, cpid = {p for p, _ in truth}, client["pid"]
            assert h.wait_for(lambda pids=pids: pids <= {t["pid"] for t in _txs(h)})
            assert h.wait_for(lambda cpid=cpid: any(c.pid == cpid for c in _conns(h)))
            mine = [c for c in _conns(h) if c.pid == client["pid"]]
            assert len(mine) == 1, mine
            c = mine[0]
            assert (c.src_port, c.dst_port, c.direction) == (client["lport"], port, "egress")
            assert (c.bytes_sent, c.bytes_received) == (client["sent"], client["received"]) == (5, server["sent"])
            assert not c.midstream
            assert [o for o in _conns(h, "open") if o.pid == refused["pid"] and o.midstream] == []
    for pid, body in truth:
        tx = [t for t in _txs(h) if t["pid"] == pid]
        assert len(tx) == 1 and tx[0]["exe"] == CURL and tx[0]["response_body_size"] == body, tx
    tcp = [c for c in _conns(h) if c.transport == "tcp"]
    assert not [c for c in tcp if c.src_port == 0 or c.dst_port == 0], "phantom connection without ports"
    opened = [c.conn_id for c in _conns(h, "open")]
    assert len(opened) == len(set(opened))
    snap = h.agent.snapshot()
    assert snap["qtap_connections_opened_total"] == snap["qtap_connections_closed_total"] + snap[
        "qtap_connections_open"]


def test_tcp_fast_open_client_is_a_connect_not_midstream(http_server: int) -> None:
    with AgentHarness() as h:
        got = _run("tfo", str(http_server))
        assert h.wait_for(lambda: any(c.pid == got["pid"] for c in _conns(h)))
    c = next(c for c in _conns(h) if c.pid == got["pid"])
    assert (c.direction, c.midstream, c.src_port) == ("egress", False, got["lport"])
    assert (c.bytes_sent, c.bytes_received) == (got["sent"], got["received"])
    assert bytes(h.recorded[(c.conn_id, 0)].data[0]).startswith(b"GET /tfo HTTP/1.0\r\n")


def test_fork_after_accept_and_exec_of_an_inheriting_child_are_attributed_to_who_does_the_io() -> None:
    with AgentHarness(record=False, session_factory=default_session_factory) as h:
        srv = Peer("fork-server")
        port = srv.line()["port"]
        out = subprocess.run([CURL, "-s", f"http://127.0.0.1:{port}/forked"], capture_output=True, check=True)
        assert out.stdout == b"hello"
        child = srv.line()["child"]
        srv.finish()
        # bash opens the connection, then exec's head, which reads the answer (same pid, new program).
        srv2 = Peer("fork-server")
        port2 = srv2.line()["port"]
        sh = subprocess.run(["bash", "-c", f'echo $$; exec 3<>/dev/tcp/127.0.0.1/{port2}; '
                             'printf "GET /exec HTTP/1.0\\r\\n\\r\\n" >&3; exec head -c 200 <&3'],
                            capture_output=True, check=True, timeout=30)
        bash_pid = int(sh.stdout.split(b"\n", 1)[0])
        srv2.finish()
        assert h.wait_for(lambda: any(c.pid == bash_pid for c in _conns(h)))
        assert h.wait_for(lambda: any(t["path"] == "/forked" and t["direction"] == "ingress" for t in _txs(h)))
    ingress = [t for t in _txs(h) if t["path"] == "/forked" and t["direction"] == "ingress"]
    assert [t["pid"] for t in ingress] == [child]
    accepted = [c for c in _conns(h) if c.direction == "ingress" and c.dst_port == port]
    assert len(accepted) == 1
    assert accepted[0].pid == srv.proc.pid
    assert accepted[0].owners is not None and [o.pid for o in accepted[0].owners] == [srv.proc.pid, child]
    egress = [c for c in _conns(h) if c.pid == bash_pid]
    assert len(egress) == 1 and egress[0].exe == os.path.realpath("/usr/bin/bash")
    owners = egress[0].owners
    assert owners is not None and [(o.pid, o.exe) for o in owners][-1] == (bash_pid, os.path.realpath("/usr/bin/head"))


@pytest.mark.parametrize("mode", ["sendfile-server", "splice-server"])
def test_sendfile_and_splice_count_bytes_and_report_a_gap_with_the_reason(mode: str, tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(200_000))
    with AgentHarness() as h:
        srv = Peer(mode, str(body))
        port = srv.line()["port"]
        out = subprocess.run([CURL, "-s", f"http://127.0.0.1:{port}/file"], capture_output=True, check=True)
        assert out.stdout == body.read_bytes()
        truth = srv.line()
        srv.finish()
        assert h.wait_for(lambda: any(c.pid == srv.proc.pid for c in _conns(h)))
    c = next(c for c in _conns(h) if c.pid == srv.proc.pid)
    assert c.bytes_sent == truth["head"] + truth["body"]
    gaps = [g for g in h.events() if isinstance(g, GapEvent) and g.conn_id == c.conn_id]
    reason = mode.split("-")[0]
    assert sum(g.bytes for g in gaps if g.reason == reason) == truth["body"]
    assert {g.stream for g in gaps} == {"send"}


def test_peeked_bytes_do_not_advance_the_stream_and_discarded_ones_are_a_gap() -> None:
    with AgentHarness(record=False, session_factory=default_session_factory) as h:
        srv = Peer("peek-server")
        port = srv.line()["port"]
        for path in ("/peek-one", "/discard"):
            out = subprocess.run([CURL, "-s", f"http://127.0.0.1:{port}{path}"], capture_output=True, check=True)
            assert out.stdout == b"hello"
        truth = srv.line()
        srv.finish()
        assert h.wait_for(lambda: len([c for c in _conns(h) if c.pid == srv.proc.pid]) == 2)
    first, second = sorted((c for c in _conns(h) if c.pid == srv.proc.pid), key=lambda c: c.conn_id)
    assert truth["peeked"] == 16 and first.bytes_received == truth["received"]
    (tx,) = [t for t in _txs(h) if t["pid"] == srv.proc.pid and t["conn_id"] == first.conn_id]
    assert (tx["path"], tx["status"]) == ("/peek-one", 200)
    assert not [e for e in h.events() if isinstance(e, dict) and e.get("type") == "parse_error"
                and e.get("conn_id") == first.conn_id]
    assert second.bytes_received == truth["discarded"] + truth["rest"]
    gaps = [g for g in h.events() if isinstance(g, GapEvent) and g.conn_id == second.conn_id]
    assert [(g.reason, g.bytes, g.stream) for g in gaps] == [("discarded", 5, "recv")]


def test_read_blocked_before_the_agent_attached_is_captured() -> None:
    srv = Peer("blocked-server")
    try:
        port = srv.line()["port"]
        client = subprocess.Popen([sys.executable, "-c", (
            "import socket,sys,time; c=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
            "time.sleep(float(sys.argv[2])); c.sendall(b'GET /blocked HTTP/1.0\\r\\n\\r\\n'); "
            "print(len(c.recv(100))); c.close()"), str(port), "20"], stdout=subprocess.PIPE, text=True)
        assert srv.line() == {"pid": srv.proc.pid, "accepted": True}
        with AgentHarness() as h:
            assert client.stdout is not None
            assert client.stdout.readline().strip() != ""  # the client sent after the attach, then read
            truth = srv.line()
            srv.finish()
            assert h.wait_for(lambda: any(c.pid == srv.proc.pid for c in _conns(h)))
        c = next(c for c in _conns(h) if c.pid == srv.proc.pid)
        assert (c.direction, c.dst_port, c.exe) == ("ingress", port, os.path.realpath(sys.executable)), c
        assert c.bytes_received == truth["received"] > 0
        assert bytes(h.recorded[(c.conn_id, 0)].data[1]) == b"GET /blocked HTTP/1.0\r\n\r\n"
        # The syscall path needs the blocked read parked at attach; the sock path reads the call's registers
        # when the bytes arrive, so it parks no data call at all.
        parked = h.agent.snapshot()["qtap_inflight_at_attach_parked_total"]
        assert h.agent.capture is not None
        if h.agent.capture.socket_path == socket_path.SOCK:
            assert parked == 0
        else:
            assert parked >= 1
    finally:
        srv.kill()


def test_short_lived_processes_keep_user_cgroup_and_exe(http_server: int) -> None:
    with AgentHarness() as h:
        truth = _curls(http_server, 15)
        assert h.wait_for(lambda: {p for p, _ in truth} <= {c.pid for c in _conns(h)})
    for pid, _ in truth:
        (c,) = [c for c in _conns(h) if c.pid == pid]
        assert (c.exe, c.user, c.uid) == (CURL, "root", 0), c
        assert c.cgroup != "", c


def test_glibc_resolver_queries_sent_with_sendmmsg_are_seen(tmp_path: Path) -> None:
    with dns_server("127.0.0.55", system_resolver=True), \
            AgentHarness(record=False, session_factory=default_session_factory) as h:
        # ahosts asks for A and AAAA at once: glibc sends both queries with one sendmmsg.
        got = subprocess.run(["getent", "ahosts", "mmsg.test"], capture_output=True, text=True, timeout=30)
        assert "127.0.0.1" in got.stdout
        assert h.wait_for(lambda: len(_dns_queries(h, "getent")) >= 2)
    queries = _dns_queries(h, "getent")
    assert {(q["qname"], q["qtype"]) for q in queries} >= {("mmsg.test.", "A"), ("mmsg.test.", "AAAA")}


def _dns_queries(h: AgentHarness, comm: str) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "dns_message"
            and not e.get("is_response") and e.get("comm") == comm]


def test_io_uring_socket_is_detected_and_its_bytes_counted(http_server: int, tmp_path: Path) -> None:
    exe = tmp_path / "uring_client"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(PEERS / "c" / "uring_client.c"), "-luring"], check=True)
    with AgentHarness() as h:
        out = subprocess.run([str(exe), str(http_server)], capture_output=True, text=True, check=True, timeout=30)
        f = out.stdout.split()
        pid, lport, sent, received = int(f[1]), int(f[3]), int(f[5]), int(f[7])
        assert h.wait_for(lambda: any(c.pid == pid for c in _conns(h)))
    (c,) = [c for c in _conns(h) if c.pid == pid]
    assert (c.src_port, c.io_uring, c.bytes_sent, c.bytes_received) == (lport, True, sent, received)
    gaps = [g for g in h.events() if isinstance(g, GapEvent) and g.conn_id == c.conn_id]
    assert {g.reason for g in gaps} == {"io_uring"}
    assert sum(g.bytes for g in gaps) == sent + received
    assert h.agent.snapshot()["qtap_kernel_io_uring_bytes_total"] >= sent + received
