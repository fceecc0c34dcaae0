"""`qtap validate`: OK with a summary and exit 0, or every problem and exit 1; --check-services."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from cli.validate import register_service_check, validate_command

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qpoint.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_ok_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_command(ROOT / "examples" / "local.yaml", check_services=False) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == f"OK {ROOT / 'examples' / 'local.yaml'}"
    assert "  event stores: stdout" in lines
    assert "  stack default: access_logs, http_capture" in lines
    assert out.err == ""


def test_invalid_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """\
        version: 2
        tap:
          direction: sideways
        stacks:
          s:
            plugins: [{type: nope}]
        """,
    )
    assert validate_command(path, check_services=False) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"INVALID {path}: invalid config (2 problems)"
    assert err[1].startswith(f"{path}:3:14: tap.direction: unknown value 'sideways'")
    assert err[2].startswith(f"{path}:6:22: stacks.s.plugins[0].type: unknown plugin type 'nope'")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_command(tmp_path / "nope.yaml", check_services=False) == 1
    assert "no such config file" in capsys.readouterr().err


def test_warnings_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "version: 2\n")
    assert validate_command(path, check_services=False) == 0
    assert "warning: tap.http.stack is not set" in capsys.readouterr().out


@pytest.fixture
def listener() -> tuple[str, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()
    finally:
        sock.close()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_check_services(
    tmp_path: Path, listener: tuple[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = listener
    monkeypatch.setenv("QTAP_TEST_AK", "x")
    monkeypatch.delenv("QTAP_TEST_SK", raising=False)
    path = write(
        tmp_path,
        f"""\
        version: 2
        services:
          event_stores:
            - type: kafka
              brokers: ["{host}:{port}"]
              topic: t
          object_stores:
            - type: dir
              path: {tmp_path / "objects"}
            - type: s3
              endpoint: http://{host}:{port}
              bucket: b
              access_key: {{type: env, value: QTAP_TEST_AK}}
              secret_key: {{type: env, value: QTAP_TEST_SK}}
        """,
    )
    assert validate_command(path, check_services=True) == 1
    out = capsys.readouterr().out
    assert "  ok    services.object_stores[1].access_key: environment variable QTAP_TEST_AK is set" in out
    assert "  FAIL  services.object_stores[1].secret_key: environment variable QTAP_TEST_SK is not set" in out
    assert f"  ok    services.event_stores[0] (kafka): {host}:{port} is reachable" in out
    assert f"  ok    services.object_stores[0] (dir): {tmp_path / 'objects'} can be created" in out
    assert f"  ok    services.object_stores[1] (s3): http://{host}:{port} is reachable" in out
    monkeypatch.setenv("QTAP_TEST_SK", "y")
    assert validate_command(path, check_services=True) == 0


def test_check_services_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    path = write(
        tmp_path,
        f"""\
        version: 2
        services:
          event_stores:
            - type: pulse
              url: http://127.0.0.1:{port}
              token: {{type: text, value: t}}
        """,
    )
    assert validate_command(path, check_services=True) == 1
    out = capsys.readouterr().out
    assert f"  FAIL  services.event_stores[0] (pulse): http://127.0.0.1:{port} is not reachable" in out


def test_registered_service_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_service_check("event", "stdout", lambda store: [(True, "stdout is always there")])
    try:
        path = write(tmp_path, "version: 2\nservices:\n  event_stores: [{type: stdout}]\n")
        assert validate_command(path, check_services=True) == 0
        assert "  ok    services.event_stores[0] (stdout): stdout is always there" in capsys.readouterr().out
    finally:
        from cli import validate

        validate._CHECKS.pop(("event", "stdout"))
