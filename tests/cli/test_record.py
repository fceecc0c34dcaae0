"""`qtap replay` as a user runs it (no kernel needed): a recorded file through the default graph, or
through a config's graph (its stack and its stdout store) with --config."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.helpers import ROOT, qtap

FIXTURE = ROOT / "tests" / "data" / "http1_small.qrec"


def test_replay_prints_the_local_output() -> None:
    r = qtap("replay", str(FIXTURE), "--level", "summary")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    txs = [e for e in events if e["type"] == "http_transaction"]
    assert len(txs) == 300 and all("request_headers" not in e for e in txs)


def test_replay_with_a_config_goes_through_its_stack_and_store(tmp_path: Path) -> None:
    cfg = tmp_path / "qpoint.yaml"
    cfg.write_text("""version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
stacks:
  usage:
    plugins:
      - type: report_usage
tap:
  direction: ingress
  http: {stack: usage}
""")
    cfg.chmod(0o600)
    r = qtap("replay", str(FIXTURE), "--config", str(cfg), "--stats")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = {e["type"] for e in events}
    assert kinds == {"connection", "request"}, kinds  # the stack's plugin decided: no http_transaction
    assert sum(e["type"] == "request" for e in events) == 300
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats['qtap_stack_transactions_total{stack="usage"}'] == 300
    assert stats["qtap_source_records_total"] > 0 and stats["qtap_internal_errors_total"] == 0
    bad = qtap("replay", str(FIXTURE), "--config", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "no such config file" in bad.stderr
