"""The systemd units: `systemd-analyze verify` accepts them (and does fail on a broken one), they restart on
failure, reload with SIGHUP, name the config path, and log in the journald form."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async.telemetry.logs import JournaldFormatter

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
QTAP = Path(sys.executable).parent / "qtap"


def verify(tmp_path: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    paths = []
    for name, text in units.items():
        p = tmp_path / name
        p.write_text(text)
        paths.append(str(p))
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=120)


def installed(name: str) -> str:
    # The units expect the agent at /usr/local/bin/qtap; verify checks the binary exists, so point it at ours.
    return (UNITS / name).read_text().replace("/usr/local/bin/qtap", str(QTAP))


def test_units_verify(tmp_path: Path) -> None:
    assert QTAP.exists()
    r = verify(tmp_path, {n: installed(n) for n in ("qtap.service", "qtap-pulse.service")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr  # no warnings either


def test_verify_can_fail(tmp_path: Path) -> None:
    r = verify(tmp_path, {"qtap.service": (UNITS / "qtap.service").read_text().replace(
        "/usr/local/bin/qtap", str(tmp_path / "missing" / "qtap"))})
    assert r.returncode != 0 and "not executable" in r.stderr


@pytest.mark.parametrize("name", ["qtap.service", "qtap-pulse.service"])
def test_unit_settings(name: str) -> None:
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in (UNITS / name).read_text().splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["Restart"] == "on-failure"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/qtap/" in lines["ExecStart"]
    assert "QTAP_LOG_FORMAT=journald" in lines["Environment"]


def test_journald_format() -> None:
    rec = logging.LogRecord("qtap.sinks", logging.ERROR, __file__, 1, "store down\nsecond line", None, None)
    assert JournaldFormatter().format(rec) == "<3>qtap.sinks: store down\n<3>second line"
    rec = logging.LogRecord("qtap.agent", logging.INFO, __file__, 1, "attached", None, None)
    assert JournaldFormatter().format(rec) == "<6>qtap.agent: attached"
