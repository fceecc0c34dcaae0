"""The HotSpot attach protocol against real JVMs started by the tests (and its encoding, on its own)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from qtap_async.errors import JavaAttachError
from qtap_async.tls import java_attach
from qtap_async.tls.java_build import JAR
from tests.tls.conftest import start_sleeper


def test_request_encoding() -> None:
    assert java_attach.encode_request("load", "instrument", "false", "/a.jar=x") == (
        b"1\0load\0instrument\0false\0/a.jar=x\0")
    # Fewer arguments are padded with empty ones: the JVM always reads three.
    assert java_attach.encode_request("properties") == b"1\0properties\0\0\0\0"
    with pytest.raises(JavaAttachError):
        java_attach.encode_request("load", "a", "b", "c", "d")


def test_reply_parsing() -> None:
    assert java_attach.parse_reply(b"0\nreturn code: 0\n") == (0, "return code: 0\n")
    assert java_attach.parse_reply(b"101\n") == (101, "")
    with pytest.raises(JavaAttachError, match="unexpected attach reply"):
        java_attach.parse_reply(b"garbage")


def test_probe_finds_hotspot_and_not_others(jvm: subprocess.Popen[str]) -> None:
    j = java_attach.probe(jvm.pid)
    assert j is not None and j.ns_pid == jvm.pid and j.exe.endswith("/java")
    assert jvm.pid in {x.pid for x in java_attach.find_jvms()}
    assert java_attach.probe(os.getpid()) is None  # python: no libjvm


def test_properties_through_the_attach_socket(jvm: subprocess.Popen[str]) -> None:
    j = java_attach.probe(jvm.pid)
    assert j is not None and not j.socket_path.exists()
    status, out = java_attach.execute(j, "properties")
    assert status == 0 and "java.vm.name=OpenJDK 64-Bit Server VM" in out
    assert j.socket_path.exists()
    assert not (Path(f"/proc/{jvm.pid}/cwd") / f".attach_pid{jvm.pid}").exists()  # the trigger file is removed
    assert jvm.poll() is None  # SIGQUIT did not end it


def test_load_agent_and_its_failure_reported(jvm: subprocess.Popen[str]) -> None:
    j = java_attach.probe(jvm.pid)
    assert j is not None
    # No qtap listening on that socket: agentmain throws, the JVM says so, and keeps running.
    with pytest.raises(JavaAttachError, match="refused the agent"):
        java_attach.load_agent(j, str(JAR), "socket=/tmp/qtap-no-such.sock")
    _, props = java_attach.execute(j, "properties")
    assert "qtap.agent=error\\: java.net.SocketException" in props
    assert jvm.poll() is None
    java_attach.load_agent(j, str(JAR), "stop", timeout_s=5)  # an answer within its timeout, or it raises
    _, props = java_attach.execute(j, "properties")
    assert "qtap.agent=stopped" in props


def test_refuses_a_process_that_would_die_of_sigquit() -> None:
    # A process that does not catch SIGQUIT (a JVM still starting, or not a JVM at all) is never signalled.
    p = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.1)
        fake = java_attach.JvmProcess(p.pid, p.pid, 0, "/usr/bin/sleep", Path(f"/proc/{p.pid}/root"))
        assert not java_attach.catches_sigquit(p.pid)
        with pytest.raises(JavaAttachError, match="does not catch SIGQUIT"):
            java_attach.start_listener(fake)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_disabled_attach_mechanism_times_out_cleanly(sleeper: str) -> None:
    p = start_sleeper(sleeper, "-XX:+DisableAttachMechanism")
    try:
        j = java_attach.probe(p.pid)
        assert j is not None
        with pytest.raises(JavaAttachError, match="did not open its attach socket"):
            java_attach.start_listener(j, timeout_s=1.0)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
