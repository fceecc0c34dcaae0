"""Every example config, end to end: what it needs is started, real traffic is sent, the data arrives.

examples/pulse.yaml also shows that Pulse is never fed its own ingestion, and `qtap pulse query`
answers (a table on a terminal, JSON on a pipe)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.helpers import ROOT, AgentRun, pty_output, qtap, wait_until
from tests.integration.harness import free_port, start_http_server, wait_port

pytestmark = pytest.mark.bpf
EXAMPLES = ROOT / "examples"
WGET = "/usr/bin/wget"
CURL = "/usr/bin/curl"


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def _unique_path() -> str:
    # Letters beyond hex, so no path template turns it into a placeholder; unique to this run.
    return "/ex-" + "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(10))


def _lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_every_example_has_a_test() -> None:
    # otel.yaml runs against a real Collector in tests/sinks/test_otel_e2e.py::test_the_otel_example_exports;
    # http-metrics.yaml is checked (validate, and a broken copy refused) in tests/plugins/test_http_metrics.py.
    tested = {"local.yaml", "qtap-compatible.yaml", "pulse.yaml", "production.yaml", "otel.yaml", "http-metrics.yaml"}
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == tested
    for name in tested:
        r = qtap("validate", str(EXAMPLES / name))
        assert r.returncode == 0, r.stderr


def test_local_example(server: int, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    cfg = tmp_path / "local.yaml"
    cfg.write_text((EXAMPLES / "local.yaml").read_text().replace("/tmp/qtap-objects", str(objects)))
    path = _unique_path()
    run = AgentRun(["run", "--no-tls", "--config", str(cfg)], tmp_path)
    try:
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}{path}?n=3"], check=True)
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}{path}?n=9&status=503"],
                       check=True)
        def arrived() -> bool:
            return run.log().count(path) >= 4 and objects.exists() and any(p.is_file() for p in objects.rglob("*"))

        assert wait_until(arrived, 30), run.log()
    finally:
        assert run.stop() == 0
    log = run.log()
    # access_logs: console lines on stderr; the 503 in full (rule "show failures in full")
    assert re.search(rf"GET http://127\.0\.0\.1:{server}{path}\?n=3 200 .* curl\[\d+\] egress-internal", log), log
    assert re.search(rf"GET http://127\.0\.0\.1:{server}{path}\?n=9&status=503 503 ", log)
    # http_capture: summaries on stdout, and the failing call's payload kept on disk
    txs = [e for e in _lines(run.out()) if e.get("type") == "http_transaction" and e.get("dst_port") == server]
    assert {e["status"] for e in txs} == {200, 503}
    kept = [json.loads(p.read_text()) for p in objects.rglob("*") if p.is_file()]
    assert any(k["response"]["status"] == 503 and k["level"] == "full" for k in kept), kept
    assert all(k["response"]["status"] == 503 for k in kept if k["request"]["path"].startswith(path))


def test_qtap_compatible_example(server: int, tmp_path: Path) -> None:
    """Qtap's own shape: access lines (details) for egress; its exe filters ignore curl and python3."""
    path = _unique_path()
    run = AgentRun(["run", "--no-tls", "--config", str(EXAMPLES / "qtap-compatible.yaml")], tmp_path)
    try:
        subprocess.run([WGET, "-q", "-O", "/dev/null", f"http://127.0.0.1:{server}{path}?n=2"], check=True)
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}{path}?n=4"], check=True)
        subprocess.run([WGET, "-q", "-O", "/dev/null", "--content-on-error",
                        f"http://127.0.0.1:{server}{path}?n=5&status=404"])
        assert wait_until(lambda: f"{path}?n=5&status=404 404" in run.log(), 30), run.log()
    finally:
        assert run.stop() == 0
    log = run.log()
    assert re.search(rf"GET http://127\.0\.0\.1:{server}{path}\?n=2 200 \S+ 2B wget\[\d+\] egress-internal", log)
    assert f"{path}?n=4" not in log  # /usr/bin/curl: ignored by the config's exact exe filter
    assert "  > " in log  # details: request headers under the line
    # the 404 is logged in full (rule "details log on anything above 400")
    block = log.split(f"{path}?n=5&status=404 404", 1)[1]
    assert "  < " in block


def _query(url: str, token: str, what: str, *args: str) -> list[dict[str, Any]]:
    limit = ("--limit", "1000") if what != "timeseries" else ()
    r = qtap("pulse", "query", what, "--url", url, "--token", token, *limit, *args)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)  # not a terminal: JSON
    assert isinstance(rows, list)
    return rows


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """A real Pulse server (embedded ClickHouse) on a free port: its URL, a token, its pid."""
    data = tmp_path / "pulse"
    made = qtap("pulse", "token", "create", "--data-dir", str(data), "--team", "examples")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().split()[-1]
    port = free_port()
    log = tmp_path / "pulse.log"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "pulse", "serve", "--data-dir", str(data),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(ready, 90, proc), log.read_text()[-2000:]
        yield url, token, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _ingestion_seen(url: str, token: str, pids: list[int]) -> int:
    """POST /v1/events requests stored for these processes (Pulse's own ingestion, from any side)."""
    total = 0
    for pid in pids:
        rows = _query(url, token, "timeseries", "--bucket", "60", "--path", "/v1/events", "--method", "POST",
                      "--pid", str(pid))
        total += sum(int(r["requests"]) for r in rows)
    return total


def test_pulse_example_feeds_pulse_but_never_its_own_ingestion(
        pulse: tuple[str, str, int], server: int, tmp_path: Path) -> None:
    url, token, pulse_pid = pulse
    port = int(url.rsplit(":", 1)[1])
    cfg = tmp_path / "pulse.yaml"
    cfg.write_text((EXAMPLES / "pulse.yaml").read_text().replace("127.0.0.1:8428", f"127.0.0.1:{port}"))
    env = {**os.environ, "PULSE_TOKEN": token}

    checked = qtap("validate", "--check-services", str(cfg), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is a Pulse server" in checked.stdout and "token is accepted" in checked.stdout

    path = _unique_path()
    run = AgentRun(["run", "--no-tls", "--config", str(cfg), "--stats"], tmp_path, env={"PULSE_TOKEN": token})
    try:
        for _ in range(3):
            subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}{path}?n=1"], check=True)
        subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{server}{path}?status=503"], check=True)
        # Another process posting to Pulse (a second agent, a script): still Pulse's own ingestion.
        for _ in range(3):
            r = httpx.post(f"{url}/v1/events", json={"events": []}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code < 500

        def mine() -> list[dict[str, Any]]:
            return [r for r in _query(url, token, "top-endpoints") if r.get("path") == path]

        # 4 requests, each seen by curl (egress) and by the server (ingress)
        assert wait_until(lambda: sum(int(r["requests"]) for r in mine()) >= 8, 60), mine()
        time.sleep(3)  # one more flush interval: anything of the agent's own traffic would be there now
    finally:
        assert run.stop() == 0
    rows = _query(url, token, "top-endpoints")
    assert sum(int(r["requests"]) for r in rows if r.get("path") == path) == 8
    # Pulse's ingestion (from the agent, from this test process, on Pulse's side) is never stored; other
    # agents of the host posting to other Pulse servers are ordinary traffic and may appear.
    assert _ingestion_seen(url, token, [pulse_pid, run.proc.pid, os.getpid()]) == 0
    assert "qtap_pipeline_own_service_connections_total" in run.log()
    own = json.loads(run.log().strip().splitlines()[-1])["qtap_pipeline_own_service_connections_total"]
    assert own >= 6, own  # the 3 posts of this test, each seen from both ends
    issues = _query(url, token, "issues")
    assert any(i["rule"] == "server error" and i["severity"] == "error" and "503" in i["summary"] + i["status"]
               for i in issues), issues
    series = _query(url, token, "timeseries", "--bucket", "60")
    assert sum(int(r["requests"]) for r in series) >= 8
    domains = _query(url, token, "top-domains")
    assert any(d.get("domain") == "127.0.0.1" or str(d.get("domain", "")).startswith("127.0.0.1") for d in domains), \
        domains

    code, table = pty_output(["pulse", "query", "top-endpoints", "--url", url, "--token", token])
    assert code == 0
    head = table.splitlines()[0].split()
    assert "DOMAIN" in head and "PATH" in head and "REQUESTS" in head, table
    assert path in table and not table.lstrip().startswith("[")


def test_check_services_refuses_what_is_not_pulse(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        for url, words in ((f"http://127.0.0.1:{port}", "answers 404 on /healthz"),
                           (f"http://127.0.0.1:{port}/v1/events", "adds /v1/events itself")):
            cfg = tmp_path / "p.yaml"
            cfg.write_text((EXAMPLES / "pulse.yaml").read_text().replace("http://127.0.0.1:8428", url))
            r = qtap("validate", "--check-services", str(cfg), env={**os.environ, "PULSE_TOKEN": "x"})
            assert r.returncode == 1 and words in r.stdout, r.stdout
            assert "is reachable" not in r.stdout
    finally:
        proc.kill()
        proc.wait()
