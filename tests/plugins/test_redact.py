"""The redactor itself: which values are replaced, what stays, and that equal secrets match."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtap_async.config import loads_config
from qtap_async.errors import ConfigError
from qtap_async.plugins.redact import RedactionConfig, Redactor, looks_secret, redactor_from
from qtap_async.settings import Secret


def test_credential_headers_keep_their_kind_and_lose_their_value() -> None:
    r = Redactor(key=b"k" * 32)
    out = dict(r.headers([
        ("Authorization", "Bearer s3cr3t-token"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Cookie", "session=abc123; theme=dark"),
        ("Set-Cookie", "sid=xyz789; Path=/; HttpOnly"),
        ("X-Api-Key", "key-1"),
        ("Accept", "text/html"),
    ]))
    assert out["Authorization"].startswith("Bearer [redacted:") and "s3cr3t" not in out["Authorization"]
    assert out["Proxy-Authorization"].startswith("Basic [redacted:")
    assert out["Cookie"].startswith("session=[redacted:") and "; theme=[redacted:" in out["Cookie"]
    assert out["Set-Cookie"].startswith("sid=[redacted:") and out["Set-Cookie"].endswith("; Path=/; HttpOnly")
    assert out["X-Api-Key"].startswith("[redacted:")
    assert out["Accept"] == "text/html"


def test_equal_secrets_give_equal_tags_and_the_key_matters() -> None:
    a, b = Redactor(key=b"a" * 32), Redactor(key=b"b" * 32)
    assert a.header_value("authorization", "Bearer t1") == a.header_value("Authorization", "Bearer t1")
    assert a.header_value("authorization", "Bearer t1") != a.header_value("authorization", "Bearer t2")
    assert a.header_value("authorization", "Bearer t1") != b.header_value("authorization", "Bearer t1")


def test_secret_query_values_by_name_and_by_look() -> None:
    r = Redactor()
    out = r.target("/p?token=zq-value-zq&page=2&x=AKIAIOSFODNN7EXAMPLE123&flag&name=bob#frag")
    assert out is not None
    assert "zq-value-zq" not in out and "AKIAIOSFODNN7EXAMPLE123" not in out
    assert "page=2" in out and "name=bob" in out and "&flag&" in out and out.endswith("#frag")
    assert r.target("/plain") == "/plain" and r.target(None) is None
    assert looks_secret("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig")
    assert not looks_secret("hello-world")
    assert not looks_secret("after-h2_garbage_frames")  # words and a digit are not a token
    assert looks_secret("sk_live_4eC39HqLyjWDarjtT1zdp7dc") and looks_secret("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")


def test_configured_names_and_disabled() -> None:
    r = Redactor(headers=["x-custom-secret"], query_params=["pin"])
    assert r.header_value("X-Custom-Secret", "v").startswith("[redacted:")
    assert r.header_value("Authorization", "Bearer v") == "Bearer v"  # only the configured names
    assert "1234" not in (r.target("/?pin=1234") or "")
    off = Redactor(enabled=False)
    assert off.header_value("authorization", "Bearer v") == "Bearer v"
    assert off.target("/?token=abc") == "/?token=abc"


def test_the_configured_key_comes_from_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k3y\n")
    config = loads_config(f"version: 2\ntap:\n  redaction:\n    key: {{type: file, value: {key}}}\n").tap.redaction
    assert config.key == Secret("file", str(key))
    a, b = redactor_from(config), Redactor(key=b"k3y")
    assert a.tag("secret") == b.tag("secret")
    with pytest.raises(ConfigError, match=r"tap\.redaction\.key: environment variable QTAP_TEST_NO_KEY is not set"):
        redactor_from(RedactionConfig(key=Secret("env", "QTAP_TEST_NO_KEY")))
