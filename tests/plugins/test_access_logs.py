from __future__ import annotations

import logging
from typing import Any

import msgspec

from qtap_async.plugins import AccessLogs
from qtap_async.plugins.access_logs import AccessLogsConfig, AccessLogsRule
from qtap_async.rulekit import compile_rule
from tests.plugins.helpers import exchange, recorded, tx


def run(t: Any = None, **kw: Any) -> list[str]:
    lines: list[str] = []
    out = AccessLogs(AccessLogsConfig(**kw), compile_rule, lines.append).on_http(exchange(t))
    assert out == []  # logs only: nothing for the stores
    return lines


def test_console_summary_is_one_line() -> None:
    (line,) = run(tx(path="/v1/items?page=2"))
    assert line.startswith("GET https://api.example.com/v1/items?page=2 200 4.0ms 2B curl[4242] egress-external")
    assert "\n" not in line and "User-Agent" not in line


def test_console_details_and_full() -> None:
    t = tx(method="POST", request_body=b'{"a": 1}', request_body_size=8)
    (details,) = run(t, mode="details")
    assert "  > User-Agent: curl/8.0" in details and "  < Content-Type: application/json" in details
    assert '{"a": 1}' not in details
    (full,) = run(t, mode="full")
    assert '  > {"a": 1}' in full and "  < {}" in full


def test_json_format() -> None:
    (line,) = run(tx(status=404), format="json", mode="details")
    doc = msgspec.json.decode(line)
    assert doc["status"] == 404 and doc["url"] == "https://api.example.com/v1/items"
    assert ["User-Agent", "curl/8.0"] in doc["request_headers"]
    assert "request_body" not in doc


def test_rules_pick_the_mode() -> None:
    rules = [AccessLogsRule(name="errors", expr="http.res.status >= 500", mode="full")]
    assert "\n" not in run(tx(status=200), rules=rules)[0]
    assert "  < {}" in run(tx(status=500), rules=rules)[0]


def test_default_writer_is_the_access_logger() -> None:
    # Our own handler on qtap.access, cut off from its parents for the test: other tests (and the CLI's
    # setup_logging) leave handlers and propagation settings behind that must not change what we count.
    logger = logging.getLogger("qtap.access")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.INFO)
    saved = (logger.propagate, logger.level)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for t in recorded("http1_python_keepalive"):
            AccessLogs(AccessLogsConfig(), compile_rule).on_http(exchange(t))
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved
    lines = [r.getMessage() for r in records]
    assert len(lines) == 6 and lines[0].startswith("GET https://127.0.0.1:42815/items?id=1 200")


def test_long_bodies_are_cut_and_binary_is_summarized() -> None:
    long = ("a" + "é" * 3000).encode()  # 6001 bytes: byte 4096 falls inside a character
    (line,) = run(tx(response_body=long, response_body_size=len(long)), mode="full")
    assert line.endswith("...") and "binary" not in line
    (binary,) = run(tx(response_body=b"\xff\xfe\x00", response_body_size=3), mode="full")
    assert "  < [3 bytes of binary data]" in binary


def test_server_push_is_marked_in_the_line() -> None:
    (line,) = run(tx(path="/style.css", stream_id=2, pushed=True, promised_by=1))
    assert line.startswith("GET https://api.example.com/style.css 200") and "pushed(promised by stream 1)" in line
    (plain,) = run(tx(path="/index.html"))
    assert "pushed" not in plain
