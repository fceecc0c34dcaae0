"""The lifecycle matrix interleaved and repeated: every quick scenario, shuffled, twice, back to back on the
shared agent (socket memory and ports are reused only when connections follow one another quickly), then
every expectation compared at once."""

from __future__ import annotations

import random

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT

pytestmark = pytest.mark.bpf


def test_interleaved_and_repeated(gt: GT) -> None:
    order = list(S.QUICK) * 2
    random.Random(19).shuffle(order)
    total = S.Scenario("matrix")
    for name in order:
        total.add(S.QUICK[name](gt))
    rep = gt.check(total.expected, pids=total.pids, ports=total.ports, timeout=45, assert_ok=False)
    for extra in total.after:
        extra(gt)
    assert rep.ok, f"interleaved order {order}:\n" + rep.table(120)
