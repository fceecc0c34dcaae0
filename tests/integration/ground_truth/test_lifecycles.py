"""Socket lifecycles against ground truth on the shared agent: happy paths, phantoms (item 1), the process
doing the I/O (item 4), short-lived processes (item 5) and small inconsistencies (item 9)."""

from __future__ import annotations

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT

pytestmark = pytest.mark.bpf


@pytest.mark.parametrize("name", list(S.QUICK))
def test_lifecycle(gt: GT, name: str) -> None:
    sc = S.QUICK[name](gt)
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports)
    for extra in sc.after:
        extra(gt)


def test_phantom_reproduction_24_curls(gt: GT) -> None:
    """Issue 19 item 1's reproduction at full length: 12 TLS curls alternated with 12 plain ones."""
    sc = S.phantom_tls_alternating(gt, 12)
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports)
