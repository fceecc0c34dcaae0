"""Object store in a local directory; each object is written to a temporary file and renamed into place,
so a reader never sees a partial object and a crash leaves at most a stray ``.tmp-*`` file."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.events.objects import ObjectRef
from qtap_async.sinks.base import StoredObject
from qtap_async.sinks.retention import DirPruner, seconds
from qtap_async.sinks.templates import KEY_FIELDS, URL_FIELDS, Template


class DirObjectSink:
    def __init__(self, path: str, key: str = "{{DIGEST}}", access_url: str = "file://{{PATH}}",
                 fsync: bool = False, name: str = "dir", *, retention: str | None = None,
                 max_bytes: int | None = None, prune_interval: float = 60.0) -> None:
        self.name = name
        self.root = Path(path).absolute()
        self._key = Template(key, KEY_FIELDS, f"object store {name}: key")
        self._url = Template(access_url, URL_FIELDS, f"object store {name}: access_url")
        self.fsync = fsync
        self.pruner: DirPruner | None = None
        if retention is not None or max_bytes is not None:
            self.pruner = DirPruner(self.root, seconds(retention) if retention else None, max_bytes)
        self.prune_interval = prune_interval
        self._last_prune = 0.0

    async def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-check-", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise SinkError(f"object store {self.name}: directory {self.root} is not usable: "
                            f"{exc.strerror or exc}") from exc

    async def start(self) -> None:
        try:
            await self.check()
        except SinkError:
            # Not usable yet: the runner's check_on_start decides whether that is fatal; with it off, puts
            # fail (and spool) until the directory can be written.
            return
        await self._prune(force=True)

    async def _prune(self, force: bool = False) -> None:
        if self.pruner is None:
            return
        now = time.monotonic()
        if not force and now - self._last_prune < self.prune_interval:
            return
        self._last_prune = now
        # A walk of a large directory blocks: off the event loop, so the drain goes on meanwhile.
        await asyncio.to_thread(self.pruner.prune)

    def stats(self) -> dict[str, int]:
        return self.pruner.stats() if self.pruner is not None else {}

    async def put(self, obj: StoredObject) -> ObjectRef:
        fields = {"DIGEST": obj.digest, "SHARD": obj.digest[:2], "CONNECTION_ID": str(obj.conn_id),
                  "TRANSACTION_ID": obj.transaction_id}
        key = self._key.render(fields).lstrip("/")
        final = self.root / key
        if ".." in Path(key).parts:
            raise SinkError(f"object store {self.name}: key {key!r} leaves the directory")
        try:
            # A body can be megabytes and fsync waits for the disk: off the event loop, so the drain goes on.
            await asyncio.to_thread(self._write, final, obj.data)
        except OSError as exc:
            raise SinkTransientError(f"object store {self.name}: writing {final}: {exc.strerror or exc}") from exc
        url = self._url.render({**fields, "KEY": key, "PATH": str(final), "BUCKET": "", "ENDPOINT": "",
                                "REGION": ""})
        await self._prune()
        return ObjectRef.of(obj, url, self.name)

    def _write(self, final: Path, data: bytes) -> None:
        if final.exists():  # content-addressed: an existing file already has these bytes
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def close(self) -> None:
        return None
