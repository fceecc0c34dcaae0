"""YAML text -> plain data, with where each key and value is written (line and column).

PyYAML builds the node tree (with marks) and the data from it; the walk over the nodes records the
marks by field path, so an error found later, on the decoded data, still points at its line. It also
refuses what PyYAML accepts silently: duplicate keys (the last one would win), aliases that contain
themselves, and documents large enough to be a denial of service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from qtap_async.config.messages import ConfigIssue, ConfigValidationError, source_line, yaml_sentence
from qtap_async.errors import ConfigError
from qtap_async.settings import FieldPath

__all__ = ["Document", "Mark", "YamlProblem", "drop_nulls", "parse_yaml"]

MAX_NODES = 200_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    style: str | None = None  # scalar style: None (plain), "'", '"', "|", ">"
    end_line: int = 0


@dataclass
class Document:
    """A parsed file: its ``data`` and the marks of its keys and values, by field path."""

    source: str
    text: str
    data: Any
    keys: dict[FieldPath, Mark] = field(default_factory=dict)  # where a mapping key is written
    values: dict[FieldPath, Mark] = field(default_factory=dict)  # where a value starts
    nulls: set[FieldPath] = field(default_factory=set)  # mapping entries written without a value

    def mark(self, path: FieldPath, prefer_key: bool = False) -> Mark | None:
        """The closest known position for ``path`` (walking up to parents)."""
        p = path
        while True:
            if prefer_key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if p in self.keys:
                return self.keys[p]
            if not p:
                return None
            p = p[:-1]
            prefer_key = False

    def issue(self, path: FieldPath, message: str, *, at_key: bool = False, detail: str = "") -> ConfigIssue:
        """An issue at ``path``, placed where the value (or, with ``at_key``, the key) is written."""
        m = self.mark(path, prefer_key=at_key)
        return ConfigIssue(path, message, m.line if m else None, m.column if m else None, detail)


class YamlProblem(ConfigError):
    """The text is not one YAML document this loader accepts."""

    def __init__(self, message: str, line: int | None, column: int | None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.detail = detail


def parse_yaml(text: str, source: str) -> Document:
    """Parse one YAML document. Raises YamlProblem (syntax) or ConfigValidationError (duplicate keys)."""
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters right here
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {' '.join(str(exc).split())}", None, None) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                problem = f"{exc.problem} ({exc.context})"
            raise YamlProblem(
                yaml_sentence(problem), mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                source_line(text, mark.line + 1 if mark else None),
            ) from None
        except yaml.YAMLError as exc:
            raise YamlProblem(f"invalid YAML: {exc}", None, None) from None
        if node is None:
            raise YamlProblem("the file is empty; a config needs at least 'version: 2'", 1, 1)
        doc = Document(source, text, None)
        duplicates: list[ConfigIssue] = []
        _walk(node, (), doc, duplicates, set(), [0])
        try:
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            raise YamlProblem(
                f"invalid YAML: {exc.problem}", mark.line + 1 if mark else None, mark.column + 1 if mark else None
            ) from None
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            raise YamlProblem(f"invalid YAML: {exc}", None, None) from None
    finally:
        loader.dispose()
    doc.data = data
    if duplicates:
        raise ConfigValidationError(source, duplicates)
    return doc


def _walk(
    node: yaml.Node,
    path: FieldPath,
    doc: Document,
    duplicates: list[ConfigIssue],
    active: set[int],
    count: list[int],
    keep_existing: bool = False,
) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise YamlProblem(f"the document is too large (more than {MAX_NODES} nodes)", None, None)
    if id(node) in active:
        m = node.start_mark
        raise YamlProblem("a YAML alias refers to a node that contains it", m.line + 1, m.column + 1)
    mark = Mark(
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        node.style if isinstance(node, yaml.ScalarNode) else None,
        node.end_mark.line + 1,
    )
    if not (keep_existing and path in doc.values):
        doc.values[path] = mark
    if isinstance(node, yaml.ScalarNode):
        return
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                _walk(item, (*path, index), doc, duplicates, active, count, keep_existing)
            return
        assert isinstance(node, yaml.MappingNode)
        seen: dict[str, int] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            key_mark = Mark(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen and not keep_existing:
                duplicates.append(
                    ConfigIssue(
                        (*path, key),
                        f"duplicate key '{key}' (first written on line {seen[key]})",
                        key_mark.line,
                        key_mark.column,
                    )
                )
                continue
            seen[key] = key_mark.line
            child = (*path, key)
            if not (keep_existing and child in doc.keys):
                doc.keys[child] = key_mark
            if (
                isinstance(value_node, yaml.ScalarNode)
                and value_node.tag == "tag:yaml.org,2002:null"
                and value_node.value in ("", "~", "null", "Null", "NULL")
            ):
                doc.nulls.add(child)
            _walk(value_node, child, doc, duplicates, active, count, keep_existing)
        for merged in merges:
            targets = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
            for target in targets:
                _walk(target, path, doc, duplicates, active, count, keep_existing=True)
    finally:
        active.discard(id(node))


def drop_nulls(value: Any, depth: int = 0) -> Any:
    """Entries written without a value (``key:``) mean "use the default": drop them."""
    if depth > 200:
        return value
    if isinstance(value, dict):
        return {k: drop_nulls(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v, depth + 1) for v in value]
    return value
