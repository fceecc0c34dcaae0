"""End to end: a real control plane (subprocess), a real agent (`qtap run --control`, real BPF) joining with a
registration token, real curl traffic. An editor raises the capture level; the running agent switches
without a restart (a captured body proves it). The control plane is then stopped: the agent keeps
capturing on its cached config, and picks up a version activated meanwhile once the control plane is back.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from qtap_async.control.store import Store
from tests.control.conftest import config_yaml
from tests.integration.harness import free_port
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
QTAP = [sys.executable, "-m", "cli.main"]
CURL = "/usr/bin/curl"


def cli(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run([*QTAP, "control", *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class ControlPlane:
    def __init__(self, data: Path, port: int, log: Path) -> None:
        self.data, self.port, self.log = data, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*QTAP, "control", "serve", "--data-dir", str(self.data), "--listen",
                                      f"127.0.0.1:{self.port}", "--insecure-cookies", "--log-level", "warning"],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            return False

        wait_for(ready, 60, "the control plane to answer")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


class Agent:
    def __init__(self, workdir: Path, url: str, registration_token: str) -> None:
        self.state = workdir / "state"
        self.out = workdir / "agent.jsonl"
        self.err = workdir / "agent.log"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([*QTAP, "run", "--control", url, "--registration-token", registration_token,
                                          "--control-state", str(self.state), "--no-tls"],
                                         cwd=ROOT, stdout=out, stderr=err)
        wait_for(lambda: self.alive() and "capture attached" in self.log(), 90, "the agent to attach")

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
        return True

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out.read_bytes().split(b"\n"):
            if line.strip():
                with contextlib.suppress(msgspec.DecodeError):
                    out.append(msgspec.json.decode(line))
        return out

    def curl_transactions(self, port: int, path: str) -> list[dict[str, Any]]:
        # Matched on a path unique to this run only: the connection context (process, ports) of a short-lived
        # curl is not what this test is about, and it was seen misattributed once under load.
        return [e for e in self.lines() if e.get("type") == "http_transaction"
                and str(e.get("path", "")).startswith(path)]

    def body_of(self, tx: dict[str, Any]) -> bytes | None:
        for o in self.lines():
            if o.get("kind") == "object" and o.get("digest") == tx.get("object_digest"):
                doc = msgspec.json.decode(o["body"])
                return base64.b64decode(doc["response"]["body"]["base64"])
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def running_on_agent_direct(data: Path) -> int | None:
    """The version the agent last reported, read from the store (no control plane is running)."""
    store = Store(data / "control.sqlite3")
    try:
        agents = store.list_agents("e2e", 3600)
    finally:
        store.close()
    return agents[0].running_version if agents else None


def test_agent_joins_switches_level_live_and_survives_a_control_plane_outage(tmp_path: Path, http_server: int) -> None:
    data = tmp_path / "control"
    cli("user", "create", "ed", "--role", "editor", "--team", "e2e", "--password-stdin", "--data-dir", str(data),
        stdin="a long editor password\n")
    token = cli("token", "create", "--user", "ed", "--scope", "write", "--data-dir", str(data))
    reg = cli("registration-token", "create", "--team", "e2e", "--data-dir", str(data))
    plane = ControlPlane(data, free_port(), tmp_path / "control.log")
    plane.start()
    ed = httpx.Client(base_url=plane.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    yaml = {"Content-Type": "application/yaml"}

    def post(level: str, activate: bool) -> int:
        r = ed.post("/api/v1/configs", content=config_yaml(level).encode(), headers=yaml,
                    params={"activate": str(activate).lower()})
        assert r.status_code == 201, r.text
        return int(r.json()["version"])

    def running_on_agent() -> int | None:
        agents = ed.get("/api/v1/agents").json()
        return agents[0]["running_version"] if agents else None

    assert post("summary", activate=True) == 1
    agent = Agent(tmp_path, plane.url, reg)
    try:
        wait_for(lambda: running_on_agent() == 1, 30, "the agent to report v1")
        first = ed.get("/api/v1/agents").json()[0]
        assert first["hostname"] and first["kernel"] == os.uname().release and first["state"] == "online"

        run_id = uuid.uuid4().hex[:12].translate(str.maketrans("0123456789abcdef", "ghijklmnopqrstuv"))

        def request(name: str, n: int) -> dict[str, Any]:
            path = f"/ctl-{run_id}/{name}"  # letters only: no path template turns it into a placeholder
            subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{http_server}{path}?n={n}"],
                           check=True, timeout=30)
            return wait_for(lambda: agent.curl_transactions(http_server, path), 30, f"the transaction for {path}")[0]

        tx = request("one", 300)
        assert tx["level"] == "summary" and not tx.get("object_digest")

        # An editor raises the capture level: the agent applies it live.
        t0 = time.monotonic()
        assert post("full", activate=True) == 2
        wait_for(lambda: running_on_agent() == 2, 30, "the agent to run v2")
        switch_s = time.monotonic() - t0
        tx = request("two", 400)
        assert tx["level"] == "full"
        body = wait_for(lambda: agent.body_of(tx), 30, "the captured body")
        assert body == body_for(400)
        assert "config reloaded" in agent.log() and agent.proc.poll() is None  # no restart
        cache = agent.state / "config.yaml"
        assert "level: full" in cache.read_text()
        for f in (cache, agent.state / "identity.json"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600

        # The control plane goes away: capture goes on with the cached (full) config.
        v3 = post("summary", activate=False)
        assert plane.stop() == 0
        tx = request("three", 500)
        assert tx["level"] == "full"
        assert wait_for(lambda: agent.body_of(tx), 30, "a body while the control plane is down") == body_for(500)
        # Activated meanwhile through a second instance on the same store (the highly available setup).
        other = ControlPlane(data, free_port(), tmp_path / "control-b.log")
        other.start()
        r = httpx.post(f"{other.url}/api/v1/configs/{v3}/activate", json={},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert other.stop() == 0
        time.sleep(2)
        assert running_on_agent_direct(data) == 2  # nothing reached the agent while its control plane was down
        plane.start()
        wait_for(lambda: running_on_agent() == v3, 120, "the agent to pick up v3 after the outage")
        tx = request("four", 600)
        assert tx["level"] == "summary"
        assert "unreachable" in agent.log() or "retrying" in agent.log()

        audit = ed.get("/api/v1/audit", params={"limit": 100}).json()
        mine = [(a["action"], a["target"]) for a in reversed(audit) if a["actor"] == "ed"]
        assert mine == [("config.create", "v1"), ("config.activate", "v1"), ("config.create", "v2"),
                        ("config.activate", "v2"), ("config.create", "v3"), ("config.activate", "v3")]
        assert any(a["action"] == "agent.register" for a in audit)
        assert all(a["address"] == "127.0.0.1" for a in audit if a["actor"] == "ed")
        print(f"\nlive switch to v2 seen by the API after {switch_s:.2f} s")
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
        with contextlib.suppress(Exception):
            plane.stop()
