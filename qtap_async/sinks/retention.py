"""Retention of payload objects: how long a store keeps them, in one unit syntax for every store.

``retention: 30d`` (``s``, ``m``, ``h``, ``d``) on an object store:
- s3: a lifecycle expiration rule on the bucket (or the prefix), applied when the store starts and read back
  to check it is the one in force. S3 expires in whole days, so the duration is rounded up to days.
- dir: files older than the retention are deleted, and with ``max_bytes`` the oldest go until the total fits;
  both counted.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec

from qtap_async.errors import SinkError
from qtap_async.telemetry import metrics

DURATION_PATTERN = r"^[1-9][0-9]*[smhd]$"
Duration = Annotated[str, msgspec.Meta(pattern=DURATION_PATTERN,
                                       description="a duration: a number and a unit, s m h or d (30d, 12h)")]
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RULE_ID = "qtap-retention"


def seconds(duration: str) -> int:
    return int(duration[:-1]) * _UNIT_S[duration[-1]]


def days_ceil(duration: str) -> int:
    """Whole days, at least one (the granularity of S3 lifecycle expiration)."""
    return max(1, math.ceil(seconds(duration) / 86400))


# -- S3 ---------------------------------------------------------------------------------------------------
def _rule(prefix: str, days: int) -> dict[str, Any]:
    rule_id = RULE_ID if not prefix else f"{RULE_ID}:{prefix}"[:255]
    return {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled", "Expiration": {"Days": days}}


def _matches(rule: dict[str, Any], want: dict[str, Any]) -> bool:
    prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix", ""))
    return (rule.get("ID") == want["ID"] and prefix == want["Filter"]["Prefix"] and rule.get("Status") == "Enabled"
            and (rule.get("Expiration") or {}).get("Days") == want["Expiration"]["Days"])


async def apply_s3_retention(client: Any, bucket: str, prefix: str, days: int, where: str) -> str:
    """Make the bucket's lifecycle expire objects under ``prefix`` after ``days``; keep every other rule.
    Returns "present" (already so) or "applied"; SinkError when it cannot be set or does not read back."""
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    want = _rule(prefix, days)

    async def current() -> list[dict[str, Any]]:
        try:
            got = await client.get_bucket_lifecycle_configuration(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise SinkError(f"{where}: reading the bucket lifecycle failed: {exc}") from exc
        return list(got.get("Rules") or [])

    rules = await current()
    if any(_matches(r, want) for r in rules):
        return "present"
    kept = [r for r in rules if r.get("ID") != want["ID"]]
    try:
        await client.put_bucket_lifecycle_configuration(Bucket=bucket,
                                                        LifecycleConfiguration={"Rules": [*kept, want]})
    except ClientError as exc:
        raise SinkError(f"{where}: setting retention ({days} days) on the bucket failed: {exc}") from exc
    if not any(_matches(r, want) for r in await current()):
        raise SinkError(f"{where}: the bucket's lifecycle does not show the {days}-day expiration rule after "
                        "setting it")
    return "applied"


# -- dir --------------------------------------------------------------------------------------------------
class DirPruner:
    """Deletes objects of a directory store by age and by total size, counting what it deleted."""

    def __init__(self, root: Path, max_age_s: int | None, max_bytes: int | None) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.pruned_files = 0
        self.pruned_bytes = 0
        self.runs = 0
        self.errors = 0

    def _files(self) -> list[tuple[float, int, str]]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # being written (or a crash's leftover, which the writer owns)
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, path))
        return out

    def _delete(self, path: str, size: int) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError:
            self.errors += 1
            return
        self.pruned_files += 1
        self.pruned_bytes += size

    def prune(self, now: float | None = None) -> tuple[int, int]:
        """One pass; returns (files, bytes) deleted by it."""
        self.runs += 1
        before = (self.pruned_files, self.pruned_bytes)
        now = time.time() if now is None else now
        files = sorted(self._files())  # oldest first
        keep: list[tuple[float, int, str]] = []
        for mtime, size, path in files:
            if self.max_age_s is not None and now - mtime > self.max_age_s:
                self._delete(path, size)
            else:
                keep.append((mtime, size, path))
        if self.max_bytes is not None:
            total = sum(size for _, size, _ in keep)
            for _mtime, size, path in keep:
                if total <= self.max_bytes:
                    break
                self._delete(path, size)
                total -= size
        return self.pruned_files - before[0], self.pruned_bytes - before[1]

    def stats(self) -> dict[str, int]:
        # Plain names: the writer labels them with the store (the STORE_* declarations name the label).
        return {metrics.STORE_PRUNED_OBJECTS.name: self.pruned_files,
                metrics.STORE_PRUNED_BYTES.name: self.pruned_bytes,
                metrics.STORE_PRUNE_RUNS.name: self.runs, metrics.STORE_PRUNE_ERRORS.name: self.errors}
