"""`qtap run` with the AgentOptions the CLI does not expose (max connections, queue sizes), for benchmarks.

Same Agent, same logging ("capture attached", "stopped: {counters}" on stderr), events to /dev/null.
Usage: python benchmarks/_agent_proc.py --level L [--pid N] [--max-connections N] [--no-tls]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtap_async.bpf.loader import CaptureSettings
from qtap_async.telemetry import setup_logging
from qtap_async.topology import Agent, AgentOptions, StdoutWriter


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--level", default="details")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--max-connections", type=int, default=65536)
    p.add_argument("--no-tls", action="store_true")
    a = p.parse_args()
    from qtap_async.telemetry.allocator import reexec_onto_mimalloc

    reexec_onto_mimalloc()  # on the allocator `qtap run` uses (same PID, same arguments)
    import uvloop

    setup_logging("INFO")
    logging.getLogger("qtap.agent").setLevel(logging.DEBUG)  # the final "stopped: {counters}" line
    opts = AgentOptions(tls=not a.no_tls, http_level=a.level, max_connections=a.max_connections,
                        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=a.pid))
    with open(os.devnull, "wb") as null:
        agent = Agent(opts, writer=StdoutWriter(out=null))
        return uvloop.run(_run_with_memory_probe(agent))


async def _run_with_memory_probe(agent: Agent) -> int:
    """Run the agent and, every 0.2 s on its own loop, note where its buffered bytes are; print the
    peaks as one "MEMORY {json}" line on stderr at the end (the memory benchmark attributes RSS with it)."""
    import asyncio
    import json
    import resource

    peak: dict[str, int] = {}

    def sample() -> None:
        pending = sum(st.pending_bytes for c in agent.conntrack.conns.values() for st in c.streams.values())
        cur = {"reassembly_pending_bytes": pending, "connections": len(agent.conntrack.conns)}
        for name, ch in (("raw", agent.raw), ("out", agent.out)):
            if ch is not None:
                st = ch.statistics()
                cur[f"{name}_queue_bytes_accounted"] = st.depth_bytes
                cur[f"{name}_queue_batches"] = st.depth_events
        if agent.out is not None:
            # The out queue accounts 512 B per event whatever it holds; count the payloads it really holds.
            real = 0
            for batch, _size in list(agent.out._items):
                for ev in batch:
                    if isinstance(ev, dict):
                        real += sum(len(v) for k, v in ev.items() if k.endswith("_body") and isinstance(v, bytes))
            cur["out_queue_body_bytes"] = real
        for k, v in cur.items():
            peak[k] = max(peak.get(k, 0), v)

    async def probe() -> None:
        while True:
            await asyncio.sleep(0.2)
            sample()

    task = asyncio.create_task(probe())
    try:
        return await agent.run()
    finally:
        task.cancel()
        peak["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("MEMORY " + json.dumps(peak), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
