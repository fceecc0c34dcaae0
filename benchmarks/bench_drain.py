"""The agent against the physical limit of our hooks: the C reference consumer, same workload, same run.

benchmarks/reference/qtap_ref loads the same socket.bpf.o + process.bpf.o (maps shared as loader.py does)
and only counts records. Each consumer traces the nginx worker (--pid / --target-tgid) while h2load drives
nginx over HTTP/1.1 (small responses):

- rate: a fixed 5k req/s for 4 s, which every consumer keeps up with: CPU per record is comparable;
- saturation: h2load as fast as it can for 3 s: how much the hooks and each consumer cost the workload,
  and who drops.

Consumers: ref (woken as the agent is: once 64 KiB wait, else a 20 ms timer), ref_wake_each (the same
with .rodata wakeup_bytes=0: a kernel wakeup for every record), `qtap run --no-tls --level summary` and
`--level full` (TLS discovery off: the reference does not attach TLS probes either), interleaved over 2
repetitions (in order, then reversed). CPU is the consumer's on-CPU time in the measurement window (/proc
schedstat), start-up excluded.
Writes benchmarks/results/drain.json.
Usage: python benchmarks/bench_drain.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, Consumer, Nginx, arguments, run_load, write_result

MODES = ("ref", "ref_wake_each", "summary", "full")


def main() -> None:
    quick = arguments(__doc__, flags=QUICK).quick
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with Nginx() as ng:
        order = list(MODES) + list(reversed(MODES))
        for mode in order[: len(MODES) if quick else len(order)]:
            runs[mode].append(per_load(ng, mode, quick))
    result: dict[str, Any] = {"workload": "nginx HTTP/1.1 small responses, h2load 10 clients; consumers trace the "
                                          "nginx worker only", "repetitions": 1 if quick else 2}
    for mode, rs in runs.items():
        for key in rs[0]:
            result[f"{mode}_{key}"] = round(statistics.median(r[key] for r in rs), 4)
    for mode in ("summary", "full"):
        ref, ag = result["ref_rate_cpu_us_per_record"], result[f"{mode}_rate_cpu_us_per_record"]
        result[f"agent_{mode}_vs_ref_cpu_per_record_ratio"] = round(ag / ref, 1) if ref else 0
        result[f"agent_{mode}_vs_ref_saturation_req_per_s_ratio"] = round(
            result[f"{mode}_saturation_req_per_s"] / result["ref_saturation_req_per_s"], 3)
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    r = result
    write_result("drain", result,
                 f"CPU per record: ref {r['ref_rate_cpu_us_per_record']} us, agent summary "
                 f"{r['summary_rate_cpu_us_per_record']} us ({r['agent_summary_vs_ref_cpu_per_record_ratio']}x), "
                 f"full {r['full_rate_cpu_us_per_record']} us ({r['agent_full_vs_ref_cpu_per_record_ratio']}x); "
                 f"saturation req/s ref {r['ref_saturation_req_per_s']}, summary {r['summary_saturation_req_per_s']}")


def per_load(ng: Nginx, mode: str, quick: bool) -> dict[str, Any]:
    """One consumer instance per load, so records and drops are per load."""
    worker = ng.pids()[-1]
    url = f"http://127.0.0.1:{ng.http_port}/small"
    out: dict[str, Any] = {}
    loads: list[tuple[str, dict[str, Any]]] = [
        ("rate", {"clients": 10, "rps_per_client": 500, "duration_s": 2 if quick else 4}),
        ("saturation", {"clients": 10, "duration_s": 2 if quick else 3}),
    ]
    for load, kw in loads:
        c = Consumer(mode, target_tgid=worker, tls=False)
        try:
            cpu0, ng0, t0 = c.cpu_seconds(), ng.cpu_seconds(), time.monotonic()
            res = run_load("h2load", url, **kw)
            served = res["req_per_s"] * (time.monotonic() - t0)
            nginx_cpu = ng.cpu_seconds() - ng0
            time.sleep(0.5)  # the consumer drains what the ring still holds
            cpu = c.cpu_seconds() - cpu0
        finally:
            final = c.stop()
        records = max(1, final.get("records", 0))
        out[f"{load}_req_per_s"] = res["req_per_s"]
        out[f"{load}_p99_ms"] = res["p99_ms"]
        out[f"{load}_records"] = records
        out[f"{load}_consumer_cpu_s"] = round(cpu, 3)
        out[f"{load}_cpu_us_per_record"] = round(1e6 * cpu / records, 2)
        out[f"{load}_records_per_consumer_cpu_s"] = round(records / cpu) if cpu else 0
        out[f"{load}_kernel_drop_ringbuf"] = final.get("kernel_drop_ringbuf", 0)
        out[f"{load}_queue_drops"] = final.get("queue_drops", 0)
        out[f"{load}_nginx_cpu_s"] = round(nginx_cpu, 3)
        # The BPF programs run in nginx's context: its CPU per request includes what the hooks cost it.
        out[f"{load}_nginx_cpu_us_per_req"] = round(1e6 * nginx_cpu / max(1.0, served), 2)
    return out


if __name__ == "__main__":
    main()
