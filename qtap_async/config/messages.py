"""The words of every config error: a problem names the field (its dotted path), the line and column
in the file, and the reason (what was expected, what was found, and often what was meant).

``ConfigIssue`` is one problem and ``ConfigValidationError`` all of them; ``msgspec_issue`` turns a
msgspec validation error into an issue people can act on (msgspec says "Expected `bool`, got `int` -
at `$.tap.ignore_loopback`"; this says "tap.ignore_loopback: expected true or false, got an integer"
with the line). Hints live beside the Structs they are about (``Settings.field_hints``) or, for values
people carry over from Qtap, here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from qtap_async.errors import ConfigError
from qtap_async.settings import FieldPath

if TYPE_CHECKING:
    from qtap_async.config.yamldoc import Document

__all__ = ["ConfigIssue", "ConfigValidationError", "format_path", "kind_of", "msgspec_issue", "unknown_field"]


def format_path(path: FieldPath) -> str:
    """``("services", "event_stores", 0, "url")`` as ``services.event_stores[0].url``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: the field's ``path``, the ``message`` (what was expected, what was found) and the
    1-based ``line``/``column`` in the file (None when unknown). ``detail`` adds lines (a caret under
    the column of a rule expression)."""

    path: FieldPath
    message: str
    line: int | None = None
    column: int | None = None
    detail: str = ""

    @property
    def dotted_path(self) -> str:
        return format_path(self.path)

    def format(self, source: str) -> str:
        where = source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        head = f"{where}: {self.dotted_path}: {self.message}" if self.path else f"{where}: {self.message}"
        return head + ("\n" + self.detail if self.detail else "")


class ConfigValidationError(ConfigError):
    """The file is not a valid config; ``issues`` lists every problem, sorted by line."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = sorted(issues, key=lambda i: (i.line or 0, i.column or 0))
        count = len(self.issues)
        head = f"{source}: invalid config ({count} problem{'s' if count != 1 else ''})"
        super().__init__("\n".join([head, *(issue.format(source) for issue in self.issues)]))


# -- YAML ---------------------------------------------------------------------------------------

#: PyYAML's parser words -> what a person should check (most are indentation mistakes).
_YAML_SENTENCES = (
    ("expected <block end>", "the indentation of this line does not match the lines above it: keys of one "
                             "mapping must start in the same column (YAML nests by indentation)"),
    ("mapping values are not allowed", "unexpected ':' here: this line is probably indented deeper than the "
                                       "key above it, or a value contains ': ' and needs quotes"),
    ("cannot start any token", "a tab character: YAML indentation must use spaces"),
    ("did not find expected key", "a key was expected here: check the indentation, or a '-' list item "
                                  "mixed into a mapping"),
    ("could not find expected ':'", "a key without ':' (or an unclosed quote) on this or the previous line"),
    ("did not find expected '-' indicator", "a list item that does not line up with the items above it"),
    ("found undefined alias", "an alias (*name) without a matching anchor (&name)"),
)


def yaml_sentence(problem: str) -> str:
    """PyYAML's description of a syntax error, as a sentence about what to fix."""
    for words, sentence in _YAML_SENTENCES:
        if words in problem:
            return f"invalid YAML: {sentence}"
    return f"invalid YAML: {problem}"


def source_line(text: str, line: int | None) -> str:
    """The file's line, to show under the message."""
    lines = text.splitlines()
    if line is None or not 0 < line <= len(lines):
        return ""
    return f"    {line} | {lines[line - 1].rstrip()}"


# -- msgspec errors -> issues -------------------------------------------------------------------

_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?) - at `(?P<path>[^`]*)`(?: in `(?P<inpath>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "nothing (null)",
    "datetime": "a timestamp",
    "date": "a date",
    "bytes": "binary data",
}

#: Extra words for values people carry over from Qtap or mix up between plugins.
_VALUE_HINTS = {
    "headers": "Qtap's 'headers' level is called 'details' here",
    "debug": "Qtap's debug plugin does not exist in qtap-async; use access_logs",
    "egress_external": "use 'egress-external'",
    "egress_internal": "use 'egress-internal'",
}


def kind_of(value: Any) -> str:
    """What a YAML value is, in words: "a mapping", "a list", "an integer"..."""
    if value is None:
        name = "null"
    elif isinstance(value, bool):
        name = "bool"
    elif isinstance(value, dict):
        name = "object"
    elif isinstance(value, list):
        name = "array"
    else:
        name = type(value).__name__
    return TYPE_WORDS.get(name, name)


def msgspec_issue(doc: Document, exc: msgspec.ValidationError, root: Any, data: Any, base: FieldPath) -> ConfigIssue:
    """The issue of a msgspec error raised decoding ``data`` (found at ``base`` in the file) as ``root``."""
    text = str(exc)
    m = _MSGSPEC_ERROR.match(text)
    in_key = m is not None and m.group("inpath") is not None
    if m is None:  # an error at the root carries no path
        message, raw_path = text, "$"
    else:
        message = m.group("msg")
        raw_path = m.group("inpath") if in_key else m.group("path")
    rel: list[str | int] = []
    for name, index in _PATH_PART.findall(raw_path[1:] if raw_path.startswith("$") else raw_path):
        if name:
            rel.append(name)
        elif index == "...":
            rel.append("...")
        else:
            rel.append(int(index))
    path: FieldPath = (*base, *rel)
    if in_key:
        return doc.issue(path, f"keys must be strings ({_lower_first(message)})")
    info = _type_at(msgspec.inspect.type_info(root), rel, data)

    unknown = re.match(r"Object contains unknown field `(.*)`$", message)
    if unknown:
        name = unknown.group(1)
        return doc.issue((*path, name), unknown_field(name, info), at_key=True)
    missing = re.match(r"Object missing required field `(.*)`$", message)
    if missing:
        name = missing.group(1)
        if (*path, name) in doc.nulls:
            return doc.issue((*path, name), f"'{name}' is empty; it needs a value", at_key=True)
        tags = _tags(info, name)
        return doc.issue(path, f"missing required field '{name}'" + (f" (one of {_choices(tags)})" if tags else ""))
    bad_value = re.match(r"Invalid (?:enum )?value (.*)$", message)
    if bad_value:
        got = bad_value.group(1)
        return doc.issue(path, _bad_value(got, info, rel, data, root))
    expected = re.match(r"Expected `(.*?)`, got `(.*?)`(.*)$", message)
    if expected:
        want, got, rest = expected.groups()
        words = f"expected {TYPE_WORDS.get(want, want)}, got {TYPE_WORDS.get(got, got)}{rest}"
        if isinstance(info, msgspec.inspect.LiteralType):
            words = f"expected one of {_choices(info.values)}, got {TYPE_WORDS.get(got, got)}"
        return doc.issue(path, words)
    constrained = re.match(r"Expected `(.*?)` (.*)$", message)
    if constrained:
        want, rest = constrained.groups()
        return doc.issue(path, f"expected {TYPE_WORDS.get(want, want)} {rest}")
    return doc.issue(path, _lower_first(message))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _choices(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values)


def unknown_field(name: str, info: Any) -> str:
    """``unknown field 'x'`` and what was probably meant: the Struct's hint, a close name, or every field."""
    message = f"unknown field '{name}'"
    if isinstance(info, msgspec.inspect.StructType):
        hint = getattr(info.cls, "field_hints", {}).get(name)
        allowed = [f.encode_name for f in info.fields]
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        if hint:
            message += f" ({hint})"
        elif close:
            message += f" (did you mean '{close[0]}'?)"
        elif allowed:
            message += f"; allowed fields: {', '.join(allowed)}"
    return message


def _tagged(info: Any, tag_field: str) -> list[msgspec.inspect.StructType]:
    """The members of a tagged union (on ``tag_field``), in the union's order; [] for anything else."""
    if not isinstance(info, msgspec.inspect.UnionType):
        return []
    return [t for t in info.types
            if isinstance(t, msgspec.inspect.StructType) and t.tag_field == tag_field and t.tag is not None]


def _tags(info: Any, tag_field: str) -> list[object]:
    return [t.tag for t in _tagged(info, tag_field)]


def _bad_value(got: str, info: Any, rel: list[str | int], data: Any, root: Any) -> str:
    value = got.strip("'\"")
    choices: Sequence[object] = ()
    what = "value"
    if isinstance(info, msgspec.inspect.LiteralType):
        choices = tuple(info.values)
    elif rel and isinstance(rel[-1], str):
        # The tag of a tagged union: the members name the allowed types and what they are (``kind``).
        parent = _type_at(msgspec.inspect.type_info(root), rel[:-1], data, pick_variant=False)
        members = _tagged(parent, rel[-1])
        if members:
            choices = [t.tag for t in members]
            kind = getattr(members[0].cls, "kind", "")
            what = f"{kind} {rel[-1]}" if kind else rel[-1]
    if not choices:
        return f"invalid value {got}"
    message = f"unknown {what} {got}; expected one of {_choices(choices)}"
    hint = _VALUE_HINTS.get(value)
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    if hint:
        message += f" ({hint})"
    elif close:
        message += f" (did you mean '{close[0]}'?)"
    return message


def _type_at(info: Any, rel: Sequence[str | int], data: Any, pick_variant: bool = True) -> Any:
    """The msgspec type info at ``rel`` below ``info``; tagged unions follow the tag in ``data``."""
    for part in rel:
        info = _pick_variant(info, data)
        if isinstance(info, msgspec.inspect.StructType) and isinstance(part, str):
            match = [f for f in info.fields if f.encode_name == part]
            if not match:
                return None
            info = match[0].type
            data = data.get(part) if isinstance(data, dict) else None
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType) and isinstance(part, int):
            info = info.item_type
            data = data[part] if isinstance(data, list) and part < len(data) else None
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
            data = None
        else:
            return None
    return _pick_variant(info, data) if pick_variant else info


def _pick_variant(info: Any, data: Any) -> Any:
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        if isinstance(data, dict):
            for t in structs:
                if t.tag_field is not None and data.get(t.tag_field) == t.tag:
                    return t
            if len(structs) == 1:
                return structs[0]
        others = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(others) == 1:
            return others[0]
    return info
