"""OIDC single sign-on against a real provider: Dex (built from the Go module proxy by scripts/dex), started
by the test with in-memory storage and static users. The browser is httpx: it follows the redirects and
fills in Dex's login form, as a person would."""

from __future__ import annotations

import html
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from qtap_async.control.app import create_app
from qtap_async.control.settings import ControlSettings, GroupRole, OidcSettings
from qtap_async.control.store import Store
from tests.control.conftest import ServerThread
from tests.integration.harness import free_port

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SECRET = "dex-test-client-secret-0123456789"
USERS = {"alice@example.com": ("alice password 1", ["qtap-editors", "other"]),
         "mallory@example.com": ("mallory password 1", ["nobody-maps-this"])}


def dex_binary() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "dex"), "path"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("Dex is not built: run `bash scripts/dex build` (scripts/test does) — " + r.stderr.strip())
    return r.stdout.strip()


@pytest.fixture
def dex(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(issuer, control plane URL the client is registered for)."""
    port, control_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}/dex"
    control = f"http://127.0.0.1:{control_port}"
    users = ""
    for email, (password, groups) in USERS.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
        users += f"""- email: "{email}"
  hash: "{hashed}"
  username: "{email.split('@')[0]}"
  userID: "{uuid.uuid4()}"
  groups: [{", ".join(f'"{g}"' for g in groups)}]
"""
    cfg = tmp_path / "dex.yaml"
    cfg.write_text(f"""issuer: {issuer}
storage:
  type: memory
web:
  http: 127.0.0.1:{port}
oauth2:
  skipApprovalScreen: true
enablePasswordDB: true
staticClients:
- id: qtap-control
  name: qtap control plane
  secret: {CLIENT_SECRET}
  redirectURIs: ["{control}/api/v1/auth/oidc/callback"]
staticPasswords:
{users}""")
    log = tmp_path / "dex.log"
    proc = subprocess.Popen([dex_binary(), "serve", str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dex did not start:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        yield issuer, control
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def plane(dex: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Store]]:
    issuer, control = dex
    monkeypatch.setenv("QTAP_TEST_OIDC_SECRET", CLIENT_SECRET)
    settings = ControlSettings(data_dir=str(tmp_path / "control"), cookie_secure=False, oidc=OidcSettings(
        issuer=issuer, client_id="qtap-control", client_secret_env="QTAP_TEST_OIDC_SECRET",
        redirect_url=f"{control}/api/v1/auth/oidc/callback",
        group_roles=[GroupRole(group="qtap-editors", team="sso", role="editor"),
                     GroupRole(group="other", team="sso", role="viewer")]))
    store = Store(settings.sqlite_path)
    with ServerThread(create_app(settings, store), port=int(control.rsplit(":", 1)[1])) as url:
        assert url == control
        yield url, store
    store.close()


def browser_login(c: httpx.Client, control: str, email: str, password: str) -> httpx.Response:
    """Start the SSO login at the control plane, fill Dex's form, follow every redirect back."""
    page = c.get(f"{control}/api/v1/auth/oidc/login", params={"next": "/agents"})
    assert page.status_code == 200 and "<form" in page.text, page.text[:500]
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    return c.post(httpx.URL(str(page.url)).join(action), data={"login": email, "password": password})


def test_oidc_login_maps_groups_to_roles(plane: tuple[str, Store]) -> None:
    control, store = plane
    with httpx.Client(follow_redirects=True, timeout=30) as c:
        done = browser_login(c, control, "alice@example.com", USERS["alice@example.com"][0])
        # The chain ended at the `next` path on the control plane (no page there: the UI is separate).
        assert str(done.url) == f"{control}/agents"
        assert any(r.status_code == 303 and "/api/v1/auth/oidc/callback" in str(r.url) for r in done.history)
        me = c.get(f"{control}/api/v1/me").json()
        assert me["user"] == "alice@example.com" and me["source"] == "oidc"
        assert me["memberships"] == [{"team": "sso", "role": "editor"}]  # the higher of the two groups' roles
        assert me["csrf_token"]
    logins = store.query_audit("sso", action="login", actor=None, since=None, limit=10, offset=0)
    assert [(a.actor, a.detail["method"]) for a in logins] == [("alice@example.com", "oidc")]
    assert "qtap-editors" in logins[0].detail["groups"]


def test_oidc_refuses_users_without_a_mapped_group_and_wrong_passwords(plane: tuple[str, Store]) -> None:
    control, store = plane
    with httpx.Client(follow_redirects=True, timeout=30) as c:
        r = browser_login(c, control, "mallory@example.com", USERS["mallory@example.com"][0])
        assert r.status_code == 403 and "groups" in r.json()["error"]
        assert c.get(f"{control}/api/v1/me").status_code == 401
    with httpx.Client(follow_redirects=True, timeout=30) as c:
        r = browser_login(c, control, "alice@example.com", "not the password")
        assert "/api/v1/auth/oidc/callback" not in str(r.url)  # Dex kept the browser on its form
        assert c.get(f"{control}/api/v1/me").status_code == 401
    with httpx.Client(timeout=30) as c:  # a forged callback
        r = c.get(f"{control}/api/v1/auth/oidc/callback", params={"code": "x", "state": "y"})
        assert r.status_code == 401
    failed = store.query_audit("", action="login.failed", actor=None, since=None, limit=10, offset=0)
    assert [a.actor for a in failed] == ["mallory@example.com"]
    assert os.environ.get("QTAP_TEST_OIDC_SECRET") == CLIENT_SECRET
