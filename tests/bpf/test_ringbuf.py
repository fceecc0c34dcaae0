"""The ring buffer reader hands out bounded batches and loses nothing between them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qtap_async.bpf import abi
from qtap_async.bpf.loader import Capture, CaptureSettings
from qtap_async.bpf.ringbuf import RingBuffer
from qtap_async.sources.decode import decode


@pytest.mark.bpf
def test_consume_is_bounded_and_complete() -> None:
    with Capture(CaptureSettings(self_tgid=os.getpid(), wakeup_bytes=0)) as cap:
        assert cap.ringbuf is not None
        cap.ringbuf.close()  # read through our own reader with a tiny batch instead
        rb = RingBuffer(cap.socket_object.map("events"), max_batch=5)
        srv = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            time.sleep(0.5)
            port = _port(srv.pid)
            for _ in range(5):
                subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=True)
        finally:
            srv.kill()
            srv.wait()
        # Nothing can add records once every program is detached: then the drain must see them all.
        for obj in cap.objects:
            obj.detach_all()
        sizes: list[int] = []
        records: list[bytes] = []
        while batch := rb.consume():
            sizes.append(len(batch))
            records += batch
        rb.close()
        delivered = cap.counters()["records"]
    assert sizes and max(sizes) <= 5
    assert len(records) == delivered  # every record the kernel delivered, none lost between batches
    opens = [r for r in map(decode, records) if type(r).__name__ == "ConnOpen"]
    assert len(opens) >= 10  # 5 curl connections, seen from both ends
    assert abi.HDR.unpack_from(records[0])[1] == abi.ABI_VERSION


def _port(pid: int) -> int:
    for _ in range(50):
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                return int(line.split()[3].rsplit(":", 1)[1])
        time.sleep(0.1)
    raise RuntimeError("server did not listen")
