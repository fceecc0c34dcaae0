"""`qtap run` as a person uses it: the real agent (real BPF) in a subprocess, real curl traffic.

Console lines on a pseudo-terminal, JSON on a pipe or a file, the start message and the stop summary
on stderr, and the command-line filters (each test also shows what a filter drops)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import AgentRun, PtyRun, curl, wait_until
from tests.integration.harness import start_http_server

pytestmark = pytest.mark.bpf

CONSOLE = re.compile(r"^GET http://127\.0\.0\.1:(\d+)(/\S*) (\d{3}) \d+\.\dms (\d+)B (\S+)\[(\d+)\] (\S+)$")


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def server2() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _tx(events: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "http_transaction" and port in (e.get("dst_port"), e.get("src_port"))]


def test_terminal_gets_console_lines_and_a_summary(server: int, tmp_path: Path) -> None:
    run = PtyRun(["run", "--no-tls", "--port", str(server)], tmp_path)
    try:
        assert wait_until(lambda: "Ctrl-C to stop" in run.log(), 90, run.proc), run.log()
        start = run.log()
        assert "hooks attached" in start and "an access line per request on stdout" in start
        curl(f"http://127.0.0.1:{server}/bytes?n=6")
        assert run.wait_for(lambda: run.buf.count(b"/bytes?n=6 200") >= 2, 30), run.read()
    finally:
        code = run.stop()
    assert code == 0, run.log()
    lines = [ln.strip() for ln in run.read().splitlines() if ln.strip()]
    matches = [CONSOLE.match(ln) for ln in lines]
    assert all(matches), lines  # nothing but access lines: no JSON, no connection records
    by_dir = {m.group(7): m for m in matches if m}
    assert by_dir["egress-internal"].group(5) == "curl" and by_dir["egress-internal"].group(4) == "6"
    assert "ingress" in by_dir
    summary = run.log().strip().splitlines()[-1]
    assert re.fullmatch(r"qtap: stopped after \d+s: 2 requests on \d+ connections?, 0 dropped", summary), summary
    assert "qtap_kernel" not in run.log()  # the counter JSON only with --stats or --log-level debug


def test_pipe_gets_json_and_stats_flag_prints_counters(server: int, tmp_path: Path) -> None:
    run = AgentRun(["run", "--no-tls", "--port", str(server), "--stats"], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=7")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 2, 30), run.out()
    finally:
        assert run.stop() == 0
    events = _json_lines(run.out())
    assert {e["type"] for e in events} >= {"connection", "http_transaction"}
    assert "JSON lines on stdout" in run.log()
    err = run.log().strip().splitlines()
    assert "2 requests" in err[-2]
    assert json.loads(err[-1])["qtap_kernel_records_total"] > 0


def test_output_file_and_text_format(server: int, tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    run = AgentRun(["run", "--no-tls", "--port", str(server), "--format", "text", "--output", str(out)], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=5", "-H", "X-Probe: yes")
        assert wait_until(lambda: out.exists() and "conn close" in out.read_text(), 30)
    finally:
        assert run.stop() == 0
    text = out.read_text()
    assert run.out() == ""  # nothing on stdout
    assert re.search(rf"^GET http://127\.0\.0\.1:{server}/bytes\?n=5 200 ", text, re.M), text
    assert "  > X-Probe: yes" in text or "  > x-probe: yes" in text
    assert "conn open" in text and "{" not in text.split("\n")[0]
    assert f"on {out}" in run.log()


def test_filters_keep_only_what_was_asked(server: int, server2: int, tmp_path: Path) -> None:
    run = AgentRun(["run", "--no-tls", "--format", "json", "--port", str(server), "--exe", "curl",
                    "--direction", "egress"], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server2}/bytes?n=1")  # other port: dropped
        curl(f"http://127.0.0.1:{server}/bytes?n=2")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 1, 30)
        curl(f"http://127.0.0.1:{server}/bytes?n=3")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 2, 30)
    finally:
        assert run.stop() == 0
    events = _json_lines(run.out())
    txs = [e for e in events if e["type"] == "http_transaction"]
    assert {e["dst_port"] for e in txs} == {server}  # nothing of server2, nothing of other traffic
    assert all(e["exe"].endswith("/curl") and e["direction"] == "egress" for e in txs), txs  # no server side
    conns = [e for e in events if e["type"] == "connection"]
    assert conns and all(server in (c["dst_port"], c["src_port"]) and c["exe"].endswith("/curl") for c in conns)


def test_domain_and_container_filters(server: int, tmp_path: Path) -> None:
    run = AgentRun(["run", "--no-tls", "--format", "json", "--port", str(server), "--domain", "localhost",
                    "--direction", "egress"], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=1")  # Host: 127.0.0.1:port: dropped
        curl(f"http://localhost:{server}/bytes?n=2", "--ipv4")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 1, 30)
        curl(f"http://127.0.0.1:{server}/bytes?n=3")
        curl(f"http://localhost:{server}/bytes?n=4", "--ipv4")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 2, 30)
    finally:
        assert run.stop() == 0
    txs = _tx(_json_lines(run.out()), server)
    assert sorted(e["path"] for e in txs) == ["/bytes?n=2", "/bytes?n=4"], txs

    other = tmp_path / "c"
    other.mkdir()
    run = AgentRun(["run", "--no-tls", "--format", "json", "--port", str(server), "--container", "0123abcd"], other)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=5")  # a host process: in no container
        curl(f"http://127.0.0.1:{server}/bytes?n=6")
    finally:
        assert run.stop() == 0
    assert _json_lines(run.out()) == []
    assert "0 requests on 0 connections" in run.log()


def test_filters_apply_on_top_of_a_config(server: int, server2: int, tmp_path: Path) -> None:
    cfg = tmp_path / "qpoint.yaml"
    cfg.write_text("""version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
stacks:
  default:
    plugins:
      - type: http_capture
        config: {level: summary}
tap:
  direction: egress
  http: {stack: default}
""")
    out = tmp_path / "events.jsonl"
    run = AgentRun(["run", "--no-tls", "--config", str(cfg), "--port", str(server), "--output", str(out)], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server2}/bytes?n=1")
        curl(f"http://127.0.0.1:{server}/bytes?n=2")
        assert wait_until(lambda: out.exists() and len(_tx(_json_lines(out.read_text()), server)) >= 1, 30)
    finally:
        assert run.stop() == 0
    events = _json_lines(out.read_text())
    txs = [e for e in events if e.get("type") == "http_transaction"]
    assert [e["dst_port"] for e in txs] == [server], txs
    assert run.out() == ""
    assert "output to the config's stores (stdout)" in run.log()
    assert re.search(r"1 request on \d+ connections?", run.log()), run.log()


def test_http_capture_text_format_is_text(server: int, tmp_path: Path) -> None:
    cfg = tmp_path / "qpoint.yaml"
    cfg.write_text("""version: 2
services:
  event_stores: [{type: disabled}]
  object_stores: [{type: stdout}]
stacks:
  default:
    plugins:
      - type: http_capture
        config: {level: full, format: text}
tap:
  direction: egress
  http: {stack: default}
""")
    run = AgentRun(["run", "--no-tls", "--config", str(cfg), "--port", str(server)], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=4")
        assert wait_until(lambda: "HTTP/1.1 200" in run.out(), 30), run.out()
    finally:
        assert run.stop() == 0
    text = run.out()
    assert text.startswith("# ") and "GET /bytes?n=4 HTTP/1.1" in text
    assert '"body"' not in text and "\\n" not in text


def test_plain_qtap_run_prints_the_readme_json_lines(server: int, tmp_path: Path) -> None:
    """`qtap run > events.jsonl` with no flag and no file: the default config's graph with the local output.
    The lines are the README's "What you get on stdout": connection open/close, http_transaction with the
    connection and process context and the headers (level details), no bodies, for both ends."""
    run = AgentRun(["run"], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=9", "-H", "X-Plain: 1")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 2, 60), run.out()[-3000:]
    finally:
        assert run.stop() == 0
    assert "JSON lines on stdout" in run.log()
    events = _json_lines(run.out())  # every line is one JSON object
    assert all(isinstance(e.get("type"), str) for e in events)
    txs = _tx(events, server)
    by_dir = {e["direction"]: e for e in txs}
    assert set(by_dir) == {"egress", "ingress"}, txs  # each end by its own process
    client, srv = by_dir["egress"], by_dir["ingress"]
    assert client["exe"].endswith("/curl") and client["dst_port"] == server and srv["dst_port"] == server
    for tx in (client, srv):
        assert (tx["protocol"], tx["method"], tx["path"], tx["status"]) == ("http/1.1", "GET", "/bytes?n=9", 200)
        assert tx["authority"] == f"127.0.0.1:{server}" and tx["response_body_size"] == 9 and tx["tls"] is False
        assert tx["duration_ns"] > 0 and tx["ttfb_ns"] > 0 and tx["id"] and tx["ts"].endswith("Z")
        assert ["X-Plain", "1"] in tx["request_headers"] and tx["response_headers"]  # details: headers
        assert "request_body" not in tx and "response_body" not in tx  # bodies only at --level full
    conns = [e for e in events if e["type"] == "connection" and e["conn_id"] == client["conn_id"]]
    assert [c["event"] for c in conns] == ["open", "close"], conns
    close = conns[-1]
    assert close["reason"] == "closed" and close["protocol"] and close["bytes_received"] > 0
    assert close.get("transport", "tcp") == "tcp" and close["user"] and close["uid"] >= 0  # tcp: the default
    assert close["src_port"] == client["src_port"] and close["pid"] == client["pid"]


def _thread_scheduling(pid: int) -> list[tuple[int, int, int]]:
    """(tid, nice, policy) of every thread of ``pid`` (nice is field 19 of /proc/PID/task/TID/stat)."""
    import os

    out = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)": field 3 onwards
        out.append((tid, int(fields[16]), os.sched_getscheduler(tid)))
    return out


@pytest.mark.parametrize("priority", ["low", "idle"])
def test_cpu_priority_covers_every_thread_and_capture_goes_on(priority: str, server: int, tmp_path: Path) -> None:
    import os

    run = AgentRun(["run", "--no-tls", "--port", str(server), "--cpu-priority", priority,
                    "--log-level", "info"], tmp_path)
    try:
        curl(f"http://127.0.0.1:{server}/bytes?n=9")
        assert wait_until(lambda: len(_tx(_json_lines(run.out()), server)) >= 2, 30), run.out()
        threads = _thread_scheduling(run.proc.pid)
    finally:
        assert run.stop() == 0
    assert len(threads) > 1, threads  # the agent's worker threads were started after the priority was set
    if priority == "low":
        assert {(nice, policy) for _, nice, policy in threads} == {(19, os.SCHED_OTHER)}, threads
        assert "cpu priority: low (nice 19)" in run.log()
    else:
        assert {policy for _, _, policy in threads} == {os.SCHED_IDLE}, threads
        assert "cpu priority: idle (SCHED_IDLE)" in run.log()
