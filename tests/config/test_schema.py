"""The config's Structs (qtap_async.config.schema): immutable, round-trip through msgspec, rules and
secrets found wherever they are."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtap_async.config import Config, default_config, iter_secrets, load_config, loads_config
from qtap_async.config.schema import Services
from qtap_async.plugins.catalog import PLUGIN_TYPES
from qtap_async.rulekit import MappingContext
from qtap_async.settings import Secret
from qtap_async.sinks.catalog import EventStoreConfig, ObjectStoreConfig

ROOT = Path(__file__).resolve().parents[2]


def load(text: str) -> Config:
    return loads_config(textwrap.dedent(text), "test.yaml")


def test_rules_compile_with_macros() -> None:
    config = load_config(ROOT / "examples" / "production.yaml")
    rules = {rule.name: config.compile(rule.expr) for _, _, _, rule in config.iter_rules()}
    ctx = MappingContext({"http.res.status": 502, "http.req.path": "/pay", "conn.remote_ip": "8.8.8.8"})
    assert rules["server errors"].evaluate(ctx) is True
    assert rules["auth failure from outside"].evaluate(MappingContext({"http.res.status": 403})) is True
    assert (
        rules["auth failure from outside"].evaluate(
            MappingContext({"http.res.status": 403, "conn.remote_ip": "10.0.0.1"})
        )
        is False
    )
    assert config.macro_map()["failed"].startswith("http.res.status")


def test_configs_are_immutable() -> None:
    config = default_config()
    with pytest.raises(AttributeError):
        config.tap = config.tap  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.services.event_stores[0].name = "x"  # type: ignore[misc]


def test_config_round_trips_through_msgspec() -> None:
    config = load_config(ROOT / "examples" / "local.yaml")
    data: dict[str, Any] = msgspec.to_builtins(config)
    assert data["tap"]["direction"] == "all"
    assert data["stacks"]["default"]["plugins"][0]["type"] == "access_logs"
    assert msgspec.convert(data, Config) == config


def test_stores_and_plugins_are_tagged_on_type() -> None:
    # The config's unions are the catalogs': every tag is a type a file may name, and nothing else is.
    def tags(union: Any) -> list[str]:
        info = msgspec.inspect.type_info(union)
        assert isinstance(info, msgspec.inspect.UnionType)
        return [str(t.tag) for t in info.types if isinstance(t, msgspec.inspect.StructType)]

    assert tags(EventStoreConfig) == ["disabled", "kafka", "otel", "pulse", "stdout"]
    assert tags(ObjectStoreConfig) == ["dir", "disabled", "s3", "stdout"]
    assert PLUGIN_TYPES == ("http_capture", "access_logs", "report_usage", "detect_errors", "http_metrics")
    services = msgspec.convert({"event_stores": [{"type": "pulse", "url": "http://p", "token": "t"}]}, Services)
    assert services.event_stores[0].type == "pulse"


def test_iter_secrets_finds_stores_and_the_redaction_key() -> None:
    config = load(
        """\
        version: 2
        services:
          event_stores:
            - type: kafka
              brokers: [k:9092]
              topic: t
              sasl: {username: qtap, password: {type: file, value: /run/secrets/kafka}}
          object_stores:
            - type: s3
              bucket: b
              access_key: {type: env, value: AK}
              secret_key: plain
        tap:
          redaction:
            key: {type: env, value: QTAP_REDACTION_KEY}
        """
    )
    assert list(iter_secrets(config)) == [
        ("services.event_stores[0].sasl.password", Secret("file", "/run/secrets/kafka")),
        ("services.object_stores[0].access_key", Secret("env", "AK")),
        ("tap.redaction.key", Secret("env", "QTAP_REDACTION_KEY")),
    ]
