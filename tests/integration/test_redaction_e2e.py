"""Credentials never leave the agent in clear by default: the real agent (real BPF) captures curl
requests carrying known secrets, and no output (stdout, stderr, the dir object store) holds them.
Only ``--show-secrets`` prints them, and the agent warns at start when it does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import start_http_server

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
CURL = "/usr/bin/curl"
# Distinct, greppable secrets; none of them may appear in any output.
BEARER = "bearer-SECRET-7f3a9c2e41d8"
COOKIE = "cookie-SECRET-52b1e07d9a"
API_KEY = "apikey-SECRET-c4d2e8f1"
QUERY = "query-SECRET-9e8d7c6b5a"
SET_COOKIE = "setcookie-SECRET-1a2b3c4d"
SECRETS = (BEARER, COOKIE, API_KEY, QUERY, SET_COOKIE)


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


class Agent:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with self.out.open("wb") as o, self.err.open("wb") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--no-tls", *args],
                                         cwd=ROOT, stdout=o, stderr=e)
        self.wait(lambda: "capture attached" in self.stderr(), "attach")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, pred: object, what: str, timeout: float = 60) -> None:
        assert callable(pred)
        deadline = time.monotonic() + timeout
        while not pred():
            if self.proc.poll() is not None:
                pytest.fail(f"qtap exited ({what}): {self.stderr()[-3000:]}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.stderr()[-3000:]}"
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def hit(port: int, marker: str) -> None:
    subprocess.run([CURL, "-sS", "-o", "/dev/null",
                    "-H", f"Authorization: Bearer {BEARER}",
                    "-H", f"Cookie: session={COOKIE}; theme=dark",
                    "-H", f"X-Api-Key: {API_KEY}",
                    f"http://127.0.0.1:{port}/bytes?n=10&{marker}=1&token={QUERY}&cookie={SET_COOKIE}"],
                   check=True, timeout=30)


def test_default_run_redacts_credentials_on_stdout(tmp_path: Path, server: int) -> None:
    agent = Agent(tmp_path)
    try:
        hit(server, "first")
        hit(server, "second")
        agent.wait(lambda: agent.stdout().count("second=1") >= 2, "both transactions")  # client + server side
    finally:
        assert agent.stop() == 0
    out, err = agent.stdout(), agent.stderr()
    for s in SECRETS:
        assert s not in out and s not in err, s
    assert "Bearer [redacted:" in out and "session=[redacted:" in out and "token=[redacted:" in out
    assert "sid=[redacted:" in out  # the response's Set-Cookie
    # Equal secrets, equal tags: both requests carry the same bearer token.
    tags = {line.split("Bearer [redacted:", 1)[1][:12] for line in out.splitlines() if "Bearer [redacted:" in line}
    assert len(tags) == 1, tags
    assert "IN CLEAR" not in err


def test_every_store_of_a_config_is_redacted(tmp_path: Path, server: int) -> None:
    objects = tmp_path / "objects"
    cfg = tmp_path / "qpoint.yaml"
    cfg.write_text(f"""version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: dir, path: {objects}}}]
stacks:
  default:
    plugins:
      - type: http_capture
        config: {{level: full, format: json}}
      - type: access_logs
        config: {{mode: details}}
      - type: detect_errors
        config: {{rules: [{{name: any, expr: "http.res.status >= 200"}}]}}
tap:
  direction: all
  http:
    stack: default
""")
    agent = Agent(tmp_path, "--config", str(cfg))
    try:
        hit(server, "stored")
        agent.wait(lambda: objects.exists() and sum(1 for p in objects.rglob("*") if p.is_file()) >= 2, "objects")
        agent.wait(lambda: "stored=1" in agent.stderr(), "the access log line")
    finally:
        assert agent.stop() == 0
    files = [p for p in objects.rglob("*") if p.is_file()]
    blobs = [p.read_bytes() for p in files]
    assert any(b"[redacted:" in b for b in blobs), [p.name for p in files]
    everything = agent.stdout() + agent.stderr() + b"".join(blobs).decode(errors="replace")
    for s in SECRETS:
        assert s not in everything, s


def test_show_secrets_prints_them_and_warns(tmp_path: Path, server: int) -> None:
    agent = Agent(tmp_path, "--show-secrets")
    try:
        assert "IN CLEAR" in agent.stderr()
        hit(server, "clear")
        agent.wait(lambda: "clear=1" in agent.stdout(), "the transaction")
    finally:
        assert agent.stop() == 0
    assert BEARER in agent.stdout() and QUERY in agent.stdout()
