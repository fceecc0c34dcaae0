"""Control plane push benchmark: how long until every agent's event stream hears of a new active version.

    .venv/bin/python benchmarks/bench_control.py [--streams 1,100,500] [--rounds 5]

A real `qtap control serve` process (SQLite). N agents register and hold their server-sent-event stream
open (one HTTP connection each, from one asyncio client); an editor activates a new version through the
API, and the time from the API call to each stream receiving the event is recorded. Baseline in the same run:
one stream. A second series activates through the store directly (as another instance or the CLI would), which
only the per-instance watcher (``push_poll_s``) can notice.

Prints one JSON line and a one-line summary; writes benchmarks/results/control.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, machine  # noqa: E402
from qtap_async.control.auth import hash_password, hash_secret, make_token  # noqa: E402
from qtap_async.control.store import Store  # noqa: E402

CONFIG = "version: 2\nservices:\n  event_stores: [{type: stdout}]\nstacks: {}\ntap:\n  direction: egress\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bootstrap(data: Path) -> tuple[str, str]:
    store = Store(data / "control.sqlite3")
    uid = store.create_user("bench", "local", hash_password("bench password 1"))
    store.set_membership(uid, "bench", "admin")
    tid, token = make_token("qct")
    store.create_api_token(tid, hash_secret(token), "bench", uid, ["admin"], None)
    rid, reg = make_token("qcr")
    store.create_registration_token(rid, hash_secret(reg), "bench", "", "bench", None, None)
    store.close()
    return token, reg


async def stream(client: httpx.AsyncClient, token: str, ready: asyncio.Event, got: dict[int, float],
                 arrived: asyncio.Event) -> None:
    async with client.stream("GET", "/api/v1/agent/events", headers={"Authorization": f"Bearer {token}"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                version = json.loads(line[5:]).get("version")
                if not ready.is_set():
                    ready.set()
                elif isinstance(version, int) and version not in got:
                    got[version] = time.perf_counter()
                    arrived.set()


async def series(url: str, admin: str, reg: str, n: int, rounds: int, data: Path, direct: bool) -> list[float]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0, read=None), limits=limits) as client:
        tokens = []
        for _ in range(n):
            r = await client.post("/api/v1/agents/register", json={"registration_token": reg, "hostname": "b"})
            tokens.append(r.json()["token"])
        readies = [asyncio.Event() for _ in range(n)]
        gots: list[dict[int, float]] = [{} for _ in range(n)]
        arrived = asyncio.Event()  # set by a stream on each new version, so the round awaits instead of polling
        tasks = [asyncio.create_task(stream(client, t, e, g, arrived))
                 for t, e, g in zip(tokens, readies, gots, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
        h = {"Authorization": f"Bearer {admin}", "Content-Type": "application/yaml"}
        latencies: list[float] = []
        for _ in range(rounds):
            r = await client.post("/api/v1/configs", content=CONFIG.encode(), headers=h)
            version = r.json()["version"]
            t0 = time.perf_counter()
            if direct:
                store = Store(data / "control.sqlite3")
                store.activate("bench", "", version, "bench")
                store.close()
            else:
                r = await client.post(f"/api/v1/configs/{version}/activate", json={},
                                      headers={"Authorization": f"Bearer {admin}"})
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 30
            while not all(version in g for g in gots) and time.monotonic() < deadline:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
            latencies += [g[version] - t0 for g in gots if version in g]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return latencies


def summary(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {"count": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="1,100,500")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        admin, reg = bootstrap(data)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "control", "serve", "--data-dir", str(data),
                                 "--listen", f"127.0.0.1:{port}", "--insecure-cookies", "--log-level", "warning"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            api = {n: summary(asyncio.run(series(url, admin, reg, n, args.rounds, data, False))) for n in counts}
            watcher = summary(asyncio.run(series(url, admin, reg, counts[0], args.rounds, data, True)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    base = api[counts[0]]["p50_ms"]
    result: dict[str, Any] = {
        # The BPF objects (with their local path) are no part of this benchmark.
        "bench": "control_push", "machine": {k: v for k, v in machine().items() if k != "bpf_objects"},
        "rounds": args.rounds,
        "api_activation": {str(n): s for n, s in api.items()},
        "watcher_activation": watcher,
        "findings": {
            # How much a bigger fleet slows the slowest stream, against one stream in the same run.
            "p99_ratio_largest_to_one_stream": round(api[counts[-1]]["p99_ms"] / max(api[counts[0]]["p99_ms"], 1e-3),
                                                     1),
            "watcher_within_poll_interval": watcher["max_ms"] <= 2000 + 500,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "control.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    largest = counts[-1]
    print(f"control push: p50 {base} ms with 1 stream, p50 {api[largest]['p50_ms']} / p99 {api[largest]['p99_ms']} ms "
          f"with {largest} streams; through another instance p50 {watcher['p50_ms']} ms (poll 2 s)")


if __name__ == "__main__":
    main()
