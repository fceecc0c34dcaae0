"""A real OpenTelemetry Collector for the otel store's tests: the binary ``scripts/otelcol build`` made
(OTLP receiver, file exporter), started on free loopback ports with one JSON-lines file per signal, and
readers for what it wrote.

The tests FAIL (never skip) when the binary is not built: scripts/test builds it before pytest runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def collector_binary() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "otelcol"), "path"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("the OpenTelemetry Collector is not built: run `bash scripts/otelcol build` (scripts/test "
                    "does) — " + r.stderr.strip(), pytrace=False)
    return r.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """OTLP JSON attributes as a dict of plain values (int64s are JSON strings there)."""
    out: dict[str, Any] = {}
    for kv in kvs or []:
        out[kv["key"]] = _value(kv.get("value", {}))
    return out


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "doubleValue" in v:
        return v["doubleValue"]
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


class Collector:
    """One Collector process; ``start``/``stop`` may be called again (outage tests). Each start writes
    to fresh files (``run<N>-<signal>.jsonl``) so a restart never truncates what came before."""

    def __init__(self, binary: str, workdir: Path, tls: tuple[str, str] | None = None) -> None:
        self.binary = binary
        self.tls = tls  # (cert file, key file): both receivers serve TLS
        self.dir = workdir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def http_endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _config(self) -> Path:
        run = self.runs
        files = {sig: self.dir / f"run{run}-{sig}.jsonl" for sig in ("traces", "metrics", "logs")}
        exporters = "\n".join(f"  file/{sig}:\n    path: {path}\n    flush_interval: 100ms"
                              for sig, path in files.items())
        pipelines = "\n".join(f"    {sig}:\n      receivers: [otlp]\n      exporters: [file/{sig}]"
                              for sig in files)
        cfg = self.dir / f"run{run}.yaml"
        tls = (f"\n        tls:\n          cert_file: {self.tls[0]}\n          key_file: {self.tls[1]}"
               if self.tls else "")
        cfg.write_text(f"""receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{self.grpc_port}{tls}
      http:
        endpoint: 127.0.0.1:{self.http_port}{tls}
exporters:
{exporters}
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
{pipelines}
""")
        return cfg

    def start(self) -> None:
        assert self.proc is None
        self.runs += 1
        cfg = self._config()
        log = (self.dir / f"run{self.runs}.log").open("wb")
        self.proc = subprocess.Popen([self.binary, "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (_open(self.http_port) and _open(self.grpc_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the Collector did not start:\n" + self.log_text()[-3000:])
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()  # SIGTERM: the Collector flushes its exporters and exits
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("run*.log")))

    # ---------------------------------------------------------------------------------------- reading
    def _lines(self, signal: str) -> Iterator[dict[str, Any]]:
        for path in sorted(self.dir.glob(f"run*-{signal}.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    def spans(self) -> list[dict[str, Any]]:
        """Every span written, with ``resource`` (its resource's attributes) and ``attrs`` added."""
        out = []
        for req in self._lines("traces"):
            for rs in req.get("resourceSpans", []):
                res = attrs(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        out.append({**sp, "resource": res, "attrs": attrs(sp.get("attributes")),
                                    "scope": ss.get("scope", {})})
        return out

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for req in self._lines("logs"):
            for rl in req.get("resourceLogs", []):
                res = attrs(rl.get("resource", {}).get("attributes"))
                for sl in rl.get("scopeLogs", []):
                    for rec in sl.get("logRecords", []):
                        out.append({**rec, "resource": res, "attrs": attrs(rec.get("attributes"))})
        return out

    def metrics(self) -> list[dict[str, Any]]:
        """Every histogram data point written: name, unit, resource, attrs, count, sum, buckets."""
        out = []
        for req in self._lines("metrics"):
            for rm in req.get("resourceMetrics", []):
                res = attrs(rm.get("resource", {}).get("attributes"))
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        hist = m.get("histogram", {})
                        for dp in hist.get("dataPoints", []):
                            out.append({"name": m["name"], "unit": m.get("unit", ""), "resource": res,
                                        "attrs": attrs(dp.get("attributes")), "count": int(dp.get("count", 0)),
                                        "sum": float(dp.get("sum", 0)), "time": int(dp["timeUnixNano"]),
                                        "buckets": [int(b) for b in dp.get("bucketCounts", [])],
                                        "bounds": dp.get("explicitBounds", []),
                                        "temporality": hist.get("aggregationTemporality")})
        return out

    def wait_for(self, what: str, cond: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Read ``what`` ("spans", "logs", "metrics") until ``cond(items)`` holds (the exporter flushes
        every 100 ms); returns the items."""
        deadline = time.monotonic() + timeout
        while True:
            items: list[dict[str, Any]] = getattr(self, what)()
            if cond(items):
                return items
            if time.monotonic() > deadline:
                raise AssertionError(f"the Collector's {what} never matched; {len(items)} written; log:\n"
                                     + self.log_text()[-2000:])
            time.sleep(0.1)


def latest_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cumulative points: keep only each series' last export."""
    last: dict[str, dict[str, Any]] = {}
    for p in points:
        key = json.dumps([p["name"], p["resource"], p["attrs"]], sort_keys=True)
        if key not in last or p["time"] >= last[key]["time"]:
            last[key] = p
    return list(last.values())
