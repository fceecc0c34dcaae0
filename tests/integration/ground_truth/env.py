"""Running a ground-truth scenario: start its real peers, collect what they saw, build the expectation,
wait for the agent, and compare (failing with a readable table)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.ground_truth.truth import Captured, ExpConn, ExpTx, Proc, Report, compare, exe_of, is_ip
from tests.integration.harness import AgentHarness

PEERS = Path(__file__).parent / "peers"
PYTHON = os.path.realpath(sys.executable)
# Clients run as another user need an interpreter that user may execute (the venv's may live under /root).
SYSTEM_PYTHON = os.path.realpath(shutil.which("python3", path="/usr/bin:/bin") or sys.executable)


def python_for(uid: int | None) -> str:
    return SYSTEM_PYTHON if uid else PYTHON
CURL = exe_of("curl")


class Server:
    """A gt_server.py process; its log is the truth of every connection it served."""

    def __init__(self, log: Path, *opts: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(PEERS / "gt_server.py"), str(log), *opts],
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "PORT":
            self.proc.kill()
            raise RuntimeError(f"gt_server did not start: {line}")
        self.port = int(line[1])
        self.pid = self.proc.pid
        self.workers = [int(x) for x in line[3:]] if len(line) > 2 else []
        self.bind = opts[opts.index("--bind") + 1] if "--bind" in opts else "127.0.0.1"
        self._taken: set[int] = set()

    def records(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []
            if len(recs) >= n or time.monotonic() > deadline:
                assert len(recs) >= n, f"server logged {len(recs)} of {n} connections"
                return recs
            time.sleep(0.02)

    def by_peer_port(self, n: int) -> dict[int, dict[str, Any]]:
        return {r["peer"][1]: r for r in self.records(n)}

    def take(self, peer_port: int, timeout: float = 30.0) -> dict[str, Any]:
        """The first not yet taken record of a connection from `peer_port` (waits for the server to log it;
        a port may come back later in a long run, hence "not yet taken")."""
        deadline = time.monotonic() + timeout
        while True:
            recs = [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []
            for i, r in enumerate(recs):
                if r["peer"][1] == peer_port and i not in self._taken:
                    self._taken.add(i)
                    return dict(r)
            if time.monotonic() > deadline:
                raise AssertionError(f"server on {self.port} logged no connection from port {peer_port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for w in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, 9)


class GT:
    def __init__(self, h: AgentHarness, tmp: Path, cert: tuple[str, str] | None = None) -> None:
        self.h = h
        self.tmp = tmp
        self.cert = cert
        self.servers: list[Server] = []
        self._n = 0
        self._seen: list[dict[str, Any]] = []
        # When each process the scenario started lived (wall-clock ns): pids are reused (pid_max is 32768 on
        # small machines), so a pid is the scenario's only while its process ran.
        self.windows: dict[int, tuple[int, int | None]] = {}
        self.port_windows: dict[int, tuple[int, int | None]] = {}
        self.since = time.time_ns()  # records older than the scenario are someone else's

    def events(self) -> list[dict[str, Any]]:
        """The agent's events so far as plain dicts (converted once: the shared agent's list only grows)."""
        import msgspec

        with self.h.writer.lock:
            new = self.h.writer.events[len(self._seen):]
        self._seen.extend(e if isinstance(e, dict) else msgspec.to_builtins(e) for e in new)
        return self._seen

    # -- peers -----------------------------------------------------------------------------------
    def server(self, *opts: str) -> Server:
        self._n += 1
        t0 = time.time_ns()
        s = Server(self.tmp / f"server{self._n}.log", *opts)
        self.servers.append(s)
        for pid in (s.pid, *s.workers):
            self.windows[pid] = (t0, None)
        self.port_windows[s.port] = (t0, None)
        return s

    def close(self) -> None:
        for s in self.servers:
            s.stop()

    def client(self, host: str, port: int, mode: str, *args: str,
               uid: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        kw: dict[str, Any] = {}
        if uid is not None:
            kw = {"user": uid, "group": uid, "extra_groups": []}
        t0 = time.time_ns()
        out = subprocess.run([python_for(uid), str(PEERS / "gt_client.py"), host, str(port), mode, *args],
                             capture_output=True, text=True, timeout=120, **kw)
        assert out.returncode == 0, f"gt_client {mode} failed: {out.stderr[-2000:]}"
        recs = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        if recs:
            self.windows[recs[0]["pid"]] = (t0, time.time_ns())
        return recs[0]["pid"] if recs else 0, recs

    def sh(self, cmd: str, uid: int | None = None, check: bool = True) -> tuple[int, list[str]]:
        """`sh -c 'echo $$; exec CMD'`: the pid is the program's own (exec keeps it)."""
        kw: dict[str, Any] = {}
        if uid is not None:
            kw = {"user": uid, "group": uid, "extra_groups": []}
        t0 = time.time_ns()
        out = subprocess.run(["sh", "-c", f"echo $$; exec {cmd}"], capture_output=True, text=True, timeout=120,
                             **kw)
        if out.stdout.strip():
            self.windows[int(out.stdout.split()[0])] = (t0, time.time_ns())
        if check:
            assert out.returncode == 0, f"{cmd!r} failed ({out.returncode}): {out.stderr[-2000:]}"
        lines = out.stdout.splitlines()
        return int(lines[0]), lines[1:]

    def curl(self, url: str, *args: str, uid: int | None = None) -> tuple[int, int]:
        """(pid, local port) of one curl run."""
        extra = " ".join(f"'{a}'" for a in args)
        pid, lines = self.sh(f"{CURL} -sk -o /dev/null -w '%{{local_port}}\\n' {extra} '{url}'", uid=uid)
        return pid, int(lines[-1])

    # -- expectations ----------------------------------------------------------------------------
    def pair(self, label: str, srv: dict[str, Any], client: Proc, server: Proc, *,
             client_rec: dict[str, Any] | None = None,
             tls: bool = False, domain: str = "", domain_source: str | None = "host", protocol: str | None = "http1",
             host: str | None = None, server_owners: list[tuple[int, str]] | None = None,
             tx_server: Proc | None = None, client_extra: dict[str, Any] | None = None,
             server_extra: dict[str, Any] | None = None, txs: bool = True) -> list[ExpConn]:
        """Both ends of one connection the server logged: the server's own counts for its end, the client's
        own counts (when it has them) or the server's mirrored for the client's end."""
        peer = (srv["peer"][0], srv["peer"][1])
        local = (srv["local"][0], srv["local"][1])
        c_tx = client_rec["tx"] if client_rec else srv["rx"]
        c_rx = client_rec["rx"] if client_rec else srv["tx"]
        if host is None:
            host = domain
        if is_ip(domain):
            domain = ""  # an address in Host names nothing: the connection has no name of its own
        ds = domain_source if domain else None
        tx_proc = tx_server or server

        def txlist(p: Proc) -> list[ExpTx]:
            if not txs:
                return []
            return [ExpTx(pid=p.pid, exe=p.exe, method=m, path=path, status=st, host=host, tls=tls,
                          request_body_size=qb, response_body_size=rb) for m, path, st, qb, rb in srv["reqs"]]

        return [
            ExpConn(label, "egress", client, peer, local, c_tx, c_rx, tls=tls, protocol=protocol, domain=domain,
                    domain_source=ds, txs=txlist(client), extra=client_extra or {}),
            ExpConn(label, "ingress", server, peer, local, srv["tx"], srv["rx"], tls=tls, protocol=protocol,
                    domain=domain, domain_source=ds, owners=server_owners, txs=txlist(tx_proc),
                    extra=server_extra or {}),
        ]

    def check(self, expected: list[ExpConn], *, pids: set[int], ports: set[int], timeout: float = 20.0,
              settle: float = 0.3, assert_ok: bool = True, quiet: float = 4.0) -> Report:
        """Wait until every expected connection was closed and its transactions reported (or timeout),
        then compare every field."""
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        still_since = time.monotonic()
        while True:
            cap = Captured(self.events())
            done = all(
                len([c for c in cap.by_key.get(e.key(), []) if c.closes]) >= 1
                and sum(len(c.txs) for c in cap.by_key.get(e.key(), [])) >= len(e.txs)
                for e in expected
            )
            if done or time.monotonic() > deadline:
                break
            # Records that went elsewhere (a phantom) never arrive: stop once nothing touching the scenario
            # has changed for `quiet` seconds instead of always waiting for the whole timeout.
            mine = cap.touching(pids, ports, self.windows, self.port_windows, self.since)
            sig = (sum(len(c.closes) for c in mine), sum(len(c.txs) for c in mine))
            if sig != last:
                last, still_since = sig, time.monotonic()
            elif time.monotonic() - still_since > quiet:
                break
            time.sleep(0.1)
        time.sleep(settle)  # stragglers (phantom opens, late duplicates) arrive too
        rep = compare(expected, Captured(self.events()), pids=pids, ports=ports, windows=self.windows,
                      port_windows=self.port_windows, since=self.since)
        if assert_ok and not rep.ok:
            snap = self.h.agent.snapshot()
            drops = {k: v for k, v in snap.items() if ("drop" in k or "lost" in k or "orphan" in k) and v}
            raise AssertionError("ground truth differs from the capture:\n" + rep.table()
                                 + f"\nagent drop counters: {drops or 'all 0'}")
        return rep


def wait_listen(port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on TCP `port`, without connecting (a probe connection of the test's own
    would be one more connection for the servers to log and for the agent to see)."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X} "
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                if any(want in line and line.split()[3] == "0A" for line in f):  # 0A: TCP_LISTEN
                    return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def which(name: str) -> str:
    p = shutil.which(name)
    assert p, f"{name} is needed (scripts/bootstrap installs it)"
    return p
