"""Connection ends on a real kernel when tcp_destroy_sock comes late or its record cannot be sent: the sweep
ends a socket every process released, and sends again a close the full ring buffer refused; once, with exact
bytes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from qtap_async.bpf import abi
from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.bpf.ringbuf import RingBuffer
from qtap_async.events.kernel import ConnClose, ConnOpen, KernelRecord
from qtap_async.sources.decode import decode

pytestmark = pytest.mark.bpf

# A child with both ends of one loopback connection. Its server end never reads, so once the client end has
# filled both buffers and is closed, its FIN waits behind unsent data for a window that never opens: the
# socket is released by its process (orphaned) but TCP's teardown, and tcp_destroy_sock, wait until the
# child exits. Prints the client's port and the bytes its syscalls sent, then holds the server end.
_ORPHAN = r"""
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
sys.stdin.readline()
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
c.connect(srv.getsockname())
s, _ = srv.accept()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
c.setblocking(False)
sent = 0
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        sent += c.send(b"x" * 65536)
    except BlockingIOError:
        time.sleep(0.05)
        try:
            sent += c.send(b"x" * 65536)
        except BlockingIOError:
            break
port = c.getsockname()[1]
c.close()
print(port, sent, flush=True)
time.sleep(float(sys.argv[1]))
"""

# A child that fills the ring buffer with its data records (big ones, then one-byte ones: their records are
# the size of a close record, so none fits after them) and closes its connection, when told to.
_WRITER = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
sys.stdin.readline()
c = socket.create_connection(srv.getsockname())
s, _ = srv.accept()
for size in [2000] * 10 + [1] * int(sys.argv[1]):
    c.sendall(b"y" * size)
    s.recv(size, socket.MSG_WAITALL)
port = c.getsockname()[1]
c.close(); s.close()
print(port, flush=True)
sys.stdin.readline()
"""


def _closes() -> Iterator[None]:
    """TCP_CLOSE transitions (refused connects) in this process: they drive the sweep (the agent's own
    sockets are not traced, their state changes still run the program). One socket connects again and again:
    a new socket could take the freed memory of the connection under test, and its birth would end that
    entry instead of the sweep."""
    with socket.socket() as target, socket.socket() as s:
        target.bind(("127.0.0.1", 0))  # bound, not listening: a connect there is refused
        while True:
            with pytest.raises(ConnectionRefusedError):
                s.connect(target.getsockname())
            yield


def _drain(rb: RingBuffer, into: list[KernelRecord]) -> None:
    while batch := rb.consume():
        into.extend(decode(r) for r in batch)


@contextmanager
def _child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        yield p
    finally:
        p.kill()
        p.wait(10)


def _conn_of(recs: list[KernelRecord], pid: int, port: int) -> int:
    ids = [r.conn_id for r in recs if isinstance(r, ConnOpen) and r.pid == pid and r.lport == port]
    assert len(ids) == 1, f"opens of the client end (port {port}): {ids}"
    return ids[0]


def test_a_released_socket_is_ended_before_its_teardown() -> None:
    with _child(_ORPHAN, "8") as child, \
            Capture(CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid, wakeup_bytes=0)) as cap:
        assert cap.ringbuf is not None and child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        port, sent = map(int, child.stdout.readline().split())
        closed_at = time.monotonic()
        recs: list[KernelRecord] = []
        closes: list[ConnClose] = []
        tick = _closes()
        while time.monotonic() - closed_at < 6 and not closes:
            next(tick)
            time.sleep(0.05)
            _drain(cap.ringbuf, recs)
            cid = _conn_of(recs, child.pid, port)
            closes = [r for r in recs if isinstance(r, ConnClose) and r.conn_id == cid]
        took = time.monotonic() - closed_at
        assert child.poll() is None, "the child (and its unread end) must outlive the check"
        assert len(closes) == 1, f"no close of the released client end {took:.1f} s after its close(2)"
        c = closes[0]
        assert (c.bytes_sent, c.bytes_received, c.reason) == (sent, 0, abi.CloseReason.SEEN)
        assert cap.counters()["swept_socks"] >= 1
        # TCP's own end (tcp_destroy_sock, once the child exits) must not close it a second time.
        child.kill()
        child.wait(10)
        for _ in range(40):
            next(tick)
            time.sleep(0.05)
        _drain(cap.ringbuf, recs)
        assert len([r for r in recs if isinstance(r, ConnClose) and r.conn_id == c.conn_id]) == 1


def test_a_close_the_full_ring_refused_is_sent_later() -> None:
    with _child(_WRITER, "300") as child, \
            Capture(CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid, ring_buffer_bytes=16384,
                                    wakeup_bytes=0)) as cap:
        assert cap.ringbuf is not None and child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        port = int(child.stdout.readline())
        # 20000 + 300 bytes each way did not fit in 16 KiB: the ring is full when both ends close.
        deadline = time.monotonic() + 5
        while cap.counters()["close_deferred"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cap.counters()["close_deferred"] >= 1, cap.counters()
        recs: list[KernelRecord] = []
        _drain(cap.ringbuf, recs)
        cid = _conn_of(recs, child.pid, port)
        assert not [r for r in recs if isinstance(r, ConnClose) and r.conn_id == cid]
        tick = _closes()
        closes: list[ConnClose] = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not closes:
            next(tick)
            time.sleep(0.05)
            _drain(cap.ringbuf, recs)
            closes = [r for r in recs if isinstance(r, ConnClose) and r.conn_id == cid]
        assert len(closes) == 1, f"the refused close was not sent again: {cap.counters()}"
        # Sent by the sweep from the kernel's pending closes, with the bytes and time of the real end.
        assert (closes[0].bytes_sent, closes[0].bytes_received, closes[0].reason) == (20300, 0,
                                                                                     abi.CloseReason.SEEN)


# A non-blocking connect confirmed by calling connect() again (it returns 0 once the handshake is done), then
# 100 bytes sent and the connection closed.
_RECONNECT = r"""
import errno, select, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
sys.stdin.readline()
c = socket.socket(); c.setblocking(False)
assert c.connect_ex(srv.getsockname()) in (0, errno.EINPROGRESS)
select.select([], [c], [], 5)
assert c.connect_ex(srv.getsockname()) == 0
s, _ = srv.accept()
c.setblocking(True)
c.sendall(b"z" * 100)
s.recv(100, socket.MSG_WAITALL)
port = c.getsockname()[1]
c.close(); s.close()
print(port, flush=True)
sys.stdin.readline()
"""


def test_connect_again_on_a_connected_socket_is_the_same_connection() -> None:
    """connect() at its exit retires an entry already on the socket (a previous connection's whose birth the
    kernel did not show), but not the connection's own when connect() is called again to confirm it."""
    with _child(_RECONNECT) as child, \
            Capture(CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid, wakeup_bytes=0)) as cap:
        assert cap.ringbuf is not None and child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        port = int(child.stdout.readline())
        recs: list[KernelRecord] = []
        deadline = time.monotonic() + 5
        closes: list[ConnClose] = []
        while time.monotonic() < deadline and not closes:
            time.sleep(0.05)
            _drain(cap.ringbuf, recs)
            cid = _conn_of(recs, child.pid, port)
            closes = [r for r in recs if isinstance(r, ConnClose) and r.conn_id == cid]
        assert [(c.bytes_sent, c.bytes_received, c.reason) for c in closes] == [(100, 0, abi.CloseReason.SEEN)]
        assert cap.counters()["stale_socks"] == 0
