"""{{NAME}} templates of object keys and access URLs: rendering, spacing and case, unknown names refused
at config time with the names that are known."""

from __future__ import annotations

import pytest

from qtap_async.errors import ConfigError
from qtap_async.sinks.templates import KEY_FIELDS, URL_FIELDS, Template

DIGEST = "ab" + "0" * 62


def test_renders_every_placeholder_and_keeps_the_literals() -> None:
    t = Template("objects/{{SHARD}}/{{ DIGEST }}.bin?c={{connection_id}}", KEY_FIELDS, "object store s: key")
    assert t.fields == {"SHARD", "DIGEST", "CONNECTION_ID"}
    assert t.render({"SHARD": "ab", "DIGEST": DIGEST, "CONNECTION_ID": "42"}) == f"objects/ab/{DIGEST}.bin?c=42"
    assert Template("plain", KEY_FIELDS, "k").render({}) == "plain"
    assert Template("{{DIGEST}}{{DIGEST}}", KEY_FIELDS, "k").render({"DIGEST": "x"}) == "xx"
    # Only {{NAME}} is a placeholder: single braces and other text pass through.
    assert Template("{DIGEST} {{}} }}{{", KEY_FIELDS, "k").render({}) == "{DIGEST} {{}} }}{{"


def test_a_url_may_use_the_store_fields_a_key_may_not() -> None:
    url = Template("{{ENDPOINT}}/{{BUCKET}}/{{KEY}}", URL_FIELDS, "object store s: access_url")
    assert url.render({"ENDPOINT": "https://s3.test", "BUCKET": "b", "KEY": "k/1"}) == "https://s3.test/b/k/1"
    with pytest.raises(ConfigError) as info:
        Template("{{BUCKET}}/{{DIGEST}}", KEY_FIELDS, "object store s: key")
    msg = str(info.value)
    assert msg.startswith("object store s: key: unknown placeholder {{BUCKET}}")
    assert "CONNECTION_ID, DIGEST, SHARD, TRANSACTION_ID" in msg


def test_a_missing_value_is_a_programming_error_not_an_empty_key() -> None:
    t = Template("{{DIGEST}}", KEY_FIELDS, "k")
    with pytest.raises(KeyError):
        t.render({})
