"""check_config: the agent's validator plus the control plane's no-secrets-in-clear rule and depth limits."""

from __future__ import annotations

import pytest

from qtap_async.control.configs import InvalidConfig, check_config, diff
from tests.control.conftest import config_yaml

KAFKA = """version: 2
services:
  event_stores:
    - type: kafka
      brokers: [127.0.0.1:9092]
      topic: t
      sasl:
        mechanism: PLAIN
        username: {type: env, value: KAFKA_USER}
        password: PASSWORD_HERE
  object_stores:
    - type: s3
      bucket: b
      access_key: {type: env, value: S3_KEY}
      secret_key: {type: env, value: S3_SECRET}
stacks: {}
tap:
  direction: egress
"""


def test_valid_config_passes_with_warnings() -> None:
    checked = check_config(config_yaml(), 64)
    assert checked.config.stacks["default"].plugins[0].type == "http_capture"
    assert len(checked.sha256) == 64 and isinstance(checked.warnings, list)


def test_clear_secret_in_a_nested_store_field_is_refused_with_its_line() -> None:
    with pytest.raises(InvalidConfig) as e:
        check_config(KAFKA.replace("PASSWORD_HERE", "hunter2"), 64)
    assert [(i.path, i.line) for i in e.value.issues] == [("services.event_stores[0].sasl.password", 10)]
    check_config(KAFKA.replace("PASSWORD_HERE", "{type: env, value: KAFKA_PASSWORD}"), 64)


def test_every_problem_is_reported() -> None:
    bad = config_yaml().replace("level: summary", "level: loud").replace("direction: egress", "directon: egress")
    with pytest.raises(InvalidConfig) as e:
        check_config(bad, 64)
    paths = {i.path for i in e.value.issues}
    assert paths == {"stacks.default.plugins[0].config.level", "tap.directon"}
    with pytest.raises(InvalidConfig) as e:
        check_config(config_yaml().replace("stack: default", "stack: missing"), 64)
    assert [i.path for i in e.value.issues] == ["tap.http.stack"]
    assert all(i.line for i in e.value.issues)


@pytest.mark.parametrize("text", ["", "   \n", "[" * 100 + "]" * 100, "a: {" * 70 + "}" * 70, "\tbad: [", "- 1\n- 2\n"])
def test_garbage_is_an_invalid_config_never_a_crash(text: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        check_config(text, 64)
    assert e.value.issues and all(i.message for i in e.value.issues)


def test_diff() -> None:
    d = diff("a: 1\n", "a: 2\n", "v1", "v2")
    assert d.splitlines()[:2] == ["--- v1", "+++ v2"] and "-a: 1" in d and "+a: 2" in d
