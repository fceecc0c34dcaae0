"""Nothing lost silently on the way to Pulse (issue 19 item 10): every event type the agent produces (connection,
gap, http_transaction, tls_client_hello, dns_message) goes to a real Pulse server, which must accept all of
them; the agent's own counters must agree (delivered == what it wrote, nothing rejected or dropped)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import CURL, PEERS, Server
from tests.integration.test_pulse_e2e import pulse, pulse_yaml  # noqa: F401  (the real Pulse server fixture)
from tests.plugins.test_run_config import QtapRun

pytestmark = pytest.mark.bpf


def test_pulse_accepts_every_event_the_agent_produces(pulse: tuple[str, str, object], tmp_path: Path,  # noqa: F811
                                                      cert: tuple[str, str]) -> None:
    url, token, _proc = pulse
    config = f"""
version: 2
services:
  event_stores:
    - id: pulse
      type: pulse
      url: {url}
      token: {{type: text, value: {token}}}
  object_stores:
    - type: disabled
tap:
  direction: all
  ignore_loopback: false
"""
    plain = Server(tmp_path / "plain.log", "--body", "sendfile")  # sendfile: gap events
    tls = Server(tmp_path / "tls.log", "--tls", *cert)
    dns = S.Dns(tmp_path)
    mmsg = tmp_path / "mmsg"
    subprocess.run(["cc", "-O1", "-o", str(mmsg), str(PEERS / "mmsg.c")], check=True, timeout=120)
    q = QtapRun(tmp_path, config)
    try:
        for i in range(3):
            subprocess.run([CURL, "-s", "-o", "/dev/null", f"http://127.0.0.1:{plain.port}/p{i}?n=5000"], check=True)
            subprocess.run([CURL, "-sk", "-o", "/dev/null", f"https://localhost:{tls.port}/t{i}?n=10"], check=True)
            subprocess.run([str(mmsg), dns.addr, "53", f"pulse{i}.test"], check=True, capture_output=True)
    finally:
        rc = q.stop()
        plain.stop()
        tls.stop()
        dns.stop()
    assert rc == 0, q.log()[-3000:]
    log = q.log()
    m = re.search(r"stopped: (\{.*\})", log)
    assert m, log[-3000:]
    snap = json.loads(m.group(1))
    store = '{store="event:pulse"}'
    delivered = snap[f"qtap_sink_delivered_events_total{store}"]
    rejected = snap.get(f"qtap_sink_dropped_rejected_events_total{store}", 0)
    dropped = snap[f"qtap_sink_dropped_events_total{store}"]
    written = snap["qtap_events_written_total"] - snap.get("qtap_pipeline_filtered_events_total", 0)
    assert rejected == 0 and dropped == 0, f"rejected {rejected}, dropped {dropped}: {log[-3000:]}"
    assert delivered == written > 0, f"delivered {delivered} of {written} events"
    assert "rejected, dropped" not in log, log[-3000:]  # the sink's log line for a refused batch
