"""The web UI's test system: a real Pulse (`qtap pulse serve` on embedded chDB, in its own process: chDB
allows one engine per process and the Pulse tests own this one's), events posted to its ingestion API the
way agents post them, and a real control plane (uvicorn in a thread) whose pages query that Pulse."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from qtap_async.control.app import create_app
from qtap_async.control.settings import ControlSettings, PayloadAccess, UiSettings
from qtap_async.control.store import open_store
from qtap_async.pulse.tokens import TokenStore
from tests.control.conftest import Plane, ServerThread
from tests.integration.harness import free_port

NS = 10**9
_env_names = itertools.count()


class PulseProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        qtap = Path(sys.executable).with_name("qtap")
        self.log = (data_dir / "pulse.log").open("wb")
        self.proc = subprocess.Popen([str(qtap), "pulse", "serve", "--data-dir", str(data_dir), "--listen",
                                      f"127.0.0.1:{self.port}", "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, (data_dir / "pulse.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Pulse did not become ready"
            time.sleep(0.2)

    def token(self, team: str, scopes: tuple[str, ...] = ("ingest", "query"), agent: str = "agent-1") -> str:
        """What `qtap pulse token create` does, on the same token database the server reads."""
        store = TokenStore(self.data_dir / "tokens.sqlite3")
        try:
            return store.create(team, agent, scopes)[1]
        finally:
            store.close()

    def ingest(self, token: str, events: list[Any]) -> None:
        for i in range(0, len(events), 2000):
            r = httpx.post(f"{self.url}/v1/events", content=msgspec.json.encode({"events": events[i:i + 2000]}),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                           timeout=60)
            assert r.status_code == 200, r.text[:2000]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseProcess]:
    p = PulseProcess(tmp_path_factory.mktemp("ui-pulse"))
    try:
        yield p
    finally:
        p.stop()


@dataclass
class Traffic:
    """What was sent, to compare the pages with."""

    team: str
    now: int
    requests: list[dict[str, Any]]
    objects: list[dict[str, Any]]
    issues: list[dict[str, Any]] = field(default_factory=list)  # what detect_errors reported

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if r["status"] >= 500)


DOMAINS = ("api.shop.example", "auth.shop.example", "cdn.shop.example")
EXES = ("/usr/bin/curl", "/usr/local/bin/checkout")


def make_traffic(team: str, n: int = 240, now: int | None = None, objects: bool = True) -> Traffic:
    """``n`` requests over the last 30 minutes from two processes (one in a container) to three domains;
    every 8th is a 503 (with the issue detect_errors reports for it), every 5th a 404; every 40th has a
    stored object (s3://ui-bucket/objects/<tx>)."""
    now = now or time.time_ns()
    reqs, objs, issues = [], [], []
    for i in range(n):
        tx = f"tx{i:05d}"
        exe = EXES[i % 2]
        status = 503 if i % 8 == 0 else 404 if i % 5 == 0 else 200
        reqs.append({"type": "request", "id": f"{tx}-req", "ts": now - (i + 1) * 7 * NS, "conn_id": 1000 + i,
                     "direction": "egress", "method": "POST" if i % 3 == 0 else "GET", "domain": DOMAINS[i % 3],
                     "path": f"/v1/items/{{id}}/part{i % 4}", "status": status, "duration_ns": (i + 1) * 1_000_000,
                     "req_bytes": 10 * i, "resp_bytes": 100 * i, "content_type": "application/json",
                     "pid": 4000 + i % 2, "exe": exe, "container_id": "c0ffee1234567890" if i % 2 else "",
                     "protocol": "http/1.1", "user_agent": "curl/8.5"})
        if objects and i % 40 == 0:
            objs.append({"type": "object_ref", "id": f"obj{i:05d}", "ts": now - (i + 1) * 7 * NS + 1000,
                         "conn_id": 1000 + i, "transaction_id": tx, "digest": f"{i:064x}",
                         "url": f"s3://ui-bucket/objects/{tx}", "size": 300, "content_type": "application/json",
                         "store": "minio"})
        if status == 503:
            r = reqs[-1]
            issues.append({"type": "issue", "id": f"{tx}-issue", "ts": r["ts"] + 2000, "conn_id": r["conn_id"],
                           "rule": "server-errors", "severity": "error" if i % 16 else "critical",
                           "summary": f"{r['method']} {r['domain']}{r['path']} -> 503", "status": "503",
                           "duration_ns": r["duration_ns"]})
    return Traffic(team, now, reqs, objs, issues)


@dataclass
class Ui:
    plane: Plane
    pulse: PulseProcess
    traffic: Traffic

    def session(self, user: str, password: str) -> tuple[httpx.Client, str]:
        """A logged-in browser-like client and its CSRF token (read from a page's form, as a browser has it)."""
        c = httpx.Client(base_url=self.plane.url, timeout=30, follow_redirects=False)
        r = c.post("/ui/login", data={"username": user, "password": password, "next": "/ui/configs"})
        assert r.status_code == 303, r.text
        page = c.get("/ui/configs")
        m = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert m, page.text
        return c, m.group(1)


PASSWORD = "correct horse battery staple"


def start_plane(tmp_path: Path, pulse_url: str, pulse_token: str | None, payloads: PayloadAccess | None = None,
                page_size: int = 50) -> Iterator[Plane]:
    env = f"QTAP_TEST_UI_PULSE_TOKEN_{next(_env_names)}"
    if pulse_token is not None:
        os.environ[env] = pulse_token
    settings = ControlSettings(data_dir=str(tmp_path), cookie_secure=False, pulse_url=pulse_url,
                               ui=UiSettings(pulse_token_env=env, page_size=page_size,
                                             payloads=payloads or PayloadAccess()))
    store = open_store(settings)
    app = create_app(settings, store)
    try:
        with ServerThread(app) as url:
            plane = Plane(url, store, settings, app)
            plane.user("admin", "admin", password=PASSWORD)
            plane.user("ed", "editor", password=PASSWORD)
            plane.user("vi", "viewer", password=PASSWORD)
            yield plane
    finally:
        os.environ.pop(env, None)
        store.close()
