"""Live overhead: nginx over HTTP and HTTPS with no agent, the C reference consumer, and `qtap run`.

Workloads (HTTP/1.1, small responses, nginx with one worker), each 3 s:
- h2load --rps fixed rate: 2k req/s (10 clients x 200) and 10k req/s (20 clients x 500): latency p50/p99
  from h2load's per-request log;
- wrk saturation (1 thread, 16 connections): throughput and latency percentiles.

Consumers, all tracing the nginx worker (--pid / --target-tgid; the hooks still fire for every process):
none, ref (benchmarks/reference/qtap_ref: socket + process objects, counts records, no TLS probes),
ref_wake_each (the same with .rodata wakeup_bytes=0: a kernel wakeup for every record; ref is woken as
the agent is, once 64 KiB wait, else on a 20 ms timer),
`qtap run --level summary` and `qtap run --level full` (TLS discovery on: HTTPS is seen in plaintext).
Interleaved in one run: the modes in order, then the reverse order; the median of the repetitions
is reported. CPU: nginx worker, load client and consumer, in % of one core over the load's duration.
Writes benchmarks/results/live.json.
Usage: python benchmarks/bench_live.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Consumer, Nginx, run_load, write_result

MODES = ("none", "ref", "ref_wake_each", "summary", "full")


def loads(ng: Nginx, duration: float) -> list[tuple[str, str, str, dict[str, Any]]]:
    out = []
    for proto, port in (("http", ng.http_port), ("https", ng.https_port)):
        url = f"{proto}://127.0.0.1:{port}/small"
        out += [
            (f"{proto}_2k", "h2load", url, {"clients": 10, "rps_per_client": 200, "duration_s": duration}),
            (f"{proto}_10k", "h2load", url, {"clients": 20, "rps_per_client": 500, "duration_s": duration}),
            (f"{proto}_wrk", "wrk", url, {"clients": 16, "duration_s": duration}),
        ]
    return out


def session(ng: Nginx, mode: str, duration: float) -> dict[str, dict[str, float]]:
    """One consumer instance, every load under it."""
    c = Consumer(mode, target_tgid=ng.pids()[-1], tls=True)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, tool, url, kw in loads(ng, duration):
            cpu0, ng0, t0 = c.cpu_seconds(), ng.cpu_seconds(), time.monotonic()
            res = run_load(tool, url, **kw)
            wall = time.monotonic() - t0
            nginx_cpu = ng.cpu_seconds() - ng0
            out[name] = {
                # nginx's CPU per request: the BPF programs run in its context, so this is the hooks' cost.
                "nginx_cpu_us_per_req": round(1e6 * nginx_cpu / max(1.0, res["req_per_s"] * wall), 2),
                "req_per_s": res["req_per_s"],
                "p50_ms": res["p50_ms"],
                "p99_ms": res["p99_ms"],
                "failed": res["failed"],
                "nginx_cpu_pct": round(100 * nginx_cpu / wall, 1),
                "client_cpu_pct": round(100 * res["client_cpu_s"] / wall, 1),
                "consumer_cpu_pct": round(100 * (c.cpu_seconds() - cpu0) / wall, 1),
            }
    finally:
        final = c.stop()
    for v in out.values():
        v["session_kernel_drops"] = final.get("kernel_drop_ringbuf", 0)
        v["session_queue_drops"] = final.get("queue_drops", 0)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    duration = 2.0 if quick else 3.0
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {m: [] for m in MODES}
    with Nginx() as ng:
        order = list(MODES) if quick else list(MODES) + list(reversed(MODES))
        for mode in order:
            runs[mode].append(session(ng, mode, duration))
    result: dict[str, Any] = {
        "workload": "nginx 1 worker, HTTP/1.1 small responses; h2load fixed rate and wrk saturation, "
                    f"{duration:g} s per load; consumers trace the nginx worker",
        "repetitions": len(runs["none"]),
    }
    for mode, sessions in runs.items():
        for load in sessions[0]:
            for metric in sessions[0][load]:
                vals = [s[load][metric] for s in sessions]
                result[f"{load}_{mode}_{metric}"] = round(statistics.median(vals), 3)
    for load in runs["none"][0]:
        base = result[f"{load}_none_req_per_s"]
        for mode in MODES[1:]:
            if base:
                result[f"{load}_{mode}_throughput_vs_none"] = round(result[f"{load}_{mode}_req_per_s"] / base, 3)
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    r = result
    write_result("live", result,
                 "wrk saturation req/s http none/ref/summary/full "
                 + "/".join(str(r[f"http_wrk_{m}_req_per_s"]) for m in MODES)
                 + "; https " + "/".join(str(r[f"https_wrk_{m}_req_per_s"]) for m in MODES))


if __name__ == "__main__":
    main()
