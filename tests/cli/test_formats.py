"""Output formats of `qtap run` (cli.formats): the console line, text lines, the format choice."""

from __future__ import annotations

import io
import os
import pty

import pytest

from cli.formats import FormatWriter, choose_format, console_line, text_lines
from qtap_async.events.connection import ConnectionEvent

TX = {"type": "http_transaction", "method": "GET", "scheme": "http", "authority": "127.0.0.1:28180", "path": "/",
      "status": 200, "duration_ns": 600_000, "response_body_size": 6, "exe": "/usr/bin/curl", "pid": 9775,
      "direction": "egress", "dst_ip": "127.0.0.1", "dst_port": 28180,
      "request_headers": [["user-agent", "curl/8"]], "response_headers": [["content-length", "6"]]}


def test_console_line_is_the_access_log_line() -> None:
    assert console_line(TX) == "GET http://127.0.0.1:28180/ 200 0.6ms 6B curl[9775] egress-internal"
    assert console_line({**TX, "dst_ip": "93.184.216.34"}).endswith(" egress-external")
    assert console_line({**TX, "direction": "ingress", "exe": "/usr/sbin/nginx"}).endswith("nginx[9775] ingress")
    partial = console_line({**TX, "status": None, "incomplete": True, "reason": "connection closed"})
    assert " --- " in partial and partial.endswith("incomplete(connection closed)")


def test_text_lines() -> None:
    assert text_lines(TX) == [console_line(TX), "  > user-agent: curl/8", "  < content-length: 6"]
    ev = ConnectionEvent(id="c1", ts="t", ts_ns=1, event="close", conn_id=1, direction="egress", family="ipv4",
                         src_ip="127.0.0.1", src_port=50000, dst_ip="127.0.0.1", dst_port=80, pid=7,
                         exe="/usr/bin/curl", comm="curl", tls=False, container_id="", bytes_sent=10, bytes_received=20,
                         protocol="http/1.1")
    (line,) = text_lines(ev)
    assert line.startswith("conn close 127.0.0.1:50000 -> 127.0.0.1:80 curl[7] egress-internal sent=10B received=20B")


def test_auto_is_console_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("container", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "wb", closefd=False) as tty:
            assert choose_format("auto", tty) == "console"
            monkeypatch.setenv("container", "podman")
            assert choose_format("auto", tty) == "json"  # a container's stdout is collected as logs
            assert choose_format("text", tty) == "text"
    finally:
        os.close(master)
        os.close(slave)
    assert choose_format("auto", io.BytesIO()) == "json"
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=False) as pipe:
            assert choose_format("auto", pipe) == "json"
    finally:
        os.close(r)
        os.close(w)


def test_writer_counts_and_filters() -> None:
    out = io.BytesIO()
    w = FormatWriter("console", out, keep=lambda e: e.get("pid") != 1)
    w.write([TX, {**TX, "pid": 1}, {"type": "dns_message", "qname": "x"}])
    assert out.getvalue().decode().splitlines() == [console_line(TX)]
    assert w.counter.requests == 1 and w.filtered == 1
