"""Shared pieces of the capture benchmarks: an nginx peer, the agent in a thread, results files.

Not a benchmark itself (the Justfile runs benchmarks/bench_*.py only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMALL_BODY = b'{"id": 42, "name": "widget", "tags": ["a", "b"], "ok": true}\n'
LARGE_BODY_BYTES = 256 * 1024


#: The --quick flag most benchmarks take.
QUICK = {"--quick": "shorter loads, fewer repetitions (a smoke run, not for RESULTS.md)"}


def arguments(doc: str | None, *, flags: dict[str, str] | None = None,
              values: dict[str, tuple[type, str]] | None = None) -> argparse.Namespace:
    """A benchmark's command line: its docstring for --help, the given flags (``--quick``: help) and valued
    options (``--reps``: (int, help)), and an error for anything else, instead of running the whole
    benchmark with an argument it does not know."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, text in (flags or {}).items():
        p.add_argument(flag, action="store_true", help=text)
    for name, (kind, text) in (values or {}).items():
        p.add_argument(name, type=kind, help=text)
    return p.parse_args()


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    load1, load5, load15 = os.getloadavg()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_1m": round(load1, 2),
        "load_5m": round(load5, 2),
        "load_15m": round(load15, 2),
        "bpf_objects": objects_id(),
    }


def objects_id() -> str:
    """Which BPF build was measured (QTAP_BPF_DIR can point a run at another one): one sha256 over every
    object of the directory, so run_all can check that every part of a run measured the same build."""
    import hashlib

    from qtap_async.bpf.loader import objects_dir as od

    directory = od()
    # Named relative to the checkout when it is inside it: results are committed, machine paths are not.
    try:
        where = str(directory.resolve().relative_to(ROOT))
    except ValueError:
        where = str(directory)
    objs = sorted(directory.glob("*.bpf.o"))
    if not objs:
        return f"{where} (missing)"
    h = hashlib.sha256()
    for o in objs:
        h.update(o.name.encode() + b"\0" + o.read_bytes())
    return f"{where} {len(objs)} objects sha256:{h.hexdigest()[:12]}"


def write_result(name: str, result: dict[str, Any], summary: str) -> None:
    """Print the JSON result and a one-line summary; write benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, **machine(), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    print(json.dumps(data))
    print(f"{name}: {summary}")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process: the sum of its threads' on-CPU time from /proc/PID/task/*/schedstat
    (nanoseconds; /proc/PID/stat has 10 ms ticks, too coarse for a few seconds of a light consumer)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
    except OSError:
        return cpu_seconds_ticks(pid)
    return total / 1e9


def cpu_seconds_ticks(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children, from /proc (clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime, cstime are fields 14-17 (1-based) of stat; here offset by the 2 we split off.
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick


def self_cpu_threads() -> float:
    """CPU seconds of this whole process (all threads), unlike time.process_time which is the same."""
    return time.process_time()


class Nginx:
    """nginx with one worker: HTTP/1.1 on `http_port`, h2c (prior knowledge) on `h2c_port`, HTTPS (h2 +
    http/1.1 via ALPN) on `https_port`. Paths: /small (a small JSON body), /large (256 KiB)."""

    def __init__(self, workers: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qtap-bench-nginx-"))
        self.http_port = _free_port()
        self.h2c_port = _free_port()
        self.https_port = _free_port()
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        d = self.dir
        d.chmod(0o755)  # mkdtemp makes it 0700 and the nginx workers do not run as root
        (d / "www").mkdir()
        (d / "www" / "small").write_bytes(SMALL_BODY)
        (d / "www" / "large").write_bytes(bytes(range(256)) * (LARGE_BODY_BYTES // 256))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                        "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        conf = f"""
daemon off;
master_process on;
worker_processes {self.workers};
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/json;
    sendfile off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{self.http_port};
        listen 127.0.0.1:{self.h2c_port} http2;
        listen 127.0.0.1:{self.https_port} ssl http2;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        http2_max_concurrent_streams 1000;
        root {d}/www;
    }}
}}
"""
        # sendfile off: with sendfile the kernel moves the body without a user buffer and the agent sees only
        # byte counts; the benchmarks want the bodies to go through the capture like a proxy's would.
        (d / "nginx.conf").write_text(conf)
        (d / "tmp").mkdir()
        self.proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _port_open(self.http_port) and _port_open(self.https_port):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx failed: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.proc is None:
            return []
        out = [self.proc.pid]
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            out += [int(k) for k in kids]
        except OSError:
            pass
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class AgentThread:
    """The real agent (real BPF) in a background thread of this process, with a given writer."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _main(self) -> None:
        import uvloop

        try:
            uvloop.run(self.agent.run(install_signals=False))
        except BaseException as exc:
            self.error = exc
            self.agent.attached.set()

    def start(self) -> AgentThread:
        self._thread = threading.Thread(target=self._main, name="agent", daemon=True)
        self._thread.start()
        if not self.agent.attached.wait(120):
            raise RuntimeError("agent did not attach")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        self.agent.stop()
        if self._thread is not None:
            self._thread.join(120)
        if self.error is not None:
            raise self.error


def record_run(path: Path, workload: Any, *, target_tgid: int = 0, level: str = "details", tls: bool = True,
               embed_events: bool = True, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the kernel records of `workload()` with the real agent; returns the trailer written."""
    from qtap_async.bpf.loader import CaptureSettings
    from qtap_async.replay import Recording
    from qtap_async.topology import AgentOptions

    opts = AgentOptions(tls=tls, http_level=level,  # type: ignore[arg-type]
                        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=target_tgid))
    with path.open("wb") as f:
        rec = Recording(f, opts, embed_events=embed_events, meta=meta)
        t = AgentThread(rec.agent).start()
        try:
            workload()
            time.sleep(0.5)  # let the last close records reach the ring buffer
        finally:
            t.stop()
        return rec.finish()


def run_quiet(cmd: list[str], timeout: float = 120) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


REFERENCE_DIR = ROOT / "benchmarks" / "reference"
VENV_BIN = ROOT / ".venv" / "bin"


def build_reference() -> Path:
    """Build the C reference consumer if it is missing or older than its source."""
    src, exe = REFERENCE_DIR / "qtap_ref.c", REFERENCE_DIR / "qtap_ref"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["clang", "-O2", "-g", "-Wall", "-o", str(exe), str(src), "-lbpf", "-lelf", "-lz"], check=True)
    return exe


def objects_dir() -> Path:
    from qtap_async.bpf.loader import objects_dir as od

    return od()


def skipped_socket_programs() -> list[str]:
    """The socket.bpf.o programs the agent would not load here (the socket I/O path it does not choose): the
    reference skips the same ones, so both run one path. Empty for a build with a single path."""
    try:
        from qtap_async.bpf import socket_path
    except ImportError:
        return []
    path, _ = socket_path.choose()
    other = socket_path.SYSCALLS if path == socket_path.SOCK else socket_path.SOCK
    return sorted(socket_path.PROGRAMS[other])


def tls_plan_file(pid: int) -> Path:
    """The agent's TLS probe plan for every TLS library process `pid` maps, as qtap_ref's --tls-plan lines
    ("PROGRAM RETPROBE OFFSET COOKIE PATH"). Raises when the process maps no TLS library: a reference run
    "with TLS probes" that attaches none would measure the wrong thing."""
    from qtap_async.tls.attach import attach_path, probe_groups
    from qtap_async.tls.discover import scan_pid

    lines = []
    for lib in scan_pid(pid).values():
        groups, _ = probe_groups(lib)
        for (prog, retprobe), sites in groups.items():
            lines += [f"{prog} {int(retprobe)} {off} {cookie} {attach_path(lib)}" for off, cookie in sites]
    if not lines:
        raise RuntimeError(f"process {pid} maps no TLS library with a probe plan")
    with tempfile.NamedTemporaryFile("w", prefix="qtap-ref-tls-", suffix=".plan", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    return Path(f.name)


class Consumer:
    """A ring-buffer consumer in its own process: none, the C reference (ref: as the agent, woken once
    64 KiB wait or on a 20 ms timer; ref_wake_each: woken for every record; ref_poll: draining every 1 ms),
    or `qtap run` at a level (LEVEL_PRIORITY, e.g. summary_low: at that --cpu-priority).

    `cpu_seconds()` reads /proc, so a measurement window can exclude start-up (BPF load, TLS discovery).
    """

    def __init__(self, mode: str, target_tgid: int = 0, tls: bool = True, ring_mib: int = 16,
                 max_connections: int = 0, poll_sleep_us: int = 0, env: dict[str, str] | None = None) -> None:
        self.mode = mode
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: list[str] = []
        self.stdout = ""
        self._plan: Path | None = None
        if mode == "none":
            return
        if mode == "ref_poll":  # the reference draining every 1 ms instead of sleeping in epoll
            poll_sleep_us = poll_sleep_us or 1000
        if mode.startswith("ref"):
            cmd = [str(build_reference()), str(objects_dir()), "--ring-mib", str(ring_mib)]
            for name in skipped_socket_programs():
                cmd += ["--skip-program", name]
            if mode == "ref_tls":  # the same TLS uprobes as the agent attaches to the target's libraries
                if not target_tgid:
                    raise ValueError("ref_tls needs target_tgid: the plan is the target's TLS libraries")
                self._plan = tls_plan_file(target_tgid)
                cmd += ["--tls-plan", str(self._plan)]
            if mode == "ref_wake_each":  # the kernel wakes the consumer for every record (wakeup_bytes 0)
                cmd += ["--wakeup-bytes", "0"]
            if target_tgid:
                cmd += ["--target-tgid", str(target_tgid)]
            if poll_sleep_us:
                cmd += ["--poll-sleep-us", str(poll_sleep_us)]
            ready = "ATTACHED"
            out = subprocess.PIPE
        else:
            # --stats: every counter as one JSON line on stderr at stop (the final counters read below)
            # "summary_low": that level with --cpu-priority low (the agent yields the CPU to nginx)
            level, _, priority = mode.partition("_")
            cmd = [str(VENV_BIN / "qtap"), "run", "--level", level, "--ring-buffer-mib", str(ring_mib), "--stats"]
            if priority:
                cmd += ["--cpu-priority", priority]
            if target_tgid:
                cmd += ["--pid", str(target_tgid)]
            if not tls:
                cmd.append("--no-tls")
            if max_connections:  # an option `qtap run` does not expose: the same Agent via _agent_proc.py
                cmd = [sys.executable, str(ROOT / "benchmarks" / "_agent_proc.py"), "--level", level,
                       "--max-connections", str(max_connections), "--pid", str(target_tgid)]
                if not tls:
                    cmd.append("--no-tls")
            ready = "capture attached"
            out = subprocess.DEVNULL  # events are encoded and written; the bench does not keep them
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **env} if env else None)
        attached = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if ready in line:
                    attached.set()
            attached.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not attached.wait(120) or self.proc.poll() is not None:
            raise RuntimeError(f"consumer {mode} did not attach: {''.join(self.stderr)[-2000:]}")
        self.settle()

    def settle(self, window_s: float = 0.5, busy: float = 0.05, limit_s: float = 30.0) -> None:
        """Wait until the consumer is idle (under `busy` of a core over `window_s`): after "attached" the agent
        still scans the host's TLS libraries, and that start-up work must not land in the first measurement."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            c0 = self.cpu_seconds()
            time.sleep(window_s)
            if self.cpu_seconds() - c0 < busy * window_s:
                return

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) if self.proc is not None else 0.0

    def allocator(self) -> str:
        """What the agent's Python objects come from: mimalloc when `qtap run` re-executed onto it."""
        if self.proc is None:
            return ""
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return "mimalloc" if "libmimalloc" in maps else "pymalloc"

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory now (VmRSS) or its peak since start (VmHWM), in KiB."""
        if self.proc is None:
            return 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> dict[str, Any]:
        """Stop (SIGINT) and return its final counters: records consumed and drops."""
        if self.proc is None:
            return {}
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # stderr belongs to the pump thread (reading it here too would steal lines); stdout is one line.
        self._pump.join(10)
        out = self.proc.stdout.read() if self.proc.stdout is not None else ""
        if self._plan is not None:
            self._plan.unlink(missing_ok=True)
        if self.mode.startswith("ref"):
            d = json.loads(out.strip().splitlines()[-1])
            return {"records": d["records"], "kernel_records": d["kernel_records"],
                    "kernel_drop_ringbuf": d["kernel_drop_ringbuf"], "queue_drops": 0}
        memory: dict[str, Any] = {}
        for line in self.stderr:
            if line.startswith("MEMORY "):  # benchmarks/_agent_proc.py: peaks of the buffered bytes
                memory = {f"peak_{k}": v for k, v in json.loads(line[7:]).items()}
        for line in reversed(self.stderr):
            # `qtap run --stats` prints the counters as a JSON line; _agent_proc.py logs "stopped: {...}".
            text = line.split("stopped: ", 1)[1] if "stopped: {" in line else line
            if text.startswith("{") and "qtap_source_records_total" in text:
                s = json.loads(text)
                return {"records": s["qtap_source_records_total"] - s["qtap_source_dropped_records_total"],
                        "kernel_records": s["qtap_kernel_records_total"],
                        "kernel_drop_ringbuf": s["qtap_kernel_drop_ringbuf_total"],
                        "queue_drops": s["qtap_source_dropped_records_total"],
                        "events": s["qtap_events_written_total"],
                        "connections_opened": s["qtap_connections_opened_total"],
                        "connections_evicted_full": s["qtap_connections_evicted_full_total"],
                        "stream_gaps": s["qtap_stream_gaps_total"], **memory}
        raise RuntimeError(f"no final counters from qtap run: {''.join(self.stderr)[-2000:]}")


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def run_load(tool: str, url: str, duration_s: float, *, clients: int = 10, rps_per_client: int = 0,
             h1: bool = True, streams: int = 1) -> dict[str, Any]:
    """Drive `url` with h2load (fixed rate with --rps, latency from its per-request log) or wrk (saturation,
    latency from --latency). Returns req/s, p50/p99 in ms, errors and the client's CPU seconds."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if tool == "h2load":
        with tempfile.NamedTemporaryFile(prefix="qtap-h2load-", suffix=".log") as log:
            cmd = ["h2load", "-c", str(clients), "-D", f"{duration_s:g}", "--log-file", log.name, "-m", str(streams)]
            if h1:
                cmd.append("--h1")
            if rps_per_client:
                cmd += ["--rps", str(rps_per_client)]
            out = run_quiet([*cmd, url], timeout=duration_s + 60)
            lat = sorted(int(x.split("\t")[2]) / 1000 for x in Path(log.name).read_text().splitlines() if x)
            ok = sum(1 for x in Path(log.name).read_text().splitlines() if x and x.split("\t")[1].startswith("2"))
        rate = 0.0
        failed = 0
        for line in out.splitlines():
            if line.startswith("finished in"):
                rate = float(line.split(",")[1].split()[0])
            if line.startswith("requests:"):
                failed = int(line.split("succeeded,")[1].split()[0])
        res = {"req_per_s": round(rate, 1), "p50_ms": round(_percentile(lat, 0.5), 3),
               "p99_ms": round(_percentile(lat, 0.99), 3), "requests_ok": ok, "failed": failed}
    else:
        out = run_quiet(["wrk", "-t1", f"-c{clients}", f"-d{duration_s:g}s", "--latency", url], timeout=duration_s + 60)
        pct: dict[str, float] = {}
        rate = 0.0
        errors = 0
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("50%", "99%"):
                v = parts[1]
                scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
                for suffix in ("us", "ms", "s"):
                    if v.endswith(suffix):
                        pct[parts[0]] = float(v[: -len(suffix)]) * scale[suffix]
                        break
            if line.startswith("Requests/sec:"):
                rate = float(parts[1])
            if "Non-2xx" in line or "Socket errors" in line:
                errors += 1
        res = {"req_per_s": round(rate, 1), "p50_ms": round(pct.get("50%", 0.0), 3),
               "p99_ms": round(pct.get("99%", 0.0), 3), "failed": errors}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["client_cpu_s"] = round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3)
    return res
