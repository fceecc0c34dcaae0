"""`qtap validate`: OK with a summary and exit 0, or every problem and exit 1; --check-services."""

from __future__ import annotations

import re
import socket
import textwrap
from pathlib import Path

import pytest

from cli.validate import register_service_check, validate_command

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "config.md").read_text()


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


def _doc_sessions() -> list[tuple[str, str, str]]:
    """(file name, file text, expected `qtap validate` output) from the docs' `$ cat` sessions."""
    out = []
    for block in re.findall(r"```text\n(.*?)```", DOCS, re.S):
        m = re.match(r"\$ cat (\S+)\n(.*?)\$ qtap validate \1\n(.*)", block, re.S)
        if m:
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


@pytest.mark.parametrize("session", _doc_sessions(), ids=lambda s: s[0])
def test_doc_error_examples_are_real(
    session: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name, text, expected = session
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(text)
    assert validate_command(Path(name), False) == 1
    captured = capsys.readouterr()
    assert captured.err == expected


def test_there_are_doc_error_examples() -> None:
    assert len(_doc_sessions()) >= 2


def test_a_bad_store_type_names_the_allowed_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "version: 2\nservices:\n  object_stores:\n    - type: gcs\n      bucket: b\n")
    assert validate_command(path, check_services=False) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[1] == (f"{path}:4:13: services.object_stores[0].type: unknown object store type 'gcs'; "
                      f"expected one of dir, disabled, s3, stdout")


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


def test_check_services_names_missing_secret_files_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("QTAP_TEST_REDACTION_KEY", raising=False)
    token = tmp_path / "token"
    token.write_text("t\n")
    path = write(
        tmp_path,
        f"""\
        version: 2
        services:
          event_stores:
            - type: kafka
              brokers: ["127.0.0.1:{_closed_port()}"]
              topic: t
              sasl: {{username: {{type: file, value: {token}}}, password: {{type: file, value: {tmp_path / "nope"}}}}}
        tap:
          redaction:
            key: {{type: env, value: QTAP_TEST_REDACTION_KEY}}
        """,
    )
    assert validate_command(path, check_services=True) == 1
    out = capsys.readouterr().out
    assert f"  ok    services.event_stores[0].sasl.username: secret file {token} is readable" in out
    assert (f"  FAIL  services.event_stores[0].sasl.password: secret file {tmp_path / 'nope'} does not exist"
            in out)
    assert "  FAIL  tap.redaction.key: environment variable QTAP_TEST_REDACTION_KEY is not set" in out


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
