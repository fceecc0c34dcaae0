"""`qtap run --config` end to end: the real agent (real BPF) as a subprocess, real curl/wget traffic
against tests/integration/peers/http_server.py, events and objects read from its stdout."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtap_async.events.times import parse_ns
from tests.integration.harness import PEERS, start_http_server
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
CURL = "/usr/bin/curl"
WGET = "/usr/bin/wget"
NS_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def config(level: str = "summary", *, rules: str = "", tap: str = "") -> str:
    return f"""version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: stdout}}]
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: {level}
{rules}
  full_capture:
    plugins:
      - type: http_capture
        config: {{level: full}}
tap:
  direction: egress
  http:
    stack: default
{tap}
"""


class QtapRun:
    """`qtap run --config FILE` in a subprocess; stdout and stderr go to files (no pipe can fill up)."""

    def __init__(self, workdir: Path, config_text: str, *args: str) -> None:
        self.config = workdir / "qpoint.yaml"
        self.config.write_text(config_text)
        self.out_path = workdir / "stdout.jsonl"
        self.err_path = workdir / "stderr.log"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "run", "--config", str(self.config), "--no-tls", *args],
                cwd=ROOT, stdout=out, stderr=err,
            )
        if not self.wait_for(lambda: "capture attached" in self.log(), 60):
            self.stop()
            pytest.fail(f"qtap did not attach:\n{self.log()}")

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out_path.read_bytes().split(b"\n"):
            if line.strip():
                with contextlib.suppress(msgspec.DecodeError):  # a line being written right now
                    out.append(msgspec.json.decode(line))
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"qtap exited with {self.proc.returncode}:\n{self.log()}")
            if pred():
                return True
            time.sleep(0.1)
        return pred()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # -- queries ---------------------------------------------------------------------------------
    def transactions(self, port: int) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("type") == "http_transaction" and e.get("dst_port") == port]

    def objects(self) -> dict[str, dict[str, Any]]:
        return {o["digest"]: o for o in self.lines() if o.get("kind") == "object"}


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[[str], QtapRun]]:
    runs: list[QtapRun] = []

    def start(text: str) -> QtapRun:
        r = QtapRun(tmp_path, text)
        runs.append(r)
        return r

    yield start
    for r in runs:
        assert r.stop() == 0, r.log()


def curl(url: str) -> None:
    subprocess.run([CURL, "-sS", "-o", "/dev/null", url], check=True, timeout=30)


def test_rule_raises_capture_to_full_only_for_failing_requests(server: int,
                                                                run: Callable[[str], QtapRun]) -> None:
    q = run(config("summary", rules="""          rules:
            - name: failures
              expr: http.res.status >= 400
              level: full"""))
    curl(f"http://127.0.0.1:{server}/bytes?n=300")
    curl(f"http://127.0.0.1:{server}/bytes?n=200&status=500")
    assert q.wait_for(lambda: len(q.transactions(server)) >= 2 and len(q.objects()) >= 1)
    by_status = {t["status"]: t for t in q.transactions(server) if t["exe"] == CURL}
    ok, failed = by_status[200], by_status[500]
    assert (ok["level"], ok.get("object_digest", "")) == ("summary", "")
    assert (failed["level"], failed["rule"]) == ("full", "failures")
    obj = q.objects()[failed["object_digest"]]
    doc = msgspec.json.decode(obj["body"])
    assert doc["response"]["status"] == 500
    assert base64.b64decode(doc["response"]["body"]["base64"]) == body_for(200)
    assert {"Host", "User-Agent"} <= {name for name, _ in doc["request"]["headers"]}
    # One object only: the 200 was not stored.
    assert [o for o in q.objects().values() if o["conn_id"] == ok["conn_id"]] == []
    # Its reference event reached the event store.
    assert q.wait_for(lambda: any(e.get("type") == "object_ref" and e["digest"] == failed["object_digest"]
                                  for e in q.lines()))
    # One time representation in everything the agent wrote: RFC 3339 UTC with nanoseconds, and where a
    # ts_ns is given it is the same instant (the object_ref's too: it was epoch ns before).
    events = [e for e in q.lines() if "type" in e]
    assert {e["type"] for e in events} >= {"connection", "http_transaction", "object_ref"}
    for e in events:
        assert NS_TIME.fullmatch(e["ts"]), e
        if "ts_ns" in e:
            assert parse_ns(e["ts"]) == e["ts_ns"], e
    ref = next(e for e in events if e["type"] == "object_ref" and e["digest"] == failed["object_digest"])
    assert parse_ns(failed["ts"]) <= ref["ts_ns"] <= time.time_ns()


def test_exe_filter_excludes_wget_but_keeps_curl(server: int, run: Callable[[str], QtapRun]) -> None:
    q = run(config("summary", tap="""  filters:
    custom:
      - exe: /usr/bin/wget
        strategy: exact"""))
    subprocess.run([WGET, "-q", "-O", "/dev/null", f"http://127.0.0.1:{server}/bytes?n=11"], check=True, timeout=30)
    curl(f"http://127.0.0.1:{server}/bytes?n=12")
    assert q.wait_for(lambda: any(t["exe"] == CURL for t in q.transactions(server)))
    # curl ran after wget: once curl's transaction is out, wget's would have been too.
    assert q.wait_for(lambda: any(e.get("type") == "connection" and e.get("event") == "close"
                                  and e.get("exe") == CURL and e.get("dst_port") == server for e in q.lines()))
    seen = [e for e in q.lines() if e.get("dst_port") == server]
    assert {e["exe"] for e in seen} == {CURL}
    assert [t["path"] for t in q.transactions(server)] == ["/bytes?n=*"]


@pytest.fixture
def hosts() -> Iterator[None]:
    path = Path("/etc/hosts")
    original = path.read_bytes()
    path.write_bytes(original + b"\n127.0.0.1 qtap-special.test qtap-plain.test\n")
    try:
        yield
    finally:
        path.write_bytes(original)


def test_endpoint_override_applies_only_to_its_domain(server: int, hosts: None,
                                                      run: Callable[[str], QtapRun]) -> None:
    q = run(config("summary", tap="""  endpoints:
    - domain: qtap-special.test
      http:
        stack: full_capture"""))
    curl(f"http://qtap-special.test:{server}/bytes?n=21")
    curl(f"http://qtap-plain.test:{server}/bytes?n=22")
    assert q.wait_for(lambda: len(q.transactions(server)) >= 2)
    by_host = {t["host"]: t for t in q.transactions(server)}
    assert by_host["qtap-special.test"]["level"] == "full"
    assert by_host["qtap-plain.test"]["level"] == "summary"
    assert q.wait_for(lambda: by_host["qtap-special.test"]["object_digest"] in q.objects())
    assert {o["conn_id"] for o in q.objects().values()} == {by_host["qtap-special.test"]["conn_id"]}


def test_sighup_switches_level_live_on_an_open_connection(server: int, run: Callable[[str], QtapRun]) -> None:
    q = run(config("summary"))
    client = subprocess.Popen([sys.executable, str(PEERS / "keepalive_client.py"), str(server)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline().strip() == "first done"
        assert q.wait_for(lambda: len(q.transactions(server)) >= 1)
        # Same size and mtime: only the signal can make the agent notice the new level.
        st = q.config.stat()
        q.config.write_text(config("details"))
        os.utime(q.config, ns=(st.st_atime_ns, st.st_mtime_ns))
        q.proc.send_signal(signal.SIGHUP)
        assert q.wait_for(lambda: "config reloaded" in q.log())
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "second done"
        assert q.wait_for(lambda: len(q.transactions(server)) >= 2)
    finally:
        client.kill()
        client.wait()
    first, second = q.transactions(server)[:2]
    assert first["conn_id"] == second["conn_id"]  # the connection outlived the reload
    assert (first["level"], second["level"]) == ("summary", "details")
    assert q.wait_for(lambda: second["object_digest"] in q.objects())
    doc = msgspec.json.decode(q.objects()[second["object_digest"]]["body"])
    assert "body" not in doc["response"] and doc["request"]["path"] == "/bytes?n=777&chunk=65536"


def test_bad_reload_keeps_the_old_config(server: int, run: Callable[[str], QtapRun]) -> None:
    q = run(config("details"))
    q.config.write_text("version: 2\ntap: {direction: sideways}\n")
    q.proc.send_signal(signal.SIGHUP)
    assert q.wait_for(lambda: "config reload failed, keeping the current config" in q.log())
    curl(f"http://127.0.0.1:{server}/bytes?n=31")
    assert q.wait_for(lambda: len(q.transactions(server)) >= 1)
    assert q.transactions(server)[0]["level"] == "details"
