"""Scenarios that need an agent of their own: idle eviction and resume (issue 19 item 2), in-flight reads at
attach (item 6), --no-payload (item 9), and the stop counters' identity (item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.bpf.loader import CaptureSettings
from qtap_async.topology import AgentOptions
from qtap_async.transforms.conntrack import default_session_factory
from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT, PEERS, PYTHON
from tests.integration.ground_truth.truth import Captured, Proc
from tests.integration.harness import AgentHarness

pytestmark = pytest.mark.bpf


def _agent(**kw: object) -> AgentHarness:
    return AgentHarness(AgentOptions(**kw), record=False, session_factory=default_session_factory)  # type: ignore[arg-type]


def _stop_and_check_counters(h: AgentHarness) -> None:
    h.stop()
    snap = h.agent.snapshot()
    opened, closed, still = (snap["qtap_connections_opened_total"], snap["qtap_connections_closed_total"],
                             snap["qtap_connections_open"])
    assert opened == closed + still, f"stop counters: opened {opened}, closed {closed}, open {still}"


@pytest.fixture
def own_gt(request: pytest.FixtureRequest, tmp_path: Path, cert: tuple[str, str]) -> Iterator[GT]:
    h = _agent(**getattr(request, "param", {})).start()
    g = GT(h, tmp_path, cert)
    try:
        yield g
    finally:
        g.close()
        if h._thread is not None and h._thread.is_alive():
            h.stop()


@pytest.mark.parametrize("own_gt", [{"idle_timeout_s": 1.0}], indirect=True)
def test_eviction_then_resume(own_gt: GT) -> None:
    """Idle past --idle-timeout: closed as evicted; the next activity opens it again with `resumed: true`, the
    same conn_id and addresses, and each segment's bytes only once."""
    gt = own_gt
    s = gt.server()
    # The sweep runs every SWEEP_INTERVAL_S (5 s): 7 s idle is past the 1 s timeout whatever the phase.
    pid, recs = gt.client("127.0.0.1", s.port, "pause", "7", "/before?n=100", "/after?n=2000")
    rec = s.take(recs[0]["local"][1])
    exp = gt.pair("evict_resume", rec, Proc(pid, PYTHON), Proc(s.pid, PYTHON), client_rec=recs[0],
                  domain="127.0.0.1")
    seg = [tuple(x) for x in recs[0]["segments"]]
    exp[0].segments = seg
    exp[1].segments = [(b, a) for a, b in seg]
    for e in exp:
        e.extra["reason"] = "closed"  # the last close; the first one says evicted (checked below)
    gt.check(exp, pids={pid, s.pid}, ports={s.port})
    cap = Captured(gt.events())
    for e in exp:
        (c,) = cap.by_key[e.key()]
        assert [x.get("reason") for x in c.closes] == ["evicted", "closed"], c.closes
        for o in c.opens + c.closes:
            assert (o.get("src_port"), o.get("dst_port"), o.get("direction")) == (e.src[1], e.dst[1], e.direction), o
    _stop_and_check_counters(gt.h)


@pytest.mark.parametrize("own_gt", [{"capture": CaptureSettings(self_tgid=os.getpid(), capture_payload=False)}],
                         indirect=True)
def test_no_payload_counts_bytes_without_gaps(own_gt: GT) -> None:
    """--no-payload: bytes still exact, no gap event at all (and no transactions: nothing to parse)."""
    gt = own_gt
    sc = S.python_client(gt, "no_payload", "get", "/np1?n=100", "/np2?n=50000", domain="", protocol=None,
                         txs=False)
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports)
    cap = Captured(gt.events())
    gaps = [g for c in cap.conns.values() for g in c.gaps if g.get("pid") in sc.pids]
    assert gaps == [], f"{len(gaps)} gap events with payload capture off: {gaps[:3]}"
    _stop_and_check_counters(gt.h)


def test_in_flight_read_at_attach(tmp_path: Path, cert: tuple[str, str]) -> None:
    """A server already blocked in recv() (and a DNS server blocked in recvfrom()) when the agent attaches:
    the bytes of that read are captured (the transaction and the query come out)."""
    boot = GT(None, tmp_path, cert)  # type: ignore[arg-type]
    s = boot.server("--mode", "blocked")
    dns = S.Dns(tmp_path)
    client = subprocess.Popen([sys.executable, str(PEERS / "gt_client.py"), "127.0.0.1", str(s.port), "wait",
                               "/inflight?n=321"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline().strip() == "CONNECTED"
        assert s.proc.stdout is not None and s.proc.stdout.readline().strip() == "BLOCKED"
        h = _agent().start()
        gt = GT(h, tmp_path, cert)
        client.stdin.write("go\n")
        client.stdin.flush()
        import json

        rec_c = json.loads(client.stdout.readline())
        client.wait(30)
        gt.sh(f"dig +short +tries=1 +time=3 @{dns.addr} inflight-dns.test A")
        exp = gt.pair("in_flight", s.records(1)[0], Proc(client.pid, PYTHON), Proc(s.pid, PYTHON), client_rec=rec_c,
                      domain="127.0.0.1")
        for e in exp:
            e.midstream = True  # both ends existed before the agent
        gt.check(exp, pids={client.pid, s.pid}, ports={s.port})
        S._check_dns(gt, dns.pid, "inflight-dns.test", 2)
        _stop_and_check_counters(h)
    finally:
        client.kill()
        boot.close()
        dns.stop()


def test_stop_counters_identity_after_phantom_triggers(tmp_path: Path, cert: tuple[str, str]) -> None:
    """Every lifecycle that used to leave a phantom, then stop: opened == closed + open."""
    h = _agent().start()
    gt = GT(h, tmp_path, cert)
    try:
        S.phantom_tls_alternating(gt, 3)
        S.halfclose_then_reuse(gt)
        S.refused_then_reuse(gt)
        S.rst(gt)
    finally:
        gt.close()
        _stop_and_check_counters(h)
