"""The settings base and the one secret type (qtap_async.settings): env, file or text, and errors that
name the variable or the file."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from qtap_async.errors import ConfigError
from qtap_async.settings import MAX_SECRET_FILE_BYTES, Secret, SecretOrText, Settings, find_secrets, resolve


def test_secret_value_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTAP_TEST_SECRET", "s3cr3t")
    assert Secret(type="env", value="QTAP_TEST_SECRET").resolve() == "s3cr3t"
    assert Secret(type="text", value="inline").resolve() == "inline"
    with pytest.raises(ConfigError, match="QTAP_NOT_SET is not set"):
        Secret(type="env", value="QTAP_NOT_SET").resolve(environ={})


def test_a_missing_env_var_is_named_with_what_needs_it() -> None:
    with pytest.raises(ConfigError) as info:
        Secret("env", "QTAP_TEST_NOT_SET").resolve("event store pulse: token", environ={})
    assert str(info.value) == "event store pulse: token: environment variable QTAP_TEST_NOT_SET is not set"


def test_file_secrets(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")  # as `echo abc > token` and Kubernetes write it
    assert Secret("file", str(path)).resolve() == "abc"
    path.write_bytes(b"line one\nline two\r\n")
    assert Secret("file", str(path)).resolve() == "line one\nline two"
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        Secret("file", str(missing)).resolve("tap.redaction.key")
    assert str(info.value) == f"tap.redaction.key: secret file {missing} does not exist"
    with pytest.raises(ConfigError, match=f"cannot read secret file {tmp_path}"):
        Secret("file", str(tmp_path)).resolve()
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        Secret("file", str(path)).resolve()
    path.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="is larger than"):
        Secret("file", str(path)).resolve()


def test_secrets_decode_strictly() -> None:
    assert msgspec.convert({"type": "file", "value": "/run/s"}, Secret) == Secret("file", "/run/s")
    with pytest.raises(msgspec.ValidationError, match="unknown field `val`"):
        msgspec.convert({"type": "env", "val": "X"}, Secret)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'vault'"):
        msgspec.convert({"type": "vault", "value": "X"}, Secret)
    # Where a store takes a secret, a bare string is the value itself.
    assert msgspec.convert("plain", SecretOrText) == "plain"


def test_resolve_takes_secrets_strings_and_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTAP_TEST_SECRET", "v")
    assert resolve(Secret("env", "QTAP_TEST_SECRET"), "x") == "v"
    assert resolve("bare", "x") == "bare"
    assert resolve(None, "x") is None


class Inner(Settings, frozen=True):
    key: Secret | None = None


class Outer(Settings, frozen=True):
    items: list[Inner] = msgspec.field(default_factory=list)
    extra: dict[str, Secret] = msgspec.field(default_factory=dict)
    plain: str = ""


def test_find_secrets_walks_structs_lists_and_dicts() -> None:
    value = Outer(items=[Inner(), Inner(key=Secret("env", "A"))], extra={"b": Secret("text", "t")}, plain="p")
    assert list(find_secrets(value, ("root",))) == [
        (("root", "items", 1, "key"), Secret("env", "A")),
        (("root", "extra", "b"), Secret("text", "t")),
    ]


def test_settings_are_strict_and_immutable() -> None:
    class S(Settings, frozen=True):
        a: int = 1

    with pytest.raises(msgspec.ValidationError, match="unknown field `b`"):
        msgspec.convert({"b": 2}, S)
    with pytest.raises(AttributeError):
        S().a = 2  # type: ignore[misc]
