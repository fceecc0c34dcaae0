"""Object store in a local directory; each object is written to a temporary file and renamed into place,
so a reader never sees a partial object and a crash leaves at most a stray ``.tmp-*`` file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.sinks.base import ObjectRef, StoredObject
from qtap_async.sinks.templates import KEY_FIELDS, URL_FIELDS, Template


class DirObjectSink:
    def __init__(self, path: str, key: str = "{{DIGEST}}", access_url: str = "file://{{PATH}}",
                 fsync: bool = False, name: str = "dir") -> None:
        self.name = name
        self.root = Path(path).absolute()
        self._key = Template(key, KEY_FIELDS, f"object store {name}: key")
        self._url = Template(access_url, URL_FIELDS, f"object store {name}: access_url")
        self.fsync = fsync

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
        # Nothing to open: ``check`` (run when check_on_start) tells whether the directory is usable, and
        # with check_on_start off a directory that is not usable yet only makes puts fail (and spool).
        return None

    async def put(self, obj: StoredObject) -> ObjectRef:
        fields = {"DIGEST": obj.digest, "SHARD": obj.digest[:2], "CONNECTION_ID": str(obj.conn_id),
                  "TRANSACTION_ID": obj.transaction_id}
        key = self._key.render(fields).lstrip("/")
        final = self.root / key
        if ".." in Path(key).parts:
            raise SinkError(f"object store {self.name}: key {key!r} leaves the directory")
        try:
            if not final.exists():  # content-addressed: an existing file already has these bytes
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(obj.data)
                        if self.fsync:
                            f.flush()
                            os.fsync(f.fileno())
                    os.replace(tmp, final)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except OSError as exc:
            raise SinkTransientError(f"object store {self.name}: writing {final}: {exc.strerror or exc}") from exc
        url = self._url.render({**fields, "KEY": key, "PATH": str(final), "BUCKET": "", "ENDPOINT": "",
                                "REGION": ""})
        return ObjectRef.of(obj, url, self.name)

    async def close(self) -> None:
        return None
