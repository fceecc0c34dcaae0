"""Both uprobe link modes capture the same TLS plaintext: uprobe_multi links (one per program and file, the
default where the kernel has them) and classic perf-event links (older kernels, QTAP_UPROBE_MULTI=0)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from qtap_async.tls.manager import TlsOptions
from qtap_async.topology import AgentOptions
from tests.integration.harness import AgentHarness
from tests.integration.peers.http_server import body_for
from tests.integration.test_tls import _one, _plain, _request_response_check

pytestmark = pytest.mark.bpf

CURL = shutil.which("curl") or "/usr/bin/curl"


@pytest.mark.parametrize("multi", [True, False], ids=["uprobe_multi", "classic"])
def test_curl_and_python_ssl_byte_exact_in_each_link_mode(https_server: tuple[subprocess.Popen[str], int],
                                                          multi: bool) -> None:
    proc, port = https_server
    n = 100_000
    path = f"/bytes?n={n}".encode()
    opts = AgentOptions(tls_options=TlsOptions(uprobe_multi=multi))
    with AgentHarness(opts) as h:
        assert h.agent.tls is not None
        assert h.agent.tls.probes.link_mode == ("multi" if multi else "classic")
        links = [link for e in h.agent.tls.probes.files.values() for link in e.links]
        probes = sum(s.probes for s in h.agent.tls.probes.statuses() if s.attached)
        # multi: one link per program and file, fewer than the probes; classic: one link per probe
        assert (len(links) < probes) if multi else (len(links) == probes), (len(links), probes)
        out = subprocess.run([CURL, "-sSk", f"https://127.0.0.1:{port}{path.decode()}"], capture_output=True,
                             check=True)
        assert out.stdout == body_for(n)
        client = _one(h, exe=CURL, dst_port=port)
        server = _one(h, pid=proc.pid, src_port=client.src_port)
    crec, srec = _plain(h, client), _plain(h, server)
    _request_response_check(crec, True, path, body_for(n))
    _request_response_check(srec, False, path, body_for(n))
    assert all(link.closed for link in links)  # the stop detached every link
