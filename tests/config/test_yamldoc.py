"""YAML with marks (qtap_async.config.yamldoc): where every key and value is written, and what PyYAML
would accept silently."""

from __future__ import annotations

import pytest

from qtap_async.config.messages import ConfigValidationError
from qtap_async.config.yamldoc import MAX_NODES, YamlProblem, drop_nulls, parse_yaml

TEXT = """\
version: 2
tap:
  direction: all
  http:
  endpoints:
    - domain: a.example.com
    - domain: 'b.example.com'
rule: |
  x
  y
"""


def test_marks_of_keys_and_values() -> None:
    doc = parse_yaml(TEXT, "t.yaml")
    assert doc.data["tap"]["endpoints"][1] == {"domain": "b.example.com"}
    assert (doc.keys[("tap", "direction")].line, doc.keys[("tap", "direction")].column) == (3, 3)
    value = doc.values[("tap", "direction")]
    assert (value.line, value.column, value.style) == (3, 14, None)
    assert doc.values[("tap", "endpoints", 1, "domain")].style == "'"
    block = doc.values[("rule",)]
    assert (block.line, block.style, block.end_line) == (8, "|", 11)
    assert doc.nulls == {("tap", "http")}


def test_mark_walks_up_to_the_closest_known_parent() -> None:
    doc = parse_yaml(TEXT, "t.yaml")
    mark = doc.mark(("tap", "endpoints", 0, "domain", "nope"))
    assert mark is not None and (mark.line, mark.column) == (6, 15)
    key = doc.mark(("tap", "direction"), prefer_key=True)
    assert key is not None and key.column == 3
    issue = doc.issue(("tap", "endpoints", 1), "bad")
    assert (issue.line, issue.column, issue.dotted_path) == (7, 7, "tap.endpoints[1]")
    assert doc.mark(()) is not None and parse_yaml("a: 1\n", "t").mark(("b",)) is not None


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_yaml("a: 1\nb: 2\na: 3\n", "t.yaml")
    [issue] = info.value.issues
    assert (issue.dotted_path, issue.line, issue.message) == ("a", 3, "duplicate key 'a' (first written on line 1)")


def test_merge_keys_are_not_duplicates() -> None:
    doc = parse_yaml("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  x: 3\n", "t.yaml")
    assert doc.data["use"] == {"x": 3, "y": 2}
    assert doc.keys[("use", "x")].line == 4  # the key written here, not the merged one


def test_syntax_errors_say_what_to_fix() -> None:
    with pytest.raises(YamlProblem) as info:
        parse_yaml("tap:\n\tdirection: all\n", "t.yaml")
    assert info.value.message == "invalid YAML: a tab character: YAML indentation must use spaces"
    assert (info.value.line, info.value.column) == (2, 1)
    assert info.value.detail == "    2 | \tdirection: all"
    with pytest.raises(YamlProblem, match="the file is empty"):
        parse_yaml("# only a comment\n", "t.yaml")


def test_huge_documents_are_refused() -> None:
    text = "a: [" + ", ".join("0" for _ in range(MAX_NODES)) + "]\n"
    with pytest.raises(YamlProblem, match=f"more than {MAX_NODES} nodes"):
        parse_yaml(text, "t.yaml")


def test_drop_nulls() -> None:
    assert drop_nulls({"a": None, "b": [{"c": None, "d": 1}], "e": {"f": None}}) == {"b": [{"d": 1}], "e": {}}
