"""Web UI page times: the server time of each page over a day of traffic at a realistic volume.

    .venv/bin/python benchmarks/bench_ui.py [--events 1000000] [--rounds 15]

A real `qtap pulse serve` (embedded chDB) gets ``--events`` request events spread over the last 24 h through
its ingestion API (100 domains, 400 endpoints, 24 processes in 12 containers, lognormal latencies, ~3 %
errors) and an object reference for 1 % of them. A real control plane (uvicorn, SQLite) serves the pages,
querying that Pulse over HTTP like in production. Each page is fetched ``--rounds`` times after two warm-up
fetches (each round goes over all pages in turn); its server time is the page's own Server-Timing (from the
request reaching the handler to the rendered page, every Pulse query included), the wall time is what the
client waited on loopback. Each state records the 1-minute load average before and after its rounds.

Pulse keeps hourly rollups (qtap_async/pulse/rollups.py), built in its background once an hour has been quiet
for a few seconds; the bench waits for them (``rollups_built_s``: from the last ingest to every hour built) and
then measures two states of the same data: ``fresh``, right after the million events arrived (a few dozen
unmerged parts: every FINAL query merges them on the fly, the worst case), and ``settled``, once the
background merges have done what they converge to (Pulse is stopped, the table is merged with OPTIMIZE FINAL
in a separate process, Pulse starts again on the same data): a day of data in a running Pulse is mostly
merged, only the last minutes sit in small parts. Target: every page under 200 ms of server time, settled.

Prints one JSON line and a one-line summary; writes benchmarks/results/ui.json.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_result  # noqa: E402
from qtap_async.control.auth import hash_password  # noqa: E402
from qtap_async.control.settings import ControlSettings, UiSettings  # noqa: E402
from qtap_async.pulse.tokens import TokenStore  # noqa: E402

NS = 10**9
DAY = 86400 * NS
TARGET_MS = 200.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(n: int, now: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rnd = random.Random(seed)
    domains = [f"svc{d:02d}.corp.example" for d in range(100)]
    exes = [f"/usr/local/bin/service{p:02d}" for p in range(24)]
    containers = [f"{c:012x}deadbeef" for c in range(12)]
    reqs, refs = [], []
    for i in range(n):
        d = int(rnd.paretovariate(1.2)) % 100  # a few domains take most of the traffic
        p = rnd.randrange(24)
        r = rnd.random()
        status = 503 if r < 0.02 else 500 if r < 0.03 else 404 if r < 0.07 else 201 if r < 0.2 else 200
        ts = now - rnd.randrange(DAY - NS)
        reqs.append({"type": "request", "id": f"b{i:08d}-req", "ts": ts, "conn_id": i // 4,
                     "direction": "egress" if p % 3 else "ingress", "method": "POST" if r > 0.8 else "GET",
                     "domain": domains[d], "path": f"/api/v2/res{d % 4}/{{id}}/op{rnd.randrange(4)}",
                     "status": status, "duration_ns": int(rnd.lognormvariate(16, 1.1)),
                     "req_bytes": rnd.randrange(2000), "resp_bytes": rnd.randrange(50_000),
                     "content_type": "application/json", "user_agent": "svc-client/1.4", "pid": 1000 + p,
                     "exe": exes[p], "container_id": containers[p // 2], "protocol": "http/1.1"})
        if i % 100 == 0:
            refs.append({"type": "object_ref", "id": f"o{i:08d}", "ts": ts + 1000, "conn_id": i // 4,
                         "transaction_id": f"b{i:08d}", "digest": f"{i:064x}", "url": f"s3://bench/{i:064x}",
                         "size": 2048, "content_type": "application/json", "store": "s3"})
    return reqs, refs


class Pulse:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.start()

    def start(self) -> None:
        data = self.data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data / "pulse.log").open("wb")
        qtap = Path(sys.executable).with_name("qtap")
        self.proc = subprocess.Popen([str(qtap), "pulse", "serve", "--data-dir", str(data), "--listen",
                                      f"127.0.0.1:{self.port}", "--log-level", "warning"], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("Pulse did not start: " + (data / "pulse.log").read_text()[-2000:])

    def token(self, team: str, scopes: tuple[str, ...]) -> str:
        store = TokenStore(self.data / "tokens.sqlite3")
        try:
            return store.create(team, "bench", scopes)[1]
        finally:
            store.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()

    def parts(self) -> int:
        return int(self._chdb("print(s.query(\"SELECT count() AS n FROM system.parts WHERE active AND "
                              "database = 'pulse' AND table = 'requests'\")[0]['n'])"))

    def merge(self) -> float:
        """Merge the requests table the way background merges end up (with Pulse stopped: one engine per path)."""
        t0 = time.perf_counter()
        self._chdb("s.command('OPTIMIZE TABLE pulse.requests FINAL')\n"
                   "s.command('OPTIMIZE TABLE pulse.requests_rollup FINAL')")
        return time.perf_counter() - t0

    def _chdb(self, code: str) -> str:
        prog = ("from qtap_async.pulse.config import PulseConfig\n"
                "from qtap_async.pulse.storage import ChdbStorage\n"
                f"s = ChdbStorage(PulseConfig(data_dir={str(self.data)!r}))\n{code}\ns.close()\n")
        return subprocess.run([sys.executable, "-c", prog], check=True, capture_output=True, text=True,
                              cwd=ROOT, timeout=600).stdout.strip()


def wait_for_rollups(pulse: Pulse, hours: int, timeout_s: float = 600) -> float:
    """Seconds until Pulse's background has built the rollup of every hour that got rows (it builds an
    hour once it has been quiet for rollups.GRACE_S)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        m = re.search(r"^pulse_rollup_hours_built_total (\S+)$", httpx.get(f"{pulse.url}/metrics").text, re.M)
        if m and float(m.group(1)) >= hours:
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise SystemExit(f"rollups not built in {timeout_s} s")


def ingest(pulse: Pulse, token: str, evs: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    with httpx.Client(base_url=pulse.url, timeout=120, headers={"Authorization": f"Bearer {token}",
                                                                "Content-Type": "application/json"}) as c:
        for i in range(0, len(evs), 10_000):
            r = c.post("/v1/events", content=msgspec.json.encode({"events": evs[i:i + 10_000]}))
            if r.status_code != 200:
                raise SystemExit(f"ingest: {r.status_code} {r.text[:500]}")
    return time.perf_counter() - t0


def measure(c: httpx.Client, pages: dict[str, str], rounds: int) -> dict[str, Any]:
    """Each round fetches every page once (two warm-up rounds first), so a burst of load from other work on
    the machine lands on all pages alike instead of on whichever page was being fetched 15 times then."""
    server_ms: dict[str, list[float]] = {name: [] for name in pages}
    wall_ms: dict[str, list[float]] = {name: [] for name in pages}
    size: dict[str, int] = {}
    load_start = os.getloadavg()[0]
    for i in range(rounds + 2):
        for name, path in pages.items():
            t0 = time.perf_counter()
            r = c.get(path)
            wall = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, (path, r.status_code, r.text[:500])
            size[name] = len(r.content)
            if i >= 2:
                server_ms[name].append(float(r.headers["server-timing"].split("dur=")[1]))
                wall_ms[name].append(wall)
    out: dict[str, Any] = {"load_1m_start": round(load_start, 2), "load_1m_end": round(os.getloadavg()[0], 2)}
    for name, path in pages.items():
        ms = sorted(server_ms[name])
        out[name] = {"path": path, "server_ms_median": round(statistics.median(ms), 1),
                     "server_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 1), "server_ms_max": round(ms[-1], 1),
                     "wall_ms_median": round(statistics.median(wall_ms[name]), 1), "bytes": size[name]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    import uvicorn

    from qtap_async.control.app import create_app
    from qtap_async.control.store import open_store

    tmp = Path(tempfile.mkdtemp(prefix="qtap-bench-ui-"))
    pulse = Pulse(tmp)
    try:
        now = time.time_ns()
        reqs, refs = events(args.events, now)
        ingest_s = ingest(pulse, pulse.token("bench", ("ingest",)), reqs + refs)
        rollup_s = wait_for_rollups(pulse, len({e["ts"] // 3600 // NS for e in reqs}))
        os.environ["QTAP_BENCH_UI_PULSE_TOKEN"] = pulse.token("bench", ("query",))
        settings = ControlSettings(data_dir=str(tmp / "control"), cookie_secure=False, pulse_url=pulse.url,
                                   ui=UiSettings(pulse_token_env="QTAP_BENCH_UI_PULSE_TOKEN"))
        (tmp / "control").mkdir()
        store = open_store(settings)
        uid = store.create_user("bench", "local", hash_password("bench password 1"))
        store.set_membership(uid, "bench", "admin")
        for v in range(1, 31):  # a month of config history and its audit trail
            store.add_config("bench", f"version: 2\n# v{v}\n", f"{v:064x}", "bench", f"change {v}")
            store.audit("bench", "127.0.0.1", "bench", "config.create", f"v{v}", {"version": v})
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port,
                                               log_level="warning", loop="uvloop"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        c = httpx.Client(base_url=base, timeout=60)
        r = c.post("/ui/login", data={"username": "bench", "password": "bench password 1"})
        assert r.status_code == 303, r.text
        traffic = c.get("/ui/traffic").text
        m = re.search(r'href="(/ui/traffic/[^"]+)"', traffic)
        assert m, traffic[:2000]
        with_object = next(e for e in reqs if e["id"] == "b00000100-req")
        pages = {
            "dashboard 24h": "/ui/?range=24h",
            "dashboard 1h": "/ui/?range=1h",
            "traffic 24h": "/ui/traffic?range=24h",
            "traffic 24h, 5xx of one domain": "/ui/traffic?range=24h&status=5xx&domain=svc01.corp.example",
            "traffic 24h, path text, page 20": "/ui/traffic?range=24h&q=op3&page=20",
            "traffic 24h, one process": "/ui/traffic?range=24h&exe=/usr/local/bin/service07",
            "request detail": f"/ui/traffic/{with_object['id']}?ts={with_object['ts']}",
            "dependency map 24h": "/ui/map?range=24h",
            "fleet": "/ui/fleet",
            "configs": "/ui/configs",
            "config v30": "/ui/configs/30",
            "audit": "/ui/audit",
        }
        fresh = measure(c, pages, args.rounds)
        server.should_exit = True
        thread.join(30)
        pulse.stop()
        fresh_parts = pulse.parts()
        settle_s = pulse.merge()
        settled_parts = pulse.parts()
        pulse.start()
        # The control plane's Pulse client keeps its URL: a new server on the new port, the same store.
        settings = msgspec.structs.replace(settings, pulse_url=pulse.url)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port,
                                               log_level="warning", loop="uvloop"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        r = c.post("/ui/login", data={"username": "bench", "password": "bench password 1"})
        assert r.status_code == 303, r.text
        settled = measure(c, pages, args.rounds)
        server.should_exit = True
        thread.join(30)
        store.close()
    finally:
        pulse.stop()
    fresh_load = {k: fresh.pop(k) for k in ("load_1m_start", "load_1m_end")}
    settled_load = {k: settled.pop(k) for k in ("load_1m_start", "load_1m_end")}
    worst = max(settled.values(), key=lambda v: v["server_ms_median"])
    worst_fresh = max(fresh.values(), key=lambda v: v["server_ms_median"])
    over = [k for k, v in settled.items() if v["server_ms_median"] > TARGET_MS]
    result = {"events": args.events, "object_refs": len(refs), "range_hours": 24, "rounds": args.rounds,
              "ingest_s": round(ingest_s, 1), "rollups_built_s": round(rollup_s, 1), "target_ms": TARGET_MS,
              "fresh": {"parts": fresh_parts, **fresh_load, "pages": fresh},
              "settled": {"parts": settled_parts, "merge_s": round(settle_s, 1), **settled_load, "pages": settled},
              "settled_pages_over_target": over}
    write_result("ui", result,
                 f"{args.events} requests over 24 h; settled ({settled_parts} parts): slowest page {worst['path']} "
                 f"median {worst['server_ms_median']} ms server time, {len(over)} of {len(settled)} pages over "
                 f"{TARGET_MS:.0f} ms; fresh ({fresh_parts} unmerged parts): slowest {worst_fresh['path']} "
                 f"median {worst_fresh['server_ms_median']} ms")


if __name__ == "__main__":
    main()
