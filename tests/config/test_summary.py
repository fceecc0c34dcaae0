"""A config in a few lines (qtap_async.config.summary), as `qtap validate` and the agent's log show it."""

from __future__ import annotations

from pathlib import Path

from qtap_async.config import default_config, load_config, loads_config, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_summarize() -> None:
    lines = summarize(load_config(ROOT / "examples" / "production.yaml"))
    assert lines[0] == "event stores: kafka (events)"
    assert "stack payments: http_capture" in lines
    assert "endpoint *.internal.example.com: http stack none" in lines
    assert lines[-1] == "rules: 4, macros: 2"


def test_summarize_the_default_and_an_empty_config() -> None:
    assert summarize(default_config()) == [
        "event stores: stdout",
        "object stores: disabled",
        "stack default: http_capture, access_logs",
        "tap: direction all, loopback included, http stack default",
        "ignored processes: groups [qpoint], 0 custom filter(s)",
        "rules: 0, macros: 0",
    ]
    assert summarize(loads_config("version: 2\n")) == [
        "event stores: none",
        "object stores: none",
        "tap: direction all, loopback included, http stack none",
        "rules: 0, macros: 0",
    ]
