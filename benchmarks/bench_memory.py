"""Agent memory (RSS) with many connections, against its configured limits.

- idle: 10k keep-alive connections to nginx, one small request each, then idle; the agent (level
  details, tracing the nginx worker) tracks them all (max_connections 65536, the default);
  then a second round of as many on the same agent: RSS after it against after the first tells reuse
  (an allocator high-water mark) from growth; and in this process (tracemalloc, no kernel) the Python heap
  one such connection's objects take, by allocating line: the rest of the RSS per connection is the allocator's;
- idle_mimalloc: one round as idle, on mimalloc (QTAP_ALLOCATOR=mimalloc) instead of CPython's own pymalloc
  (the default): what the allocator choice does to RSS after the connections close;
- allocator_cpu: what that choice costs: the agent (level summary) on each allocator at a fixed 10k req/s of
  small HTTP/1.1 requests, its CPU per request, interleaved repetitions (median);
- idle_capped: the same with max_connections=2000 (the same Agent through benchmarks/_agent_proc.py):
  the table stays at its limit, the rest is evicted and counted, and RSS stays lower;
- streaming: 1k concurrent connections downloading 256 KiB bodies at level full (h2load -c 1000): peak RSS
  (VmHWM) while every connection is mid-body; bodies are bounded by the protocol limits, and what the agent
  cannot keep up with is dropped and counted, not queued without bound.
The agent runs as benchmarks/_agent_proc.py (the Agent of `qtap run`, with max_connections settable) and
reports the peaks of what it buffers (reassembly hold-back, queue contents) so RSS can be attributed.
RSS values are of the agent process (VmRSS / VmHWM from /proc); "after" values are read AFTER_S after the
load ends, past the agent's heap trims (gc.collect + malloc_trim every 5 s after large releases).
TLS discovery is off (--no-tls) so its start-up ELF analysis (a transient ~70 MiB on this machine) does not
blur the per-connection numbers.
Writes benchmarks/results/memory.json.
Usage: python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, Consumer, Nginx, arguments, run_load, write_result

IDLE = Path(__file__).with_name("_idle_clients.py")
# RSS "after" is read this long after the load ends: the agent trims its heap after large releases
# (AgentOptions.heap_trim_interval_s, 5 s), so two of its ticks have passed.
AFTER_S = 12.0
# The start RSS is read this long after attach: past start-up and the agent's first heap trim (5 s in), which
# hands back what loading freed, so the baseline is the agent's steady state.
SETTLE_S = 7.0


def idle(ng: Nginx, n: int, max_connections: int, rounds: int = 1,
         allocator: str = "pymalloc") -> dict[str, Any]:
    """`rounds` times, n idle connections are opened, held and closed on the same agent. The first round gives
    the per-connection cost; a later round tells whether what the first left behind is reused (RSS after it
    stays where the first left it: an allocator high-water mark) or grows again (something is kept)."""
    c = Consumer("details", target_tgid=ng.pids()[-1], tls=False, max_connections=max_connections,
                 env={"QTAP_ALLOCATOR": allocator})
    helds: list[int] = []
    afters: list[int] = []
    try:
        time.sleep(SETTLE_S)
        base = c.rss_kib()
        used = c.allocator()
        for _ in range(rounds):
            clients = subprocess.Popen([sys.executable, str(IDLE), str(ng.http_port), str(n)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
            assert clients.stdout is not None and clients.stdin is not None
            ready = clients.stdout.readline()
            if not ready.startswith("READY"):
                raise RuntimeError(f"idle clients failed: {ready!r}")
            time.sleep(2.0)  # the agent catches up with the opens and first requests
            helds.append(c.rss_kib())
            clients.stdin.close()
            clients.wait(60)
            time.sleep(AFTER_S)  # the closes are processed and the agent's heap trim (every 5 s) has run
            afters.append(c.rss_kib())
    finally:
        final = c.stop()
    held, after = helds[0], afters[0]
    out = {"rss_start_mib": round(base / 1024, 1), "rss_held_mib": round(held / 1024, 1),
           "rss_after_close_mib": round(after / 1024, 1),
           "kib_per_connection": round((held - base) / n, 2),
           "connections_opened": final.get("connections_opened", 0),
           "connections_evicted_full": final.get("connections_evicted_full", 0),
           "max_connections": max_connections, "allocator": used}
    if rounds > 1:
        out["rounds"] = rounds
        out["rss_held_by_round_mib"] = [round(v / 1024, 1) for v in helds]
        out["rss_after_close_by_round_mib"] = [round(v / 1024, 1) for v in afters]
    return out


def allocator_cpu(ng: Nginx, reps: int = 2, seconds: float = 5.0) -> dict[str, Any]:
    """The agent's CPU µs per request on each allocator (summary level, 10k req/s of small HTTP/1.1)."""
    import statistics

    per: dict[str, list[float]] = {"pymalloc": [], "mimalloc": []}
    for _ in range(reps):
        for name, runs in per.items():
            c = Consumer("summary", target_tgid=ng.pids()[-1], tls=False, env={"QTAP_ALLOCATOR": name})
            try:
                time.sleep(SETTLE_S)
                cpu0 = c.cpu_seconds()
                res = run_load("h2load", f"http://127.0.0.1:{ng.http_port}/small", seconds, clients=10,
                               rps_per_client=1000)
                time.sleep(1.0)  # the backlog is the load's
                runs.append(round((c.cpu_seconds() - cpu0) * 1e6 / max(res["requests_ok"], 1), 2))
            finally:
                c.stop()
    out: dict[str, Any] = {}
    for name, runs in per.items():
        out[f"{name}_us_per_request"] = round(statistics.median(runs), 2)
        out[f"{name}_us_per_request_runs"] = runs
    return out


def python_heap_per_idle_connection(n: int = 10000) -> dict[str, Any]:
    """What the pipeline's Python objects take per idle keep-alive connection (tracemalloc, in this process):
    the same opens, request and response as the idle clients', as kernel records through the replay pipeline
    at details level. RSS per connection minus this is the allocator's share (pools, arenas, fragmentation)."""
    import gc
    import linecache
    import tracemalloc

    from qtap_async.bpf import abi
    from qtap_async.replay import Replayer

    req = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
    resp = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
            b"Connection: keep-alive\r\n\r\n{\"ok\":true,\"n\":1}")

    def records(first: int, count: int) -> list[bytes]:
        out = []
        for conn in range(first, first + count):
            ts = conn * 10
            out += [abi.conn_open_record(ts, conn, 100, lport=8080, rport=1024 + conn % 60000, comm=b"nginx"),
                    abi.data_record(ts + 1, conn, 100, req, direction=abi.Dir.RECV),  # nginx on 8080 reads it
                    abi.data_record(ts + 2, conn, 100, resp, direction=abi.Dir.SEND)]
        return out

    rp = Replayer("details")
    rp.feed(records(1, 200))  # warm-up: first-use caches are not per connection
    batch = records(1000, n)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    rp.feed(batch)
    gc.collect()
    diff = tracemalloc.take_snapshot().compare_to(before, "lineno")
    tracemalloc.stop()
    held = len(rp.stage.conntrack.conns) - 200
    total = sum(d.size_diff for d in diff)
    top = [(f"{Path(f.filename).name}:{f.lineno} {linecache.getline(f.filename, f.lineno).strip()[:60]}",
            round(d.size_diff / held)) for d in diff[:8] if d.size_diff > 0 for f in (d.traceback[0],)]
    return {"connections": held, "bytes_per_connection": round(total / held), "top_lines": top}


def streaming(ng: Nginx, conns: int, duration: float) -> dict[str, Any]:
    c = Consumer("full", target_tgid=ng.pids()[-1], tls=False, max_connections=65536)
    try:
        time.sleep(SETTLE_S)
        base = c.rss_kib()
        res = run_load("h2load", f"http://127.0.0.1:{ng.http_port}/large", duration, clients=conns)
        peak = c.rss_kib("VmHWM")
        time.sleep(AFTER_S)
        after = c.rss_kib()
    finally:
        final = c.stop()
    return {"connections": conns, "rss_start_mib": round(base / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
            "rss_after_mib": round(after / 1024, 1), "req_per_s": res["req_per_s"],
            "body_mib_per_s": round(res["req_per_s"] * 0.25, 1),
            "kernel_drops": final.get("kernel_drop_ringbuf", 0), "queue_drops": final.get("queue_drops", 0),
            "stream_gaps": final.get("stream_gaps", 0),
            **{k.removeprefix("peak_") + "_peak": v for k, v in final.items() if k.startswith("peak_")}}


def configured_bound_mib(conns: int, base_mib: float) -> float:
    """What the configured limits allow the agent to hold for `conns` connections of one stream per
    direction: the raw and output queues' byte bounds, and per direction the reassembly hold-back
    bound plus one kept body and one kept header section (protocol limits)."""
    from qtap_async.protocols.limits import DEFAULT_LIMITS as L
    from qtap_async.topology import AgentOptions
    from qtap_async.transforms.reassembly import DEFAULT_MAX_PENDING_BYTES

    o = AgentOptions()
    per_direction = DEFAULT_MAX_PENDING_BYTES + L.max_body_bytes + L.max_header_bytes
    return round(base_mib + (o.raw_queue_bytes + o.out_queue_bytes + conns * 2 * per_direction) / 2**20, 1)


def main() -> None:
    quick = arguments(__doc__, flags=QUICK).quick
    n = 2000 if quick else 10000
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    with Nginx() as ng:
        for k, v in idle(ng, n, 65536, rounds=2).items():
            result[f"idle_{n}_{k}"] = v
        for k, v in idle(ng, n, 65536, allocator="mimalloc").items():
            result[f"idle_{n}_mimalloc_{k}"] = v
        for k, v in allocator_cpu(ng, reps=1 if quick else 2).items():
            result[f"allocator_cpu_{k}"] = v
        for k, v in idle(ng, n, 2000).items():
            result[f"idle_{n}_capped_{k}"] = v
        for k, v in streaming(ng, 200 if quick else 1000, 3.0 if quick else 5.0).items():
            result[f"streaming_{k}"] = v
    for k, v in python_heap_per_idle_connection(n).items():
        result[f"idle_python_heap_{k}"] = v
    bound = configured_bound_mib(result["streaming_connections"], result["streaming_rss_start_mib"])
    result["streaming_configured_bound_mib"] = bound
    result["streaming_within_configured_bound"] = result["streaming_rss_peak_mib"] <= bound
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    r = result
    write_result("memory", result,
                 f"{n} idle conns: RSS {r[f'idle_{n}_rss_held_mib']} MiB ({r[f'idle_{n}_kib_per_connection']} "
                 f"KiB/conn); capped at 2000: {r[f'idle_{n}_capped_rss_held_mib']} MiB; "
                 f"{r['streaming_connections']} streaming conns: peak {r['streaming_rss_peak_mib']} MiB")


if __name__ == "__main__":
    main()
