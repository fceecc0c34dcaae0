"""End to end: the agent captures real curl traffic, ships `report_usage` events to a real Pulse server
(subprocess, embedded ClickHouse), and Pulse's query API shows those requests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.integration.harness import free_port, start_http_server
from tests.plugins.test_run_config import QtapRun, curl

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture
def pulse_yaml() -> str:
    """Pulse's config file text ("": none); a test parametrizes it to get another."""
    return ""


@pytest.fixture
def pulse(tmp_path: Path, pulse_yaml: str) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    data = tmp_path / "pulse"
    qtap = [sys.executable, "-m", "cli.main"]
    extra: list[str] = []
    if pulse_yaml:
        (tmp_path / "pulse.yaml").write_text(pulse_yaml)
        extra = ["--config", str(tmp_path / "pulse.yaml")]
    token = subprocess.run([*qtap, "pulse", "token", "create", "--data-dir", str(data), "--team", "e2e"],
                           cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout.strip().split()[-1]
    port = free_port()
    proc = subprocess.Popen([*qtap, "pulse", "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                             *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "pulse.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"pulse exited: {(tmp_path / 'pulse.log').read_text()[-2000:]}")
        time.sleep(0.2)
    else:
        pytest.fail("pulse did not become ready")
    try:
        yield url, token, proc
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_agent_to_pulse_query_shows_the_requests(pulse: tuple[str, str, Any], server: int, tmp_path: Path) -> None:
    url, token, _ = pulse
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
stacks:
  default:
    plugins:
      - type: report_usage
tap:
  direction: all
  ignore_loopback: false
  http:
    stack: default
"""
    # A path of this run only (letters beyond hex, so no path template turns it into a placeholder): the
    # agent sees every process on the host, and other traffic must not change the counts.
    import random

    path = "/e2e-" + "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(10))
    q = QtapRun(tmp_path, config)
    try:
        for _ in range(3):
            curl(f"http://127.0.0.1:{server}{path}?n=12&status=200")
        curl(f"http://127.0.0.1:{server}{path}?n=12&status=503")
        headers = {"Authorization": f"Bearer {token}"}

        def endpoints() -> list[dict[str, Any]]:
            r = httpx.get(f"{url}/v1/query/top/endpoints", params={"limit": 50}, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            rows = body["rows"] if isinstance(body, dict) and "rows" in body else body
            return [row for row in rows if row.get("path") == path]

        deadline = time.monotonic() + 60
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = endpoints()
            # 4 requests, each seen by curl (egress) and by the server (ingress).
            if sum(int(r["requests"]) for r in rows) >= 8:
                break
            time.sleep(1)
    finally:
        assert q.stop() == 0
    assert sum(int(r["requests"]) for r in rows) == 8, rows
    assert sum(int(r["errors"]) for r in rows) == 2, rows
    assert all(r["method"] == "GET" for r in rows)


DIG = shutil.which("dig") or "/usr/bin/dig"
CURL_BIN = shutil.which("curl") or "/usr/bin/curl"


def _dns_addr() -> str:
    for addr in ("127.0.0.53", "127.0.0.54", "127.0.0.55"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 53))
            except OSError:
                continue
        return addr
    pytest.fail("no free loopback address for a DNS server on port 53: every candidate is taken")


def _stored(data_dir: Path) -> list[dict[str, Any]]:
    """(type, id) of every row Pulse stored, read from its data directory (Pulse stopped) in a process of
    its own: chDB opens one data directory per process."""
    code = (
        "import sys, msgspec\n"
        "from qtap_async.pulse.config import PulseConfig\n"
        "from qtap_async.pulse.storage import ChdbStorage\n"
        "s = ChdbStorage(PulseConfig(data_dir=sys.argv[1]))\n"
        "rows = []\n"
        "for t, kind in (('connections', \"'connection'\"), ('requests', \"'request'\"), ('records', 'type')):\n"
        "    rows += s.query(f'SELECT {kind} AS type, id FROM pulse.{t} FINAL')\n"
        "print(msgspec.json.encode(rows).decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    rows: list[dict[str, Any]] = msgspec.json.decode(out.stdout.strip().splitlines()[-1])
    return rows


# Pulse with a small event size limit: the injected bad events are the transactions with a long path.
@pytest.mark.parametrize("pulse_yaml", ["limits:\n  max_event_bytes: 4096\n"])
def test_every_event_of_a_mixed_run_is_stored_and_a_rejected_one_is_counted(
        pulse: tuple[str, str, subprocess.Popen[bytes]], server: int, tmp_path: Path) -> None:
    """HTTP, TLS with SNI, DNS and a gap through the real agent to a real Pulse: every event the agent wrote
    (its stdout store gets the same events) is in Pulse's storage, and the events Pulse refuses (this Pulse
    takes events of at most 4096 bytes; a request with a 5000-character path makes bigger ones) are counted
    as rejected by the agent's Pulse store, not as delivered, and logged with Pulse's reason."""
    url, token, pulse_proc = pulse
    config = f"""
version: 2
services:
  event_stores:
    - id: pulse
      type: pulse
      url: {url}
      token: {{type: text, value: {token}}}
    - id: out
      type: stdout
  object_stores:
    - type: disabled
stacks:
  default:
    plugins:
      - type: http_capture
        config: {{level: summary}}
      - type: report_usage
tap:
  direction: all
  ignore_loopback: false
  audit_include_dns: true
  http:
    stack: default
"""
    addr = _dns_addr()
    dns = subprocess.Popen([sys.executable, str(ROOT / "tests/integration/peers/dns_server.py"), addr, "53"],
                           stdout=subprocess.PIPE, text=True)
    long_path = "/" + "q" * 5000
    q = None
    try:
        assert dns.stdout is not None and dns.stdout.readline().strip() == "READY"
        q = QtapRun(tmp_path, config, "--log-level", "debug")  # the final counters are a debug line
        curl(f"http://127.0.0.1:{server}/mixed?n=100")
        # TLS with SNI: curl's ClientHello to a plain-HTTP port (the handshake fails; the hello is seen).
        subprocess.run([CURL_BIN, "-sk", "-o", "/dev/null", "--resolve", f"sni.e2e.test:{server}:127.0.0.1",
                        f"https://sni.e2e.test:{server}/"], timeout=30, check=False)
        subprocess.run([DIG, "+short", f"@{addr}", "mixed.e2e.test", "A"], capture_output=True, timeout=30,
                       check=True)
        n = 3 * 1024 * 1024  # one write larger than the capture limit: a gap
        curl(f"http://127.0.0.1:{server}/bytes?n={n}&chunk={n}")
        curl(f"http://127.0.0.1:{server}{long_path}?n=10")
        assert q.wait_for(lambda: any(e.get("type") == "gap" for e in q.lines())
                          and any(e.get("type") == "dns_message" for e in q.lines())
                          and any(e.get("type") == "tls_client_hello" for e in q.lines())
                          and sum(e.get("type") == "http_transaction" and len(e.get("path", "")) > 4096
                                  for e in q.lines()) >= 2, 60)
    finally:
        if q is not None:
            assert q.stop() == 0
        dns.kill()
        dns.wait()
    assert q is not None
    written = [e for e in q.lines() if "type" in e and "id" in e]
    refused = {e["id"] for e in written if len(msgspec.json.encode(e)) > 4096}
    # The transaction on each end (report_usage's request cuts its path to 2048 characters: it fits).
    assert {e["type"] for e in written if e["id"] in refused} == {"http_transaction"} and len(refused) == 2
    (stopped,) = [line for line in q.log().splitlines() if "stopped: {" in line]
    stats = msgspec.json.decode(stopped.split("stopped: ", 1)[1])
    key = '{store="event:pulse"}'
    assert stats[f"qtap_sink_dropped_rejected_events_total{key}"] == len(refused)
    assert stats[f"qtap_sink_delivered_events_total{key}"] == len(written) - len(refused)
    assert "events rejected by the store" in q.log() and "bytes; the limit is 4096" in q.log()
    pulse_proc.terminate()  # (the fixture's own terminate is then a no-op)
    pulse_proc.wait(30)
    stored = {(r["type"], r["id"]) for r in _stored(tmp_path / "pulse")}
    expected = {(e["type"], e["id"]) for e in written if e["id"] not in refused}
    kinds = {t for t, _ in expected}
    assert {"connection", "http_transaction", "request", "tls_client_hello", "dns_message", "gap"} <= kinds
    missing = expected - stored
    assert not missing, sorted(missing)[:20]
