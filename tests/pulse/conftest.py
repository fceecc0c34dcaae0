"""Shared fixtures. chDB allows one engine path per process, so the in-process tests share one
embedded engine (``storage``) and keep apart by team: every test writes and reads its own team."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.storage import ChdbStorage, Storage
from qtap_async.pulse.tokens import TokenStore

_teams = itertools.count()


@pytest.fixture(scope="session")
def pulse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pulse")


@pytest.fixture(scope="session")
def config(pulse_dir: Path) -> PulseConfig:
    return PulseConfig(data_dir=str(pulse_dir))


@pytest.fixture(scope="session")
def storage(config: PulseConfig) -> Iterator[Storage]:
    s = ChdbStorage(config)
    s.setup()
    yield s
    s.close()


@pytest.fixture(scope="session")
def tokens(config: PulseConfig) -> Iterator[TokenStore]:
    store = TokenStore(config.tokens_path)
    yield store
    store.close()


@pytest.fixture
def team(request: pytest.FixtureRequest) -> str:
    """A team name no other test uses."""
    return f"t{next(_teams)}-{int(time.time() * 1000) % 10**8}"


def count(storage: Storage, table: str, team: str) -> int:
    rows = storage.query(
        f"SELECT count() AS n FROM {storage.database}.{table} FINAL WHERE team = {{team:String}}", {"team": team}
    )
    return int(rows[0]["n"])
