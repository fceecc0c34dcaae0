"""The JSON Schema of the event union, and docs/events.md generated from it (never stale)."""

from __future__ import annotations

import subprocess
import sys

import msgspec

from qtap_async.events import EVENT_TYPES, Event, HttpTransactionEvent
from qtap_async.events.schema import DOC_PATH, json_schema, main, markdown


def test_schema_has_one_branch_per_event_type_told_apart_by_type() -> None:
    schema = json_schema()
    tags = {cls.__struct_config__.tag for cls in EVENT_TYPES}
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == tags
    assert len(schema["anyOf"]) == len(EVENT_TYPES)
    http = schema["$defs"]["HttpTransactionEvent"]
    assert set(http["properties"]) == {"type", *HttpTransactionEvent.__struct_fields__}
    assert http["properties"]["direction"]["enum"] == ["egress", "ingress", "unknown"]


def test_committed_page_is_what_the_generator_writes() -> None:
    assert DOC_PATH.read_text() == markdown(), "run: python -m qtap_async.events.schema --write"


def test_page_lists_every_field_of_every_type() -> None:
    page = markdown()
    for cls in EVENT_TYPES:
        assert f"### {cls.__name__}" in page
        for field in cls.__struct_fields__:
            assert f"| `{field}` |" in page, (cls.__name__, field)


def test_cli_prints_the_schema() -> None:
    r = subprocess.run([sys.executable, "-m", "qtap_async.events.schema"], capture_output=True, text=True,
                       timeout=60, check=True)
    assert msgspec.json.decode(r.stdout) == json_schema()
    assert main(["--bogus"]) == 2
    # What the schema describes is what the union decodes.
    assert msgspec.json.schema(Event, ref_template="#/$defs/{name}") == json_schema()
