"""Config versions: validated with the agent's own validator before they are stored, and diffed.

A config the agent would reject is never stored, so it never reaches an agent. On top of the agent's
rules the control plane refuses secrets in clear (``{type: text, value: ...}`` or a bare string where
a store takes a secret): configs are readable by every viewer of the team and their diffs go to the
audit log, so secrets are referred to by name (``{type: env, value: VAR}``, set on the agent's host).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from qtap_async.config import Config, ConfigValidationError, config_warnings, format_path, iter_secrets, loads_config
from qtap_async.control.models import Issue
from qtap_async.errors import ConfigError

_SECRET_HINT = ("plain-text secret: configs are readable by the team's viewers, so the control plane keeps "
                "no secret in clear; use {type: env, value: VARIABLE} and set the variable on the agent's host")


@dataclass(frozen=True)
class Checked:
    config: Config
    text: str
    sha256: str
    warnings: list[str]


class InvalidConfig(ConfigError):
    """The posted config is invalid; ``issues`` lists every problem with its path and line."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in issues))


def _flow_depth(text: str) -> int:
    """The deepest nesting of flow collections ([ and {) outside quotes: PyYAML composes recursively, so
    a body of 100,000 brackets must be refused before it is parsed."""
    depth = best = 0
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def _indent_depth(text: str) -> int:
    """How many distinct indentation levels the block structure uses (an upper bound on its nesting)."""
    levels = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()}
    return len(levels)


def _node_line(root: Any, path: tuple[str | int, ...]) -> tuple[int | None, int | None]:
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    nxt = v
                    break
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


def _is_secret_type(tp: Any) -> bool:
    types = tp.types if isinstance(tp, msgspec.inspect.UnionType) else (tp,)
    return any(isinstance(t, msgspec.inspect.StructType) and t.cls.__name__ == "ValueSource" for t in types)


def _clear_secrets(obj: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    """Paths of secrets given in clear inside a store's decoded settings Struct."""
    if isinstance(obj, msgspec.Struct):
        info = msgspec.inspect.type_info(type(obj))
        if not isinstance(info, msgspec.inspect.StructType):
            return
        if info.cls.__name__ == "ValueSource":
            if getattr(obj, "type", "") == "text":
                yield path
            return
        for f in info.fields:
            value = getattr(obj, f.name)
            if _is_secret_type(f.type) and isinstance(value, str) and value:
                yield (*path, f.encode_name)
            else:
                yield from _clear_secrets(value, (*path, f.encode_name))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _clear_secrets(v, (*path, i))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _clear_secrets(v, (*path, str(k)))


def check_config(text: str, max_depth: int) -> Checked:
    """Validate a posted config; raises InvalidConfig naming every problem."""
    if not text.strip():
        raise InvalidConfig([Issue(path="", message="the body is empty; send the config's YAML")])
    brackets = text.count("[") + text.count("{")
    if (brackets > max_depth and _flow_depth(text) > max_depth) or _indent_depth(text) > max_depth:
        raise InvalidConfig([Issue(path="", message=f"nested deeper than {max_depth} levels")])
    try:
        config = loads_config(text, "config")
    except ConfigValidationError as e:
        raise InvalidConfig([Issue(path=i.dotted_path, message=i.message + (f"\n{i.detail}" if i.detail else ""),
                                   line=i.line, column=i.column) for i in e.issues]) from None
    except RecursionError:
        raise InvalidConfig([Issue(path="", message="nested too deeply")]) from None
    except ConfigError as e:
        raise InvalidConfig([Issue(path="", message=str(e))]) from None
    paths: list[tuple[str | int, ...]] = []
    for key, stores in (("event_stores", config.services.event_stores),
                        ("object_stores", config.services.object_stores)):
        for index, store in enumerate(stores):
            paths.extend(_clear_secrets(store.options, ("services", key, index)))
    seen = {format_path(p) for p in paths}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    issues = []
    for p in paths:
        line, col = _node_line(root, p)
        issues.append(Issue(path=format_path(p), message=_SECRET_HINT, line=line, column=col))
    for dotted, secret in iter_secrets(config):
        if secret.type == "text" and dotted not in seen:
            issues.append(Issue(path=dotted, message=_SECRET_HINT))
    if issues:
        raise InvalidConfig(sorted(issues, key=lambda i: (i.line or 0, i.path)))
    return Checked(config, text, hashlib.sha256(text.encode()).hexdigest(), config_warnings(config))


def diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=old_name, tofile=new_name))
