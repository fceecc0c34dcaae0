"""Probe-point analysis: what it costs to run, and what its choices save at run time.

1. Analysis cost: cold analysis of each TLS file on this machine (Debian libssl, node's static OpenSSL,
   GnuTLS, the Go toolchain binary, which links crypto/tls) and a warm re-scan of a process (cache hits).
2. Uprobe cost of the chosen sites versus the classic ones, with no BPF at all: tracefs uprobe events in
   a private tracing instance on a private copy of libssl.so.3 (so no other process on the machine is
   probed), a Python workload doing TLS over memory BIOs (SSLObject.write/read -> SSL_write_ex/SSL_read_ex):
   - baseline: no probes,
   - classic: uprobe at SSL_write_ex and SSL_read_ex entry + uretprobe on SSL_read_ex,
   - plan: every site of the SSL_write_ex and SSL_read_ex plans from qtap_async.tls.
   Hits per event are read back from uprobe_profile, so a configuration that did not fire shows.

Prints one JSON line and a one-line summary; writes benchmarks/results/uprobe_points.json. Needs root
and tracefs for part 2 (part 1 runs anywhere). Never gates anything.
Usage: .venv/bin/python benchmarks/bench_uprobe_points.py [--iterations N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtap_async.tls import Scanner, analyze_file  # noqa: E402
from qtap_async.tls.model import FileKey, ProbePlan, ProbeSite  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
GROUP = "qtap_tlsbench"

WORKLOAD = r"""
import json, os, ssl, sys, time
certdir, n = sys.argv[1], int(sys.argv[2])
maps = open("/proc/self/maps").read()
srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv_ctx.load_cert_chain(os.path.join(certdir, "c.pem"), os.path.join(certdir, "k.pem"))
cli_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli_ctx.check_hostname = False
cli_ctx.verify_mode = ssl.CERT_NONE
cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
cli = cli_ctx.wrap_bio(cin, cout, server_side=False)
srv = srv_ctx.wrap_bio(sin, sout, server_side=True)
for _ in range(20):
    for o in (cli, srv):
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
    sin.write(cout.read()); cin.write(sout.read())
msg = b"x" * 64
t = time.perf_counter_ns()
for _ in range(n):
    cli.write(msg)
    sin.write(cout.read())
    srv.read(64)
dt = time.perf_counter_ns() - t
lib = next((l.split()[-1] for l in maps.splitlines() if "libssl.so" in l), "")
print(json.dumps({"ns_per_iter": dt / n, "libssl": lib}))
"""


GO_WORKLOAD = r"""
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{cert}})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(srv, buf); err != nil {
				return
			}
			srv.Write(buf)
		}
	}()
	msg, buf := make([]byte, 64), make([]byte, 64)
	cli.Write(msg)
	io.ReadFull(cli, buf)
	t := time.Now()
	for i := 0; i < n; i++ {
		cli.Write(msg)
		io.ReadFull(cli, buf)
	}
	fmt.Printf("{\"ns_per_iter\": %f}\n", float64(time.Since(t).Nanoseconds())/float64(n))
}
"""


def _ldconfig(name: str) -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(name + " ") and "x86-64" in line:
            return line.rsplit("=>", 1)[1].strip()
    raise SystemExit(f"{name} not found")


def _analyze(path: str) -> Any:
    st = os.stat(path)
    return analyze_file(path, FileKey(st.st_dev, st.st_ino))


def bench_analysis() -> dict[str, float]:
    out: dict[str, float] = {}
    files = {
        "libssl": _ldconfig("libssl.so.3"),
        "node": shutil.which("node") or "",
        "gnutls": _ldconfig("libgnutls.so.30"),
        "go_toolchain": shutil.which("go") or "/usr/local/go/bin/go",
    }
    for name, path in files.items():
        if not path or not os.path.exists(path):
            continue
        t = time.perf_counter()
        lib = _analyze(os.path.realpath(path))
        out[f"analysis_{name}_cold_ms"] = round((time.perf_counter() - t) * 1000, 2)
        out[f"analysis_{name}_fast_plans"] = sum(p.fast for p in lib.plans) if lib else -1
        out[f"analysis_{name}_plans"] = len(lib.plans) if lib else -1
    sc = Scanner()
    pid = os.getpid()
    t = time.perf_counter()
    sc.scan_pid(pid)
    out["scan_self_cold_ms"] = round((time.perf_counter() - t) * 1000, 2)
    t = time.perf_counter()
    sc.scan_pid(pid)
    out["scan_self_warm_ms"] = round((time.perf_counter() - t) * 1000, 2)
    return out


class Probes:
    """tracefs uprobe events in a private instance; removed again on exit."""

    def __init__(self, lib: str) -> None:
        self.lib = lib
        self.names: list[str] = []
        self.instance = TRACEFS / "instances" / GROUP

    def __enter__(self) -> Probes:
        self.instance.mkdir(exist_ok=True)
        return self

    @staticmethod
    def _define(line: str) -> None:
        # os.write with O_APPEND: Python's "a" mode seeks, which tracefs refuses with EINVAL.
        fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    def add(self, name: str, offset: int, ret: bool) -> None:
        kind = "r" if ret else "p"
        self._define(f"{kind}:{GROUP}/{name} {self.lib}:{offset:#x}")
        self.names.append(name)
        (self.instance / "events" / GROUP / name / "enable").write_text("1\n")

    def hits(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in (TRACEFS / "uprobe_profile").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in self.names and parts[0] == self.lib:
                out[parts[1]] = int(parts[2])
        return out

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            with contextlib.suppress(OSError):
                (self.instance / "events" / GROUP / name / "enable").write_text("0\n")
        for name in self.names:
            with contextlib.suppress(OSError):
                self._define(f"-:{GROUP}/{name}")
        with contextlib.suppress(OSError):
            self.instance.rmdir()


def _run(certdir: str, libdir: str, n: int) -> dict[str, Any]:
    env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, certdir, str(n)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _sites(plan: ProbePlan) -> list[ProbeSite]:
    return plan.sites


def bench_probes(n: int) -> dict[str, Any]:
    if not (TRACEFS / "uprobe_events").exists():
        return {"probes_skipped_reason": "no tracefs uprobe_events"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        libdir = os.path.join(tmp, "lib")
        os.mkdir(libdir)
        lib = os.path.join(libdir, "libssl.so.3")
        shutil.copy2(_ldconfig("libssl.so.3"), lib)
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                os.path.join(tmp, "k.pem"),
                "-out",
                os.path.join(tmp, "c.pem"),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ],
            check=True,
            capture_output=True,
        )
        info = _analyze(lib)
        plans = {p.function: p for p in info.plans}
        wr, rd = plans["SSL_write_ex"], plans["SSL_read_ex"]
        first = _run(tmp, libdir, 1000)
        if first["libssl"] != lib:
            return {"probes_skipped_reason": f"workload did not load the private copy ({first['libssl']})"}
        configs: dict[str, list[tuple[str, int, bool]]] = {
            "baseline": [],
            "classic": [
                ("w_entry", wr.func_offset, False),
                ("r_entry", rd.func_offset, False),
                ("r_ret", rd.func_offset, True),
            ],
            "plan": [
                (f"{tag}_{s.role}_{i}", s.offset, s.role == "uretprobe")
                for tag, p in (("w", wr), ("r", rd))
                for i, s in enumerate(_sites(p))
            ],
        }
        for name, probes in configs.items():
            with Probes(lib) as pr:
                for pname, off, ret in probes:
                    pr.add(pname, off, ret)
                res = _run(tmp, libdir, n)
                hits = pr.hits()
            out[f"{name}_ns_per_iteration"] = round(res["ns_per_iter"], 1)
            out[f"{name}_probe_hits"] = sum(hits.values())
            if probes and not hits:
                out[f"{name}_warning"] = "no probe fired"
        base = out["baseline_ns_per_iteration"]
        for name in ("classic", "plan"):
            out[f"{name}_overhead_us_per_iteration"] = round((out[f"{name}_ns_per_iteration"] - base) / 1000, 2)
        out["plan_sites_emulated"] = all(s.emulated for p in (wr, rd) for s in p.sites)
        out["iterations"] = n
    return out


def bench_go(n: int) -> dict[str, Any]:
    """Go crypto/tls over net.Pipe: Write entry + Read entry + every Read RET (the plan) versus Write entry +
    Read's single runtime.memmove call (the unproven candidate the plan lists)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not (TRACEFS / "uprobe_events").exists() or not os.path.exists(go):
        return {"go_skipped_reason": "no tracefs or no go toolchain"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "main.go").write_text(GO_WORKLOAD)
        env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOTOOLCHAIN="local")
        subprocess.run([go, "build", "-o", "w", "main.go"], cwd=tmp, env=env, check=True, capture_output=True)
        binary = os.path.join(tmp, "w")
        info = _analyze(binary)
        plans = {p.function: p for p in info.plans}
        wr, rd = plans["crypto/tls.(*Conn).Write"], plans["crypto/tls.(*Conn).Read"]
        configs: dict[str, list[tuple[str, int, bool]]] = {
            "go_baseline": [],
            "go_plan": [(f"g{i}", s.offset, False) for i, s in enumerate([*wr.sites, *rd.sites])],
        }
        if rd.candidates:
            configs["go_candidate"] = [
                ("gw", wr.sites[0].offset, False),
                ("gr", rd.sites[0].offset, False),
                ("gc", rd.candidates[0].offset, False),
            ]
        for name, probes in configs.items():
            with Probes(binary) as pr:
                for pname, off, ret in probes:
                    pr.add(pname, off, ret)
                res = json.loads(
                    subprocess.run([binary, str(n)], capture_output=True, text=True, check=True, timeout=600).stdout
                )
                hits = pr.hits()
            out[f"{name}_ns_per_iteration"] = round(res["ns_per_iter"], 1)
            out[f"{name}_probe_hits"] = sum(hits.values())
        base = out["go_baseline_ns_per_iteration"]
        for name in configs:
            if name != "go_baseline":
                out[f"{name}_overhead_us_per_iteration"] = round((out[f"{name}_ns_per_iteration"] - base) / 1000, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20000)
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "uprobe_points"}
    result.update(bench_analysis())
    result.update(bench_probes(args.iterations))
    result.update(bench_go(args.iterations))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "uprobe_points.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    summary = (
        f"uprobe_points: libssl analysis {result.get('analysis_libssl_cold_ms')} ms cold, "
        f"scan warm {result.get('scan_self_warm_ms')} ms; per iteration (SSL_write_ex + SSL_read_ex): "
        f"baseline {result.get('baseline_ns_per_iteration')} ns, classic probes "
        f"+{result.get('classic_overhead_us_per_iteration')} us, plan probes "
        f"+{result.get('plan_overhead_us_per_iteration')} us; Go Write+Read with RET probes "
        f"+{result.get('go_plan_overhead_us_per_iteration')} us, with the memmove candidate "
        f"+{result.get('go_candidate_overhead_us_per_iteration')} us\n"
    )
    sys.stdout.write(summary)


if __name__ == "__main__":
    main()
