"""nginx (pre-forked workers running as nobody) at a fixed rate and in a burst: its access log against the
capture, on both ends, every field of every connection and transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT

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
