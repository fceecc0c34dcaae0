"""Listening ports per network namespace, read from the real /proc/PID/net/tcp{,6}: real listeners in the
agent's namespace and in a fresh one (unshare -n), connected sockets that are not listeners, and what
listened at start for a process that is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from qtap_async.context.listeners import ListeningPorts

# A listener in a new network namespace: prints its port, then waits for stdin to close.
LISTENER = (
    "import socket, sys\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def netns_listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    if os.geteuid() != 0:
        pytest.fail("a listener in its own network namespace needs root (unshare -n)")
    p = subprocess.Popen(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {sys.executable} -c \"$0\"",
                          LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"the listener did not start: {line!r}"
    yield p, int(line)
    p.kill()
    p.wait()


def _listen(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    s = socket.socket(family)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    s.listen()
    return s


def _wait_refresh(ports: ListeningPorts, pid: int, port: int) -> None:
    """Until a fresh read shows `port` (the cache re-reads /proc at most once a second); bounded."""
    for _ in range(300):
        if port in ports.ports(pid):
            return
        time.sleep(0.01)
    raise AssertionError(f"port {port} never showed as listening")


def test_own_namespace_listeners_v4_and_v6_not_connected_sockets() -> None:
    v4, v6 = _listen(), _listen(socket.AF_INET6)
    client = socket.create_connection(v4.getsockname()[:2])
    accepted, _ = v4.accept()
    try:
        ports = ListeningPorts().ports(os.getpid())
        assert v4.getsockname()[1] in ports
        assert v6.getsockname()[1] in ports
        assert client.getsockname()[1] not in ports  # an established socket is not a listener
    finally:
        for s in (client, accepted, v4, v6):
            s.close()


def test_a_port_is_listening_only_in_its_network_namespace(
        netns_listener: tuple[subprocess.Popen[str], int]) -> None:
    p, port = netns_listener
    own = ListeningPorts().ports(os.getpid())
    lp = ListeningPorts()
    # The same port number may be taken in our namespace by chance: only then can the second check not tell.
    assert port in lp.ports(p.pid)
    assert lp.is_listening(p.pid, port)
    if port not in own:
        assert not lp.is_listening(os.getpid(), port)
    # A listener of ours is not one of the other namespace's.
    mine = _listen()
    try:
        _wait_refresh(lp, os.getpid(), mine.getsockname()[1])
        assert mine.getsockname()[1] not in lp.ports(p.pid)
    finally:
        mine.close()


def test_a_new_listener_is_seen_on_a_later_read() -> None:
    lp = ListeningPorts()
    before = lp.ports(os.getpid())
    s = _listen()
    try:
        assert s.getsockname()[1] not in before
        _wait_refresh(lp, os.getpid(), s.getsockname()[1])
    finally:
        s.close()


def test_what_listened_at_start_is_kept_for_a_gone_process(
        netns_listener: tuple[subprocess.Popen[str], int]) -> None:
    p, port = netns_listener
    lp = ListeningPorts()
    lp.snapshot_at_start()
    p.kill()
    p.wait()
    # The process and its namespace are gone; /proc cannot say any more, the snapshot can.
    assert lp.is_listening(p.pid, port)
    fresh = ListeningPorts()
    if port not in fresh.ports(os.getpid()):  # a gone pid falls back to the agent's namespace
        assert not fresh.is_listening(p.pid, port)
