"""Replay throughput: transactions per CPU second through the whole user-space pipeline, and a profile.

Inputs are recorded at the start of the run with the real agent (real BPF) tracing an nginx worker driven
by h2load at a rate the agent keeps up with (drops are reported; they should be 0):

- http1_small: HTTP/1.1 keep-alive, small JSON responses (10k requests, 10 connections);
- http1_large: HTTP/1.1, 256 KiB responses (200 requests; 17 data records each);
- h2_streams: HTTP/2 (h2c), 100 concurrent streams per connection (10k streams, 4 connections).

Each recording is replayed (qtap_async.replay: the run's graph: decode, conntrack, enrichment, dispatch, output
events, JSON encoding into a null sink) at levels summary, details and full, best of 3, single-threaded;
CPU time is time.process_time of this process, so tx/s is per core. A pyinstrument profile of the
details replay of http1_small and h2_streams gives the hottest functions (self time).
With --fixtures, the committed tests/data/*.qrec are replayed instead of recording (no root needed).
The parsers run compiled when built (python -m qtap_async.native_cli build), else from source; the result says
which (``native``), and QTAP_PURE_PYTHON=1 measures the fallback.
Writes benchmarks/results/replay.json and replay_profile.txt.
Usage: python benchmarks/bench_replay.py [--fixtures] [--quick: best of 1]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, RESULTS, ROOT, Nginx, arguments, record_run, run_quiet, write_result

from qtap_async import native
from qtap_async.replay import RecordFile, replay

LEVELS = ("summary", "details", "full")


def workloads(ng: Nginx) -> dict[str, list[str]]:
    h1 = f"http://127.0.0.1:{ng.http_port}"
    return {
        "http1_small": ["h2load", "--h1", "-n", "10000", "-c", "10", "--rps", "400", f"{h1}/small"],
        "http1_large": ["h2load", "--h1", "-n", "200", "-c", "4", "--rps", "20", f"{h1}/large"],
        "h2_streams": ["h2load", "-n", "10000", "-c", "4", "-m", "100", "--rps", "1000",
                       f"http://127.0.0.1:{ng.h2c_port}/small"],
    }


def record_inputs(tmp: Path) -> dict[str, tuple[RecordFile, dict[str, Any]]]:
    out = {}
    with Nginx() as ng:
        worker = ng.pids()[-1]
        for name, cmd in workloads(ng).items():
            path = tmp / f"{name}.qrec"
            trailer = record_run(path, lambda cmd=cmd: run_quiet(cmd), target_tgid=worker, level="summary",
                                 tls=False, embed_events=False, meta={"workload": " ".join(cmd)})
            out[name] = (RecordFile.load(path), trailer["snapshot"])
    return out


def fixture_inputs() -> dict[str, tuple[RecordFile, dict[str, Any]]]:
    out = {}
    for p in sorted((ROOT / "tests" / "data").glob("*.qrec")):
        rf = RecordFile.load(p)
        out[p.stem] = (rf, (rf.trailer or {}).get("snapshot", {}))
    return out


def best_replay(rf: RecordFile, level: str, repeat: int = 3) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for _ in range(repeat):
        r = replay(rf.records, level=level)  # type: ignore[arg-type]
        if not best or r.cpu_s < best["cpu_s"]:
            best = r.as_dict()
    return best


def replay_via_channels(rf: RecordFile, level: str, batch_records: int = 256) -> dict[str, Any]:
    """The same replay through the agent's asyncio plumbing: a feeder task, the raw channel, the stage's and
    the writer's `run` tasks and the output channel, on uvloop (what the synchronous replay leaves out)."""
    import asyncio

    import uvloop

    from qtap_async.buffers.channel import Channel
    from qtap_async.replay import Replayer
    from qtap_async.sources.ringbuf import batch_size
    from qtap_async.topology.writer import len_sizeof

    rp = Replayer(level)  # type: ignore[arg-type]
    o = rp.options

    async def run() -> None:
        # The raw channel blocks instead of dropping: this measures the plumbing, not the drop policy.
        raw: Channel[list[bytes]] = Channel(o.raw_queue_events, o.raw_queue_bytes, "block", sizeof=batch_size)
        out: Channel[list[Any]] = Channel(o.out_queue_events, o.out_queue_bytes, "block", sizeof=len_sizeof)

        async def feed() -> None:
            recs = rf.records
            for i in range(0, len(recs), batch_records):
                await raw.send(recs[i : i + batch_records])
                await asyncio.sleep(0)  # as the source yields between batches
            raw.close()

        await asyncio.gather(feed(), rp.stage.run(raw, out), rp.writer.run(out))

    t = time.process_time()
    uvloop.run(run())
    cpu = time.process_time() - t
    tx = rp.writer.written
    return {"cpu_s": cpu, "events": tx}


def profile(rf: RecordFile, top: int = 15) -> list[tuple[str, float]]:
    """Self time per function (file:function), largest first, as a share of the whole replay."""
    from pyinstrument import Profiler
    from pyinstrument.frame import SELF_TIME_FRAME_IDENTIFIER

    replay(rf.records[:1000], level="details")  # warm up: imports and first-call costs are not the pipeline
    prof = Profiler(interval=0.0002)
    prof.start()
    for _ in range(3):
        replay(rf.records, level="details")
    session = prof.stop()
    root = session.root_frame()
    selftime: dict[str, float] = defaultdict(float)
    total = root.time if root is not None else 0.0

    def walk(frame: Any) -> None:
        # pyinstrument puts a function's own time in a synthetic "[self]" child frame: credit it to the parent.
        name = f"{Path(frame.file_path_short or '?').name}:{frame.function}"
        for child in frame.children:
            if child.identifier.startswith(SELF_TIME_FRAME_IDENTIFIER):
                selftime[name] += child.time
            elif not child.children:  # a leaf is its own self time (C functions: str.partition, unpack...)
                selftime[f"{Path(child.file_path_short or '?').name}:{child.function}"] += child.time
            else:
                walk(child)

    if root is not None:
        walk(root)
    ranked = sorted(selftime.items(), key=lambda kv: -kv[1])[:top]
    return [(n, round(100 * t / total, 1) if total else 0.0) for n, t in ranked]


def main() -> None:
    args = arguments(__doc__, flags={
        **QUICK, "--fixtures": "replay the committed tests/data/*.qrec instead of recording (no root)"})
    use_fixtures = args.fixtures
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qtap-bench-replay-") as tmp:
        inputs = fixture_inputs() if use_fixtures else record_inputs(Path(tmp))
        result: dict[str, Any] = {"inputs": "fixtures" if use_fixtures else "recorded live (real agent, nginx, h2load)",
                                  "clock": "process_time (one core)",
                                  # compiled (mypyc) or pure-Python parsers: python -m qtap_async.native_cli
                                  "native": native.status()}
        for name, (rf, snap) in inputs.items():
            result[f"{name}_records"] = len(rf.records)
            result[f"{name}_record_mib"] = round(sum(len(r) for r in rf.records) / 2**20, 2)
            if snap:
                result[f"{name}_recording_kernel_drops"] = snap.get("qtap_kernel_drop_ringbuf_total", 0)
                result[f"{name}_recording_queue_drops"] = snap.get("qtap_source_dropped_records_total", 0)
            for level in LEVELS:
                r = best_replay(rf, level, 1 if args.quick else 3)
                tx = max(1, r["transactions"])
                key = f"{name}_{level}"
                result[f"{key}_transactions"] = r["transactions"]
                result[f"{key}_tx_per_s_per_core"] = round(tx / r["cpu_s"]) if r["cpu_s"] else 0
                result[f"{key}_us_per_tx"] = round(1e6 * r["cpu_s"] / tx, 1)
                result[f"{key}_records_per_s_per_core"] = round(r["records"] / r["cpu_s"]) if r["cpu_s"] else 0
                result[f"{key}_output_mib"] = round(r["output_bytes"] / 2**20, 2)
                result[f"{key}_errors"] = r["decode_errors"] + r["internal_errors"]
        for name in ("http1_small", "h2_streams"):
            if name in inputs:
                sync_cpu = result[f"{name}_details_transactions"] / max(1, result[f"{name}_details_tx_per_s_per_core"])
                best = min((replay_via_channels(inputs[name][0], "details") for _ in range(3)),
                           key=lambda r: r["cpu_s"])
                n_tx = result[f"{name}_details_transactions"]
                rate = round(n_tx / best["cpu_s"]) if best["cpu_s"] else 0
                result[f"{name}_details_channels_tx_per_s_per_core"] = rate
                result[f"{name}_details_channels_overhead_pct"] = round(100 * (best["cpu_s"] / sync_cpu - 1), 1)
        lines = []
        for name in ("http1_small", "h2_streams"):
            if name in inputs:
                lines.append(f"## {name} (details level), self time share")
                for fn, pct in profile(inputs[name][0]):
                    lines.append(f"{pct:5.1f}%  {fn}")
                lines.append("")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "replay_profile.txt").write_text("\n".join(lines))
        result["profile_file"] = "benchmarks/results/replay_profile.txt"
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    s = result
    summary = ", ".join(
        f"{n} {s.get(f'{n}_details_tx_per_s_per_core', 0)} tx/s/core ({s.get(f'{n}_details_us_per_tx', 0)} us/tx)"
        for n in inputs)
    write_result("replay", result, summary + " at details level")


if __name__ == "__main__":
    main()
