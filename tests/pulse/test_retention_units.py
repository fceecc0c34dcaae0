"""Pulse's event TTL in the same units as the object stores' retention (30d, 36h) or in days, as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtap_async.errors import ConfigError
from qtap_async.pulse.config import load_config
from qtap_async.pulse.tables import ddl


def test_durations_become_days_in_the_table_ttl(tmp_path: Path) -> None:
    f = tmp_path / "pulse.yaml"
    f.write_text(f"data_dir: {tmp_path}\nretention: {{requests: 30d, issues: 36h, connections: 7}}\n")
    cfg = load_config(f)
    assert (cfg.retention.requests, cfg.retention.issues, cfg.retention.connections) == (30, 2, 7)
    stmts = "\n".join(ddl(cfg))
    requests = next(s for s in ddl(cfg) if "TABLE IF NOT EXISTS" in s and ".requests " in s)
    assert "TTL toDateTime(ts) + INTERVAL 30 DAY" in requests
    assert "INTERVAL 2 DAY" in stmts


@pytest.mark.parametrize("value", ["30 days", "0d", "1w", "d"])
def test_bad_duration_names_the_table(tmp_path: Path, value: str) -> None:
    f = tmp_path / "pulse.yaml"
    f.write_text(f"retention: {{requests: '{value}'}}\n")
    with pytest.raises(ConfigError, match=r"retention\.requests"):
        load_config(f)
