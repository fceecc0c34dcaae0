"""Records the replay fixtures in tests/data/*.qrec with the real agent and real peers (needs root).

Each file holds the raw kernel records of one workload against nginx (only the nginx worker is traced,
so the files stay small) and, in its trailer, the events the live pipeline emitted for them; the tests
replay the records and check that the same transactions come out.
Usage: python benchmarks/make_fixtures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Nginx, arguments, record_run, run_quiet

DATA = ROOT / "tests" / "data"


def main() -> None:
    arguments(__doc__)  # --help, and an error for an argument it does not take
    with Nginx() as ng:
        worker = ng.pids()[-1]
        base = f"http://127.0.0.1:{ng.http_port}"
        cases = {
            "http1_small": ["h2load", "--h1", "-n", "300", "-c", "3", f"{base}/small"],
            "http1_large": ["h2load", "--h1", "-n", "6", "-c", "2", f"{base}/large"],
            "h2_streams": ["h2load", "-n", "400", "-c", "2", "-m", "50", f"http://127.0.0.1:{ng.h2c_port}/small"],
            "https_small": ["h2load", "--h1", "-n", "200", "-c", "2", f"https://127.0.0.1:{ng.https_port}/small"],
        }
        for name, cmd in cases.items():
            path = DATA / f"{name}.qrec"
            level = "full" if name == "http1_small" else "details"
            trailer = record_run(path, lambda cmd=cmd: run_quiet(cmd), target_tgid=worker, level=level,
                                 meta={"workload": " ".join(cmd), "traced": "nginx worker"})
            tx = sum(1 for e in trailer.get("events", []) if isinstance(e, dict)
                     and e.get("type") == "http_transaction")
            print(f"{path.name}: {trailer['records']} records, {path.stat().st_size} bytes, {tx} transactions")


if __name__ == "__main__":
    main()
