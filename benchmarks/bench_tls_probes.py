"""Loopback HTTPS (nginx + wrk, both on the system libssl) with no probes, with the classic probe set
(uprobe + uretprobe at the SSL_* function entries, as other agents place them), with this agent's probe plan
(emulated instructions, shared/PROBES.md), and with the whole agent (`qtap run --level summary`). The classic and
plan sets run with the socket tracepoints and a discarding drain (mode `tracepoints` alone is their base).

Same run, interleaved, REPEATS rounds. Besides req/s it measures the CPU that nginx + wrk spend per request
(utime + stime from /proc); the difference to the no-probe run divided by the probe hits per request gives the
cost of one probe hit for each set. Prints one JSON object and a summary line; writes
benchmarks/results/tls_probes.json.

Run as root: .venv/bin/python benchmarks/bench_tls_probes.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import arguments  # noqa: E402
from qtap_async.bpf.loader import Capture, CaptureSettings  # noqa: E402
from qtap_async.bpf.object import BpfObject  # noqa: E402
from qtap_async.tls import FileKey, analyze_file  # noqa: E402
from qtap_async.tls.attach import TlsProbes, system_tls_libraries  # noqa: E402

DURATION_S = int(os.environ.get("QTAP_BENCH_DURATION", "5"))
REPEATS = int(os.environ.get("QTAP_BENCH_REPEATS", "2"))
CONNECTIONS = 16
# SSL_read + SSL_write on the nginx side and on the wrk side, per request.
TLS_CALLS_PER_REQUEST = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total


def _start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    key, crt = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    (tmp / "www").mkdir()
    (tmp / "www" / "small").write_bytes(b"x" * 100)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
user root; worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;
  uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {crt}; ssl_certificate_key {key}; root {tmp}/www; }} }}
""")
    proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def _nginx_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [master, *map(int, out)]


def _wrk(port: int, pids: list[int]) -> dict[str, float]:
    before = _cpu_ticks(pids)
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "--latency",
                            f"https://127.0.0.1:{port}/small"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    wrk_before = _cpu_ticks([wrk.pid])
    wrk_after = wrk_before
    while wrk.poll() is None:
        wrk_after = max(wrk_after, _cpu_ticks([wrk.pid]) if Path(f"/proc/{wrk.pid}").exists() else wrk_after)
        time.sleep(0.25)
    out = wrk.communicate()[0]
    after = _cpu_ticks(pids)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}
    n = int(reqs.group(1)) if reqs else 0
    ticks = (after - before) + (wrk_after - wrk_before)
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "req_per_s": float(m.group(1)) if m else 0.0,
        "p99_us": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
        "cpu_us_per_req": (ticks / hz * 1e6 / n) if n else 0.0,
    }


class _Drain:
    """Drains the ring buffer and discards, so the kernel side is measured without our pipeline."""

    def __init__(self, cap: Capture) -> None:
        self.cap = cap
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.cap.ringbuf is not None
        while not self.stop.is_set():
            self.cap.ringbuf.poll(100)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _libssl() -> str:
    for p in system_tls_libraries():
        if "libssl" in p:
            return p
    raise SystemExit("no system libssl found")


def _classic(probes: TlsProbes, lib_path: str) -> int:
    """uprobe + uretprobe at each SSL_* function's first instruction (what most agents do)."""
    st = os.stat(lib_path)
    lib = analyze_file(lib_path, FileKey(st.st_dev, st.st_ino))
    assert lib is not None
    n = 0
    for f in lib.functions:
        direction = 0 if "write" in f.name else 1
        ex = f.name.endswith("_ex")
        cookie = 1 | direction << 8 | 0 << 12 | 1 << 16 | ((1 << 9 | 3 << 20) if ex else 0)
        probes.obj.program("uprobe_tls_entry").attach_uprobe(lib_path, f.offset, cookie=cookie)
        probes.obj.program("uprobe_tls_return").attach_uprobe(lib_path, f.offset, retprobe=True)
        n += 2
    return n


def _plan(probes: TlsProbes, lib_path: str) -> int:
    st = os.stat(lib_path)
    lib = analyze_file(lib_path, FileKey(st.st_dev, st.st_ino))
    assert lib is not None
    return probes.attach(lib, system=True).probes


class _NoSyscallsCapture(Capture):
    """Measurement only, NOT a working capture: the sock path with every syscall tracepoint left out too
    (connect, accept, close, socket, sendfile, splice, mmsg). While any syscall tracepoint is attached, every
    syscall of every task takes the kernel's syscall-tracing slow path; this mode prices that remainder."""

    def _open_socket(self, directory: Path, path: str) -> BpfObject:
        sock = super()._open_socket(directory, path)
        for prog in sock.programs.values():
            if prog.section.startswith("tracepoint/syscalls/"):
                prog.set_autoload(False)
        return sock


def run_mode(mode: str, port: int, pids: list[int], libssl: str) -> dict[str, float]:
    # "plan@syscalls": the plan set over the syscall tracepoint path; no suffix: the path the kernel picks.
    mode, _, path = mode.partition("@")
    if mode == "none":
        return _wrk(port, pids)
    if mode == "agent":
        env = {**os.environ, "QTAP_SOCKET_PATH": path} if path else None
        qtap = ROOT / ".venv/bin/qtap"
        cmd = [str(qtap)] if qtap.exists() else [sys.executable, "-m", "cli.main"]
        agent = subprocess.Popen([*cmd, "run", "--level", "summary"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert agent.stderr is not None
        for line in agent.stderr:  # measure only once every probe is attached
            if "capture attached" in line:
                break
        threading.Thread(target=agent.stderr.read, daemon=True).start()
        try:
            r = _wrk(port, pids)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(30)
        return r
    if path == "sock-nosyscalls":
        cap: Capture = _NoSyscallsCapture(CaptureSettings(self_tgid=os.getpid(), socket_path="sock"))
    else:
        cap = Capture(CaptureSettings(self_tgid=os.getpid(), **({"socket_path": path} if path else {})))
    probes = TlsProbes(cap)
    drain = _Drain(cap)
    try:
        if mode == "classic":
            _classic(probes, libssl)
        elif mode == "plan":
            _plan(probes, libssl)
        return _wrk(port, pids)
    finally:
        drain.close()
        probes.close()
        cap.close()


def main() -> None:
    arguments(__doc__)  # --help, and an error for an argument it does not take
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    libssl = _libssl()
    # tracepoints: the socket/process tracepoints + a drain, no TLS probes (the base for the per-hit cost).
    # QTAP_BENCH_MODES picks some (comma-separated), e.g. "none,tracepoints@sock,plan@sock,tracepoints@syscalls,
    # plan@syscalls" to set both socket I/O paths side by side (qtap_async/bpf/socket_path.py).
    modes = os.environ.get("QTAP_BENCH_MODES", "none,tracepoints,classic,plan,agent").split(",")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        nginx, port = _start_nginx(Path(d))
        try:
            pids = _nginx_pids(nginx.pid)
            _wrk(port, pids)  # warm-up
            for _ in range(REPEATS):
                for m in modes:
                    results[m].append(run_mode(m, port, pids, libssl))
        finally:
            nginx.terminate()
            nginx.wait(10)
    out: dict[str, float | str] = {"duration_s_per_run": DURATION_S, "repeats": REPEATS,
                                   "load_avg_1m": os.getloadavg()[0], "libssl": libssl}
    for m in modes:
        for k in ("req_per_s", "p99_us", "cpu_us_per_req"):
            out[f"{m}_{k}"] = round(statistics.median(r[k] for r in results[m]), 2)
    base = float(out["none_req_per_s"]) or 1.0
    for m in modes:
        if m != "none":
            out[f"{m}_throughput_ratio"] = round(float(out[f"{m}_req_per_s"]) / base, 3)
    # Probe hits per request: entry + return for each TLS call, on both sides.
    hits = 2 * TLS_CALLS_PER_REQUEST
    for m in modes:
        name, _, path = m.partition("@")
        tp = "tracepoints" + (f"@{path}" if path else "")
        if name in ("classic", "plan") and tp in modes:
            extra = float(out[f"{m}_cpu_us_per_req"]) - float(out[f"{tp}_cpu_us_per_req"])
            out[f"{m}_us_per_probe_hit"] = round(extra / hits, 3)
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / os.environ.get("QTAP_BENCH_OUT", "tls_probes.json")).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    ratios = ", ".join(f"{m} {out[f'{m}_throughput_ratio']}x" for m in modes if m != "none")
    hit = ", ".join(f"{m} {out[f'{m}_us_per_probe_hit']} us" for m in modes if f"{m}_us_per_probe_hit" in out)
    print(f"tls_probes: none {out['none_req_per_s']:.0f} req/s, {ratios}; per hit {hit or '-'}")


if __name__ == "__main__":
    main()
