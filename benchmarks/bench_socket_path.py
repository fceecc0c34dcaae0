"""BPF time per HTTPS request on each socket I/O path (qtap_async/bpf/socket_path.py), from the kernel's own
program statistics (BPF_ENABLE_STATS: run_time_ns and run_cnt of every program), so the figure does not move
with the host's other load the way req/s does. nginx + wrk over loopback HTTPS (the setup of
bench_tls_probes.py), the socket/process programs and a discarding drain, no TLS probes; each path loaded in
turn, REPEATS rounds interleaved. Also reports req/s against a no-probe run of the same round and the 1-minute
load average.

Prints one JSON object and a summary line; writes benchmarks/results/socket_path.json.
Run as root: PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_socket_path.py
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import arguments  # noqa: E402
from benchmarks.bench_tls_probes import _Drain, _nginx_pids, _start_nginx, _wrk  # noqa: E402
from qtap_async.bpf import socket_path  # noqa: E402
from qtap_async.bpf._libbpf import libbpf  # noqa: E402
from qtap_async.bpf.loader import Capture, CaptureSettings  # noqa: E402

REPEATS = int(os.environ.get("QTAP_BENCH_REPEATS", "3"))
_SYS_BPF, _BPF_ENABLE_STATS, _BPF_STATS_RUN_TIME = 321, 32, 0  # x86-64; uapi linux/bpf.h
# struct bpf_prog_info: run_time_ns and run_cnt (uapi linux/bpf.h; recursion_misses follows at 208).
_INFO_SIZE, _RUN_TIME, _RUN_CNT = 232, 192, 200


def _enable_stats() -> int:
    """An fd that keeps the kernel's per-program run-time statistics on while it is open (then they stop)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)
    attr.raw = _BPF_STATS_RUN_TIME.to_bytes(4, "little") + bytes(12)
    fd = int(libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, attr, 16))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return fd


def _stats(cap: Capture) -> dict[str, tuple[int, int]]:
    out = {}
    for obj in cap.objects:
        for name, prog in obj.programs.items():
            if not prog.autoload:
                continue
            info = ctypes.create_string_buffer(_INFO_SIZE)
            size = ctypes.c_uint32(_INFO_SIZE)
            libbpf().bpf_obj_get_info_by_fd(prog.fd, info, ctypes.byref(size))
            out[name] = (int.from_bytes(info.raw[_RUN_TIME:_RUN_TIME + 8], "little"),
                         int.from_bytes(info.raw[_RUN_CNT:_RUN_CNT + 8], "little"))
    return out


def run_path(path: str, port: int, pids: list[int]) -> dict[str, float]:
    cap = Capture(CaptureSettings(self_tgid=os.getpid(), socket_path=path))
    drain = _Drain(cap)
    try:
        before = _stats(cap)
        r = _wrk(port, pids)
        after = _stats(cap)
    finally:
        drain.close()
        cap.close()
    n = r["req_per_s"] * float(os.environ.get("QTAP_BENCH_DURATION", "5")) or 1.0
    ns = sum(after[k][0] - before[k][0] for k in after)
    runs = sum(after[k][1] - before[k][1] for k in after)
    return {**r, "bpf_ns_per_req": ns / n, "bpf_runs_per_req": runs / n, "bpf_ns_per_run": ns / (runs or 1)}


def main() -> None:
    arguments(__doc__)  # --help, and an error for an argument it does not take
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    paths = [socket_path.SOCK, socket_path.SYSCALLS]
    results: dict[str, list[dict[str, float]]] = {p: [] for p in ["none", *paths]}
    loads = [os.getloadavg()[0]]
    stats_fd = _enable_stats()
    try:
        with tempfile.TemporaryDirectory() as d:
            nginx, port = _start_nginx(Path(d))
            try:
                pids = _nginx_pids(nginx.pid)
                _wrk(port, pids)  # warm-up
                for _ in range(REPEATS):
                    results["none"].append(_wrk(port, pids))
                    for p in paths:
                        results[p].append(run_path(p, port, pids))
                    loads.append(os.getloadavg()[0])
            finally:
                nginx.terminate()
                nginx.wait(10)
    finally:
        os.close(stats_fd)
    out: dict[str, float | list[float]] = {"repeats": REPEATS, "load_avg_1m": [round(x, 2) for x in loads]}
    for p, rs in results.items():
        for k in rs[0]:
            out[f"{p}_{k}"] = round(statistics.median(r[k] for r in rs), 2)
    base = float(out["none_req_per_s"]) or 1.0  # type: ignore[arg-type]
    for p in paths:
        out[f"{p}_throughput_ratio"] = round(float(out[f"{p}_req_per_s"]) / base, 3)  # type: ignore[arg-type]
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "socket_path.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    print("socket_path: " + "; ".join(
        f"{p}: {out[f'{p}_bpf_ns_per_req']} ns BPF/request in {out[f'{p}_bpf_runs_per_req']} runs, "
        f"{out[f'{p}_throughput_ratio']}x of no-probe req/s" for p in paths) + f"; load {out['load_avg_1m']}")


if __name__ == "__main__":
    main()
