"""One agent for the whole ground-truth suite (scenarios share it, as on a real host); scenarios that need
their own agent settings start their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.transforms.conntrack import default_session_factory
from tests.integration.ground_truth.env import GT
from tests.integration.harness import AgentHarness


@pytest.fixture(scope="session")
def shared_agent() -> Iterator[AgentHarness]:
    h = AgentHarness(record=False, session_factory=default_session_factory).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def gt(shared_agent: AgentHarness, tmp_path: Path, cert: tuple[str, str]) -> Iterator[GT]:
    g = GT(shared_agent, tmp_path, cert)
    try:
        yield g
    finally:
        g.close()
