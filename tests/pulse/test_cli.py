"""`qtap pulse ...`: token management through the CLI, and `serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from cli.pulse import pulse_app
from qtap_async.events.times import format_ns
from tests.cli.helpers import qtap as qtap_cli
from tests.pulse.test_kafka import ROOT, free_port

runner = CliRunner()
qtap = typer.Typer()
qtap.add_typer(pulse_app, name="pulse")  # how cli/main.py mounts it


def test_token_create_list_revoke(tmp_path: Path) -> None:
    d = str(tmp_path)
    r = runner.invoke(qtap, ["pulse", "token", "create", "--data-dir", d, "--team", "blue", "--agent", "node-1"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("qtp_")
    r = runner.invoke(qtap, ["pulse", "token", "create", "--data-dir", d, "--team", "blue", "--scope", "query"])
    assert r.exit_code == 0
    listing = runner.invoke(qtap, ["pulse", "token", "list", "--data-dir", d]).stdout
    assert listing.count("blue") == 2 and "ingest,query" in listing and "node-1" in listing
    assert token not in listing and token.split("_")[2] not in (tmp_path / "tokens.sqlite3").read_bytes().decode(
        "latin-1"
    )
    token_id = token.split("_")[1]
    assert runner.invoke(qtap, ["pulse", "token", "revoke", token_id, "--data-dir", d]).exit_code == 0
    assert "revoked" in runner.invoke(qtap, ["pulse", "token", "list", "--data-dir", d, "--team", "blue"]).stdout
    again = runner.invoke(qtap, ["pulse", "token", "revoke", token_id, "--data-dir", d])
    assert again.exit_code == 1
    bad = runner.invoke(qtap, ["pulse", "token", "create", "--data-dir", d, "--team", "no spaces"])
    assert bad.exit_code == 2 and "team" in bad.output


@pytest.mark.parametrize("backend", ["chdb", "clickhouse-connect"])
def test_serve_ingest_query_and_stop_cleanly(tmp_path: Path, backend: str) -> None:
    """Both backends behind the real CLI; clickhouse-connect reaches the engine through its chdb://
    transport (no ClickHouse server on these machines), so its client code and the SQL are the real ones."""
    d = str(tmp_path)
    extra = ["--clickhouse-url", f"chdb://{tmp_path}/cc"] if backend == "clickhouse-connect" else []
    token = runner.invoke(qtap, ["pulse", "token", "create", "--data-dir", d, "--team", "red"]).stdout.split()[-1]
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.pulse import pulse_app; pulse_app(prog_name='qtap pulse')",
            "serve",
            "--data-dir",
            d,
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "pulse serve did not start"
            time.sleep(0.1)
        h = {"authorization": f"Bearer {token}"}
        now = time.time_ns()
        ev = {"type": "request", "id": "x1", "ts": format_ns(now), "domain": "cli.example", "status": 503,
              "duration_ns": 9}
        assert httpx.post(url + "/v1/events", json=[ev], headers=h).status_code == 200
        got = httpx.get(url + "/v1/query/top/domains", headers=h).json()
        assert [(g["domain"], g["requests"], g["errors"]) for g in got] == [("cli.example", 1, 1)]
        # `qtap pulse query` as a user runs it: times as the agent wrote them (RFC 3339 UTC with nanoseconds),
        # the number beside it in JSON only, and no other rendering of a time in the table.
        sent = format_ns(now)
        issue = {"type": "issue", "id": "i1", "ts": sent, "rule": "slow", "severity": "high", "conn_id": 3}
        assert httpx.post(url + "/v1/events", json=[issue], headers=h).status_code == 200
        env = {**os.environ, "PULSE_TOKEN": token, "QTAP_PULSE_URL": url}
        (row,) = json.loads(qtap_cli("pulse", "query", "issues", "--json", env=env).stdout)
        assert (row["ts"], row["ts_ns"], row["rule"]) == (sent, now, "slow")
        table = qtap_cli("pulse", "query", "issues", "--table", env=env).stdout
        assert table.splitlines()[0].split()[:2] == ["ID", "TS"] and "TS_NS" not in table
        assert sent in table and str(now) not in table
        (bucket,) = json.loads(qtap_cli("pulse", "query", "timeseries", "--bucket", "60", "--json", env=env).stdout)
        start_ns = now // (60 * 10**9) * 60 * 10**9
        assert (bucket["bucket_start"], bucket["bucket_start_ns"]) == (format_ns(start_ns), start_ns)
        # A revoked token is refused by the running server on its next request.
        token_id = token.split("_")[1]
        assert runner.invoke(qtap, ["pulse", "token", "revoke", token_id, "--data-dir", d]).exit_code == 0
        assert httpx.get(url + "/v1/query/top/domains", headers=h).status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stdout.read().decode() if proc.stdout else ""
    assert (tmp_path / ("cc" if extra else "chdb")).is_dir()


def test_config_file_values_hold_unless_a_flag_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qtap_async.pulse import server

    seen: dict[str, Any] = {}
    cfg_file = tmp_path / "pulse.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path}/from-file\nlisten: 127.0.0.1:9999\nretention:\n  issues: 7\n")
    monkeypatch.setattr(server, "run", lambda cfg, level: seen.setdefault("cfg", cfg))
    assert runner.invoke(qtap, ["pulse", "serve", "--config", str(cfg_file)]).exit_code == 0
    cfg = seen.pop("cfg")
    assert (cfg.data_dir, cfg.listen, cfg.retention.issues) == (f"{tmp_path}/from-file", "127.0.0.1:9999", 7)
    assert runner.invoke(qtap, ["pulse", "serve", "--config", str(cfg_file), "--listen", "0.0.0.0:1"]).exit_code == 0
    assert seen["cfg"].listen == "0.0.0.0:1" and seen["cfg"].data_dir == f"{tmp_path}/from-file"
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention: {issues: 0}\n")
    r = runner.invoke(qtap, ["pulse", "serve", "--config", str(bad)])
    assert r.exit_code == 2 and "retention.issues" in r.output
