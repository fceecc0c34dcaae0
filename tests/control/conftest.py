"""A real control plane (uvicorn on a free loopback port, in a thread) over a fresh SQLite store, and
helpers to bootstrap users and tokens the way the CLI does."""

from __future__ import annotations

import threading
import time
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
from qtap_async.control.store import Store


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


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    settings = ControlSettings(data_dir=str(tmp_path), cookie_secure=False, push_poll_s=0.5)
    store = Store(settings.sqlite_path)
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
