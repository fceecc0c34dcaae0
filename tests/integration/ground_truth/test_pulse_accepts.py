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

ROOT = Path(__file__).resolve().parents[3]


class Qtap:
    """`qtap run --config FILE` at DEBUG (its final counter snapshot is a DEBUG line), no status server."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        import sys
        import time

        cfg = workdir / "qpoint.yaml"
        cfg.write_text(config_text)
        self.err = workdir / "qtap.err"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--config", str(cfg), "--no-tls",
                                          "--log-level", "DEBUG", "--status-listen", "off"],
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while "capture attached" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"qtap did not attach:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

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
    q = Qtap(tmp_path, config)
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
    written = snap["qtap_events_written_total"]
    assert rejected == 0 and dropped == 0, f"rejected {rejected}, dropped {dropped}: {log[-3000:]}"
    evk = {k: v for k, v in snap.items() if "events" in k and v}
    assert delivered == written > 0, f"delivered {delivered} of {written} events: {evk}"
    assert "rejected, dropped" not in log, log[-3000:]  # the sink's log line for a refused batch
