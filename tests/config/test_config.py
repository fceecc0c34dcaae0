"""Loading configs: the examples and the docs, the default config, the hooks, and the loader's edges."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli.validate import validate_command
from qtap_async import config as config_mod
from qtap_async.config import (
    DEFAULT_CONFIG_YAML,
    AccessLogsPlugin,
    Config,
    ConfigValidationError,
    DetectErrorsPlugin,
    HttpCapturePlugin,
    ReportUsagePlugin,
    SecretValue,
    config_warnings,
    default_config,
    load_config,
    loads_config,
    register_store_type,
    store_types,
    summarize,
)
from qtap_async.errors import ConfigError
from qtap_async.rulekit import MappingContext

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DOCS = (ROOT / "docs" / "config.md").read_text()
DOC_BLOCKS = re.findall(r"```yaml\n(.*?)```", DOCS, re.S)


def load(text: str) -> Config:
    return loads_config(textwrap.dedent(text), "test.yaml")


# -- every documented config is valid -----------------------------------------------------------


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4
    assert len(DOC_BLOCKS) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_files_validate(path: Path) -> None:
    config = load_config(path)
    assert config.version == 2
    assert config.stacks, "an example without stacks shows nothing"


@pytest.mark.parametrize("index", range(len(DOC_BLOCKS)))
def test_doc_yaml_blocks_validate(index: int) -> None:
    loads_config(DOC_BLOCKS[index], f"docs/config.md block {index}")


def test_docs_show_the_default_config_verbatim() -> None:
    assert DEFAULT_CONFIG_YAML in DOC_BLOCKS


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


# -- the default config -------------------------------------------------------------------------


def test_default_config() -> None:
    config = default_config()
    assert config is default_config()  # built once
    assert [s.type for s in config.services.event_stores] == ["stdout"]
    assert [s.type for s in config.services.object_stores] == ["disabled"]
    assert config.tap.direction == "all"
    assert config.tap.ignore_loopback is False
    assert config.tap.http.stack == "default"
    assert config.tap.filters.groups == ["qpoint"]
    plugins = config.stacks["default"].plugins
    assert [p.type for p in plugins] == ["http_capture", "access_logs"]
    assert isinstance(plugins[0], HttpCapturePlugin) and plugins[0].config.level == "summary"
    assert isinstance(plugins[1], AccessLogsPlugin) and plugins[1].config.mode == "summary"
    assert config_warnings(config) == []


def test_an_empty_but_versioned_file_gets_struct_defaults() -> None:
    config = load("version: 2\n")
    assert config == Config()
    assert config.tap.direction == "all" and not config.tap.http.enabled
    assert "no HTTP traffic will be processed" in config_warnings(config)[0]


def test_plugin_defaults_without_config() -> None:
    config = load(
        """\
        version: 2
        stacks:
          s:
            plugins:
              - type: http_capture
              - type: access_logs
                config:
              - type: report_usage
              - type: detect_errors
        """
    )
    http, access, report, errors = config.stacks["s"].plugins
    assert isinstance(http, HttpCapturePlugin) and http.config.level == "summary" and http.config.format == "json"
    assert isinstance(access, AccessLogsPlugin) and access.config.format == "console"
    assert isinstance(report, ReportUsagePlugin) and "authorization" in report.config.mask_headers
    assert isinstance(errors, DetectErrorsPlugin)
    assert [(r.expr, r.severity) for r in errors.config.rules] == [
        ("http.res.status == 5xx", "error"),
        ("http.res.status == 4xx", "warning"),
    ]


# -- rules compile and evaluate with the config's macros ----------------------------------------


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


# -- stores -------------------------------------------------------------------------------------


def test_store_settings_are_decoded_by_the_sinks_structs() -> None:
    from qtap_async.sinks.config import KafkaEventStore, S3ObjectStore

    config = load(
        """\
        version: 2
        services:
          event_stores:
            - type: kafka
              id: main
              brokers: ["127.0.0.1:9092"]
              topic: events
          object_stores:
            - type: s3
              bucket: b
              access_key: {type: env, value: AK}
        """
    )
    kafka = config.services.event_stores[0]
    assert kafka.id == "main" and kafka.settings == {"brokers": ["127.0.0.1:9092"], "topic": "events"}
    assert isinstance(kafka.options, KafkaEventStore) and kafka.options.name == "main"
    s3 = config.services.object_stores[0]
    assert isinstance(s3.options, S3ObjectStore) and s3.options.bucket == "b"


def test_register_store_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(config_mod._STORE_TYPES, "event", dict(config_mod._STORE_TYPES["event"]))

    class Webhook(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
        url: str
        retries: int = 3

    register_store_type("event", "webhook", Webhook)
    assert "webhook" in store_types("event")
    config = load(
        """\
        version: 2
        services:
          event_stores:
            - type: webhook
              url: http://127.0.0.1:9/hook
        """
    )
    assert config.services.event_stores[0].options == Webhook(url="http://127.0.0.1:9/hook")
    with pytest.raises(ConfigValidationError) as info:
        load(
            """\
            version: 2
            services:
              event_stores:
                - type: webhook
                  url: http://x
                  retires: 5
            """
        )
    issue = info.value.issues[0]
    assert (issue.dotted_path, issue.line, issue.message) == (
        "services.event_stores[0].retires",
        6,
        "unknown field 'retires' (did you mean 'retries'?)",
    )
    with pytest.raises(ValueError, match="kind must be"):
        register_store_type("metrics", "x", None)  # type: ignore[arg-type]


def test_secret_value_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTAP_TEST_SECRET", "s3cr3t")
    assert SecretValue(type="env", value="QTAP_TEST_SECRET").resolve() == "s3cr3t"
    assert SecretValue(type="text", value="inline").resolve() == "inline"
    with pytest.raises(ConfigError, match="QTAP_NOT_SET is not set"):
        SecretValue(type="env", value="QTAP_NOT_SET").resolve(environ={})


# -- the loader's edges -------------------------------------------------------------------------


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 2\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigValidationError, match="the file is empty"):
        load_config(empty)


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "qpoint.yaml"
    path.write_text("version: 2\ntap:\n  direction: sideways\n")
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    assert str(info.value).splitlines()[1].startswith(f"{path}:3:14: tap.direction: unknown value 'sideways'")


def test_multiple_documents_are_rejected() -> None:
    with pytest.raises(ConfigValidationError, match="expected a single document"):
        loads_config("version: 2\n---\nversion: 2\n")


def test_anchors_and_merge_keys() -> None:
    config = load(
        """\
        version: 2
        stacks:
          base: &base
            plugins:
              - type: access_logs
          copy: *base
        tap:
          http: &http {stack: base}
          endpoints:
            - domain: a.example.com
              http:
                <<: *http
        """
    )
    assert config.stacks["copy"] == config.stacks["base"]
    assert config.tap.endpoints[0].http.stack == "base"


def test_recursive_alias_is_rejected() -> None:
    with pytest.raises(ConfigValidationError, match="alias refers to a node that contains it"):
        loads_config("version: 2\nstacks: &a\n  x: *a\n")


def test_nulls_mean_defaults() -> None:
    config = load(
        """\
        version: 2
        services:
        stacks:
          s:
            plugins:
              - type: http_capture
                config:
                  rules:
        tap:
          filters:
            custom:
        """
    )
    assert config.services.event_stores == []
    assert config.tap.filters.custom == []


def test_strict_types() -> None:
    with pytest.raises(ConfigValidationError, match="expected true or false, got an integer"):
        load("version: 2\ntap:\n  ignore_loopback: 1\n")
    with pytest.raises(ConfigValidationError, match="unsupported version '2'"):
        load("version: '2'\n")
    with pytest.raises(ConfigValidationError, match="unsupported version True"):
        load("version: true\n")


def test_endpoint_domains() -> None:
    ok = load(
        """\
        version: 2
        tap:
          endpoints:
            - domain: api.example.com
            - domain: "*.internal.example.com"
            - domain: 10.0.0.1
            - domain: "::1"
            - domain: localhost.
        """
    )
    assert len(ok.tap.endpoints) == 5
    with pytest.raises(ConfigValidationError, match=r"duplicate endpoint domain 'API\.example\.com'"):
        load(
            """\
            version: 2
            tap:
              endpoints:
                - domain: api.example.com
                - domain: API.example.com
            """
        )


def test_warnings() -> None:
    config = load(
        """\
        version: 2
        services:
          object_stores:
            - type: s3
              bucket: b
              secret_key: {type: text, value: plain}
        stacks:
          used:
            plugins:
              - type: http_capture
                config: {level: none, rules: [{name: x, expr: "true", level: full}]}
          unused:
            plugins: []
        tap:
          http: {stack: used}
        """
    )
    assert config_warnings(config) == [
        "stacks.unused is not used by tap.http or any endpoint",
        "no event store is enabled: events are discarded",
        "services.object_stores[0].secret_key is a plain-text secret; prefer {type: env, value: VAR}",
    ]
    no_objects = load(
        """\
        version: 2
        services: {event_stores: [{type: stdout}]}
        stacks: {s: {plugins: [{type: http_capture, config: {level: full}}]}}
        tap: {http: {stack: s}}
        """
    )
    assert config_warnings(no_objects) == [
        "http_capture keeps headers/bodies (level details or full) but no object store is enabled"
    ]


def test_summarize() -> None:
    lines = summarize(load_config(ROOT / "examples" / "production.yaml"))
    assert lines[0] == "event stores: kafka (events)"
    assert "stack payments: http_capture" in lines
    assert "endpoint *.internal.example.com: http stack none" in lines
    assert lines[-1] == "rules: 4, macros: 2"


def test_configs_are_immutable() -> None:
    config = default_config()
    with pytest.raises(AttributeError):
        config.tap = config.tap  # type: ignore[misc]


def test_config_round_trips_through_msgspec() -> None:
    config = load_config(ROOT / "examples" / "local.yaml")
    data: dict[str, Any] = msgspec.to_builtins(config)
    assert data["tap"]["direction"] == "all"
    assert data["stacks"]["default"]["plugins"][0]["type"] == "access_logs"
