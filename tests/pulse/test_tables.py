"""DDL rendering: single node and cluster, and identifiers that never come from outside."""

from __future__ import annotations

import pytest

from qtap_async.pulse.config import PulseConfig, Retention
from qtap_async.pulse.tables import TABLES, ddl


def test_single_node_schema() -> None:
    stmts = ddl(PulseConfig(retention=Retention(requests=7)))
    text = "\n".join(stmts)
    for t in TABLES:
        assert f"CREATE TABLE IF NOT EXISTS pulse.{t} (" in text
        assert f"CREATE TABLE IF NOT EXISTS pulse.{t}_in (" in text and "ENGINE = Null" in text
        assert f"CREATE MATERIALIZED VIEW IF NOT EXISTS pulse.{t}_mv TO pulse.{t}" in text
    assert "ORDER BY (team, domain, path, ts, id)\nTTL toDateTime(ts) + INTERVAL 7 DAY" in text
    assert "PARTITION BY toDate(ts)" in text and "ON CLUSTER" not in text


def test_cluster_schema_is_replicated_and_sharded_by_event_id() -> None:
    text = "\n".join(ddl(PulseConfig(cluster="prod", database="obs")))
    assert "CREATE DATABASE IF NOT EXISTS obs ON CLUSTER prod" in text
    assert "CREATE TABLE IF NOT EXISTS obs.requests_local ON CLUSTER prod" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/obs/requests_local', '{replica}')" in text
    assert "ENGINE = Distributed(prod, obs, requests_local, cityHash64(id))" in text
    assert "CREATE MATERIALIZED VIEW IF NOT EXISTS obs.requests_mv ON CLUSTER prod TO obs.requests" in text


@pytest.mark.parametrize("field", ["database", "cluster"])
def test_identifiers_are_checked(field: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        ddl(PulseConfig(**{field: "x; DROP TABLE y"}))
