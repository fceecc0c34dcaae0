"""Uprobe links: classic (one perf-event link per probe) against uprobe_multi (one link per program and file).

For each link mode, on a private copy of the system libssl.so.3 (so no other process is probed) with the
real tls.bpf.o loaded against a real Capture:
- attach and detach time of the file's probe plan (the agent's TlsProbes.attach), per probe;
- the per-call cost the probes add to a Python TLS workload over memory BIOs (SSL_write_ex/SSL_read_ex
  through the private copy), against no probes, in interleaved rounds (median of --rounds).
Prints one JSON line and a summary; writes benchmarks/results/uprobe_links.json. Needs root. Never gates.
Usage: .venv/bin/python benchmarks/bench_uprobe_links.py [--iterations N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import write_result
from bench_uprobe_points import _ldconfig, _run

from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.tls.attach import TlsProbes
from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import FileKey


def _cert(tmp: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(tmp, "k.pem"), "-out", os.path.join(tmp, "c.pem"), "-days", "1",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_uprobe_links needs root")
    out: dict[str, Any] = {"iterations": args.iterations, "rounds": args.rounds}
    cap = Capture(CaptureSettings(self_tgid=os.getpid()))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            libdir = os.path.join(tmp, "lib")
            os.mkdir(libdir)
            lib = os.path.join(libdir, "libssl.so.3")
            shutil.copy2(_ldconfig("libssl.so.3"), lib)
            _cert(tmp)
            if _run(tmp, libdir, 100)["libssl"] != lib:
                raise SystemExit("the workload did not load the private libssl copy")
            st = os.stat(lib)
            info = analyze_file(lib, FileKey(st.st_dev, st.st_ino))
            assert info is not None
            probes = {mode: TlsProbes(cap, multi=(mode == "multi")) for mode in ("classic", "multi")}
            for mode, p in probes.items():
                out[f"{mode}_link_mode"] = p.link_mode  # "classic" where the kernel refuses multi links
            ns: dict[str, list[float]] = {"none": [], "classic": [], "multi": []}
            attach_ms: dict[str, list[float]] = {"classic": [], "multi": []}
            detach_ms: dict[str, list[float]] = {"classic": [], "multi": []}
            n_probes = 0
            for _ in range(args.rounds):
                ns["none"].append(_run(tmp, libdir, args.iterations)["ns_per_iter"])
                for mode, p in probes.items():
                    t = time.perf_counter()
                    n_probes = p.attach(info, system=True).probes
                    attach_ms[mode].append((time.perf_counter() - t) * 1000)
                    ns[mode].append(_run(tmp, libdir, args.iterations)["ns_per_iter"])
                    t = time.perf_counter()
                    p.obj.detach(p.files.pop(info.key).links)  # as the agent detaches a file
                    detach_ms[mode].append((time.perf_counter() - t) * 1000)
            for p in probes.values():
                p.close()
        out["probes_per_file"] = n_probes
        base = statistics.median(ns["none"])
        out["none_ns_per_iteration"] = round(base, 1)
        for mode in ("classic", "multi"):
            out[f"{mode}_ns_per_iteration"] = round(statistics.median(ns[mode]), 1)
            out[f"{mode}_overhead_us_per_iteration"] = round((statistics.median(ns[mode]) - base) / 1000, 3)
            out[f"{mode}_attach_ms"] = round(statistics.median(attach_ms[mode]), 1)
            out[f"{mode}_detach_ms"] = round(statistics.median(detach_ms[mode]), 1)
    finally:
        cap.close()
    summary = (f"{out['probes_per_file']} probes: attach {out['classic_attach_ms']} ms classic vs "
               f"{out['multi_attach_ms']} ms multi; detach {out['classic_detach_ms']} vs {out['multi_detach_ms']} ms; "
               f"per SSL write+read {out['classic_overhead_us_per_iteration']} vs "
               f"{out['multi_overhead_us_per_iteration']} us")
    write_result("uprobe_links", out, summary)


if __name__ == "__main__":
    main()
