"""A short run of the mixed soak (benchmarks/bench_ground_truth_soak.py) in CI: zero misattributed records
against ground truth, and consistent stop counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[3]


def test_mixed_soak_30s_has_no_misattributed_record() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ground_truth_soak.py"), "--duration", "30",
                          "--no-write"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    result = json.loads(next(x for x in lines if x.startswith("{")))
    summary = lines[-1]
    assert result["expected_conns"] > 0, summary
    assert result["stop_counters_consistent"], summary
    assert result["misattributed_records"] == 0 and result["context_missing_records"] == 0, (
        summary + "\n" + "\n".join(result["examples"]))
    assert result["wrong_conns"] == 0, summary + "\n" + json.dumps(result["mismatches_by_field"])
