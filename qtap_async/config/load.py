"""Reading a config: ``load_config(path)`` and ``loads_config(text)``, all or nothing.

Each returns a complete, validated ``Config`` or raises ``ConfigValidationError`` listing every problem
found, not just the first: the YAML is parsed with marks (``yamldoc``), each top-level section is decoded
with msgspec into the schema's Structs (stores and plugins into their own settings Structs, once), and
when the structure is right the cross-field checks run (``validation``).
"""

from __future__ import annotations

import copy
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.config.messages import (
    ConfigIssue,
    ConfigValidationError,
    kind_of,
    msgspec_issue,
    unknown_field,
)
from qtap_async.config.schema import CONFIG_VERSION, Config, RulekitConfig, Services, StackConfig, TapConfig
from qtap_async.config.validation import check
from qtap_async.config.yamldoc import Document, YamlProblem, drop_nulls, parse_yaml
from qtap_async.errors import ConfigError
from qtap_async.settings import FieldPath

__all__ = ["check_config_permissions", "load_config", "loads_config"]

_TOP_LEVEL = ("version", "services", "stacks", "tap", "rulekit")
_MAX_REPAIRS = 200  # problems reported per section before giving up on it


def loads_config(text: str, source_name: str = "<config>") -> Config:
    """Decode and validate a config from YAML text. Raises ConfigValidationError (a ConfigError)."""
    try:
        doc = parse_yaml(text, source_name)
    except YamlProblem as exc:
        raise ConfigValidationError(source_name, [ConfigIssue((), exc.message, exc.line, exc.column,
                                                              exc.detail)]) from None
    decoder = _Decoder(doc)
    config = decoder.decode()
    if config is None:
        raise ConfigValidationError(source_name, decoder.issues)
    return config


def check_config_permissions(path: Path) -> None:
    """Refuse a config file anyone on the host may change: it decides what is captured and where it goes
    (a store URL is enough to exfiltrate every request). Raises ConfigError naming the file and the fix."""
    try:
        st = path.stat()
    except OSError:
        return  # reading it reports the problem
    if st.st_mode & stat.S_IWOTH and stat.S_ISREG(st.st_mode):
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(f"{path}: refusing a world-writable config file (mode {mode:04o}): any user could "
                          f"change what is captured and where it is sent; run `chmod o-w {path}`")


def load_config(path: Path | str) -> Config:
    """Read, decode and validate the config file at ``path``; never returns a partial config.

    Raises ConfigError when the file cannot be read and ConfigValidationError when it is invalid.
    """
    p = Path(path)
    check_config_permissions(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    return loads_config(text, str(p))


def _original_path(rel: Sequence[str | int], removed: Mapping[FieldPath, list[int]]) -> FieldPath:
    """A path in the repaired data (list items removed) as a path in the file's data."""
    out: list[str | int] = []
    for part in rel:
        gone = removed.get(tuple(out))
        if isinstance(part, int) and gone:
            for r in sorted(gone):
                if r <= part:
                    part += 1
        out.append(part)
    return tuple(out)


class _Decoder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.issues: list[ConfigIssue] = []
        #: A list item or mapping entry was dropped to keep validating: cross-field checks would see
        #: shifted indices or missing names, so they wait until the structure is right.
        self.lossy = False

    def add(self, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        self.issues.append(self.doc.issue(path, message, at_key=at_key))

    def convert(self, data: Any, tp: Any, base: FieldPath) -> Any:
        """Decode ``data`` as ``tp``, reporting every problem, not just the first.

        msgspec stops at the first error; each error is recorded, the offending key (or, when a
        required value is bad, the item holding it) is taken out of a copy, and decoding runs again.
        Returns the repaired value (issues were added) or None when nothing could be decoded."""
        work = copy.deepcopy(data)
        removed: dict[FieldPath, list[int]] = {}
        dropped_keys: set[FieldPath] = set()
        for _ in range(_MAX_REPAIRS):
            try:
                return msgspec.convert(work, tp, strict=True)
            except msgspec.ValidationError as exc:
                issue = msgspec_issue(self.doc, exc, tp, work, base)
            rel = issue.path[len(base):]
            missing = re.match(r"missing required field '([^']*)'", issue.message)
            if missing is None or (*rel, missing.group(1)) not in dropped_keys:  # else: we removed it
                orig = _original_path(rel, removed)
                if orig != rel:
                    at_key = issue.message.startswith(("unknown field", "'"))
                    issue = self.doc.issue((*base, *orig), issue.message, at_key=at_key, detail=issue.detail)
                self.issues.append(issue)
            # A bad key is dropped (its default applies); a mapping that lacks a required field is
            # dropped itself (rel is then the mapping's path).
            if missing is None:
                dropped_keys.add(tuple(rel))
            if not rel or not self._drop(work, rel, removed):
                return None
        return None

    def _drop(self, work: Any, rel: Sequence[str | int], removed: dict[FieldPath, list[int]]) -> bool:
        parent = work
        for part in rel[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return False
        last = rel[-1]
        if isinstance(parent, dict) and last in parent:
            del parent[last]
            return True
        if isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
            del parent[last]
            orig = _original_path(rel, removed)
            removed.setdefault(orig[:-1], []).append(int(orig[-1]))
            self.lossy = True
            return True
        return False

    def decode(self) -> Config | None:
        raw = self.doc.data
        if not isinstance(raw, dict):
            self.add((), f"the top level must be a mapping (version, services, stacks, tap, rulekit), "
                         f"got {kind_of(raw)}")
            return None
        data = drop_nulls(raw)
        for key in data:
            if key not in _TOP_LEVEL:
                self.add((str(key),), unknown_field(str(key), msgspec.inspect.type_info(Config)), at_key=True)
        if "version" not in raw:
            self.add((), "missing required field 'version' (this format is 'version: 2')")
        elif raw["version"] != CONFIG_VERSION or isinstance(raw["version"], bool):
            self.add(("version",), f"unsupported version {raw['version']!r}; expected {CONFIG_VERSION}")
        # Each section on its own, so a problem in one does not hide those of the others.
        services = self.convert(data.get("services", {}), Services, ("services",))
        stacks = self.stacks(data.get("stacks", {}))
        tap = self.convert(data.get("tap", {}), TapConfig, ("tap",))
        rulekit = self.convert(data.get("rulekit", {}), RulekitConfig, ("rulekit",))
        if services is None or stacks is None or tap is None or rulekit is None or self.lossy:
            return None
        # Structural problems were repaired without losing items: the cross-field checks (rules,
        # stack references, filters) still see every index and name, so they report in the same run.
        config = Config(version=2, services=services, stacks=stacks, tap=tap, rulekit=rulekit)
        self.issues.extend(check(config, self.doc))
        return None if self.issues else config

    def stacks(self, data: Any) -> dict[str, StackConfig] | None:
        if not isinstance(data, dict):
            self.add(("stacks",), f"expected a mapping of stack names, got {kind_of(data)}")
            return None
        out: dict[str, StackConfig] = {}
        ok = True
        for name, stack in data.items():
            if not isinstance(name, str) or not name or name == "none":
                self.add(("stacks", str(name)), f"invalid stack name {name!r}", at_key=True)
                ok = False
                continue
            decoded = self.convert(stack, StackConfig, ("stacks", name))
            if decoded is None:
                ok = False
                continue
            out[name] = decoded
        return out if ok else None
