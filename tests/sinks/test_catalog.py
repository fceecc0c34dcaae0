"""Every store type (qtap_async.sinks.catalog): Qtap-style YAML decodes into the tagged unions of the
stores' own settings Structs, which the factory builds into runners (secrets resolved there)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from qtap_async.errors import ConfigError
from qtap_async.settings import Secret
from qtap_async.sinks import (
    DirObjectStore,
    EventStoreConfig,
    KafkaEventStore,
    ObjectStoreConfig,
    PulseEventStore,
    S3ObjectStore,
    StdoutEventStore,
    build_event_runner,
    build_object_runner,
)
from qtap_async.sinks.base import store_name
from qtap_async.sinks.kafka import KafkaEventSink
from qtap_async.sinks.s3 import S3ObjectSink

YAML = """
event_stores:
  - type: kafka
    name: main
    brokers: ["k1:9092", "k2:9092"]
    topic: qtap
    sasl: {mechanism: SCRAM-SHA-512, username: qtap, password: {type: env, value: QTAP_TEST_PW}}
    buffer: {max_events: 1000, when_full: drop_newest}
    spool: {dir: /var/spool/qtap, max_bytes: 1048576, when_full: drop_newest}
  - type: stdout
  - type: pulse
    url: https://pulse.example/v1/events
    token: {type: text, value: abc}
object_stores:
  - type: s3
    bucket: b
    endpoint: https://storage.googleapis.com
    region: auto
    access_key: {type: env, value: QTAP_TEST_AK}
    secret_key: {type: env, value: QTAP_TEST_SK}
    access_url: "https://storage.googleapis.com/{{BUCKET}}/{{KEY}}"
  - type: dir
    path: /tmp/objs
"""


class Doc(msgspec.Struct):
    event_stores: list[EventStoreConfig]
    object_stores: list[ObjectStoreConfig]


def test_qtap_style_yaml_decodes_into_tagged_structs(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = msgspec.convert(yaml.safe_load(YAML), Doc)
    kafka, stdout, pulse = doc.event_stores
    assert isinstance(kafka, KafkaEventStore) and isinstance(stdout, StdoutEventStore)
    assert isinstance(pulse, PulseEventStore)
    assert kafka.buffer.when_full == "drop_newest" and kafka.spool and kafka.spool.max_bytes == 1 << 20
    assert store_name(kafka) == "main" and store_name(stdout) == "stdout"
    s3, d = doc.object_stores
    assert isinstance(s3, S3ObjectStore) and isinstance(d, DirObjectStore)

    monkeypatch.setenv("QTAP_TEST_PW", "pw")
    runner = build_event_runner(kafka)
    assert isinstance(runner.sink, KafkaEventSink)
    assert runner.sink._kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert runner.sink._kwargs["sasl_plain_password"] == "pw"
    assert runner.channel.max_events == 1000 and runner.channel.when_full == "drop_newest"

    monkeypatch.setenv("QTAP_TEST_AK", "ak")
    monkeypatch.setenv("QTAP_TEST_SK", "sk")
    sink = build_object_runner(s3).sink
    assert isinstance(sink, S3ObjectSink) and sink._creds[:2] == ("ak", "sk")


def test_missing_env_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QTAP_TEST_SK", raising=False)
    monkeypatch.setenv("QTAP_TEST_AK", "ak")
    doc = msgspec.convert(yaml.safe_load(YAML), Doc)
    with pytest.raises(ConfigError, match="object store s3: secret_key: environment variable QTAP_TEST_SK"):
        build_object_runner(doc.object_stores[0])


def test_unknown_fields_and_types_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `bukket`"):
        msgspec.convert({"type": "s3", "bucket": "b", "bukket": "x"}, ObjectStoreConfig)
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'nats'"):
        msgspec.convert({"type": "nats"}, EventStoreConfig)
    with pytest.raises(msgspec.ValidationError, match="when_full"):
        msgspec.convert({"type": "stdout", "buffer": {"when_full": "drop_oldest"}}, EventStoreConfig)


def test_config_round_trips_through_json() -> None:
    doc = msgspec.convert(yaml.safe_load(YAML), Doc)
    assert msgspec.json.decode(msgspec.json.encode(doc), type=Doc) == doc


def test_a_store_is_named_by_its_name_then_its_id_then_its_type() -> None:
    assert store_name(StdoutEventStore(name="n", id="i")) == "n"
    assert store_name(StdoutEventStore(id="i")) == "i"
    assert store_name(PulseEventStore(url="http://p", token="t")) == "pulse"
    assert PulseEventStore(url="http://p", token="t").type == "pulse"


def test_a_missing_secret_file_names_the_store_field_and_file(tmp_path: Path) -> None:
    cfg = PulseEventStore(url="http://127.0.0.1:9", token=Secret("file", str(tmp_path / "token")))
    with pytest.raises(ConfigError) as info:
        build_event_runner(cfg)
    assert str(info.value) == f"event store pulse: token: secret file {tmp_path / 'token'} does not exist"
    (tmp_path / "token").write_text("t0k\n")
    assert build_event_runner(cfg).sink.name == "pulse"
