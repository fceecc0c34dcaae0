"""The web UI over a REAL agent: `qtap run --control` (real BPF) joins the control plane with a registration
token, takes its config from there (events to a real Pulse on chDB, payload objects to a real MinIO), and
captures real curl traffic at a local HTTP server. In headless Chromium: the dashboard counts what curl
sent, the explorer finds a POST, its body is fetched by the browser straight from MinIO (the network log
says so), the fleet page shows the agent, and a config version an editor activates in the browser is the
version the agent then reports running.

Needs root (BPF), `scripts/services up` (MinIO) and chromium (see test_browser.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from qtap_async.control.settings import PayloadAccess
from tests.control.ui.conftest import PulseProcess, start_plane
from tests.control.ui.test_browser import ACCESS_ENV, SECRET_ENV, Page, _minio, browser  # noqa: F401
from tests.integration.harness import start_http_server
from tests.integration.test_control_e2e import Agent, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.bpf]

PULSE_TOKEN_ENV = "QTAP_TEST_UI_AGENT_PULSE_TOKEN"
CURL = "/usr/bin/curl"


def agent_config(pulse_url: str, env: dict[str, str], level: str, note: str) -> str:
    """The config the control plane serves: secrets by environment variable name only (the agent has them,
    the control plane's copy does not). The browser and its driver (and this test's own Python, which
    drives them) are ignored, so what Pulse counts is curl's traffic alone."""
    python = os.path.realpath(sys.executable)
    return f"""version: 2
# {note}
services:
  event_stores:
    - type: pulse
      url: {pulse_url}
      token: {{type: env, value: {PULSE_TOKEN_ENV}}}
  object_stores:
    - type: s3
      id: minio
      endpoint: {env['QTAP_S3_ENDPOINT']}
      bucket: {env['QTAP_S3_BUCKET']}
      region: {env['QTAP_S3_REGION']}
      access_key: {{type: env, value: {ACCESS_ENV}}}
      secret_key: {{type: env, value: {SECRET_ENV}}}
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: {level}
          format: json
      - type: report_usage
tap:
  direction: egress
  ignore_loopback: false
  filters:
    custom:
      - {{exe: /usr/lib/chromium/, strategy: prefix}}
      - {{exe: {python}, strategy: exact}}
  http:
    stack: default
"""


def _letters(n: int) -> str:
    # Letters beyond hex: no path template turns them into a placeholder.
    return "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(n))


def test_a_real_agent_feeds_every_page_and_runs_the_config_activated_in_the_browser(
        pulse: PulseProcess, tmp_path: Path, browser: Any) -> None:  # noqa: F811
    env = _minio()
    team = f"ui-agent-{time.time_ns() % 10**9}"
    os.environ[PULSE_TOKEN_ENV] = pulse.token(team, ("ingest",), agent="real-agent")
    os.environ[ACCESS_ENV], os.environ[SECRET_ENV] = env["QTAP_S3_ACCESS_KEY"], env["QTAP_S3_SECRET_KEY"]
    payloads = PayloadAccess(endpoint=env["QTAP_S3_ENDPOINT"], region=env["QTAP_S3_REGION"],
                             access_key_env=ACCESS_ENV, secret_key_env=SECRET_ENV)
    for d in ("plane", "agent"):
        (tmp_path / d).mkdir()
    server, port = start_http_server()
    planes = start_plane(tmp_path / "plane", pulse.url, pulse.token(team, ("query",)), payloads, page_size=25)
    agent = None
    try:
        plane = next(planes)
        admin = plane.client(plane.token("admin", ["admin", "read", "write"]))
        r = admin.post("/api/v1/configs", content=agent_config(pulse.url, env, "full", "v1").encode(),
                       params={"activate": "true"}, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        v1 = int(r.json()["version"])
        reg = admin.post("/api/v1/registration-tokens", json={}).json()["token"]
        agent = Agent(tmp_path / "agent", plane.url, reg)

        def running() -> int | None:
            rows = admin.get("/api/v1/agents").json()
            return rows[0]["running_version"] if rows else None

        wait_for(lambda: running() == v1, 60, "the agent to report v1")

        # Real curl traffic to a name of this run only (resolved to the local server).
        domain = f"shop-{_letters(8)}.test"
        base = f"http://{domain}:{port}"
        resolve = ["--resolve", f"{domain}:{port}:127.0.0.1"]
        path = f"/orders-{_letters(6)}"
        marker = f"note-{_letters(10)}"
        body = json.dumps({"order": 4711, "items": [{"sku": "A-1", "qty": 2}], "note": marker})
        sent = []
        for i in range(6):
            status = 503 if i < 2 else 200
            subprocess.run([CURL, "-sS", "-o", "/dev/null", *resolve, f"{base}{path}/get?n=64&status={status}"],
                           check=True, timeout=30)
            sent.append(("GET", status))
        for _ in range(2):
            subprocess.run([CURL, "-sS", "-o", "/dev/null", *resolve, "-H", "Content-Type: application/json",
                            "--data-binary", body, f"{base}{path}/post"], check=True, timeout=30)
            sent.append(("POST", 200))
        query = {"Authorization": f"Bearer {pulse.token(team, ('query',))}"}

        def in_pulse() -> list[dict[str, Any]]:
            rows = httpx.get(f"{pulse.url}/v1/query/top/domains", params={"limit": 50}, headers=query,
                             timeout=10).json()
            rows = rows["rows"] if isinstance(rows, dict) else rows
            got = [x for x in rows if x.get("domain") == domain]
            return got if got and int(got[0]["requests"]) >= len(sent) else []

        wait_for(in_pulse, 90, "Pulse to hold the curl requests")

        # The dashboard: every request curl sent, its errors, nothing else.
        p = Page(browser, plane.url, "admin")
        p.login("admin")
        p.go("/ui/?range=1h")
        assert int(p.find("#total-requests").text) == len(sent)
        errors = sum(1 for _, s in sent if s >= 500)
        assert p.find("#total-error-rate").text == f"{errors / len(sent) * 100:.2f}%"
        row = next(r for r in p.all("section.grid2 table tbody tr") if domain in r.text)
        assert row.find_elements("css selector", "td")[1].text == str(len(sent))
        p.check_accessible()
        p.shot("agent-dashboard")

        # The explorer finds the POSTs; the body opens from MinIO, not from the control plane.
        p.go("/ui/traffic?range=1h")
        p.find("#f-domain").send_keys(domain)
        p.find("#f-method").send_keys("POST")
        p.find("#f-method").submit()
        p.wait("#requests")
        rows = p.all("#requests tbody tr")
        assert len(rows) == 2 and all(f"{domain}{path}/post" in r.text for r in rows), [r.text for r in rows]
        p.shot("agent-traffic")
        rows[0].find_element("css selector", "a").click()
        p.wait("#meta")
        assert f"POST {domain}{path}/post" in p.find("#meta").text
        browser.get_log("performance")  # forget the page load; watch what the payload button does
        wait_for(lambda: p.all("button.load-payload"), 5, "a payload button (the agent stored the object)")
        p.find("button.load-payload").click()
        p.wait(".payload[data-loaded=true]", 20)
        shown = p.find(".payload").text
        assert marker in shown and "4711" in shown, shown
        p.check_accessible()
        p.shot("agent-request")
        minio = urlsplit(env["QTAP_S3_ENDPOINT"]).netloc
        net = p.network()
        from_store = [n for n in net if urlsplit(n["url"]).netloc == minio]
        assert len(from_store) == 1 and from_store[0]["status"] == 200, net
        assert "X-Amz-Signature=" in from_store[0]["url"]
        from_plane = [urlsplit(n["url"]).path for n in net if urlsplit(n["url"]).netloc == urlsplit(plane.url).netloc]
        assert all(x.endswith("/url") for x in from_plane) and len(from_plane) == 1, from_plane

        # The dependency map has curl's edge to the domain; the fleet page shows the real agent on v1.
        p.go("/ui/map?range=1h")
        assert any(domain in e.text or domain in (e.get_attribute("innerHTML") or "")
                   for e in p.all("#map g.edge")), "no edge to the domain"
        p.shot("agent-map")
        p.go("/ui/fleet")
        fleet = p.find("#agents tbody tr")
        assert os.uname().nodename in fleet.text and f"v{v1} / v{v1}" in fleet.text, fleet.text
        p.check_accessible()
        p.shot("agent-fleet")

        # An editor activates a new version in the browser; the running agent takes it and reports it.
        browser.delete_all_cookies()
        e = Page(browser, plane.url, "editor")
        e.login("ed", "/ui/configs")
        e.find("#new-config").click()
        e.wait("#yaml")
        area = e.find("#yaml")
        area.clear()
        area.send_keys(agent_config(pulse.url, env, "summary", "v2 from the browser"))
        e.find("#comment").send_keys("summary is enough")
        if not e.find("#activate").is_selected():
            e.find("#activate").click()
        e.find("form.stack button[type=submit]").click()
        e.wait("#active-for")
        v2 = int(urlsplit(browser.current_url).path.rsplit("/", 1)[1])
        assert v2 > v1
        wait_for(lambda: running() == v2, 60, f"the agent to report v{v2}")
        e.go("/ui/fleet")
        assert f"v{v2} / v{v2}" in e.find("#agents tbody tr").text
        e.shot("agent-fleet-v2")
        assert "config reloaded" in agent.log() and agent.proc.poll() is None  # applied live, no restart
    finally:
        if agent is not None:
            agent.stop()
        planes.close()
        server.kill()
        server.wait()
        for name in (PULSE_TOKEN_ENV, ACCESS_ENV, SECRET_ENV):
            os.environ.pop(name, None)
