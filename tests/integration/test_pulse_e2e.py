"""End to end: the agent captures real curl traffic, ships `report_usage` events to a real Pulse server
(subprocess, embedded ClickHouse), and Pulse's query API shows those requests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import free_port, start_http_server
from tests.plugins.test_run_config import QtapRun, curl

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[tuple[str, str]]:
    data = tmp_path / "pulse"
    qtap = [sys.executable, "-m", "cli.main"]
    token = subprocess.run([*qtap, "pulse", "token", "create", "--data-dir", str(data), "--team", "e2e"],
                           cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout.strip().split()[-1]
    port = free_port()
    proc = subprocess.Popen([*qtap, "pulse", "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
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
        yield url, token
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


def test_agent_to_pulse_query_shows_the_requests(pulse: tuple[str, str], server: int, tmp_path: Path) -> None:
    url, token = pulse
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
