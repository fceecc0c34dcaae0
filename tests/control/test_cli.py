"""`qtap control user|token|registration-token create`: bootstrap through the CLI, then use the results
against a real server on the same data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from qtap_async.control.app import create_app
from qtap_async.control.settings import ControlSettings
from tests.control.conftest import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def qtap(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "control", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_bootstrap_first_admin_token_and_registration(tmp_path: Path) -> None:
    d = str(tmp_path)
    r = qtap("user", "create", "root", "--role", "admin", "--team", "ops", "--password-stdin", "--data-dir", d,
             stdin="a very long admin password\n")
    assert r.returncode == 0, r.stderr
    token = qtap("token", "create", "--user", "root", "--data-dir", d).stdout.strip()
    reg = qtap("registration-token", "create", "--team", "ops", "--group", "edge", "--data-dir", d).stdout.strip()
    assert token.startswith("qct_") and reg.startswith("qcr_")
    with ServerThread(create_app(ControlSettings(data_dir=d, cookie_secure=False))) as url:
        me = httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["memberships"] == [{"team": "ops", "role": "admin"}]
        login = httpx.post(f"{url}/api/v1/login", json={"username": "root", "password": "a very long admin password"})
        assert login.status_code == 200
        joined = httpx.post(f"{url}/api/v1/agents/register", json={"registration_token": reg, "hostname": "h"})
        assert joined.json()["group"] == "edge"
        audit = httpx.get(f"{url}/api/v1/audit", headers={"Authorization": f"Bearer {token}"}).json()
        assert {("cli", "user.create"), ("cli", "token.create"), ("cli", "registration_token.create")} <= {
            (a["actor"], a["action"]) for a in audit}


def test_cli_refuses_bad_input_with_a_clear_error(tmp_path: Path) -> None:
    d = str(tmp_path)
    short = qtap("user", "create", "x", "--role", "admin", "--password-stdin", "--data-dir", d, stdin="short\n")
    assert short.returncode == 2 and "12 characters" in short.stderr and "Traceback" not in short.stderr
    role = qtap("user", "create", "x", "--role", "god", "--data-dir", d)
    assert role.returncode == 2 and "role" in role.stderr and "Traceback" not in role.stderr
    nouser = qtap("token", "create", "--user", "ghost", "--data-dir", d)
    assert nouser.returncode == 2 and "no user 'ghost'" in nouser.stderr


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_run_control_argument_errors(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "q.yaml"
    cfg.write_text("version: 2\n")
    if os.geteuid() == 0:  # the root check comes first, as for every `qtap run`
        both = run_agent("--control", "http://127.0.0.1:1", "--config", str(cfg))
        assert both.returncode == 2 and "exclude each other" in both.stderr
        scheme = run_agent("--control", "ftp://example", "--control-state", str(tmp_path / "s"))
        assert scheme.returncode == 1 and "http:// or https://" in scheme.stderr
        nojoin = run_agent("--control", "http://127.0.0.1:1", "--control-state", str(tmp_path / "s"))
        assert nojoin.returncode == 1 and "no --registration-token" in nojoin.stderr
        assert "Traceback" not in both.stderr + scheme.stderr + nojoin.stderr
    else:
        r = run_agent("--control", "http://127.0.0.1:1")
        assert r.returncode == 1 and "root" in r.stderr
