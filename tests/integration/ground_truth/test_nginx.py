"""nginx (pre-forked workers running as nobody) at a fixed rate and in a burst: its access log against the
capture, on both ends, every field of every connection and transaction."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.bpf.loader import CaptureSettings
from qtap_async.topology import AgentOptions
from qtap_async.transforms.conntrack import default_session_factory
from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT
from tests.integration.ground_truth.truth import Captured, Pred
from tests.integration.harness import AgentHarness

pytestmark = pytest.mark.bpf


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[S.Nginx]:
    ng = S.Nginx(tmp_path, workers=2)
    try:
        yield ng
    finally:
        ng.stop()


def test_access_log_at_fixed_rate(gt: GT, nginx: S.Nginx) -> None:
    """2000 requests at 400 req/s over 20 keep-alive connections."""
    sc = S.nginx_rate(gt, nginx)
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports, timeout=90, quiet=15)


def test_burst_of_1000_connections(gt: GT, nginx: S.Nginx) -> None:
    sc = S.nginx_burst(gt, nginx, 1000)
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports, timeout=90, quiet=15)


# CPU load beside the bursts: spinners starve the agent's user space, and a pipe ping-pong keeps the traced
# syscall programs busy on every CPU, so the softirq ends of connections (the peer's last ACK) meet them.
_LOAD = r"""
import os, sys
if sys.argv[1] == "spin":
    while True:
        pass
r, w = os.pipe()
while True:
    os.write(w, b"x" * 512)
    os.read(r, 512)
"""


CLOSED_OR_SWEPT = Pred("closed or swept", lambda v: v in ("closed", "swept"))


@pytest.fixture
def cpu_load() -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", _LOAD, kind]) for kind in ("spin", "spin", "pipe", "pipe")]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


@pytest.mark.timeout(1800)
def test_bursts_under_load_every_connection_closes(gt: GT, tmp_path: Path, cpu_load: None) -> None:
    """Bursts of short connections to nginx while the host is loaded: every connection the client made (its
    port from getsockname) is opened once and closed once on both ends, with the exact byte counts. Closes
    were lost here (8 to 92 per burst in a few rounds of 30), leaving the connections open for good."""
    rounds = int(os.environ.get("QTAP_GT_BURST_ROUNDS", "4"))
    conns = int(os.environ.get("QTAP_GT_BURST_CONNS", "400"))
    lost: list[int] = []
    swept_ends: list[int] = []
    failures: list[str] = []
    for r in range(rounds):
        before = gt.h.agent.snapshot()
        d = tmp_path / f"round{r}"
        d.mkdir(mode=0o755)
        ng = S.Nginx(d, workers=2)  # its own port: the rounds' records never mix
        try:
            sc = S.nginx_burst(gt, ng, conns)
            for e in sc.expected:
                # Either end is right with its exact bytes; "swept" (the kernel's sweep ended it: no hook saw
                # the end) is counted and printed below.
                e.extra["reason"] = CLOSED_OR_SWEPT
            rep = gt.check(sc.expected, pids=sc.pids, ports=sc.ports, timeout=90, quiet=15, assert_ok=False)
        finally:
            ng.stop()
        cap = Captured(gt.events())
        unclosed = swept = 0
        for e in sc.expected:
            found = cap.by_key.get(e.key(), [])
            unclosed += not any(c.closes for c in found)
            swept += sum(x.get("reason") == "swept" for c in found for x in c.closes)
        lost.append(unclosed)
        swept_ends.append(swept)
        after = gt.h.agent.snapshot()
        moved = {k[12:-6]: after[k] - before.get(k, 0) for k in after
                 if k.startswith("qtap_kernel_") and after[k] != before.get(k, 0)}
        print(f"round {r}: {unclosed} of {len(sc.expected)} connection ends never closed, {swept} swept; "
              f"kernel: {moved}")
        if not rep.ok:
            failures.append(f"round {r}: {unclosed} connections never closed\n{rep.table(40)}")
    snap = gt.h.agent.snapshot()
    # Ends the kernel's sweep found (a socket released or freed without its hook): exposed, counted.
    assert "qtap_kernel_swept_socks_total" in snap and "qtap_kernel_close_deferred_total" in snap
    kernel = {k: v for k, v in snap.items() if k.startswith("qtap_kernel_") and v}
    print(f"lost closes per round: {lost}; swept: {swept_ends}; kernel counters: {kernel}")
    assert not failures, "\n".join(failures) + f"\nlost closes per round: {lost}\nkernel counters: {kernel}"


@pytest.mark.timeout(900)
def test_bursts_overflowing_the_ring_still_close_every_connection(tmp_path: Path) -> None:
    """An agent with a 64 KiB ring buffer under bursts of 400 connections: data records are refused (counted),
    but no connection is left open: each end the client made is closed once, with the kernel's exact byte
    counts. A close the full ring refused used to be lost for good (177 to 257 of 800 ends per round); it is
    kept in the kernel and sent again by the sweep."""
    options = AgentOptions(capture=CaptureSettings(self_tgid=os.getpid(), ring_buffer_bytes=64 * 1024))
    h = AgentHarness(options, record=False, session_factory=default_session_factory).start()
    problems: list[str] = []
    try:
        for r in range(2):
            d = tmp_path / f"round{r}"
            d.mkdir(mode=0o755)
            gt = GT(h, d)
            ng = S.Nginx(d, workers=2)
            try:
                sc = S.nginx_burst(gt, ng, 400)
                gt.check(sc.expected, pids=sc.pids, ports=sc.ports, timeout=60, quiet=10, assert_ok=False)
            finally:
                ng.stop()
            # Closes the ring refused are sent by the sweep once a second, as room allows: on a host whose
            # other traffic keeps a 64 KiB ring full that can take a while.
            deadline = time.monotonic() + 60
            while True:
                cap = Captured(gt.events())
                waiting = [e for e in sc.expected
                           if any(c.opens for c in cap.by_key.get(e.key(), []))
                           and not any(c.closes for c in cap.by_key.get(e.key(), []))]
                if not waiting or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            unseen = 0
            for e in sc.expected:
                found = cap.by_key.get(e.key(), [])
                if not found:
                    unseen += 1  # its open was refused too: allowed only if counted (below)
                    continue
                closes = [x for c in found for x in c.closes]
                got = [(x.get("bytes_sent", 0), x.get("bytes_received", 0), x.get("reason")) for x in closes]
                # "swept": the kernel's sweep ended it (no hook did), still with its exact bytes.
                if [g[:2] for g in got] != [(e.bytes_sent, e.bytes_received)] or got[0][2] not in ("closed", "swept"):
                    problems.append(f"round {r} {e.direction} port {e.src[1]}: closes {got}, expected "
                                    f"[({e.bytes_sent}, {e.bytes_received}, 'closed' or 'swept')]")
            if unseen:
                assert h.agent.snapshot()["qtap_kernel_drop_ringbuf_total"] > 0
        kernel = {k: v for k, v in h.agent.snapshot().items() if k.startswith("qtap_kernel_") and v}
    finally:
        h.stop()
    assert not problems, (f"{len(problems)} connection ends not closed exactly once:\n" + "\n".join(problems[:40])
                          + f"\nkernel counters: {kernel}")
