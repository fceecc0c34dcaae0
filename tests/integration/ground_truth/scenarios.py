"""Scenario drivers shared by the per-family tests, the interleaved matrix and the soak benchmark.

Each driver starts its real peers against the running agent (`gt.h`), drives one lifecycle, and returns
`Scenario`: the expected records built from the peers' own observations, and the pids/ports it owns (every
captured record touching them must be claimed by an expectation).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.ground_truth.env import CURL, GT, PYTHON, Server, python_for
from tests.integration.ground_truth.truth import ExpConn, Pred, Proc, exe_of
from tests.integration.harness import free_port

NOBODY = 65534


def within(lo: int, hi: int) -> Pred:
    return Pred(f"{lo}..{hi}", lambda v: isinstance(v, int) and lo <= v <= hi)


@dataclass
class Scenario:
    name: str
    expected: list[ExpConn] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    after: list[Callable[[GT], None]] = field(default_factory=list)  # extra checks (gaps, DNS, ...)
    cleanup: list[Callable[[], None]] = field(default_factory=list)  # after the checks, pass or fail

    def add(self, other: Scenario) -> None:
        self.expected += other.expected
        self.pids |= other.pids
        self.ports |= other.ports
        self.after += other.after
        self.cleanup += other.cleanup


def python_client(gt: GT, name: str, mode: str, *args: str, server_opts: tuple[str, ...] = (),
                  server: Server | None = None, host: str = "127.0.0.1", uid: int | None = None,
                  domain: str | None = None, **pair_kw: Any) -> Scenario:
    """gt_client.py MODE against a gt_server.py: both ends counted by the peers themselves."""
    s = server or gt.server(*server_opts)
    pid, recs = gt.client(host, s.port, mode, *args, uid=uid)
    sc = Scenario(name, pids={pid, s.pid, *s.workers}, ports={s.port})
    for r in recs:
        rec = s.take(r["local"][1])
        server_pid = rec["pid"] if s.workers else s.pid
        dom = domain if domain is not None else (host if host != "::" else "127.0.0.1")
        sc.expected += gt.pair(name, rec, Proc(pid, python_for(uid), uid or 0), Proc(server_pid, PYTHON), client_rec=r,
                               domain=dom, **pair_kw)
    return sc


# -- happy paths (issue 19, top) --------------------------------------------------------------------
def keepalive(gt: GT) -> Scenario:
    return python_client(gt, "keepalive", "get", "/k1?n=10", "/k2?n=70000", "/k3?n=0&status=404")


def pipelining(gt: GT) -> Scenario:
    return python_client(gt, "pipelining", "pipeline", "/p1?n=10", "/p2?n=3000", "/p3?n=5", "/p4?n=1")


def rst(gt: GT) -> Scenario:
    return python_client(gt, "rst", "rst", "/rst?n=500")


def dup2(gt: GT) -> Scenario:
    return python_client(gt, "dup2", "dup", "/dup?n=300")


def writev500(gt: GT) -> Scenario:
    return python_client(gt, "writev500", "writev", "500", "/writev?n=20")


def ipv6(gt: GT) -> Scenario:
    return python_client(gt, "ipv6", "get", "/v6a?n=10", "/v6b?n=2000", server_opts=("--bind", "::1"), host="::1")


def websocket(gt: GT) -> Scenario:
    # After the 101 the bytes are WebSocket frames: counted, no further HTTP transactions.
    return python_client(gt, "websocket", "ws", protocol=None)


def prefork(gt: GT) -> Scenario:
    s = gt.server("--mode", "prefork:3")
    sc = Scenario("prefork", pids={s.pid, *s.workers}, ports={s.port})
    for i in range(6):
        sc.add(python_client(gt, "prefork", "get", f"/pf{i}?n={100 + i}", server=s))
    return sc


def curl_plain(gt: GT, name: str, s: Server, path: str, uid: int | None = None) -> Scenario:
    pid, port = gt.curl(f"http://127.0.0.1:{s.port}{path}", uid=uid)
    rec = s.take(port)
    sc = Scenario(name, pids={pid, s.pid}, ports={s.port})
    sc.expected += gt.pair(name, rec, Proc(pid, CURL, uid or 0), Proc(s.pid, PYTHON), domain="127.0.0.1")
    return sc


# -- issue 19 item 1: phantoms ---------------------------------------------------------------------
def phantom_tls_alternating(gt: GT, rounds: int = 12) -> Scenario:
    """A Python ssl server answering `Connection: close`, sequential `curl -sk https://localhost` alternated with
    plain-HTTP curls (the issue's reproduction)."""
    assert gt.cert is not None
    tls = gt.server("--tls-socket", *gt.cert, "--close")
    plain = gt.server()
    sc = Scenario("phantom_tls", pids={tls.pid, plain.pid}, ports={tls.port, plain.port})
    for i in range(rounds):
        pid, port = gt.curl(f"https://localhost:{tls.port}/x{i}?n={50 + i}", uid=NOBODY if i % 3 == 2 else None)
        rec = tls.take(port)
        client = Proc(pid, CURL, NOBODY if i % 3 == 2 else 0)
        exp = gt.pair("phantom_tls", rec, client, Proc(tls.pid, PYTHON), tls=True, domain="localhost",
                      domain_source="sni", host="localhost")
        # curl's close_notify may reach the server's socket after its close (it is answered with RST):
        # the client sent the server's count plus at most that alert.
        srv_rx = rec["rx"]
        exp[0].bytes_sent = within(srv_rx, srv_rx + 64)
        sc.expected += exp
        sc.pids.add(pid)
        sc.add(curl_plain(gt, "phantom_plain", plain, f"/y{i}?n={10 + i}", uid=NOBODY if i % 2 else None))
    return sc


def halfclose_then_reuse(gt: GT) -> Scenario:
    """A recv after the peer closed a half-closed connection, then connections that may reuse its memory."""
    s = gt.server()
    sc = python_client(gt, "halfclose", "halfclose", "/hc?n=77", server=s)
    for i in range(4):
        sc.add(python_client(gt, "after_halfclose", "get", f"/ahc{i}?n={i}", server=s, uid=NOBODY if i % 2 else None))
    return sc


def refused_then_reuse(gt: GT) -> Scenario:
    """A refused non-blocking connect (and a send on it), then real connections right after."""
    closed = free_port()
    pid, recs = gt.client("127.0.0.1", closed, "refused")
    assert recs and recs[0]["so_error"] == 111, recs
    sc = Scenario("refused", pids={pid}, ports={closed})
    s = gt.server()
    for i in range(4):
        sc.add(python_client(gt, "after_refused", "get", f"/ar{i}?n={5 + i}", server=s))
    return sc


# -- item 4: the process doing the I/O -------------------------------------------------------------
def served_elsewhere_one(gt: GT, s: Server, name: str, i: int) -> Scenario:
    """One connection to a server whose I/O is done by another process than the acceptor."""
    pid, recs = gt.client("127.0.0.1", s.port, "get", f"/{name}{i}a?n={10 + i}", f"/{name}{i}b?n=999")
    rec = s.take(recs[0]["local"][1])
    child = Proc(rec["pid"], PYTHON)
    acceptor = Proc(s.pid, PYTHON)
    sc = Scenario(name, pids={pid, child.pid, s.pid}, ports={s.port})
    sc.expected += gt.pair(name, rec, Proc(pid, PYTHON), acceptor, client_rec=recs[0], domain="127.0.0.1",
                           server_owners=[(s.pid, PYTHON), (child.pid, PYTHON)], tx_server=child)
    return sc


def _served_elsewhere(gt: GT, name: str, mode: str, n: int = 3) -> Scenario:
    s = gt.server("--mode", mode)
    sc = Scenario(name, pids={s.pid, *s.workers}, ports={s.port})
    for i in range(n):
        sc.add(served_elsewhere_one(gt, s, name, i))
    return sc


def fork_after_accept(gt: GT) -> Scenario:
    return _served_elsewhere(gt, "fork", "fork")


def forking_mixin(gt: GT) -> Scenario:
    return _served_elsewhere(gt, "forkingmixin", "forkingmixin")


def scm_rights(gt: GT) -> Scenario:
    return _served_elsewhere(gt, "scm", "scm")


def exec_child(gt: GT) -> Scenario:
    return _served_elsewhere(gt, "exec", "exec")


def bash_exec_head(gt: GT) -> Scenario:
    """`bash -c 'exec 3<>/dev/tcp/...; printf ... >&3; exec head <&3'`: bash connects and writes, head reads."""
    s = gt.server("--close")
    bash, head = exe_of("bash"), exe_of("head")
    req = f"GET /bash?n=64 HTTP/1.1\\r\\nHost: 127.0.0.1:{s.port}\\r\\n\\r\\n"
    script = f"exec 3<>/dev/tcp/127.0.0.1/{s.port}; printf \"{req}\" >&3; exec {head} -c 100000 <&3 >/dev/null"
    pid, _ = gt.sh(f"{bash} -c '{script}'")
    rec = s.records(1)[0]
    exp = gt.pair("bash_exec_head", rec, Proc(pid, bash), Proc(s.pid, PYTHON), domain="127.0.0.1")
    exp[0].txs[0].exe = head  # the response was read by head, after the exec
    exp[0].owners = Pred(f"absent or [({pid}, bash), ({pid}, head)]",
                         lambda v: v == "<absent>" or [tuple(x) for x in v] == [(pid, bash), (pid, head)])
    return Scenario("bash_exec_head", exp, {pid, s.pid}, {s.port})


def short_lived(gt: GT, n: int = 10) -> Scenario:
    """Sequential curls that exit right after their connection, as root and as nobody."""
    s = gt.server()
    sc = Scenario("short_lived", pids={s.pid}, ports={s.port})
    for i in range(n):
        sc.add(curl_plain(gt, "short_lived", s, f"/sl{i}?n={i}", uid=NOBODY if i % 2 else None))
    return sc


# -- item 9 (small) ----------------------------------------------------------------------------------
def dual_stack(gt: GT) -> Scenario:
    """A server on :: (IPV6_V6ONLY=0) reached over IPv4: family ipv4 with IPv4 addresses on both ends."""
    return python_client(gt, "dual_stack", "get", "/ds?n=10", server_opts=("--bind", "::"), host="127.0.0.1")


def tcp_fast_open(gt: GT) -> Scenario:
    """sendto(MSG_FASTOPEN) without connect(): a new connection, not midstream."""
    return python_client(gt, "tfo", "tfo", "/tfo?n=33")


QUICK: dict[str, Callable[[GT], Scenario]] = {
    "keepalive": keepalive, "pipelining": pipelining, "rst": rst, "dup2": dup2, "writev500": writev500,
    "ipv6": ipv6, "websocket": websocket, "prefork": prefork, "halfclose": halfclose_then_reuse,
    "refused": refused_then_reuse, "fork": fork_after_accept, "forkingmixin": forking_mixin, "scm": scm_rights,
    "exec": exec_child, "bash_exec_head": bash_exec_head, "short_lived": short_lived, "dual_stack": dual_stack,
    "tfo": tcp_fast_open, "phantom_tls": lambda gt: phantom_tls_alternating(gt, 4),
}



# -- item 3: syscalls that move bytes -----------------------------------------------------------------
def _gaps(gt: GT, direction: str, ports: tuple[int, int], reason: str) -> int:
    """Bytes of gap events with `reason` on the latest connection (direction, src_port, dst_port) captured."""
    from tests.integration.ground_truth.truth import Captured

    cap = Captured(gt.events())
    mine = [c for c in cap.conns.values() if c.closes and c.key()[0] == direction and (c.key()[2], c.key()[4]) == ports]
    return sum(g.get("bytes", 0) for g in mine[-1].gaps if g.get("reason") == reason) if mine else 0


def sendfile_body(gt: GT) -> Scenario:
    """The server sends its bodies with sendfile(2): bytes counted, and each reported as a `sendfile` gap."""
    sc = python_client(gt, "sendfile", "get", "/sf1?n=200000", "/sf2?n=5000", server_opts=("--body", "sendfile"))
    cport, sport = sc.expected[0].src[1], sc.expected[0].dst[1]

    def gaps(g: GT) -> None:
        got = _gaps(g, "ingress", (cport, sport), "sendfile")
        assert got == 205000, f"sendfile gap bytes on the server's record: {got}, truth 205000"
    sc.after.append(gaps)
    return sc


def splice_both_ways(gt: GT) -> Scenario:
    """splice(2) pipe->socket for the request and socket->pipe for the response (client), and the server's
    body through splice too: every byte counted; what is not captured is reported as a `splice` gap."""
    s = gt.server("--body", "splice", "--close")
    pid, recs = gt.client("127.0.0.1", s.port, "splice", "/splice?n=150000")
    rec = s.take(recs[0]["local"][1])
    exp = gt.pair("splice", rec, Proc(pid, PYTHON), Proc(s.pid, PYTHON), client_rec=recs[0], domain="127.0.0.1")
    sc = Scenario("splice", exp, {pid, s.pid}, {s.port})
    cport, sport = exp[0].src[1], exp[0].dst[1]
    # The client's whole stream went through splice: counted, its payload a gap (README), so no transaction
    # and no protocol on its end. The server spliced only its bodies: its heads are parsed.
    c = exp[0]
    c.txs, c.domain, c.domain_source = [], "", None
    c.protocol = None
    c.extra["protocol"] = Pred("'' or unknown (nothing parsed)", lambda v: v in ("", "unknown"))

    def gaps(g: GT) -> None:
        for direction, total in (("egress", recs[0]["rx"] + recs[0]["tx"]), ("ingress", 150000)):
            got = _gaps(g, direction, (cport, sport), "splice")
            assert got == total, f"{direction}: splice gap bytes {got}, truth {total}"
    sc.after.append(gaps)
    return sc


def io_uring_client(gt: GT, binary: str) -> Scenario:
    """A client whose data moves only through io_uring: bytes counted, `io_uring: true`, gaps reason io_uring."""
    s = gt.server("--close")
    pid, lines = gt.sh(f"{binary} 127.0.0.1 {s.port} '/uring?n=3000'")
    import json

    me = json.loads(lines[-1])
    rec = s.take(me["local_port"])
    exp = gt.pair("io_uring", rec, Proc(pid, exe_of(binary)), Proc(s.pid, PYTHON), domain="127.0.0.1")
    assert (me["sent"], me["received"]) == (rec["rx"], rec["tx"]), (me, rec)
    c = exp[0]
    c.extra["io_uring"] = True
    c.txs = []  # io_uring payload is not captured: no transaction on the client's end, gaps instead
    c.protocol = None
    c.domain, c.domain_source = "", None

    def gaps(g: GT) -> None:
        from tests.integration.ground_truth.truth import Captured

        cap = Captured(g.events())
        mine = [x for x in cap.conns.values() if x.closes and x.key()[0] == "egress"
                and (x.key()[2], x.key()[4]) == (c.src[1], c.dst[1])][-1:]
        assert len(mine) == 1, "no record of the io_uring client's connection"
        io = mine[0].last().get("io_uring")
        gap = sum(x.get("bytes", 0) for x in mine[0].gaps if x.get("reason") == "io_uring")
        assert io is True and gap == me["sent"] + me["received"], (
            f"io_uring={io!r}, io_uring gap bytes {gap}, truth {me['sent'] + me['received']}")
    sc = Scenario("io_uring", exp, {pid, s.pid}, {s.port})
    sc.after.append(gaps)
    return sc


# -- nginx: access log vs capture (happy paths at rate, and a burst) -----------------------------------
NGINX = "/usr/sbin/nginx"


class Nginx:
    """nginx with pre-forked workers running as nobody; its access log is the truth of every request."""

    FMT = '$pid $remote_port $connection $request_method "$request_uri" $status $bytes_sent $request_length'

    def __init__(self, tmp: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.dir = tmp / "nginx"
        self.dir.mkdir(exist_ok=True)
        self.dir.chmod(0o755)
        d = self.dir
        conf = f"""
user nobody nogroup;
worker_processes {workers};
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  log_format gt '{self.FMT}';
  access_log {d}/access.log gt;
  keepalive_requests 1000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ default_type text/plain; return 200 "ground truth\\n"; }}
  }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen([NGINX, "-c", str(d / "nginx.conf"), "-p", str(d), "-g", "daemon off;"],
                                     stderr=subprocess.PIPE)
        from tests.integration.ground_truth.env import wait_listen

        wait_listen(self.port)
        self.pid = self.proc.pid

    def log(self) -> list[list[str]]:
        import shlex

        p = self.dir / "access.log"
        return [shlex.split(x) for x in p.read_text().splitlines()] if p.exists() else []

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def nginx_truth(gt: GT, name: str, ng: Nginx, pid: int, recs: list[dict[str, Any]], client_uid: int = 0) -> Scenario:
    """Per connection (keyed by the client's port): the client's own counts for its end, the access log's
    bytes_sent/request_length sums for nginx's end; one transaction per logged request on each end."""
    from tests.integration.ground_truth.truth import ExpTx

    want = sum(len(r["paths"]) for r in recs)
    import time

    deadline = time.monotonic() + 30
    while len(ng.log()) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    by_port: dict[int, list[list[str]]] = {}
    for row in ng.log():
        by_port.setdefault(int(row[1]), []).append(row)
    sc = Scenario(name, pids={pid, ng.pid}, ports={ng.port})
    nginx_exe = exe_of(NGINX)
    client = Proc(pid, python_for(client_uid or None), client_uid)
    for r in recs:
        rows = by_port.get(r["local"][1], [])
        assert [row[4] for row in rows] == r["paths"], f"access log vs client for port {r['local'][1]}: {rows}"
        worker = Proc(int(rows[0][0]), nginx_exe, 65534)
        sc.pids.add(worker.pid)
        tx = sum(int(row[6]) for row in rows)
        rx = sum(int(row[7]) for row in rows)
        assert (r["tx"], r["rx"]) == (rx, tx), f"client counts {r} vs access log {rx}/{tx}"
        src = (r["local"][0], r["local"][1])
        dst = ("127.0.0.1", ng.port)

        def txs(p: Proc, rows: list[list[str]] = rows) -> list[ExpTx]:
            return [ExpTx(p.pid, p.exe, row[3], row[4], int(row[5]), host="127.0.0.1", request_body_size=0,
                          response_body_size=13) for row in rows]

        sc.expected.append(ExpConn(name, "egress", client, src, dst, r["tx"], r["rx"], domain="127.0.0.1",
                                   domain_source="host", txs=txs(client)))
        sc.expected.append(ExpConn(name, "ingress", worker, src, dst, tx, rx, domain="127.0.0.1",
                                   domain_source="host", txs=txs(worker)))
    return sc


def nginx_rate(gt: GT, ng: Nginx, total: int = 2000, rate: int = 400, conns: int = 20) -> Scenario:
    import uuid

    prefix = f"/rate-{uuid.uuid4().hex[:8]}/"
    pid, recs = gt.client("127.0.0.1", ng.port, "load", str(conns), str(total), str(rate), prefix)
    assert sum(len(r["paths"]) for r in recs) == total
    return nginx_truth(gt, "nginx_rate", ng, pid, recs)


def nginx_burst(gt: GT, ng: Nginx, n: int = 1000) -> Scenario:
    import uuid

    pid, recs = gt.client("127.0.0.1", ng.port, "burst", str(n), f"/burst-{uuid.uuid4().hex[:8]}/")
    assert len(recs) == n
    return nginx_truth(gt, "nginx_burst", ng, pid, recs)


# -- item 8: HTTP framing ------------------------------------------------------------------------------
def big_head(gt: GT) -> Scenario:
    """A 70 KiB request head (over the 64 KiB limit), then a normal request on the same connection: the first
    reported incomplete with the limit named, the second parsed after resynchronising."""
    sc = python_client(gt, "big_head", "bighead", "70000", "/big?n=5", "/after?n=7")
    for e in sc.expected:
        t = e.txs[0]
        t.extra.update(incomplete=True, reason=Pred("names the 64 KiB limit",
                                                    lambda v: "64" in str(v) or "limit" in str(v)))
    return sc


def expect_417(gt: GT, body: Path) -> Scenario:
    """`Expect: 100-continue` answered 417 without the body: reported on both ends."""
    s = gt.server()
    pid, port = gt.curl(f"http://127.0.0.1:{s.port}/reject?n=0", "-H", "Expect: 100-continue",
                        "--data-binary", f"@{body}")
    recs = s.records(1)
    sc = Scenario("expect_417", pids={pid, s.pid}, ports={s.port})
    for rec in recs:
        sc.expected += gt.pair("expect_417", rec, Proc(pid, CURL), Proc(s.pid, PYTHON), domain="127.0.0.1")
    for e in sc.expected:
        for t in e.txs:
            t.request_body_size = 0  # the body was never sent
    assert any(r["peer"][1] == port for r in recs)
    return sc


def non_utf8_path(gt: GT) -> Scenario:
    """Path bytes that are not UTF-8 come out percent-encoded (the raw bytes stay recoverable)."""
    s = gt.server()
    head = b"GET /caf\xe9/\xff?n=3 HTTP/1.1\r\nHost: 127.0.0.1:" + str(s.port).encode() + b"\r\n\r\n"
    sc = python_client(gt, "non_utf8_path", "raw", head.hex(), server=s)
    for e in sc.expected:
        for t in e.txs:
            t.path = Pred("/caf%E9/%FF?n=3 (percent-encoded, any hex case)",
                          lambda v: isinstance(v, str) and v.upper() == "/CAF%E9/%FF?N=3")
    return sc


def h2_push(gt: GT, tmp: Path) -> Scenario:
    """nghttpd pushes /style.css with /index.html: the pushed stream is marked pushed, with its parent stream."""
    from tests.integration.ground_truth.truth import ExpTx

    docs = tmp / "h2docs"
    docs.mkdir(exist_ok=True)
    (docs / "index.html").write_bytes(b"<html>ground truth</html>\n")
    (docs / "style.css").write_bytes(b"body { color: black }\n" * 4)
    port = free_port()
    srv = subprocess.Popen([exe_of("nghttpd"), "--no-tls", "-d", str(docs), "-p/index.html=/style.css",
                            "-a", "127.0.0.1", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from tests.integration.ground_truth.env import wait_listen

        wait_listen(port)
        pid, lines = gt.sh(f"{exe_of('nghttp')} -n -v http://127.0.0.1:{port}/index.html")
        out = "\n".join(lines)
        assert "PUSH_PROMISE" in out, out[-2000:]
        import re

        # nghttp's own frame log: the client port is not printed, so the agent's two ends must agree with each
        # other and with what nghttp received (bytes are checked end against end after the capture).
        sizes = [int(x) for x in re.findall(r"recv DATA frame <length=(\d+)", out)]
        assert sum(sizes) == 26 + 88, sizes
        # nghttp opens idle priority streams first: the request's stream id is in its own frame log.
        req_stream = int(re.findall(r"send HEADERS frame <[^>]*stream_id=(\d+)>", out)[0])
        pushed_stream = int(re.findall(r"promised_stream_id=(\d+)", out)[0])
        import time

        from tests.integration.ground_truth.truth import Captured

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cap = Captured(gt.events())
            mine = [c for c in cap.conns.values() if c.closes and c.key()[4] == port]
            if {c.key()[0] for c in mine} >= {"egress", "ingress"}:
                break
            time.sleep(0.1)
        eg = [c for c in mine if c.key()[0] == "egress"]
        assert eg, "no egress record of nghttp's connection"
        src = (eg[0].key()[1], eg[0].key()[2])
        ing = [c for c in mine if c.key()[0] == "ingress" and c.key()[2] == src[1]]
        nb = (eg[0].last().get("bytes_sent", -1), eg[0].last().get("bytes_received", -1))
        ib = (ing[0].last().get("bytes_received", -2), ing[0].last().get("bytes_sent", -2)) if ing else (-2, -2)
        assert nb == ib, f"the two ends disagree on bytes: nghttp end {nb}, nghttpd end {ib}"
    finally:
        srv.terminate()
        srv.wait(10)
    client, server = Proc(pid, exe_of("nghttp")), Proc(srv.pid, exe_of("nghttpd"))
    sc = Scenario("h2_push", pids={pid, srv.pid}, ports={port})
    for d, p in (("egress", client), ("ingress", server)):
        txs = [ExpTx(p.pid, p.exe, "GET", "/index.html", 200, host="127.0.0.1", protocol="h2c",
                     response_body_size=26, extra={"stream_id": req_stream}),
               ExpTx(p.pid, p.exe, "GET", "/style.css", 200, host="127.0.0.1", protocol="h2c",
                     response_body_size=88,
                     extra={"pushed": True, "promised_by": req_stream, "stream_id": pushed_stream})]
        sent, recv = nb if d == "egress" else (nb[1], nb[0])
        sc.expected.append(ExpConn("h2_push", d, p, src, ("127.0.0.1", port), sent, recv, protocol="http2",
                                   domain="127.0.0.1", domain_source="host", txs=txs))
    return sc


# -- item 7: domains -------------------------------------------------------------------------------------
class HostsEntry:
    """A unique name in /etc/hosts for the scenario, removed afterwards (only that line)."""

    def __init__(self, ip: str) -> None:
        import uuid

        self.name = f"gt-{uuid.uuid4().hex[:10]}.test"
        self.line = f"{ip} {self.name}  # qtap ground-truth test\n"
        with open("/etc/hosts", "a") as f:
            f.write(self.line)
        # The agent looks at a hosts file again at most once per HOSTS_CHECK_INTERVAL_S: a name added this
        # instant may not be seen for a process already gone (its own /proc/PID/root view is no longer there).
        import time

        from qtap_async.context.domains import HOSTS_CHECK_INTERVAL_S

        time.sleep(HOSTS_CHECK_INTERVAL_S + 0.2)

    def remove(self) -> None:
        with open("/etc/hosts") as f:
            lines = f.readlines()
        with open("/etc/hosts", "w") as f:
            f.writelines(x for x in lines if x != self.line)


def domain_from_hosts(gt: GT) -> Scenario:
    """A name from /etc/hosts and no Host header: the domain comes from the hosts file."""
    import random

    ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    s = gt.server("--bind", ip)
    entry = HostsEntry(ip)
    try:
        pid, port = gt.curl(f"http://{entry.name}:{s.port}/hosts?n=4", "-H", "Host:")
    except BaseException:
        entry.remove()
        raise
    rec = s.take(port)
    # The entry stays until the checks are done: a hosts file is read when the agent needs it, and real
    # entries do not vanish a millisecond after use.
    sc = Scenario("domain_hosts", pids={pid, s.pid}, ports={s.port}, cleanup=[entry.remove])
    sc.expected += gt.pair("domain_hosts", rec, Proc(pid, CURL), Proc(s.pid, PYTHON), domain=entry.name,
                           domain_source="hosts", host=entry.name)
    return sc


def domain_sni_over_host(gt: GT) -> Scenario:
    """SNI beats the Host header for the connection's domain; the transaction keeps its own Host."""
    assert gt.cert is not None
    s = gt.server("--tls", *gt.cert)
    pid, port = gt.curl(f"https://localhost:{s.port}/sni?n=9", "-H", "Host: other-name.test")
    rec = s.take(port)
    sc = Scenario("domain_sni", pids={pid, s.pid}, ports={s.port})
    sc.expected += gt.pair("domain_sni", rec, Proc(pid, CURL), Proc(s.pid, PYTHON), tls=True, domain="localhost",
                           domain_source="sni", host="other-name.test")
    return sc


def domain_host_over_other_dns(gt: GT, dns_addr: str, mmsg: str) -> Scenario:
    """A DNS answer seen in another process (name -> 127.0.0.1) must not override the request's own Host
    header, on either end."""
    import json
    import uuid

    other = f"gt-other-{uuid.uuid4().hex[:8]}.test"
    _, lines = gt.sh(f"{mmsg} {dns_addr} 53 {other}")
    assert json.loads(lines[-1])["answers"] == 2
    s = gt.server()
    pid, port = gt.curl(f"http://127.0.0.1:{s.port}/hosthdr?n=8", "-H", "Host: own-host.test")
    rec = s.take(port)
    sc = Scenario("domain_host", pids={pid, s.pid}, ports={s.port})
    sc.expected += gt.pair("domain_host", rec, Proc(pid, CURL), Proc(s.pid, PYTHON), domain="own-host.test",
                           domain_source="host")
    return sc


# -- item 3: DNS through sendmmsg/recvmmsg -------------------------------------------------------------
class Dns:
    """gt_dns.py on port 53 of a random 127/8 address: glibc's resolver only speaks to port 53, and an
    address of the scenario's own keeps the fixed port from meeting anything else on the host."""

    def __init__(self, tmp: Path, blocked: bool = False) -> None:
        import random
        import sys

        from tests.integration.ground_truth.env import PEERS

        self.log = tmp / f"dns{random.getrandbits(32)}.log"
        for _ in range(20):
            self.addr = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
            self.proc = subprocess.Popen([sys.executable, str(PEERS / "gt_dns.py"), self.addr, "53", str(self.log)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() == "READY":
                break
            self.proc.wait()
        else:
            raise RuntimeError("no free 127/8 address for the test DNS server")
        self.pid = self.proc.pid

    def records(self, n: int) -> list[dict[str, Any]]:
        import json
        import time

        deadline = time.monotonic() + 20
        while True:
            recs = [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []
            if len(recs) >= n or time.monotonic() > deadline:
                assert len(recs) >= n, f"DNS server logged {len(recs)} of {n} datagrams"
                return recs
            time.sleep(0.05)

    def records_for(self, name: str, n: int) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + 20
        while True:
            recs = [r for r in self.records(0) if r["qname"] == name + "."]
            if len(recs) >= n or time.monotonic() > deadline:
                assert len(recs) >= n, f"DNS server logged {len(recs)} of {n} queries for {name}"
                return recs
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _dns_messages(gt: GT, pid: int) -> list[dict[str, Any]]:
    from tests.integration.ground_truth.truth import Captured

    return [e for e in Captured(gt.events()).other if e.get("type") == "dns_message" and e.get("pid") == pid]


def _udp_expect(name: str, proc: Proc, dns: Dns, recs: list[dict[str, Any]], local_port: int) -> list[ExpConn]:
    mine = [r for r in recs if r["peer"][1] == local_port]
    sent, recv = sum(r["rx"] for r in mine), sum(r["tx"] for r in mine)
    return [ExpConn(name, "egress", proc, ("127.0.0.1", local_port), (dns.addr, 53), sent, recv, transport="udp",
                    protocol="dns", extra={"reason": Pred("closed", lambda v: v == "closed")})]


def dns_mmsg(gt: GT, dns: Dns, binary: str) -> Scenario:
    """sendmmsg of an A and an AAAA query, recvmmsg of both answers: 4 dns_message events, bytes counted."""
    import json
    import uuid

    name = f"gt-mmsg-{uuid.uuid4().hex[:8]}.test"
    pid, lines = gt.sh(f"{binary} {dns.addr} 53 {name}")
    me = json.loads(lines[-1])
    recs = dns.records_for(name, 2)
    assert (me["sent"], me["received"]) == (sum(r["rx"] for r in recs), sum(r["tx"] for r in recs)), (me, recs)
    sc = Scenario("dns_mmsg", _udp_expect("dns_mmsg", Proc(pid, exe_of(binary)), dns, recs, me["local_port"]),
                  {pid}, set())
    sc.after.append(lambda g: _check_dns(g, pid, name, 4))
    return sc


def _check_dns(gt: GT, pid: int, name: str, n: int) -> None:
    import time

    deadline = time.monotonic() + 10
    msgs = _dns_messages(gt, pid)
    while len(msgs) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        msgs = _dns_messages(gt, pid)
    names = sorted(str(m.get("questions") or m.get("name") or m) for m in msgs)
    assert len(msgs) == n and all(name in x for x in names), (
        f"pid {pid}: {len(msgs)} dns_message events for {name}, truth {n}: {names[:6]}")


def dns_glibc(gt: GT, dns: Dns, tmp: Path) -> Scenario:
    """getaddrinfo() through glibc's resolver (sendmmsg for A+AAAA), pointed at the test DNS server by a
    resolv.conf bind-mounted in a private mount namespace (the host's resolver is left alone)."""
    import uuid

    name = f"gt-glibc-{uuid.uuid4().hex[:8]}.test"
    conf = tmp / f"resolv-{dns.addr}.conf"
    conf.write_text(f"nameserver {dns.addr}\noptions attempts:1 timeout:2\n")
    from tests.integration.ground_truth.env import SYSTEM_PYTHON

    py = SYSTEM_PYTHON
    code = f"import socket; print(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 80)}}))"
    out = subprocess.run(["unshare", "-m", "sh", "-c",
                          f"mount --bind {conf} /etc/resolv.conf && echo $$ && exec {py} -c \"{code}\""],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid_s, addrs = out.stdout.splitlines()[:2]
    assert addrs == "['127.0.0.1', '::1']", addrs
    pid = int(pid_s)
    recs = dns.records_for(name, 2)
    ports = {r["peer"][1] for r in recs}
    proc = Proc(pid, py)
    sc = Scenario("dns_glibc", pids={pid})
    for port in sorted(ports):
        sc.expected += _udp_expect("dns_glibc", proc, dns, recs, port)
    sc.after.append(lambda g: _check_dns(g, pid, name, 2 * len(recs)))
    return sc
