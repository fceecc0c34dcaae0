"""Loading configs (qtap_async.config.load): every documented config loads, stores and plugins decode once
into their own settings Structs, and the loader's edges (files, YAML features, strict types)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from qtap_async.config import Config, ConfigValidationError, config_warnings, load_config, loads_config
from qtap_async.errors import ConfigError
from qtap_async.plugins.access_logs import AccessLogsPlugin
from qtap_async.plugins.detect_errors import DetectErrorsPlugin
from qtap_async.plugins.http_capture import HttpCapturePlugin
from qtap_async.plugins.report_usage import ReportUsagePlugin
from qtap_async.sinks.base import store_name
from qtap_async.sinks.kafka import KafkaEventStore
from qtap_async.sinks.s3 import S3ObjectStore

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


# -- sections decode into their Structs ---------------------------------------------------------


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


def test_store_settings_are_decoded_by_the_sinks_structs() -> None:
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
    # One decode: the entry is the sink's own Struct, with the entry's id naming the store.
    kafka = config.services.event_stores[0]
    assert isinstance(kafka, KafkaEventStore)
    assert kafka.type == "kafka" and kafka.id == "main" and store_name(kafka) == "main"
    assert (kafka.brokers, kafka.topic) == (["127.0.0.1:9092"], "events")
    s3 = config.services.object_stores[0]
    assert isinstance(s3, S3ObjectStore) and s3.bucket == "b" and store_name(s3) == "s3"


def test_a_store_name_overrides_its_id() -> None:
    config = load("version: 2\nservices:\n  event_stores: [{type: stdout, id: out, name: console}]\n")
    assert store_name(config.services.event_stores[0]) == "console"


def test_every_problem_of_a_store_entry_is_reported_at_once() -> None:
    with pytest.raises(ConfigValidationError) as info:
        load(
            """\
            version: 2
            services:
              event_stores:
                - type: kafka
                  brokers: [localhost:9092]
                  topic: t
                  linger_ms: -1
                  compresion: zstd
            """
        )
    assert [(i.dotted_path, i.line, i.message) for i in info.value.issues] == [
        ("services.event_stores[0].linger_ms", 7, "expected an integer >= 0"),
        ("services.event_stores[0].compresion", 8, "unknown field 'compresion' (did you mean 'compression'?)"),
    ]


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


def test_a_world_writable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qpoint.yaml"
    path.write_text("version: 2\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"world-writable config file \(mode 0666\).*chmod o-w"):
        load_config(path)
    path.chmod(0o644)
    assert load_config(path) == Config()


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


def test_invalid_stack_names() -> None:
    with pytest.raises(ConfigValidationError) as info:
        load("version: 2\nstacks:\n  none: {plugins: []}\n")
    assert [(i.dotted_path, i.line, i.message) for i in info.value.issues] == [
        ("stacks.none", 3, "invalid stack name 'none'")]
