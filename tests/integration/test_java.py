"""Java (JSSE) plaintext through qtap's Java agent, loaded into JVMs that were running before the agent.

The peers (peers/java/JavaPeer.java) are compiled by the test with javac; Apache HttpClient 5 comes from Maven
Central through mvn, cached in QTAP_TEST_CACHE (default ~/.cache/qtap-tests) so a fresh machine fetches it once.
Both ends run on this host, so every exchange is seen twice: the client's SSLEngine (java.net.http) or SSLSocket
(Apache HttpClient) and the server's SSLEngine (com.sun.net.httpserver.HttpsServer); both captures must be the
same bytes, and hold exactly the path, headers and bodies the peers used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtap_async.events.connection import ConnectionEvent
from qtap_async.tls.manager import TlsOptions
from qtap_async.topology import AgentOptions
from tests.integration.harness import PEERS, AgentHarness, Recorded

pytestmark = pytest.mark.bpf

JAVA = shutil.which("java") or "/usr/bin/java"
JAVAC = shutil.which("javac") or "/usr/bin/javac"
MVN = shutil.which("mvn") or "/usr/bin/mvn"
APACHE = ("org.apache.httpcomponents.client5", "httpclient5", "5.4.4")
POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>qtap.test</groupId><artifactId>java-peers</artifactId><version>1</version>
<dependencies><dependency><groupId>{0}</groupId><artifactId>{1}</artifactId><version>{2}</version></dependency>
</dependencies></project>
"""


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    for tool in (JAVA, JAVAC, MVN):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} is needed for the Java tests (a JDK 17+ and Maven)")
    cache = Path(os.environ.get("QTAP_TEST_CACHE", Path.home() / ".cache" / "qtap-tests")) / "java-peers"
    lib = cache / "lib"
    if not (lib / f"{APACHE[1]}-{APACHE[2]}.jar").exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "pom.xml").write_text(POM.format(*APACHE))
        out = subprocess.run([MVN, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={lib}"],
                             cwd=cache, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    classes = tmp_path_factory.mktemp("javapeer")
    cp = os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))
    subprocess.run([JAVAC, "-nowarn", "-cp", cp, "-d", str(classes), *map(str, (PEERS / "java").glob("*.java"))],
                   check=True)
    return f"{classes}{os.pathsep}{cp}"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> str:
    ks = tmp_path_factory.mktemp("ks") / "server.p12"
    subprocess.run([shutil.which("keytool") or "/usr/bin/keytool", "-genkeypair", "-keystore", str(ks), "-storetype",
                    "PKCS12", "-storepass", "qtapqtap", "-alias", "qtap", "-keyalg", "EC", "-dname", "CN=localhost",
                    "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-validity", "2"], check=True, capture_output=True)
    return str(ks)


class Jvm:
    def __init__(self, classpath: str, *args: str, ready: str) -> None:
        self.proc = subprocess.Popen([JAVA, "-cp", classpath, "JavaPeer", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline()
        if not self.first.startswith(ready):
            self.proc.kill()
            raise RuntimeError(f"java peer {args} did not start: {self.first!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().rstrip("\n")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def jvms(java_classpath: str, keystore: str) -> Iterator[tuple[Jvm, int, Jvm, Jvm]]:
    server = Jvm(java_classpath, "server", keystore, "qtapqtap", ready="PORT ")
    clients = []
    try:
        clients = [Jvm(java_classpath, "httpclient", ready="READY"), Jvm(java_classpath, "apache", ready="READY")]
        yield server, int(server.first.split()[1]), clients[0], clients[1]
    finally:
        for j in (server, *clients):
            j.close()


def _options(*pids: int) -> AgentOptions:
    return AgentOptions(tls_options=TlsOptions(java=True, java_pids=frozenset(pids)))


def _wait_attached(h: AgentHarness, *pids: int) -> None:
    java = h.agent.java
    assert java is not None
    ok = h.wait_for(lambda: all(java.jvms.get(p) is not None and java.jvms[p].state == "attached" for p in pids),
                    timeout=30)
    assert ok, {p: java.jvms.get(p) for p in pids}


def _conn(h: AgentHarness, **match: object) -> ConnectionEvent:
    assert h.wait_for(lambda: len(h.connections("open", **match)) == 1), h.connections("open")
    return h.connections("open", **match)[0]


def _plain(h: AgentHarness, c: ConnectionEvent, want: int) -> Recorded:
    def ready() -> bool:
        r = h.recorded.get((c.conn_id, 1))
        return r is not None and len(r.data[0]) + len(r.data[1]) >= want
    assert h.wait_for(ready, timeout=10), h.recorded.get((c.conn_id, 1))
    time.sleep(0.2)  # nothing more may come: the equality checks below see the whole exchange
    return h.recorded[(c.conn_id, 1)]


def _exchange(h: AgentHarness, client: Jvm, server: Jvm, port: int, kind: str) -> None:
    body = f"hello from {kind} " + "x" * 3000 + " end"
    path = f"/java/{kind}/1"
    assert client.ask(f"{port} {path} {body}") == f"STATUS 200 java-server:{path}:{body}"
    c = _conn(h, pid=client.pid, dst_port=port)
    s = _conn(h, pid=server.pid, src_port=c.src_port)
    resp_body = f"java-server:{path}:{body}".encode()
    crec = _plain(h, c, len(body) * 2 + 200)
    srec = _plain(h, s, len(body) * 2 + 200)
    req, resp = bytes(crec.data[0]), bytes(crec.data[1])
    # The client's plaintext as its JSSE wrote it, and the server's as its JSSE read it: the same bytes.
    assert req == bytes(srec.data[1]) and resp == bytes(srec.data[0])
    head, _, got = req.partition(b"\r\n\r\n")
    assert head.startswith(f"POST {path} HTTP/1.1\r\n".encode()), head
    assert f"\r\nX-Qtap-Test: {kind}".lower().encode() in head.lower()
    assert f"\r\nContent-Length: {len(body)}".lower().encode() in head.lower()
    assert got == body.encode()
    rhead, _, rgot = resp.partition(b"\r\n\r\n")
    assert rhead.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-qtap-peer: java" in rhead, rhead
    assert rgot == resp_body
    assert crec.gaps == {0: 0, 1: 0} and srec.gaps == {0: 0, 1: 0}
    # The ciphertext was not taken for plaintext: the socket layer never holds the body in the clear.
    raw = h.recorded.get((c.conn_id, 0))
    assert raw is None or body.encode()[:64] not in bytes(raw.data[0])


def test_httpclient_apache_and_httpsserver_byte_exact(jvms: tuple[Jvm, int, Jvm, Jvm]) -> None:
    server, port, httpclient, apache = jvms
    with AgentHarness(_options(server.pid, httpclient.pid, apache.pid)) as h:
        _wait_attached(h, server.pid, httpclient.pid, apache.pid)
        _exchange(h, httpclient, server, port, "httpclient")  # SSLEngine on both sides
        _exchange(h, apache, server, port, "apache")  # SSLSocket on the client side
        snap = h.agent.snapshot()
    assert h.agent.conntrack.java.stats.ambiguous == 0
    assert snap["qtap_java_jvms_attached"] == 3


def test_http_transactions_carry_the_jvm(jvms: tuple[Jvm, int, Jvm, Jvm]) -> None:
    server, port, httpclient, _ = jvms
    with AgentHarness(_options(server.pid, httpclient.pid), record=False) as h:
        _wait_attached(h, server.pid, httpclient.pid)
        assert httpclient.ask(f"{port} /java/tx/2 ping").startswith("STATUS 200 ")

        def txs() -> list[dict[str, Any]]:
            return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
                    and e.get("path") == "/java/tx/2"]
        assert h.wait_for(lambda: len(txs()) == 2), [e for e in h.events() if isinstance(e, dict)]
    by_pid = {t["pid"]: t for t in txs()}
    assert set(by_pid) == {server.pid, httpclient.pid}
    for t in by_pid.values():
        assert t["exe"].endswith("/java") and t["status"] == 200 and t["method"] == "POST" and t["tls"]
    assert by_pid[httpclient.pid]["direction"] == "egress" and by_pid[server.pid]["direction"] == "ingress"
    assert by_pid[httpclient.pid]["dst_port"] == port and by_pid[server.pid]["dst_port"] == port  # client -> server


def test_jvm_keeps_working_when_the_agent_dies(jvms: tuple[Jvm, int, Jvm, Jvm]) -> None:
    server, port, httpclient, _ = jvms
    with AgentHarness(_options(server.pid, httpclient.pid)) as h:
        _wait_attached(h, server.pid, httpclient.pid)
        assert httpclient.ask(f"{port} /java/a/1 one").startswith("STATUS 200 ")
    # qtap is gone (its socket closed): the hooks turn themselves off, the JVMs go on as before.
    for i in range(3):
        assert httpclient.ask(f"{port} /java/after/{i} two") == f"STATUS 200 java-server:/java/after/{i}:two"
    # A new qtap attaches again to the same JVMs (already instrumented) and captures again.
    with AgentHarness(_options(server.pid, httpclient.pid)) as h:
        _wait_attached(h, server.pid, httpclient.pid)
        assert httpclient.ask(f"{port} /java/b/1 three").startswith("STATUS 200 ")
        c = _conn(h, pid=httpclient.pid, dst_port=port)
        rec = _plain(h, c, 100)
        assert bytes(rec.data[0]).startswith(b"POST /java/b/1 HTTP/1.1\r\n")
