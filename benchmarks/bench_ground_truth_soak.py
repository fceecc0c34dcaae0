"""Mixed soak against ground truth: how many records the agent misattributes over a long mixed run.

For --duration seconds (default 300) two workers drive a random mix of lifecycles against long-running
servers, each knowing its truth (pids it started, ports its peers saw, bytes they counted, requests the
servers logged; tests/integration/ground_truth): plain HTTP/1 curls (as root and as nobody: short-lived
processes), TLS curls against a Python ssl server that closes first, HTTP/2 curls against nghttpd,
half-closes, refused connects, fork-per-connection and SCM_RIGHTS servers, RSTs and pipelining.
Then every expected connection and transaction is compared with what the agent reported.

"misattributed" counts records that name the wrong process or connection: a connection or transaction whose
pid/exe/user/uid/ports/addresses/direction/family differ from the truth, plus connections missing or
unexpected (phantoms), plus transactions missing or reported on another connection. Other differences
(bytes, domain, ...) are counted per field. Prints JSON and a one-line summary; writes
benchmarks/results/ground_truth_soak.json.
Usage: python benchmarks/bench_ground_truth_soak.py [--duration SECONDS] [--workers N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, write_result

sys.path.insert(0, str(ROOT))

from qtap_async.transforms.conntrack import default_session_factory
from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import CURL, GT, PYTHON, wait_listen
from tests.integration.ground_truth.truth import ExpConn, ExpTx, Mismatch, Pred, Proc, exe_of
from tests.integration.harness import AgentHarness, free_port

# Fields that say which process and which connection a record belongs to.
IDENTITY = {"pid", "exe", "user", "uid", "src_ip", "src_port", "dst_ip", "dst_port", "direction", "family",
            "connection", "transaction", "owners", "open.pid", "open.src_port", "open.dst_port",
            "open.direction"}
EMPTY = ("<absent>", "", None)


def misattributed(m: Mismatch) -> bool:
    """A record tied to the wrong process/connection, or missing/unexpected; an identity field the agent left
    empty (lost context, or a contract field not implemented yet) is counted apart, as context_missing."""
    return m.field in IDENTITY and (m.field in ("connection", "transaction") or m.captured not in EMPTY)


def context_missing(m: Mismatch) -> bool:
    return m.field in IDENTITY and not misattributed(m)


def cert(tmp: Path) -> tuple[str, str]:
    import subprocess

    key, crt = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return str(crt), str(key)


class Soak:
    def __init__(self, gt: GT, tmp: Path) -> None:
        import subprocess

        self.gt = gt
        assert gt.cert is not None
        self.plain = gt.server()
        self.tls = gt.server("--tls-socket", *gt.cert, "--close")
        self.fork = gt.server("--mode", "fork")
        self.scm = gt.server("--mode", "scm")
        docs = tmp / "h2"
        docs.mkdir()
        (docs / "index.html").write_bytes(b"<html>soak</html>\n")
        self.h2_port = free_port()
        self.h2 = subprocess.Popen([exe_of("nghttpd"), "--no-tls", "-d", str(docs), "-a", "127.0.0.1",
                                    str(self.h2_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listen(self.h2_port)
        self.lock = threading.Lock()
        self.total = S.Scenario("soak", pids={self.h2.pid}, ports={self.h2_port})
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.n = 0

    def _next(self) -> int:
        with self.lock:
            self.n += 1
            return self.n

    def op(self, name: str, rnd: random.Random) -> S.Scenario:
        gt, i = self.gt, self._next()
        uid = S.NOBODY if rnd.random() < 0.3 else None
        if name == "http1":
            return S.curl_plain(gt, name, self.plain, f"/s{i}?n={rnd.randint(0, 5000)}", uid=uid)
        if name == "tls_close_first":
            pid, port = gt.curl(f"https://localhost:{self.tls.port}/t{i}?n={rnd.randint(1, 3000)}", uid=uid)
            rec = self.tls.take(port)
            exp = gt.pair(name, rec, Proc(pid, CURL, uid or 0), Proc(self.tls.pid, PYTHON), tls=True,
                          domain="localhost", domain_source="sni", host="localhost")
            exp[0].bytes_sent = S.within(rec["rx"], rec["rx"] + 64)
            return S.Scenario(name, exp, {pid}, {self.tls.port})
        if name == "http2":
            pid, port = gt.curl(f"http://127.0.0.1:{self.h2_port}/index.html", "--http2-prior-knowledge", uid=uid)
            p = Proc(pid, CURL, uid or 0)
            srv = Proc(self.h2.pid, exe_of("nghttpd"))
            anyb = Pred("> 0", lambda v: isinstance(v, int) and v > 0)
            sc = S.Scenario(name, pids={pid})
            for d, who in (("egress", p), ("ingress", srv)):
                tx = ExpTx(who.pid, who.exe, "GET", "/index.html", 200, host="127.0.0.1", protocol="h2c",
                           response_body_size=18, extra={"stream_id": 1})
                sc.expected.append(ExpConn(name, d, who, ("127.0.0.1", port), ("127.0.0.1", self.h2_port), anyb,
                                           anyb, protocol="http2", domain="127.0.0.1", domain_source="host",
                                           txs=[tx]))
            return sc
        if name == "halfclose":
            return S.python_client(gt, name, "halfclose", f"/h{i}?n=77", server=self.plain)
        if name == "refused":
            closed = free_port()
            pid, _ = gt.client("127.0.0.1", closed, "refused")
            return S.Scenario(name, pids={pid}, ports={closed})
        if name == "fork":
            return S.served_elsewhere_one(gt, self.fork, name, i)
        if name == "scm":
            return S.served_elsewhere_one(gt, self.scm, name, i)
        if name == "rst":
            return S.python_client(gt, name, "rst", f"/r{i}?n=300", server=self.plain, uid=uid)
        if name == "pipeline":
            return S.python_client(gt, name, "pipeline", f"/p{i}a?n=5", f"/p{i}b?n=900", server=self.plain)
        raise ValueError(name)

    def worker(self, seed: int, deadline: float) -> None:
        rnd = random.Random(seed)
        mix = ["http1"] * 4 + ["tls_close_first"] * 3 + ["http2"] * 2 + ["halfclose"] * 2 + ["refused"] * 2 + [
            "fork", "scm", "rst", "pipeline"]
        while time.monotonic() < deadline:
            name = rnd.choice(mix)
            try:
                sc = self.op(name, rnd)
            except Exception as exc:  # a peer failing is counted, not fatal to the soak
                with self.lock:
                    self.errors[f"{name}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
                continue
            with self.lock:
                self.ops[name] += 1
                self.total.add(sc)

    def stop(self) -> None:
        self.h2.terminate()
        self.h2.wait(10)
        self.gt.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; keep benchmarks/results untouched (CI)")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        h = AgentHarness(record=False, session_factory=default_session_factory).start()
        gt = GT(h, tmp, cert(tmp))
        soak = Soak(gt, tmp)
        try:
            deadline = time.monotonic() + args.duration
            threads = [threading.Thread(target=soak.worker, args=(k, deadline)) for k in range(args.workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sc = soak.total
            rep = gt.check(sc.expected, pids=sc.pids, ports=sc.ports, timeout=30, settle=1.0, assert_ok=False)
        finally:
            soak.stop()
            h.stop()
        snap = h.agent.snapshot()
    fields = Counter(m.field for m in rep.mismatches)
    bad = {m.item for m in rep.mismatches if misattributed(m)}
    lost = {m.item for m in rep.mismatches if context_missing(m)} - bad
    result: dict[str, Any] = {
        "duration_s": args.duration,
        "workers": args.workers,
        "operations": dict(soak.ops),
        "peer_errors": dict(soak.errors),
        **rep.counts(),
        "misattributed_records": len(bad),
        "context_missing_records": len(lost),
        "mismatches_by_field": dict(fields.most_common()),
        "examples": [f"{m.item} | {m.field} | {m.expected!r} | {m.captured!r}"[:300]
                     for m in sorted(rep.mismatches, key=lambda m: not misattributed(m))[:25]],
        "agent_opened": snap["qtap_connections_opened_total"],
        "agent_closed": snap["qtap_connections_closed_total"],
        "agent_open_at_stop": snap["qtap_connections_open"],
        "stop_counters_consistent": snap["qtap_connections_opened_total"]
        == snap["qtap_connections_closed_total"] + snap["qtap_connections_open"],
        "kernel_drop_ringbuf": snap.get("qtap_kernel_drop_ringbuf_total", 0),
        "bench_seconds": round(time.monotonic() - t0, 1),
    }
    summary = (f"{sum(soak.ops.values())} operations in {args.duration:.0f} s: {rep.expected_conns} connections "
               f"and {rep.expected_txs} transactions expected; misattributed {len(bad)} (missing conns "
               f"{rep.missing_conns}, unexpected {rep.unexpected_conns}, missing txs {rep.missing_txs}, wrong "
               f"txs {rep.wrong_txs}); context missing {len(lost)}; records with any wrong field {rep.wrong_conns}; "
               f"stop counters {'consistent' if result['stop_counters_consistent'] else 'INCONSISTENT'}")
    if args.no_write:
        import json

        print(json.dumps({"benchmark": "ground_truth_soak", **result}))
        print(f"ground_truth_soak: {summary}")
    else:
        write_result("ground_truth_soak", result, summary)


if __name__ == "__main__":
    main()
