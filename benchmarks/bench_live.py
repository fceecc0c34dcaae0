"""Live overhead: nginx over HTTP and HTTPS with no agent, the C reference consumer, and `qtap run`.

Workloads (HTTP/1.1, small responses, nginx with one worker), each 3 s:
- h2load --rps at fixed offered loads: HTTP 2k and 10k req/s; HTTPS 2k, 5k, 10k and 20k req/s; latency
  p50/p99 from h2load's per-request log;
- wrk saturation (1 thread, 16 connections): throughput and latency percentiles.

Consumers, all tracing the nginx worker (--pid / --target-tgid; the hooks still fire for every process):
- none;
- ref: benchmarks/reference/qtap_ref (socket + process objects, counts records), no TLS probes;
- ref_tls: the same plus tls.bpf.o with exactly the uprobes the agent attaches to nginx's TLS libraries (the
  agent's own plan, qtap_async.tls.attach.probe_groups): what the hooks alone cost;
- `qtap run --level summary` and `--level details` (TLS discovery on: HTTPS is seen in plaintext).
- summary_low: `qtap run --level summary --cpu-priority low` (nice 19: nginx runs first on a shared core).
ref_wake_each (the reference woken for every record) runs with --modes.
Interleaved in one run: the modes in order, then the reverse order; the median of the repetitions
is reported. CPU: nginx worker, load client and consumer, in % of one core over the load's duration, and the
consumer's CPU per request.
Then one more session profiles the agent (summary level, HTTPS at 5k req/s) with py-spy, sampling its Python
stacks without stopping it: benchmarks/results/live_profile.txt has the self and inclusive shares.
Writes benchmarks/results/live.json.
Usage: python benchmarks/bench_live.py [--quick] [--reps N] [--modes none,ref,...] [--no-profile]
--reps: repetitions of the mode sequence, alternately forward and reversed (default 2; --quick 1).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, Consumer, Nginx, arguments, run_load, write_result

MODES = ("none", "ref", "ref_tls", "summary", "details", "summary_low")
#: offered loads in req/s (h2load --rps), per protocol; "wrk" is saturation
RATES = {"http": (2000, 10000), "https": (2000, 5000, 10000, 20000)}


def loads(ng: Nginx, duration: float) -> list[tuple[str, str, str, dict[str, Any]]]:
    out = []
    for proto, port in (("http", ng.http_port), ("https", ng.https_port)):
        url = f"{proto}://127.0.0.1:{port}/small"
        for rate in RATES[proto]:
            clients = 10 if rate <= 2000 else 20 if rate <= 10000 else 40
            out.append((f"{proto}_{rate // 1000}k", "h2load", url,
                        {"clients": clients, "rps_per_client": rate // clients, "duration_s": duration}))
        out.append((f"{proto}_wrk", "wrk", url, {"clients": 16, "duration_s": duration}))
    return out


def session(ng: Nginx, mode: str, duration: float) -> dict[str, dict[str, float]]:
    """One consumer instance, every load under it."""
    c = Consumer(mode, target_tgid=ng.pids()[-1], tls=True)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, tool, url, kw in loads(ng, duration):
            # The consumer works off a saturating load's backlog after its clients stop: that CPU is the
            # previous load's, not this one's (without this wait, 2k req/s after wrk measured 300-500 us/req).
            c.settle()
            cpu0, ng0, t0 = c.cpu_seconds(), ng.cpu_seconds(), time.monotonic()
            res = run_load(tool, url, **kw)
            wall = time.monotonic() - t0
            nginx_cpu = ng.cpu_seconds() - ng0
            c.settle()  # ... and it is this load's: counted until the consumer is idle again
            consumer_cpu = c.cpu_seconds() - cpu0
            out[name] = {
                # nginx's CPU per request: the BPF programs run in its context, so this is the hooks' cost.
                "nginx_cpu_us_per_req": round(1e6 * nginx_cpu / max(1.0, res["req_per_s"] * wall), 2),
                "req_per_s": res["req_per_s"],
                "p50_ms": res["p50_ms"],
                "p99_ms": res["p99_ms"],
                "failed": res["failed"],
                "nginx_cpu_pct": round(100 * nginx_cpu / wall, 1),
                "client_cpu_pct": round(100 * res["client_cpu_s"] / wall, 1),
                # Consumer CPU for the load, its backlog included, per second of load and per request.
                "consumer_cpu_pct": round(100 * consumer_cpu / wall, 1),
                "consumer_cpu_us_per_req": round(1e6 * consumer_cpu / max(1.0, res["req_per_s"] * wall), 2),
            }
    finally:
        final = c.stop()
    for v in out.values():
        v["session_kernel_drops"] = final.get("kernel_drop_ringbuf", 0)
        v["session_queue_drops"] = final.get("queue_drops", 0)
    return out


def profile(ng: Nginx, duration: float, level: str = "summary") -> dict[str, Any]:
    """py-spy samples of the agent's Python stacks under HTTPS at 5k req/s: the top self-time and inclusive
    functions (shares of all samples), written to results/live_profile.txt."""
    import shutil
    import subprocess
    import tempfile
    from collections import Counter

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[dev]'); run with --no-profile")
    c = Consumer(level, target_tgid=ng.pids()[-1], tls=True)
    with tempfile.NamedTemporaryFile(suffix=".raw") as raw:
        try:
            rec = subprocess.Popen([spy, "record", "-p", str(c.pid), "-d", f"{duration:g}", "-r", "250", "-f",
                                    "raw", "-o", raw.name, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            run_load("h2load", f"https://127.0.0.1:{ng.https_port}/small", duration, clients=20, rps_per_client=250)
            _, err = rec.communicate(timeout=duration + 60)
            if rec.returncode:
                raise RuntimeError(f"py-spy failed: {err[-500:]}")
        finally:
            c.stop()
        self_t: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for line in Path(raw.name).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                      for f in stack.split(";") if f]
            if not frames or not n.isdigit():
                continue
            self_t[frames[-1]] += int(n)
            for f in set(frames):
                incl[f] += int(n)
    total = sum(self_t.values()) or 1
    # Inclusive shares below the process's own entry frames (the CLI, Runner.run: each is in every busy
    # sample, so they share the largest count; idle samples keep that count under the total).
    root = max(incl.values(), default=0)
    inner = [(f, v) for f, v in incl.most_common() if v < 0.98 * root]
    lines = [f"## agent at {level} level, HTTPS 5k req/s, {total} samples: self time share"]
    lines += [f"{100 * v / total:5.1f}%  {f}" for f, v in self_t.most_common(15)]
    lines += ["", "## inclusive share (the function and what it calls)"]
    lines += [f"{100 * v / total:5.1f}%  {f}" for f, v in inner[:20]]
    (Path(__file__).resolve().parent / "results" / "live_profile.txt").write_text("\n".join(lines) + "\n")
    return {"profile_samples": total, "profile_file": "benchmarks/results/live_profile.txt",
            "profile_top_inclusive": [[f, round(100 * v / total, 1)] for f, v in inner[:8]]}


def main() -> None:
    args = arguments(__doc__, flags={**QUICK, "--no-profile": "skip the py-spy profile of the agent"},
                     values={"--modes": (str, "comma-separated consumers, none first (default: all)"),
                              "--reps": (int, "interleaved repetitions (default 2, 1 with --quick)")})
    quick = args.quick
    modes: tuple[str, ...] = MODES
    if args.modes:
        modes = tuple(args.modes.split(","))
        if modes[0] != "none":
            raise SystemExit("--modes: the first mode must be none (the ratios are to it)")
    duration = 2.0 if quick else 3.0
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {m: [] for m in modes}
    with Nginx() as ng:
        reps = args.reps or (1 if quick else 2)
        order = [m for r in range(reps) for m in (modes if r % 2 == 0 else tuple(reversed(modes)))]
        for mode in order:
            runs[mode].append(session(ng, mode, duration))
    result: dict[str, Any] = {
        "workload": "nginx 1 worker, HTTP/1.1 small responses; h2load fixed rate and wrk saturation, "
                    f"{duration:g} s per load; consumers trace the nginx worker",
        "repetitions": len(runs["none"]),
        "modes": list(modes),
        "loads": list(runs["none"][0]),
    }
    for mode, sessions in runs.items():
        for load in sessions[0]:
            for metric in sessions[0][load]:
                vals = [s[load][metric] for s in sessions]
                result[f"{load}_{mode}_{metric}"] = round(statistics.median(vals), 3)
    for load in runs["none"][0]:
        base = result[f"{load}_none_req_per_s"]
        for mode in modes[1:]:
            if base:
                result[f"{load}_{mode}_throughput_vs_none"] = round(result[f"{load}_{mode}_req_per_s"] / base, 3)
    if not args.no_profile:
        with Nginx() as ng:
            result.update(profile(ng, 6.0 if quick else 10.0))
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    r = result
    write_result("live", result,
                 f"wrk saturation req/s http {'/'.join(modes)} "
                 + "/".join(str(r[f"http_wrk_{m}_req_per_s"]) for m in modes)
                 + "; https " + "/".join(str(r[f"https_wrk_{m}_req_per_s"]) for m in modes))


if __name__ == "__main__":
    main()
