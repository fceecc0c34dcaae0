"""HTTP framing on real traffic, both ends: an HTTP/2 server push, a message head over the 64 KiB limit on a
keep-alive connection, `Expect: 100-continue` answered 417 without the body, and a request target that is
not UTF-8."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtap_async.agent import AgentOptions
from tests.integration.harness import AgentHarness, free_port, wait_port

pytestmark = pytest.mark.bpf

NGHTTPD = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
NGHTTP = shutil.which("nghttp") or "/usr/bin/nghttp"
CURL = shutil.which("curl") or "/usr/bin/curl"


def _http(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
            and all(e.get(k) == v for k, v in match.items())]


def _errors(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "parse_error"
            and all(e.get(k) == v for k, v in match.items())]


@pytest.fixture
def pushing_server(tmp_path: Path) -> Iterator[int]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<html>pushed css follows</html>\n")
    (root / "style.css").write_bytes(b"body { color: red }\n")
    port = free_port()
    proc = subprocess.Popen([NGHTTPD, "--no-tls", "-d", str(root), "-p", "/index.html=/style.css", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_http2_server_push_is_marked_pushed_with_its_parent_stream(pushing_server: int) -> None:
    port = pushing_server
    with AgentHarness(AgentOptions(http_level="full"), record=False) as h:
        out = subprocess.run([NGHTTP, "-v", f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True,
                             check=True, timeout=30)
        assert "PUSH_PROMISE" in out.stdout  # the server did push
        assert h.wait_for(lambda: len(_http(h, dst_port=port)) >= 4)
    for comm in ("nghttp", "nghttpd"):
        txs = {t["path"]: t for t in _http(h, dst_port=port, comm=comm)}
        assert set(txs) == {"/index.html", "/style.css"}, (comm, txs)
        page, pushed = txs["/index.html"], txs["/style.css"]
        # (nghttp opens idle streams for its priority tree first: the request is not stream 1)
        assert "pushed" not in page and page["stream_id"] % 2 == 1
        assert pushed["pushed"] is True and pushed["promised_by"] == page["stream_id"]
        assert pushed["stream_id"] % 2 == 0  # a server-initiated stream
        assert pushed["status"] == 200 and pushed["response_body"] == b"body { color: red }\n"
        assert not pushed.get("incomplete")
