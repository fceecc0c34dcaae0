"""`qtap run` with the AgentOptions the CLI does not expose (max connections, queue sizes), for benchmarks.

Same Agent, same logging ("capture attached", "stopped: {counters}" on stderr), events to /dev/null.
Usage: python benchmarks/_agent_proc.py --level L [--pid N] [--max-connections N] [--no-tls]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtap_async.agent import Agent, AgentOptions, StdoutWriter
from qtap_async.bpf.loader import CaptureSettings
from qtap_async.telemetry import setup_logging


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--level", default="details")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--max-connections", type=int, default=65536)
    p.add_argument("--no-tls", action="store_true")
    a = p.parse_args()
    import uvloop

    setup_logging("INFO")
    opts = AgentOptions(tls=not a.no_tls, http_level=a.level, max_connections=a.max_connections,
                        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=a.pid))
    with open(os.devnull, "wb") as null:
        return uvloop.run(Agent(opts, writer=StdoutWriter(out=null)).run())


if __name__ == "__main__":
    sys.exit(main())
