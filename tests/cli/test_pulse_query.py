"""`qtap pulse query` without a server: the table, and one-line errors a person can act on."""

from __future__ import annotations

from cli.pulse_query import table
from tests.cli.helpers import qtap
from tests.integration.harness import free_port


def test_table_formats_times_and_durations() -> None:
    text = table([{"domain": "a.example", "requests": 3, "p50_ns": 1_500_000, "ts_ns": 1_796_188_473_264_185_000},
                  {"domain": "bb.example", "requests": 12, "p50_ns": 2_000_000, "ts_ns": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["DOMAIN", "REQUESTS", "P50", "TS"]
    assert lines[1].split()[:3] == ["a.example", "3", "1.5ms"] and "2026-" in lines[1]
    assert lines[2].split() == ["bb.example", "12", "2.0ms", "-"]
    assert table([]) == "(no rows)"


def test_no_token_and_unreachable_are_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    r = qtap("pulse", "query", "top-domains", "--url", "http://127.0.0.1:1", env=env)
    assert r.returncode == 2 and "no token" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = qtap("pulse", "query", "issues", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t", env=env)
    assert r.returncode == 1 and "is not reachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
