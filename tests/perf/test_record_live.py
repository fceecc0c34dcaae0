"""`qtap record` with the real agent and real peers, then replay: the same transactions come out."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from qtap_async.bpf.loader import CaptureSettings
from qtap_async.config import Config, loads_config
from qtap_async.events.http import HttpTransactionEvent
from qtap_async.replay import RecordFile, Recording, comparable, is_transaction, replay, replay_with_config
from qtap_async.sinks.base import StoredObject
from qtap_async.topology import AgentOptions
from tests.integration.harness import start_http_server
from tests.integration.peers.http_server import body_for

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"


def _record(path: Path, level: str, target: int, workload: Any, config: Config | None = None) -> Recording:
    opts = AgentOptions(tls=False, http_level=level,  # type: ignore[arg-type]
                        capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=target))
    f = path.open("wb")
    rec = Recording(f, opts, embed_events=True, config=config)
    errors: list[BaseException] = []

    def main() -> None:
        try:
            uvloop.run(rec.agent.run(install_signals=False))
        except BaseException as exc:
            errors.append(exc)
            rec.agent.attached.set()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    assert rec.agent.attached.wait(60) and not errors, errors
    try:
        workload()
    finally:
        rec.agent.stop()
        t.join(60)
    assert not errors, errors
    rec.finish()
    f.close()
    return rec


@pytest.mark.parametrize("level", ["summary", "full"])
def test_replay_of_a_live_recording_yields_the_live_transactions(tmp_path: Path, level: str) -> None:
    server, port = start_http_server()
    path = tmp_path / "live.qrec"
    urls = [f"http://127.0.0.1:{port}/bytes?n={n}&chunk=8192" for n in (10, 5000, 200_000)]

    def workload() -> None:
        # One curl, three requests on one keep-alive connection, plus a second connection.
        out = subprocess.run([CURL, "-sS", *urls], capture_output=True, check=True).stdout
        assert out == body_for(10) + body_for(5000) + body_for(200_000)
        subprocess.run([CURL, "-sS", "-o", "/dev/null", urls[0]], check=True)

    try:
        rec = _record(path, level, server.pid, workload)
    finally:
        server.kill()
        server.wait()
    rf = RecordFile.load(path)
    assert rf.meta["level"] == level and rf.trailer is not None
    assert rf.trailer["records"] == len(rf.records) == rec.writer.records > 0
    live = [comparable(e) for e in rec.events if is_transaction(e)]
    assert [(e["path"], e["status"], e["response_body_size"]) for e in live] == [
        (u.removeprefix(f"http://127.0.0.1:{port}"), 200, n) for u, n in zip([*urls, urls[0]], [10, 5000, 200_000, 10],
                                                                            strict=True)]
    r = replay(rf.records, level=level, keep_events=True)  # type: ignore[arg-type]
    assert r.decode_errors == 0 and r.internal_errors == 0
    assert [comparable(e) for e in r.captured if is_transaction(e)] == live
    if level == "full":
        assert live[2]["response_body_size"] == 200_000 and live[2]["response_body"]


def test_cli_record_then_replay(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    server, port = start_http_server()
    out = tmp_path / "cli.qrec"

    done = threading.Event()

    def load() -> None:
        # A request every 0.3 s for as long as the recorder runs: some land after it attached, whenever
        # that is on a busy machine.
        while not done.wait(0.3):
            subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}/bytes?n=321"], check=True)

    t = threading.Thread(target=load)
    t.start()
    try:
        res = CliRunner().invoke(app, ["record", "--out", str(out), "--duration", "3", "--no-tls", "--pid",
                                       str(server.pid), "--embed-events", "--log-level", "WARNING"])
    finally:
        done.set()
        t.join()
        server.kill()
        server.wait()
    assert res.exit_code == 0, res.output
    rf = RecordFile.load(out)
    assert rf.trailer is not None and rf.meta["level"] == "details"
    # A request in flight while the recorder attached is seen from its response on (no request line): such a
    # joined-midway exchange is reported without a path, in the live run and in the replay alike.
    live = [comparable(e) for e in rf.trailer["events"] if isinstance(e, dict) and is_transaction(e)]
    whole = [e for e in live if e["path"] is not None]
    assert whole and {(e["path"], e["status"], e["response_body_size"]) for e in whole} == {
        ("/bytes?n=321", 200, 321)}
    r = replay(rf.records, keep_events=True)
    assert [comparable(e) for e in r.captured if is_transaction(e)] == live


REPLAY_CONFIG = """version: 2
services:
  event_stores: [{type: disabled}]
  object_stores: [{type: disabled}]
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: summary
          rules:
            - name: big
              expr: 'http.req.path == "/bytes?n=5000"'
              level: details
      - type: report_usage
      - type: detect_errors
tap:
  direction: all
  ignore_loopback: false
  http: {stack: default}
"""
# Differ between any two runs by design: ids and digests carry a random per-run prefix, and the wall clock
# (the monotonic -> wall offset is taken at start).
RUN_FIELDS = frozenset({"transaction_id", "object_digest", "ts_ns", "first_ns", "window_start", "window_end"})


def _same_run_shape(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, StoredObject):  # its bytes hold the run's ids and times: compare what it is
            out.append(("object", item.content_type, item.conn_id, item.transaction_id != ""))
            continue
        d = comparable(item)
        out.append({k: v for k, v in d.items() if k not in RUN_FIELDS})
    return out


def test_replay_of_a_config_driven_run_gives_the_live_events(tmp_path: Path) -> None:
    """A live run with a config (filters, a stack with rules and three plugins), recorded; the file replayed
    through the same config's graph gives the same events, in the same order."""
    cfg = loads_config(REPLAY_CONFIG)
    server, port = start_http_server()
    path = tmp_path / "live.qrec"
    urls = [f"http://127.0.0.1:{port}/bytes?n={n}" for n in (10, 5000)] + [f"http://127.0.0.1:{port}/bytes?n=3&status=503"]

    def workload() -> None:
        for u in urls:
            subprocess.run([CURL, "-sS", "-o", "/dev/null", u], check=True)

    try:
        rec = _record(path, "summary", server.pid, workload, config=cfg)
    finally:
        server.kill()
        server.wait()
    live = rec.events
    kinds = {msgspec.to_builtins(e).get("type") for e in live if not isinstance(e, StoredObject)}
    assert {"connection", "http_transaction", "request", "issue"} <= kinds, kinds
    levels = sorted(e.level for e in live if isinstance(e, HttpTransactionEvent))
    assert levels == ["details", "summary", "summary"], levels  # the rule picked one, so it was compared
    rf = RecordFile.load(path)
    assert rf.meta["config"] is True and rf.trailer is not None
    assert sum(isinstance(e, StoredObject) for e in live) >= 1  # objects too (the rule's details level)

    async def replayed() -> list[Any]:
        got: list[Any] = []
        rt = await replay_with_config(rf.records, cfg, keep=got.append)
        assert rt.snapshot()["qtap_internal_errors_total"] == 0
        return got

    again = uvloop.run(replayed())
    assert _same_run_shape(again) == _same_run_shape(live)
