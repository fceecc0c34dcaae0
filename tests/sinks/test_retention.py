"""Retention of payload objects: `retention: 30d` on an s3 store puts a lifecycle expiration rule on the bucket
(read back with boto3 from the real MinIO), keeping the bucket's other rules; a dir store prunes by age and by
total size and counts what it pruned; bad durations are config errors naming the field."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from qtap_async.config import load_config
from qtap_async.errors import ConfigError, SinkError
from qtap_async.sinks.base import StoredObject
from qtap_async.sinks.dir import DirObjectSink
from qtap_async.sinks.retention import days_ceil, seconds
from qtap_async.sinks.s3 import S3ObjectSink
from tests.sinks.conftest import Services, s3_client


def rules(services: Services, name: str) -> list[dict[str, Any]]:
    got = s3_client(services).get_bucket_lifecycle_configuration(Bucket=name)
    return list(got["Rules"])


def sink(services: Services, name: str, retention: str, prefix: str = "") -> S3ObjectSink:
    return S3ObjectSink(name, endpoint=services.s3_endpoint, region=services.s3_region,
                        access_key=services.s3_access_key, secret_key=services.s3_secret_key,
                        retention=retention, retention_prefix=prefix, name="payloads")


@pytest.mark.services
async def test_s3_retention_rule_applied_and_read_back(services: Services, bucket: str) -> None:
    # A rule of the bucket's owner that must survive.
    s3_client(services).put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "owner-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 7}}]})
    s = sink(services, bucket, "30d")
    await s.start()
    try:
        assert s.retention_state == "applied"
    finally:
        await s.close()
    by_id = {r["ID"]: r for r in rules(services, bucket)}
    assert by_id["qtap-retention"]["Expiration"]["Days"] == 30
    assert by_id["qtap-retention"]["Status"] == "Enabled"
    assert by_id["owner-logs"]["Expiration"]["Days"] == 7
    # Started again: the rule is there, nothing is written.
    s = sink(services, bucket, "30d")
    await s.start()
    try:
        assert s.retention_state == "present"
    finally:
        await s.close()
    # A new retention replaces ours (36h rounds up to 2 days); a prefix gets its own rule.
    s = sink(services, bucket, "36h")
    await s.start()
    await s.close()
    p = sink(services, bucket, "1d", prefix="payloads/")
    await p.start()
    await p.close()
    by_id = {r["ID"]: r for r in rules(services, bucket)}
    assert by_id["qtap-retention"]["Expiration"]["Days"] == 2
    assert by_id["qtap-retention:payloads/"]["Filter"]["Prefix"] == "payloads/"
    assert by_id["qtap-retention:payloads/"]["Expiration"]["Days"] == 1
    assert "owner-logs" in by_id


@pytest.mark.services
async def test_s3_retention_on_a_missing_bucket_is_a_clear_error(services: Services) -> None:
    s = sink(services, "qtap-no-such-bucket-retention", "30d")
    with pytest.raises(SinkError, match="lifecycle"):
        await s.start()


def obj(n: int, size: int) -> StoredObject:
    data = bytes([n % 256]) * size
    import hashlib

    return StoredObject(digest=hashlib.sha256(data).hexdigest(), data=data, content_type="application/json",
                        conn_id=n, transaction_id=f"t{n}")


async def test_dir_prunes_by_age_and_size(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    s = DirObjectSink(str(root), retention="1h", max_bytes=10_000, prune_interval=3600, name="objects")
    await s.start()
    refs = [await s.put(obj(i, 3000)) for i in range(6)]
    files = sorted(root.rglob("*"))
    assert len([f for f in files if f.is_file()]) == 6
    # Two objects are two hours old; the rest are new but 4 x 3000 bytes is over 10_000: the oldest goes too.
    now = time.time()
    paths = [Path(r.url.removeprefix("file://")) for r in refs]
    for p in paths[:2]:
        os.utime(p, (now - 7200, now - 7200))
    for i, p in enumerate(paths[2:]):
        os.utime(p, (now - 100 + i, now - 100 + i))
    assert s.pruner is not None
    files_pruned, bytes_pruned = s.pruner.prune()
    assert (files_pruned, bytes_pruned) == (3, 9000)
    left = {p for p in paths if p.exists()}
    assert left == set(paths[3:])
    assert s.stats() == {"qtap_store_pruned_objects_total": 3, "qtap_store_pruned_bytes_total": 9000,
                         "qtap_store_prune_runs_total": 2, "qtap_store_prune_errors_total": 0}


def test_durations() -> None:
    assert seconds("90m") == 5400 and seconds("30d") == 30 * 86400
    assert days_ceil("36h") == 2 and days_ceil("10s") == 1


@pytest.mark.parametrize("value", ["30", "30 days", "0d", "-1d", "1w"])
def test_bad_retention_names_the_field(tmp_path: Path, value: str) -> None:
    path = tmp_path / "qtap.yaml"
    path.write_text(f"""version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores:
    - type: s3
      bucket: b
      retention: "{value}"
""")
    with pytest.raises(ConfigError, match="retention"):
        load_config(path)
