"""Soak: the agent (`qtap run --config`, real BPF) under mixed traffic for a long run, with real stores.

Traffic, all on loopback and bounded in rate and time: HTTP/1.1 keep-alive and new-connection requests to
nginx, HTTP/2 (h2c prior knowledge) and HTTPS (TLS, ALPN h2) requests to nginx through curl, DNS queries
to the test DNS server, and a churn of short TCP connections. Stores: Kafka (events) and MinIO (objects)
from scripts/services; when they do not answer, Pulse (a local subprocess) and a dir store stand in and
the result says so. The stacks record every transaction (http_capture details: an event and an object
each) and report usage.

Every ``--sample`` seconds: the agent's RSS and CPU (from /proc), the load average and its metrics line.
Reported:
- ``rss_slope_kib_per_min``: least-squares slope of RSS after the warm-up (the first ``--warmup`` of the run,
  20%), with its standard error and a 95% interval; RSS samples are autocorrelated (the allocator grows
  and returns memory in steps), so the error uses the effective sample count n(1-r)/(1+r) of the residuals'
  lag-1 autocorrelation r, not n;
- ``rss_growth_after_warmup_kib``: RSS at the end minus RSS at the first sample after the warm-up;
- ``drops``: every drop counter the agent exports, summed (kernel, channels, sinks);
- ``sink_retries``: retried deliveries of every store;
- ``unaccounted``: events handed to the event stores (object references included) - delivered - dropped
  - still queued or spooled at the end (0 when nothing was lost silently);
- ``heap_blocks_slope_per_min``: the same fit of the interpreter's live blocks (qtap_python_heap_blocks):
  a leak of Python objects raises them steadily; an RSS step with flat blocks is memory the allocator kept
  after a burst. The agent captures every process of the host, so other programs' traffic and a new big
  binary's TLS analysis land in the same RSS: ``agent_series`` (from the metrics lines) has the kernel
  records of all processes, connections, cache sizes and TLS analyses over time to tell which it was;
- the sizes of the agent's bounded caches at the end and how many entries each evicted;
- a PNG of RSS and CPU over time, the warm-up and the fitted line, and below it the agent's tables and the
  host-wide record rate (benchmarks/results/soak.png).

``--tracemalloc`` runs the agent with QTAP_DEBUG_TRACEMALLOC (qtap_async/telemetry/memtrace.py) and keeps
its report of where the Python heap grew (path in the result; tracemalloc slows the agent, so such a run's
RSS and CPU are not the agent's). Services are read from .services/env, or the file QTAP_SERVICES_ENV names.

Usage: python benchmarks/bench_soak.py [--minutes 10] [--sample 5] [--warmup 0.2] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, Nginx, cpu_seconds, write_result

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "tests" / "integration" / "peers"
ENV_FILE = Path(os.environ.get("QTAP_SERVICES_ENV") or ROOT / ".services" / "env")
CURL = "/usr/bin/curl"


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def services() -> dict[str, str] | None:
    if not ENV_FILE.exists():
        return None
    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    endpoint = env.get("QTAP_S3_ENDPOINT", "")
    if not (_reachable(env.get("QTAP_KAFKA_BOOTSTRAP", "")) and _reachable(endpoint.split("//")[-1])):
        return None
    return env


def _create_topic(bootstrap: str, name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()


def stores_yaml(env: dict[str, str] | None, work: Path) -> tuple[str, str, Any]:
    """(event stores YAML, object stores YAML, a Pulse process to stop or None)."""
    common = f"spool: {{dir: {work / 'spool'}, max_bytes: 268435456}}"
    if env is not None:
        topic = f"qtap-soak-{os.getpid()}"
        _create_topic(env["QTAP_KAFKA_BOOTSTRAP"], topic)  # the agent's producer never creates topics
        events = (f"[{{type: kafka, name: kafka, brokers: [\"{env['QTAP_KAFKA_BOOTSTRAP']}\"], topic: {topic}, "
                  f"{common}}}]")
        objects = (f"[{{type: s3, name: minio, endpoint: \"{env['QTAP_S3_ENDPOINT']}\", bucket: "
                   f"{env.get('QTAP_S3_BUCKET', 'qtap-test')}, region: {env.get('QTAP_S3_REGION', 'us-east-1')}, "
                   f"access_key: {{type: text, value: {env['QTAP_S3_ACCESS_KEY']}}}, "
                   f"secret_key: {{type: text, value: {env['QTAP_S3_SECRET_KEY']}}}, insecure: true, {common}}}]")
        return events, objects, None
    data = work / "pulse"
    qtap = [sys.executable, "-m", "cli.main"]
    token = subprocess.run([*qtap, "pulse", "token", "create", "--data-dir", str(data), "--team", "soak"], cwd=ROOT,
                           capture_output=True, text=True, check=True, timeout=120).stdout.strip().split()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pulse = subprocess.Popen([*qtap, "pulse", "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                              "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=(work / "pulse.log").open("wb"))
    deadline = time.monotonic() + 120
    while not _reachable(f"127.0.0.1:{port}"):
        if time.monotonic() > deadline or pulse.poll() is not None:
            raise SystemExit(f"pulse did not start: {(work / 'pulse.log').read_text()[-2000:]}")
        time.sleep(0.3)
    events = (f"[{{type: pulse, name: pulse, url: \"http://127.0.0.1:{port}\", token: {{type: text, value: {token}}},"
              f" {common}}}]")
    objects = f"[{{type: dir, name: dir, path: {work / 'objects'}, {common}}}]"
    return events, objects, pulse


# ---- traffic ----------------------------------------------------------------------------------------


class Traffic:
    def __init__(self, nginx: Nginx, dns_port: int, raw_port: int, stop: threading.Event, rate: float = 1.0) -> None:
        self.nginx, self.dns_port, self.raw_port, self.stop = nginx, dns_port, raw_port, stop
        self.rate = rate  # a multiplier of every job's pace (a tracemalloc run keeps up at a fraction)
        self.counts: dict[str, int] = {"http1": 0, "http2": 0, "tls": 0, "dns": 0, "churn": 0, "errors": 0}
        self._lock = threading.Lock()

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def _paced(self, kind: str, per_s: float, fn: Any) -> None:
        period = 1.0 / (per_s * self.rate)
        nxt = time.monotonic()
        while not self.stop.is_set():
            try:
                fn()
                self._count(kind)
            except Exception:
                self._count("errors")
            nxt += period
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def http1(self) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.nginx.http_port, timeout=10)

        def one() -> None:
            nonlocal conn
            try:
                conn.request("GET", "/small?soak=1")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.nginx.http_port, timeout=10)
                raise

        self._paced("http1", 40, one)

    def curl(self, kind: str, args: list[str], per_s: float) -> None:
        self._paced(kind, per_s, lambda: subprocess.run([CURL, "-sS", "-o", "/dev/null", *args], check=True,
                                                         timeout=20, capture_output=True))

    def dns(self) -> None:
        query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04soak\x04test\x00\x00\x01\x00\x01"

        def one() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(query, ("127.0.0.1", self.dns_port))
                s.recv(512)

        self._paced("dns", 20, one)

    def churn(self) -> None:
        def burst() -> None:
            for _ in range(50):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                try:
                    s.connect(("127.0.0.1", self.raw_port))
                finally:
                    s.close()
            self._count("churn", 49)

        self._paced("churn", 4, burst)

    def start(self) -> list[threading.Thread]:
        n = self.nginx
        jobs = [self.http1, self.dns, self.churn,
                lambda: self.curl("http2", ["--http2-prior-knowledge", f"http://127.0.0.1:{n.h2c_port}/small"], 5),
                lambda: self.curl("tls", ["-k", "--http2", f"https://127.0.0.1:{n.https_port}/small"], 5)]
        threads = [threading.Thread(target=j, daemon=True) for j in jobs]
        for t in threads:
            t.start()
        return threads


def raw_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.close()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


# ---- analysis -----------------------------------------------------------------------------------------


def slope(xs: list[float], ys: list[float]) -> float:
    return fit(xs, ys)["slope"]


def fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares y = a + b x: the slope b, its standard error and 95% interval, the intercept a.

    The residuals of RSS samples are autocorrelated, which makes the textbook error too small; the error
    here uses the effective sample count n (1 - r) / (1 + r), r the lag-1 autocorrelation of the residuals
    (0 when it is negative), and the normal 1.96 (n is ~100 samples).
    """
    n = len(xs)
    if n < 3:
        return {"slope": 0.0, "intercept": ys[0] if ys else 0.0, "se": 0.0, "ci95_low": 0.0, "ci95_high": 0.0,
                "n": n, "n_eff": n, "r1": 0.0}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    res = [y - (a + b * x) for x, y in zip(xs, ys, strict=True)]
    ssr = sum(e * e for e in res)
    r1 = sum(res[i] * res[i - 1] for i in range(1, n)) / ssr if ssr else 0.0
    r1 = max(0.0, min(r1, 0.99))
    n_eff = max(3.0, n * (1 - r1) / (1 + r1))
    # Var(b) = sigma^2 / Sxx with sigma^2 from the residuals; Sxx shrinks with the effective count.
    se = (ssr / (n - 2) / sxx * n / n_eff) ** 0.5 if sxx else 0.0
    return {"slope": b, "intercept": a, "se": se, "ci95_low": b - 1.96 * se, "ci95_high": b + 1.96 * se,
            "n": n, "n_eff": round(n_eff, 1), "r1": round(r1, 3)}


def last_metrics(log: Path) -> dict[str, int]:
    """The counters at the agent's stop (the JSON line `qtap run --stats` prints after everything drained);
    else the last periodic metrics line, which may be seconds before the stop (events still in flight)."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith('{"qtap_'):
            try:
                final: dict[str, int] = json.loads(line)
                return final
            except json.JSONDecodeError:
                break
    for line in reversed(lines):
        for tag in (" stopped: {", " metrics {"):
            if tag in line:
                try:
                    out: dict[str, int] = json.loads(line[line.index(tag) + len(tag) - 1:])
                    return out
                except json.JSONDecodeError:
                    continue
    return {}


#: Per metrics line, what says whether memory follows the soak or something else on the host: the agent
#: captures every process, so other programs' traffic (records, bytes) lands in the same RSS.
SERIES = {"records": "qtap_kernel_records_total", "captured_bytes": "qtap_kernel_truncated_bytes_total",
          "connections_open": "qtap_connections_open", "process_cache": "qtap_process_cache_entries",
          "hosts_paths": "qtap_hosts_paths_watched", "tls_analyses": "qtap_tls_cache_entries",
          "heap_blocks": "qtap_python_heap_blocks"}


def metrics_series(log: Path, t0_wall: float) -> list[dict[str, float]]:
    """The periodic metrics lines as a time series: minutes since the traffic started, SERIES' values."""
    out: list[dict[str, float]] = []
    for line in log.read_text(errors="replace").splitlines():
        if " metrics {" not in line:
            continue
        try:
            ts = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            m = json.loads(line[line.index(" metrics {") + 9:])
        except (ValueError, json.JSONDecodeError):
            continue
        row: dict[str, float] = {"t_min": round((ts - t0_wall) / 60, 3)}
        row.update({k: m.get(name, 0) for k, name in SERIES.items()})
        row["sink_queued"] = sum(v for k, v in m.items() if k.startswith("qtap_sink_queue_depth_events"))
        out.append(row)
    return out


def plot(samples: list[dict[str, float]], path: Path, warm_min: float, line: dict[str, float],
         series: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_min"] for s in samples]
    fig, (ax, low) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(3, 2))
    ax.plot(t, [s["rss_mib"] for s in samples], color="tab:blue", label="RSS (MiB)")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.axvspan(0, warm_min, color="0.9", label="warm-up (excluded)")
    fitted = [s["t_min"] for s in samples if s["t_min"] >= warm_min]
    if fitted:  # the regression, KiB per minute on a MiB axis
        ax.plot(fitted, [(line["intercept"] + line["slope"] * t) / 1024 for t in fitted], color="tab:blue",
                linestyle="--", label=f"fit {line['slope']:.1f} \u00b1 {1.96 * line['se']:.1f} KiB/min")
    ax.legend(loc="lower right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(t, [s["cpu_pct"] for s in samples], color="tab:red", alpha=0.6, label="CPU (%)")
    ax2.set_ylabel("CPU (% of one core)", color="tab:red")
    ax.set_title("qtap agent soak: RSS and CPU")
    if series:  # what the agent tracked: the soak's processes and connections, and everyone else's records
        st = [r["t_min"] for r in series]
        for key, color in (("connections_open", "tab:green"), ("process_cache", "tab:purple"),
                           ("hosts_paths", "tab:orange")):
            low.plot(st, [r[key] for r in series], color=color, label=key.replace("_", " "))
        low.set_ylabel("entries")
        low2 = low.twinx()
        rate = [0.0] + [(b["records"] - a["records"]) / max(1e-9, (b["t_min"] - a["t_min"]) * 60)
                        for a, b in itertools.pairwise(series)]
        low2.plot(st, rate, color="0.5", alpha=0.6, label="kernel records/s (all processes)")
        low2.set_ylabel("records/s", color="0.4")
        low.legend(loc="upper left", fontsize=8)
        low2.legend(loc="upper right", fontsize=8)
    low.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sample", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the slope")
    ap.add_argument("--tracemalloc", action="store_true", help="the agent reports where its heap grew")
    ap.add_argument("--rate", type=float, default=1.0, help="multiplier of every traffic job's pace")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_soak needs root (the agent loads BPF programs)")
    work = Path(tempfile.mkdtemp(prefix="qtap-soak-"))
    env = services()
    events, objects, pulse = stores_yaml(env, work)
    cfg = work / "qpoint.yaml"
    cfg.write_text(f"""version: 2
services:
  event_stores: {events}
  object_stores: {objects}
stacks:
  default:
    plugins:
      - type: http_capture
        config: {{level: details}}
      - type: report_usage
tap:
  direction: egress
  audit_include_dns: true
  http:
    stack: default
""")
    os.chmod(cfg, 0o600)
    nginx = Nginx().start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dns_port = probe.getsockname()[1]
    dns = subprocess.Popen([sys.executable, str(PEERS / "dns_server.py"), "127.0.0.1", str(dns_port)],
                           stdout=subprocess.PIPE, text=True)
    assert dns.stdout is not None and dns.stdout.readline().strip() == "READY"
    srv, raw_port = raw_server()
    log = work / "agent.log"
    agent_env = dict(os.environ)
    trace_file = work / "tracemalloc.txt"
    if args.tracemalloc:
        agent_env["QTAP_DEBUG_TRACEMALLOC"] = str(trace_file)
        # One report per warm-up length: the first is the base of the later ones (growth after warm-up).
        agent_env["QTAP_DEBUG_TRACEMALLOC_INTERVAL"] = str(max(10.0, args.warmup * args.minutes * 60))
    agent = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--config", str(cfg), "--stats",
                              "--metrics-interval", str(args.sample)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=log.open("wb"), env=agent_env)
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    traffic = Traffic(nginx, dns_port, raw_port, stop, args.rate)
    try:
        deadline = time.monotonic() + 90
        while "capture attached" not in log.read_text(errors="replace"):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        traffic.start()
        t0, t0_wall = time.monotonic(), time.time()
        cpu0, tprev = cpu_seconds(agent.pid), t0
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(args.sample)
            now = time.monotonic()
            cpu = cpu_seconds(agent.pid)
            rss = 0
            for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            samples.append({"t_min": (now - t0) / 60, "rss_mib": rss / 1024, "cpu_pct": 100 * (cpu - cpu0) /
                            (now - tprev), "load_1m": os.getloadavg()[0]})
            cpu0, tprev = cpu, now
    finally:
        stop.set()
        time.sleep(1)
        t_stop = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(180)
        except subprocess.TimeoutExpired:
            agent.kill()  # a stop that long is a finding, reported as the exit code -9
            code = agent.wait(30)
        stop_s = time.monotonic() - t_stop
        nginx.stop()
        dns.kill()
        srv.close()
        if pulse is not None:
            pulse.terminate()
            pulse.wait(60)
    final = last_metrics(log)
    warm_min = args.warmup * args.minutes
    warm = [s for s in samples if s["t_min"] >= warm_min]
    line = fit([s["t_min"] for s in warm], [s["rss_mib"] * 1024 for s in warm])
    rss_slope = line["slope"]
    growth = (warm[-1]["rss_mib"] - warm[0]["rss_mib"]) * 1024 if warm else 0.0
    # The agent's bounded tables: their sizes at the end and what their bounds pushed out.
    caches = {k: v for k, v in final.items() if any(w in k.split("{")[0] for w in ("_cache_", "_hosts_paths_"))}
    # Every drop counter in records/events (not bytes); the sinks' per-reason counters, not their sum.
    drop_counts = {k: v for k, v in final.items() if "drop" in k and k.split("{")[0].endswith("_total")
                   and "bytes" not in k and not k.startswith("qtap_sink_dropped_events_total") and v}
    drops = sum(drop_counts.values())
    retries = sum(v for k, v in final.items() if k.startswith("qtap_sink_retried_events_total"))

    def per_store(name: str, kind: str) -> int:
        return sum(v for k, v in final.items() if k.startswith(name) and f'store="{kind}:' in k)

    # qtap_events_written_total counts every event handed to the event stores (object references too).
    handed = final.get("qtap_events_written_total", 0)
    unaccounted = (handed - per_store("qtap_sink_delivered_events_total", "event")
                   - per_store("qtap_sink_dropped_events_total", "event")
                   - per_store("qtap_sink_queue_depth_events", "event")
                   - per_store("qtap_sink_spool_depth_events", "event"))
    png = RESULTS / "soak.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    series = metrics_series(log, t0_wall)
    # The interpreter's live blocks after the warm-up: a leak of Python objects raises them steadily, while an
    # RSS step with flat blocks is memory the allocator kept after a burst (other processes' traffic, a big
    # binary's TLS analysis).
    warm_series = [r for r in series if warm_min <= r["t_min"] <= args.minutes and r["heap_blocks"]]
    blocks = fit([r["t_min"] for r in warm_series], [r["heap_blocks"] for r in warm_series])
    plot(samples, png, warm_min, line, series)
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "stores": "kafka+minio" if env is not None else "pulse+dir (Kafka/MinIO did not answer)",
        "traffic": traffic.counts,
        "rss_start_mib": round(samples[0]["rss_mib"], 1) if samples else 0,
        "rss_end_mib": round(samples[-1]["rss_mib"], 1) if samples else 0,
        "rss_after_warmup_mib": round(warm[0]["rss_mib"], 1) if warm else 0,
        "rss_growth_after_warmup_kib": round(growth),
        "warmup_min": round(warm_min, 2),
        "rss_slope_kib_per_min": round(rss_slope, 1),
        "rss_slope_se_kib_per_min": round(line["se"], 1),
        "rss_slope_ci95_kib_per_min": [round(line["ci95_low"], 1), round(line["ci95_high"], 1)],
        "rss_fit": {"n": line["n"], "n_eff": line["n_eff"], "residual_lag1_autocorrelation": line["r1"]},
        "heap_blocks_after_warmup": int(warm_series[0]["heap_blocks"]) if warm_series else 0,
        "heap_blocks_end": int(warm_series[-1]["heap_blocks"]) if warm_series else 0,
        "heap_blocks_slope_per_min": round(blocks["slope"]),
        "heap_blocks_slope_ci95_per_min": [round(blocks["ci95_low"]), round(blocks["ci95_high"])],
        "load_1m_during": [round(min(s["load_1m"] for s in samples), 2),
                           round(max(s["load_1m"] for s in samples), 2)] if samples else [],
        "cpu_mean_pct": round(sum(s["cpu_pct"] for s in samples) / max(1, len(samples)), 1),
        "drops": drops,
        "drops_by_counter": drop_counts,
        "sink_retries": retries,
        "events_handed_to_stores": handed,
        "objects_stored": per_store("qtap_sink_delivered_events_total", "object"),
        "events_delivered": per_store("qtap_sink_delivered_events_total", "event"),
        "events_spooled_at_end": per_store("qtap_sink_spool_depth_events", "event"),
        "unaccounted": unaccounted,
        "agent_exit": code,
        "stop_s": round(stop_s, 1),
        "caches_at_end": caches,
        "tracemalloc_report": str(trace_file) if args.tracemalloc else None,
        "png": str(png.relative_to(ROOT)),
        "samples": samples,
        "agent_series": series,
    }
    write_result("soak", result, f"{args.minutes:g} min, RSS slope {rss_slope:.1f} KiB/min after warm-up "
                 f"(95% {line['ci95_low']:.1f}..{line['ci95_high']:.1f}), growth after warm-up {growth:.0f} KiB, "
                 f"heap blocks {blocks['slope']:+.0f}/min (95% {blocks['ci95_low']:.0f}..{blocks['ci95_high']:.0f}), "
                 f"drops {drops}, retries {retries}, unaccounted {unaccounted}, stores {result['stores']}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
