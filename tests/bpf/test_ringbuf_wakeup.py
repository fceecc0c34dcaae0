"""How often the kernel wakes the ring buffer's consumer: once per wakeup_bytes written, also while it lags.

Edge-triggered epoll on the ring's fd reports one event per kernel wakeup, so a consumer that never reads
sees exactly the wakeups the programs asked for. Before, every record written while at least wakeup_bytes
waited forced one (an irq_work in the traced program's call: a self-IPI, a VM exit), which made a lagging
consumer cost the traced program per record.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap

import pytest

from qtap_async.bpf import abi
from qtap_async.bpf.loader import Capture, CaptureSettings

WAKEUP = 4096
SENDS = 150
CHUNK = 1000

# A process with one loopback TCP connection to itself: for every line on stdin it sends CHUNK bytes (one
# data record each; the other end never reads, so no more records), then says so.
_SENDER = textwrap.dedent(f"""
    import socket, sys
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
    print("ready", flush=True)
    for _ in sys.stdin:
        cli.sendall(b"x" * {CHUNK})
        print("sent", flush=True)
""")


@pytest.mark.bpf
def test_a_consumer_that_never_reads_is_woken_once_per_wakeup_bytes() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SENDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        settings = CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid, wakeup_bytes=WAKEUP)
        with Capture(settings) as cap:
            assert cap.ringbuf is not None
            cap.ringbuf.close()  # nobody consumes: the ring only fills
            ep = select.epoll()
            ep.register(cap.socket_object.map("events").fd, select.EPOLLIN | select.EPOLLET)
            assert child.stdout.readline() == "ready\n"
            ep.poll(0)  # whatever the connection's setup woke
            wakeups = 0
            for _ in range(SENDS):
                child.stdin.write("\n")
                child.stdin.flush()
                assert child.stdout.readline() == "sent\n"
                wakeups += len(ep.poll(0.05))  # the irq_work has run by the time the child answers
            records = cap.counters()["records"]
            ep.close()
    finally:
        child.kill()
        child.wait()
    assert records >= SENDS, f"only {records} records for {SENDS} sends"
    # What each record takes in the ring: its header and payload, the ring's own 8-byte header, 8-aligned.
    per_record = (abi.DATA.size + CHUNK + 8 + 7) // 8 * 8
    crossings = SENDS * per_record // WAKEUP
    # Every multiple of WAKEUP passed is one wakeup (a crossing raced past by two CPUs may be missed: there
    # is one sender here; the connection's own records may add one); never one per record as the ring fills.
    assert crossings - 2 <= wakeups <= crossings + 2, (
        f"{wakeups} wakeups for {SENDS} records of {CHUNK} bytes with wakeup_bytes {WAKEUP}: expected about "
        f"{crossings}")
