"""`qtap inspect`'s JVM states, through a real JVM attached by a real JavaAttacher."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from qtap_async.tls import java_attach, java_inspect
from qtap_async.tls.java_channel import JavaChannel
from qtap_async.tls.java_manager import JavaAttacher

JAVA = shutil.which("java") or "/usr/bin/java"
JAVAC = shutil.which("javac") or "/usr/bin/javac"


@pytest.fixture
def jvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    if not os.path.exists(JAVAC):
        pytest.fail("javac (a JDK 17+) is needed")
    d = tmp_path_factory.mktemp("idle")
    (d / "Idle.java").write_text(textwrap.dedent("""
        public class Idle {
            public static void main(String[] a) throws Exception {
                System.out.println("UP");
                System.out.flush();
                Thread.sleep(600000);
            }
        }
    """))
    subprocess.run([JAVAC, "-d", str(d), str(d / "Idle.java")], check=True)
    p = subprocess.Popen([JAVA, "-cp", str(d), "Idle"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline() == "UP\n"
    yield p
    p.kill()
    p.wait()


def test_states_before_during_and_after_qtap(jvm: subprocess.Popen[str]) -> None:
    j = java_attach.probe(jvm.pid)
    assert j is not None
    assert java_inspect.describe(j)["state"] == "not attached"
    channel = JavaChannel(name=f".qtap-java-test-{os.getpid()}.sock")
    attacher = JavaAttacher(channel, only_pids=frozenset({jvm.pid}))
    try:
        changed = attacher.scan_once()
        assert [(s.pid, s.state) for s in changed] == [(jvm.pid, "attached")], changed
        assert 0 < changed[0].attach_ms < 5000
        d = java_inspect.describe(j)
        assert d["state"] == "capturing" and d["channel"] == channel.inside_path and "version" in d
        assert any(f"pid {jvm.pid}" in line and "capturing" in line for line in java_inspect.render([d]))
        channel.drain()
        assert jvm.pid in channel.clients()  # the JVM's agent connected, the kernel says which process it is
        assert attacher.scan_once() == []  # attached once, not again
    finally:
        channel.close()
    assert java_inspect.describe(j)["state"] == "agent idle"
    assert jvm.poll() is None
