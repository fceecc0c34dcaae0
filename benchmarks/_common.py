"""Shared pieces of the capture benchmarks: an nginx peer, the agent in a thread, results files.

Not a benchmark itself (the Justfile runs benchmarks/bench_*.py only).
"""

from __future__ import annotations

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
    }


def write_result(name: str, result: dict[str, Any], summary: str) -> None:
    """Print the JSON result and a one-line summary; write benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, **machine(), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    print(json.dumps(data))
    print(f"{name}: {summary}")


def cpu_seconds(pid: int) -> float:
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
    from qtap_async.agent import AgentOptions
    from qtap_async.bpf.loader import CaptureSettings
    from qtap_async.replay import Recording

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
