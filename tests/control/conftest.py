"""A real control plane (uvicorn on a free loopback port, in a thread) over a fresh SQLite store, and
helpers to bootstrap users and tokens the way the CLI does."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from qtap_async.control.app import create_app
from qtap_async.control.auth import hash_password, hash_secret, make_token
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import Store, open_store
from tests.integration.harness import free_port


class ServerThread:
    def __init__(self, app: Any, port: int = 0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    loop="uvloop"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn exited"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class Plane:
    url: str
    store: Store
    settings: ControlSettings
    app: Any

    def user(self, name: str, role: str, team: str = "alpha", password: str | None = None) -> str:
        """Create (or extend) a user; returns an API token with every scope."""
        row = self.store.user_row(name)
        uid = row[0] if row else self.store.create_user(name, "local", hash_password(password) if password else None)
        self.store.set_membership(uid, team, role)
        return self.token(name, ["read", "write", "admin"])

    def token(self, name: str, scopes: list[str]) -> str:
        row = self.store.user_row(name)
        assert row is not None
        token_id, token = make_token("qct")
        self.store.create_api_token(token_id, hash_secret(token), "test", row[0], scopes, None)
        return token

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


class Postgres:
    """A real PostgreSQL server (Debian's binaries) in a temporary cluster on a free loopback port."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            pytest.fail("PostgreSQL server binaries not found (apt-get install postgresql; scripts/bootstrap does)")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="qtap-pg-"))  # not under pytest's 0700 root-only tree
        self.port = free_port()
        self.runas: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.runas = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "qtap", "--no-sync")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off")

    def _run(self, tool: str, *args: str) -> None:
        # Output to a file, not a pipe: the server pg_ctl starts would inherit a pipe and hold it open.
        out = self.dir.parent / f"{self.dir.name}-{tool}.out"
        with out.open("wb") as f:
            r = subprocess.run([*self.runas, str(self.bin / tool), *args], stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=120)
        text = out.read_text(errors="replace")
        out.unlink()
        if r.returncode != 0:
            pytest.fail(f"{tool} failed: {text[-3000:]}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://qtap@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"ctl_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Plane]:
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else ""
    settings = ControlSettings(data_dir=str(tmp_path), cookie_secure=False, push_poll_s=0.5, database_url=url)
    store = open_store(settings)
    app = create_app(settings, store)
    with ServerThread(app) as url:
        yield Plane(url, store, settings, app)
    store.close()


CONFIG = """version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: LEVEL
tap:
  direction: egress
  ignore_loopback: false
  http:
    stack: default
"""


def config_yaml(level: str = "summary") -> str:
    return CONFIG.replace("LEVEL", level)
