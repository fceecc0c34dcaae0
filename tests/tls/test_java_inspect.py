"""`qtap inspect`'s JVM states, through a real JVM attached by a real JavaAttacher."""

from __future__ import annotations

import os
import subprocess

from qtap_async.tls import java_attach, java_inspect
from qtap_async.tls.java_channel import JavaChannel
from qtap_async.tls.java_manager import JavaAttacher


def test_states_before_during_and_after_qtap(jvm: subprocess.Popen[str]) -> None:
    j = java_attach.probe(jvm.pid)
    assert j is not None
    assert java_inspect.describe(j)["state"] == "not attached"
    channel = JavaChannel(name=f".qtap-java-test-{os.getpid()}.sock")
    attacher = JavaAttacher(channel, only_pids=frozenset({jvm.pid}))
    try:
        changed = attacher.scan_once()
        assert [(s.pid, s.state) for s in changed] == [(jvm.pid, "attached")], changed
        assert changed[0].attach_ms > 0
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
