"""How fast a new binary gets its TLS probes, and what the held-exec mode costs (issue 16).

Measured, each on fresh copies (new inodes: nothing cached, nothing attached):
- ``analysis_ms``: first-sight ELF analysis of a Go client, a static OpenSSL client, node and libssl
  (Scanner.scan_file, what the agent runs once per file; later sightings are a cache hit);
- ``exec_to_attached_ms`` without the hold: from just before the spawn until the agent has the file's probes
  attached (the window in which a short-lived client's first bytes are lost);
- ``hold_ms``: with the hold on, how long the kernel kept each new process stopped (exec tracepoint to
  SIGCONT, from the agent's own accounting) - the delay a never-seen binary's first run pays;
- ``exec_overhead_us``: spawn + exit of /bin/true with the hold program attached (file known: not held) vs
  without it - the price every exec pays for the mode;
- ``spawn_to_request_ms``: a covered Go client's first HTTP/2 request after its spawn (the issue's "within
  5 ms of exec");
- ``path_prescan``: the start-up pre-scan of the executables in PATH, cold and with the on-disk cache.

Prints one JSON object and a summary line; writes benchmarks/results/tls_first_bytes.json. Run as root:
.venv/bin/python benchmarks/bench_tls_first_bytes.py   (QTAP_BENCH_N sets the samples per case, default 8)
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    AgentThread,
    arguments,
    write_result,
)
from qtap_async.tls.cache import AnalysisCache  # noqa: E402
from qtap_async.tls.discover import Scanner  # noqa: E402
from qtap_async.tls.manager import TlsOptions  # noqa: E402
from qtap_async.topology import Agent, AgentOptions, StdoutWriter  # noqa: E402

N = int(os.environ.get("QTAP_BENCH_N", "8"))
PEERS = ROOT / "tests" / "integration" / "peers"
NODE = shutil.which("node") or "/usr/bin/node"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


class NullWriter(StdoutWriter):
    def __init__(self) -> None:
        super().__init__(out=None)

    def write(self, events: list[Any]) -> None:
        self.written += len(events)


def _agent(hold: bool) -> Agent:
    # Hold only this benchmark's own children: the machine may be shared.
    opts = AgentOptions(tls_options=TlsOptions(hold_exec=hold, hold_children_of=os.getpid()))
    return Agent(opts, writer=NullWriter(), session_factory=None)


def _stats(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    if not s:
        return {}
    return {"n": len(s), "p50": round(statistics.median(s), 2), "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], 2),
            "max": round(s[-1], 2), "min": round(s[0], 2)}


def _build(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    go = shutil.which("go") or "/usr/local/go/bin/go"
    subprocess.run([go, "build", "-o", str(tmp / "goh2"), "."], cwd=PEERS / "goh2", env=env, check=True)
    subprocess.run(["gcc", "-O1", "-static", "-o", str(tmp / "h2c"), str(PEERS / "tlsh2c" / "tls_h2_client.c"),
                    "-lssl", "-lcrypto", "-lpthread"], check=True, capture_output=True)
    return {"go": str(tmp / "goh2"), "openssl_static": str(tmp / "h2c")}


def _copy(src: str, tmp: Path, tag: str) -> str:
    dst = tmp / f"{tag}-{time.monotonic_ns()}"
    shutil.copy2(src, dst)
    return str(dst)


def analysis(bins: dict[str, str], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = {**bins, "node": NODE, "libssl": LIBSSL}
    for name, src in cases.items():
        vals = []
        for _ in range(N if name != "node" else max(2, N // 3)):
            path = _copy(src, tmp, name)
            sc = Scanner(cache=AnalysisCache())
            t = time.perf_counter()
            _k, lib, _hit = sc.scan_file(path)
            vals.append((time.perf_counter() - t) * 1e3)
            assert lib is not None, name
            os.unlink(path)
        out[name] = _stats(vals)
    return out


class BlackHole:
    """A TCP listener that never answers: a TLS client connecting to it waits in its handshake (alive)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]


def _client_argv(kind: str, exe: str, port: int, tmp: Path) -> list[str]:
    if kind == "go":
        return [exe, f"https://127.0.0.1:{port}/", "0"]
    req = tmp / "req.bin"
    req.write_bytes(b"x")
    return [exe, "127.0.0.1", str(port), str(req)]


def exec_to_attached(bins: dict[str, str], tmp: Path, hold: bool) -> dict[str, Any]:
    hole = BlackHole()
    agent = _agent(hold)
    th = AgentThread(agent).start()
    out: dict[str, Any] = {}
    try:
        assert agent.tls is not None
        for kind, src in bins.items():
            vals = []
            for _ in range(N):
                exe = _copy(src, tmp, kind)
                t0 = time.monotonic_ns()
                p = subprocess.Popen(_client_argv(kind, exe, hole.port, tmp), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                attached = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if attached is None and any(s.path == exe and s.attached for s in agent.tls.statuses()):
                        attached = time.monotonic_ns()
                    # With the hold, also let the agent continue it (its hold accounting needs the process).
                    if attached is not None and (agent.tls.hold is None or p.pid not in agent.tls.hold.held_pids()):
                        break
                    time.sleep(0.0005)
                p.kill()
                p.wait()
                if attached is not None:
                    vals.append((attached - t0) / 1e6)
            out[kind] = _stats(vals)
        if hold:
            assert agent.tls.hold is not None
            st = agent.tls.hold.stats
            out["hold"] = {"held": st.held, "released": st.released, "by_timeout": st.released_by_timeout,
                           "mean_ms": round(st.hold_ns_total / max(1, st.released) / 1e6, 2),
                           "max_ms": round(st.hold_ns_max / 1e6, 2)}
    finally:
        th.stop()
        hole.sock.close()
    return out


def exec_overhead() -> dict[str, Any]:
    def spawn_loop(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            subprocess.run(["/bin/true"], check=True)
        return (time.perf_counter() - t) / n * 1e6

    n = 100
    res: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(2):  # interleaved, same run
        res["off"].append(spawn_loop(n))
        agent = _agent(True)
        th = AgentThread(agent).start()
        try:
            subprocess.run(["/bin/true"], check=True)  # seen once: known from now on
            time.sleep(0.5)
            res["on"].append(spawn_loop(n))
        finally:
            th.stop()
        agent2 = _agent(False)
        th2 = AgentThread(agent2).start()
        try:
            res.setdefault("agent_no_hold", []).append(spawn_loop(n))
        finally:
            th2.stop()
    return {k: round(min(v), 1) for k, v in res.items()}


def spawn_to_request(bins: dict[str, str], tmp: Path) -> dict[str, Any]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "hello.txt").write_text("hi\n")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = subprocess.Popen(["nghttpd", "-d", str(www), str(port), str(key), str(cert)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    agent = _agent(True)
    th = AgentThread(agent).start()
    vals: list[float] = []
    first = 0.0
    try:
        exe = _copy(bins["go"], tmp, "go")
        for i in range(N + 1):
            t0 = time.monotonic_ns()
            out = subprocess.run([exe, f"https://127.0.0.1:{port}/hello.txt", str(i)], capture_output=True,
                                 timeout=60).stdout.split()
            d = (int(out[2]) - t0) / 1e6
            if i == 0:
                first = d  # the held first run
            else:
                vals.append(d)
    finally:
        th.stop()
        srv.kill()
        srv.wait()
    return {"go_first_run_held": round(first, 2), "go_later_runs": _stats(vals)}


def path_prescan(tmp: Path) -> dict[str, Any]:
    """The start-up PATH pre-scan: every executable in $PATH + system dirs, cold (empty cache) then warm (the
    on-disk cache a restarted agent finds)."""
    from qtap_async.tls.manager import path_candidates

    state = tmp / "path-state"
    out: dict[str, Any] = {}
    for label in ("cold", "warm"):
        t, c = time.perf_counter(), time.process_time()
        paths, truncated = path_candidates()
        sc = Scanner(cache=AnalysisCache(str(state)))
        tls = errors = 0
        for p in paths:
            try:
                tls += sc.scan_file(p)[1] is not None
            except Exception:
                errors += 1
        out[label] = {"files": len(paths), "analysed": sc.analyses, "tls": tls, "errors": errors,
                      "wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
                      "truncated": truncated}
    return out


def main() -> None:
    arguments(__doc__)  # --help, and an error for an argument it does not take
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bins = _build(tmp)
        result = {
            "analysis_ms": analysis(bins, tmp),
            "exec_to_attached_ms": exec_to_attached(bins, tmp, hold=False),
            "held_exec": exec_to_attached(bins, tmp, hold=True),
            "exec_overhead_us": exec_overhead(),
            "spawn_to_request_ms": spawn_to_request(bins, tmp),
            "path_prescan": path_prescan(tmp),
        }
    a, e, h = result["analysis_ms"], result["exec_to_attached_ms"], result["held_exec"]["hold"]
    ov = result["exec_overhead_us"]
    sr = result["spawn_to_request_ms"]
    summary = (f"analysis p50 go {a['go']['p50']} ms, static openssl {a['openssl_static']['p50']} ms, node "
               f"{a['node']['p50']} ms; exec->attached without hold p50/p99 go {e['go']['p50']}/{e['go']['p99']} ms "
               f"(a client speaking sooner loses its first bytes); held exec mean {h['mean_ms']} ms max "
               f"{h['max_ms']} ms ({h['held']} holds, {h['by_timeout']} by timeout); exec cost for known files "
               f"{ov['on']} us vs {ov['off']} us without agent, {ov['agent_no_hold']} us agent without hold; "
               f"covered Go client spawn->request p50 {sr['go_later_runs']['p50']} ms; PATH pre-scan "
               f"{result['path_prescan']['cold']['files']} files cold {result['path_prescan']['cold']['wall_s']} s, "
               f"warm {result['path_prescan']['warm']['wall_s']} s")
    write_result("tls_first_bytes", result, summary)


if __name__ == "__main__":
    main()
