"""`qtap pulse query` without a server: the table, and one-line errors a person can act on."""

from __future__ import annotations

from cli.pulse_query import table
from tests.cli.helpers import qtap
from tests.integration.harness import free_port


def test_table_shows_each_time_once_as_rfc3339_and_durations_in_ms() -> None:
    ts = "2026-12-02T15:38:44.123456789Z"
    text = table([{"ts": ts, "ts_ns": 1_796_225_924_123_456_789, "domain": "a.example", "requests": 3,
                   "p50_ns": 1_500_000},
                  {"ts": None, "ts_ns": None, "domain": "bb.example", "requests": 12, "p50_ns": 2_000_000}])
    lines = text.splitlines()
    assert lines[0].split() == ["TS", "DOMAIN", "REQUESTS", "P50"]  # no TS_NS: the same instant twice
    assert lines[1].split() == [ts, "a.example", "3", "1.5ms"]
    assert lines[2].split() == ["-", "bb.example", "12", "2.0ms"]
    bucket = table([{"bucket_start": "2026-12-02T15:38:00.000000000Z", "bucket_start_ns": 1_796_225_880 * 10**9,
                     "requests": 1}])
    assert bucket.splitlines() == ["BUCKET_START                    REQUESTS",
                                   "2026-12-02T15:38:00.000000000Z  1"]
    assert table([]) == "(no rows)"


def test_no_token_and_unreachable_are_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    r = qtap("pulse", "query", "top-domains", "--url", "http://127.0.0.1:1", env=env)
    assert r.returncode == 2 and "no token" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = qtap("pulse", "query", "issues", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t", env=env)
    assert r.returncode == 1 and "is not reachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
