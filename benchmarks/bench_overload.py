"""Overload accounting: more events than the agent can handle, then every record accounted for.

A child process traced alone blasts sends over loopback into the real agent with a small ring buffer,
small queues and a slow sink (tests/perf/accounting.py). At the end:

    kernel RECORDS + DROP_RINGBUF == processed by the stage + dropped at the raw channel + DROP_RINGBUF
                                     + left in the ring after the source's last drain

"left in the ring" is measured by detaching every program before the ring is emptied and the counters
are read (the agent itself reads its counters while the socket/process programs are still attached and
never looks at the ring again, so those records appear nowhere in Agent.snapshot()). Run with TLS
discovery off and on (TLS detach at shutdown widens that window).
Writes benchmarks/results/overload.json.
Usage: python benchmarks/bench_overload.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, arguments, write_result

from tests.perf.accounting import run_accounted


def main() -> None:
    quick = arguments(__doc__, flags=QUICK).quick
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    n = 20000 if quick else 60000
    for name, kw in (("notls", {"tls": False}), ("tls", {"tls": True})):
        acc = run_accounted(n, 1024, ring_buffer_bytes=256 << 10, **kw)
        for k, v in acc.as_dict().items():
            result[f"{name}_{k}"] = v
        s = acc.snapshot
        result[f"{name}_agent_snapshot_kernel_records"] = s.get("qtap_kernel_records_total", 0)
        result[f"{name}_agent_snapshot_source_records"] = s.get("qtap_source_records_total", 0)
        # Delivered after the agent's own last counter read (during Capture.close(), whose link detaches
        # are sequential and slow): in the ring, in no counter the agent reports.
        result[f"{name}_records_after_agent_counter_read"] = acc.kernel_records - s.get("qtap_kernel_records_total", 0)
        result[f"{name}_drop_share_pct"] = round(
            100 * (acc.kernel_drop_ringbuf + acc.source_dropped_records) / max(1, acc.seen_by_kernel), 1)
    result["balanced"] = result["notls_unaccounted"] == 0 and result["tls_unaccounted"] == 0
    result["bench_seconds"] = round(time.monotonic() - t0, 1)
    r = result
    write_result("overload", result,
                 f"seen {r['notls_seen_by_kernel']} = processed {r['notls_stage_records']} + ring drops "
                 f"{r['notls_kernel_drop_ringbuf']} + queue drops {r['notls_source_dropped_records']} + left in ring "
                 f"{r['notls_left_in_ring_at_close']} (unaccounted {r['notls_unaccounted']}); with TLS: unaccounted "
                 f"{r['tls_unaccounted']}, left in ring {r['tls_left_in_ring_at_close']}, agent snapshot gap "
                 f"{r['tls_agent_view_unaccounted']}")


if __name__ == "__main__":
    main()
