"""The agent's configuration: a Qtap-style YAML file (``version: 2``) decoded into msgspec Structs.

    config = load_config(Path("qpoint.yaml"))      # or loads_config(text, "qpoint.yaml")
    config = default_config()                       # a first config (docs/config.md)

Loading is all-or-nothing: it returns a complete, validated ``Config`` or raises ``ConfigValidationError``
(a ``ConfigError``) listing every problem found, each with the field path, what was expected and the
line (and column) in the file. Rule expressions are compiled during loading, so a config that loads
never fails later on a rule. docs/config.md documents every field.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import ipaddress
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
import yaml

from qtap_async.context.filters import ContainerFilterConfig
from qtap_async.errors import ConfigError
from qtap_async.filters import Direction, MatchStrategy, ProcessGroup
from qtap_async.rulekit import Rule, RuleSyntaxError, compile_rule, is_macro_name, validate_macros

__all__ = [
    "AccessLogsConfig",
    "AccessLogsPlugin",
    "AccessLogsRule",
    "CaptureLevel",
    "Config",
    "ConfigIssue",
    "ConfigValidationError",
    "DetectErrorsConfig",
    "DetectErrorsPlugin",
    "DetectErrorsRule",
    "EndpointConfig",
    "ExeFilterConfig",
    "FiltersConfig",
    "HttpCaptureConfig",
    "HttpCapturePlugin",
    "HttpCaptureRule",
    "MacroConfig",
    "PluginConfig",
    "ProtocolTap",
    "RedactionConfig",
    "ReportUsageConfig",
    "ReportUsagePlugin",
    "RulekitConfig",
    "SecretValue",
    "Services",
    "StackConfig",
    "StoreConfig",
    "TapConfig",
    "config_warnings",
    "default_config",
    "load_config",
    "loads_config",
    "register_store_type",
    "store_types",
    "summarize",
]

CONFIG_VERSION = 2


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


# -- secrets ------------------------------------------------------------------------------------


class SecretValue(_Base, frozen=True):
    """A value kept out of the file: ``{type: env, value: VAR}`` or, inline, ``{type: text, value: x}``."""

    type: Literal["env", "text"]
    value: str

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret itself. Raises ConfigError when an ``env`` secret's variable is not set."""
        if self.type == "text":
            return self.value
        env = os.environ if environ is None else environ
        if self.value not in env:
            raise ConfigError(f"environment variable {self.value} is not set (needed by a secret)")
        return env[self.value]


# -- services -----------------------------------------------------------------------------------

StoreKind = Literal["event", "object"]


class StoreConfig(_Base, frozen=True):
    """One event or object store: its ``type``, optional ``id`` and the remaining keys as ``settings``.

    ``options`` holds ``settings`` decoded into the Struct registered for the type (see
    ``register_store_type``), or None when no Struct is registered.
    """

    type: str
    id: str = ""
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    options: Any = None


class Services(_Base, frozen=True):
    event_stores: list[StoreConfig] = msgspec.field(default_factory=list)
    object_stores: list[StoreConfig] = msgspec.field(default_factory=list)


_STORE_TYPES: dict[str, dict[str, type[Any] | None]] = {
    "event": {"stdout": None, "disabled": None, "kafka": None, "pulse": None},
    "object": {"stdout": None, "dir": None, "s3": None, "disabled": None},
}
_SINKS_LOADED = False


def register_store_type(kind: StoreKind, type_name: str, struct_cls: type[Any] | None) -> None:
    """Declare a store type (or replace its settings Struct).

    ``struct_cls`` receives the store's keys other than ``type`` and ``id`` (plus ``type``/``id`` when
    it declares such fields or is tagged on ``type``), is decoded with msgspec, and ends up in
    ``StoreConfig.options``; its errors are reported with the store's path and line. None keeps the
    settings a free mapping.
    """
    if kind not in _STORE_TYPES:
        raise ValueError(f"kind must be 'event' or 'object', not {kind!r}")
    _STORE_TYPES[kind][type_name] = struct_cls


def store_types(kind: StoreKind) -> dict[str, type[Any] | None]:
    """The known store types of ``kind`` and their settings Structs (after sinks registered theirs)."""
    _load_sink_structs()
    return dict(_STORE_TYPES[kind])


def _load_sink_structs() -> None:
    """Import qtap_async.sinks.config once and register its store Structs (tagged on ``type``) for
    every type nobody registered explicitly."""
    global _SINKS_LOADED
    if _SINKS_LOADED:
        return
    _SINKS_LOADED = True
    try:
        sinks = importlib.import_module("qtap_async.sinks.config")
    except ModuleNotFoundError as exc:
        if exc.name not in ("qtap_async.sinks.config", "qtap_async.sinks"):
            raise
        return
    for kind, union_name in (("event", "EventStoreConfig"), ("object", "ObjectStoreConfig")):
        for cls in typing.get_args(getattr(sinks, union_name, None)):
            tag = getattr(getattr(cls, "__struct_config__", None), "tag", None)
            if isinstance(tag, str) and _STORE_TYPES[kind].get(tag) is None:
                _STORE_TYPES[kind][tag] = cls


# -- plugins ------------------------------------------------------------------------------------

CaptureLevel = Literal["none", "summary", "details", "full"]
OutputFormat = Literal["json", "text"]
AccessLogMode = Literal["summary", "details", "full"]
AccessLogFormat = Literal["json", "console"]
Severity = Literal["info", "warning", "error", "critical"]


class HttpCaptureRule(_Base, frozen=True):
    """When ``expr`` matches a transaction, capture it at ``level`` (the first matching rule wins)."""

    name: str
    expr: str
    level: CaptureLevel
    format: OutputFormat | None = None  # None: the plugin's format


class HttpCaptureConfig(_Base, frozen=True):
    level: CaptureLevel = "summary"
    format: OutputFormat = "json"
    rules: list[HttpCaptureRule] = msgspec.field(default_factory=list)


class AccessLogsRule(_Base, frozen=True):
    """When ``expr`` matches a transaction, log it in ``mode`` (the first matching rule wins)."""

    name: str
    expr: str
    mode: AccessLogMode


class AccessLogsConfig(_Base, frozen=True):
    mode: AccessLogMode = "summary"
    format: AccessLogFormat = "console"
    rules: list[AccessLogsRule] = msgspec.field(default_factory=list)


DEFAULT_MASK_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
)


#: Headers whose values are credentials (lowercase): ``tap.redaction.headers``.
DEFAULT_SECRET_HEADERS: tuple[str, ...] = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey",
    "x-auth-token", "x-access-token", "x-amz-security-token", "x-csrf-token", "x-xsrf-token",
    "x-goog-api-key", "private-token",
)
#: Query parameters whose values are credentials (lowercase): ``tap.redaction.query_params``. Values
#: that look like tokens (long, letters and digits mixed, or JWTs) are redacted whatever their name.
DEFAULT_SECRET_QUERY_PARAMS: tuple[str, ...] = (
    "token", "access_token", "refresh_token", "id_token", "auth", "api_key", "apikey", "key", "secret",
    "client_secret", "password", "passwd", "pwd", "sig", "signature", "x-amz-signature",
    "x-amz-security-token", "session", "sessionid", "jwt", "code",
)


class ReportUsageConfig(_Base, frozen=True):
    """Usage reports: header values named in ``mask_headers`` are masked, and query parameters other
    than ``safe_query_params`` have their values masked; ``tags`` are added to every report."""

    mask_headers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_MASK_HEADERS))
    safe_query_params: list[str] = msgspec.field(default_factory=list)
    tags: list[str] = msgspec.field(default_factory=list)


class DetectErrorsRule(_Base, frozen=True):
    """A transaction matching ``expr`` is reported as an issue of ``severity`` (every matching rule)."""

    name: str
    expr: str
    severity: Severity = "error"


def _default_error_rules() -> list[DetectErrorsRule]:
    return [
        DetectErrorsRule(name="server error", expr="http.res.status == 5xx", severity="error"),
        DetectErrorsRule(name="client error", expr="http.res.status == 4xx", severity="warning"),
    ]


class DetectErrorsConfig(_Base, frozen=True):
    rules: list[DetectErrorsRule] = msgspec.field(default_factory=_default_error_rules)


class _Plugin(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    @property
    def type(self) -> str:
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class HttpCapturePlugin(_Plugin, frozen=True, tag="http_capture"):
    config: HttpCaptureConfig = msgspec.field(default_factory=HttpCaptureConfig)


class AccessLogsPlugin(_Plugin, frozen=True, tag="access_logs"):
    config: AccessLogsConfig = msgspec.field(default_factory=AccessLogsConfig)


class ReportUsagePlugin(_Plugin, frozen=True, tag="report_usage"):
    config: ReportUsageConfig = msgspec.field(default_factory=ReportUsageConfig)


class DetectErrorsPlugin(_Plugin, frozen=True, tag="detect_errors"):
    config: DetectErrorsConfig = msgspec.field(default_factory=DetectErrorsConfig)


PluginConfig: TypeAlias = HttpCapturePlugin | AccessLogsPlugin | ReportUsagePlugin | DetectErrorsPlugin
PLUGIN_TYPES: tuple[str, ...] = ("http_capture", "access_logs", "report_usage", "detect_errors")

RuleSpec: TypeAlias = HttpCaptureRule | AccessLogsRule | DetectErrorsRule


class StackConfig(_Base, frozen=True):
    plugins: list[PluginConfig] = msgspec.field(default_factory=list)


# -- tap ----------------------------------------------------------------------------------------


class ProtocolTap(_Base, frozen=True):
    """``stack`` names the stack that processes this protocol; "" or "none" means no processing."""

    stack: str = ""

    @property
    def enabled(self) -> bool:
        return self.stack not in ("", "none")


class ExeFilterConfig(_Base, frozen=True):
    """Ignore processes whose executable path matches ``exe`` (``only`` narrows what is skipped)."""

    exe: str
    strategy: MatchStrategy = "exact"
    only: list[Literal["data", "dns", "tls", "http"]] = msgspec.field(default_factory=list)


class FiltersConfig(_Base, frozen=True):
    groups: list[ProcessGroup] = msgspec.field(default_factory=list)
    custom: list[ExeFilterConfig] = msgspec.field(default_factory=list)
    containers: list[ContainerFilterConfig] = msgspec.field(default_factory=list)  # qtap_async.context.filters


class EndpointConfig(_Base, frozen=True):
    """Traffic to ``domain`` (``*.example.com`` for subdomains) uses this stack instead of tap.http."""

    domain: str
    http: ProtocolTap = msgspec.field(default_factory=ProtocolTap)


class TlsTapConfig(_Base, frozen=True):
    """TLS probe settings (see qtap_async/tls/manager.py)."""

    state_dir: str = "/var/lib/qtap"
    """Analysis cache kept across restarts (created 0700); "" keeps it in memory only."""
    preattach_path: bool = True
    """At start-up, analyse and attach the executables in PATH (cached after the first time)."""
    hold_exec: bool = False
    """Stop a never-analysed executable at exec until its probes are attached (SIGSTOP/SIGCONT)."""
    max_hold_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    """Longest a held process waits; it is continued then, attached or not."""


class RedactionConfig(_Base, frozen=True):
    """Credentials in stdout, logs and stored objects are replaced by ``[redacted:<keyed hash>]``.
    ``show_secrets: true`` (or ``qtap run --show-secrets``) shows them in clear, with a warning at start;
    ``key`` fixes the HMAC key (random per process otherwise) so hashes compare across agents."""

    show_secrets: bool = False
    headers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SECRET_HEADERS))
    query_params: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SECRET_QUERY_PARAMS))
    key: SecretValue | None = None


class TapConfig(_Base, frozen=True):
    direction: Direction = "all"
    ignore_loopback: bool = False
    audit_include_dns: bool = False
    http: ProtocolTap = msgspec.field(default_factory=ProtocolTap)
    filters: FiltersConfig = msgspec.field(default_factory=FiltersConfig)
    endpoints: list[EndpointConfig] = msgspec.field(default_factory=list)
    tls: TlsTapConfig = msgspec.field(default_factory=TlsTapConfig)
    redaction: RedactionConfig = msgspec.field(default_factory=RedactionConfig)


class MacroConfig(_Base, frozen=True):
    name: str
    expr: str


class RulekitConfig(_Base, frozen=True):
    macros: list[MacroConfig] = msgspec.field(default_factory=list)


class Config(_Base, frozen=True):
    version: Literal[2] = 2
    services: Services = msgspec.field(default_factory=Services)
    stacks: dict[str, StackConfig] = msgspec.field(default_factory=dict)
    tap: TapConfig = msgspec.field(default_factory=TapConfig)
    rulekit: RulekitConfig = msgspec.field(default_factory=RulekitConfig)

    def macro_map(self) -> dict[str, str]:
        """The rulekit macros as ``{name: expression}`` (what ``compile_rule`` takes)."""
        return {m.name: m.expr for m in self.rulekit.macros}

    def compile(self, expr: str) -> Rule:
        """Compile ``expr`` with this config's macros (every rule of a loaded config compiles)."""
        return compile_rule(expr, self.macro_map())

    def iter_rules(self) -> Iterator[tuple[str, int, PluginConfig, RuleSpec]]:
        """Every rule of every plugin: (stack name, plugin index, plugin, rule)."""
        for name, stack in self.stacks.items():
            for index, plugin in enumerate(stack.plugins):
                for rule in _plugin_rules(plugin):
                    yield name, index, plugin, rule


def _plugin_rules(plugin: PluginConfig) -> Sequence[RuleSpec]:
    if isinstance(plugin, ReportUsagePlugin):
        return ()
    return plugin.config.rules


# -- errors -------------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: the field's ``path``, the ``message`` (what was expected, what was found) and the
    1-based ``line``/``column`` in the file (None when unknown). ``detail`` adds lines (a caret under
    the column of a rule expression)."""

    path: Path_
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


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# -- YAML with positions ------------------------------------------------------------------------


@dataclass
class _Mark:
    line: int  # 1-based
    column: int  # 1-based
    style: str | None = None  # scalar style: None (plain), "'", '"', "|", ">"
    end_line: int = 0


@dataclass
class _Document:
    source: str
    text: str
    data: Any
    keys: dict[Path_, _Mark] = field(default_factory=dict)  # where a mapping key is written
    values: dict[Path_, _Mark] = field(default_factory=dict)  # where a value starts
    nulls: set[Path_] = field(default_factory=set)  # mapping entries written without a value

    def mark(self, path: Path_, prefer_key: bool = False) -> _Mark | None:
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

    def issue(self, path: Path_, message: str, *, at_key: bool = False, detail: str = "") -> ConfigIssue:
        m = self.mark(path, prefer_key=at_key)
        return ConfigIssue(path, message, m.line if m else None, m.column if m else None, detail)


_MAX_NODES = 200_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _YamlProblem(ConfigError):
    def __init__(self, message: str, line: int | None, column: int | None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.detail = detail


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


def _yaml_sentence(problem: str) -> str:
    for words, sentence in _YAML_SENTENCES:
        if words in problem:
            return f"invalid YAML: {sentence}"
    return f"invalid YAML: {problem}"


def _source_line(text: str, line: int | None) -> str:
    """The file's line, to show under the message."""
    lines = text.splitlines()
    if line is None or not 0 < line <= len(lines):
        return ""
    return f"    {line} | {lines[line - 1].rstrip()}"


def _parse_yaml(text: str, source: str) -> _Document:
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters right here
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"invalid YAML: {' '.join(str(exc).split())}", None, None) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                problem = f"{exc.problem} ({exc.context})"
            raise _YamlProblem(
                _yaml_sentence(problem), mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                _source_line(text, mark.line + 1 if mark else None),
            ) from None
        except yaml.YAMLError as exc:
            raise _YamlProblem(f"invalid YAML: {exc}", None, None) from None
        if node is None:
            raise _YamlProblem("the file is empty; a config needs at least 'version: 2'", 1, 1)
        doc = _Document(source, text, None)
        duplicates: list[ConfigIssue] = []
        _walk(node, (), doc, duplicates, set(), [0])
        try:
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            raise _YamlProblem(
                f"invalid YAML: {exc.problem}", mark.line + 1 if mark else None, mark.column + 1 if mark else None
            ) from None
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            raise _YamlProblem(f"invalid YAML: {exc}", None, None) from None
    finally:
        loader.dispose()
    doc.data = data
    if duplicates:
        raise ConfigValidationError(source, duplicates)
    return doc


def _walk(
    node: yaml.Node,
    path: Path_,
    doc: _Document,
    duplicates: list[ConfigIssue],
    active: set[int],
    count: list[int],
    keep_existing: bool = False,
) -> None:
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise _YamlProblem(f"the document is too large (more than {_MAX_NODES} nodes)", None, None)
    if id(node) in active:
        m = node.start_mark
        raise _YamlProblem("a YAML alias refers to a node that contains it", m.line + 1, m.column + 1)
    mark = _Mark(
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
            key_mark = _Mark(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
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


def _drop_nulls(value: Any, depth: int = 0) -> Any:
    """Entries written without a value (``key:``) mean "use the default": drop them."""
    if depth > 200:
        return value
    if isinstance(value, dict):
        return {k: _drop_nulls(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v, depth + 1) for v in value]
    return value


# -- msgspec errors -> issues -------------------------------------------------------------------

_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?) - at `(?P<path>[^`]*)`(?: in `(?P<inpath>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_TYPE_WORDS = {
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
    "http_metrics": "Qtap's http_metrics plugin does not exist in qtap-async",
    "debug": "Qtap's debug plugin does not exist in qtap-async; use access_logs",
    "egress_external": "use 'egress-external'",
    "egress_internal": "use 'egress-internal'",
}
_FIELD_HINTS: dict[tuple[type[Any], str], str] = {
    (AccessLogsConfig, "level"): "access_logs uses 'mode'",
    (AccessLogsRule, "level"): "access_logs rules use 'mode'",
    (HttpCaptureConfig, "mode"): "http_capture uses 'level'",
    (HttpCaptureRule, "mode"): "http_capture rules use 'level'",
    (TapConfig, "redis"): "qtap-async captures HTTP only",
    (TapConfig, "mysql"): "qtap-async captures HTTP only",
    (TapConfig, "kafka"): "qtap-async captures HTTP only",
    (EndpointConfig, "redis"): "qtap-async captures HTTP only",
}


def _msgspec_issue(doc: _Document, exc: msgspec.ValidationError, root: Any, data: Any, base: Path_) -> ConfigIssue:
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
    path: Path_ = (*base, *rel)
    if in_key:
        return doc.issue(path, f"keys must be strings ({_lower_first(message)})")
    info = _type_at(msgspec.inspect.type_info(root), rel, data)

    unknown = re.match(r"Object contains unknown field `(.*)`$", message)
    if unknown:
        name = unknown.group(1)
        return doc.issue((*path, name), _unknown_field(name, info), at_key=True)
    missing = re.match(r"Object missing required field `(.*)`$", message)
    if missing:
        name = missing.group(1)
        if (*path, name) in doc.nulls:
            return doc.issue((*path, name), f"'{name}' is empty; it needs a value", at_key=True)
        return doc.issue(path, f"missing required field '{name}'")
    bad_value = re.match(r"Invalid (?:enum )?value (.*)$", message)
    if bad_value:
        got = bad_value.group(1)
        return doc.issue(path, _bad_value(got, info, rel, data, root))
    expected = re.match(r"Expected `(.*?)`, got `(.*?)`(.*)$", message)
    if expected:
        want, got, rest = expected.groups()
        words = f"expected {_TYPE_WORDS.get(want, want)}, got {_TYPE_WORDS.get(got, got)}{rest}"
        if isinstance(info, msgspec.inspect.LiteralType):
            words = f"expected one of {_choices(info.values)}, got {_TYPE_WORDS.get(got, got)}"
        return doc.issue(path, words)
    constrained = re.match(r"Expected `(.*?)` (.*)$", message)
    if constrained:
        want, rest = constrained.groups()
        return doc.issue(path, f"expected {_TYPE_WORDS.get(want, want)} {rest}")
    return doc.issue(path, _lower_first(message))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _choices(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values)


def _unknown_field(name: str, info: Any) -> str:
    message = f"unknown field '{name}'"
    if isinstance(info, msgspec.inspect.StructType):
        hint = _FIELD_HINTS.get((info.cls, name))
        allowed = [f.encode_name for f in info.fields]
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        if hint:
            message += f" ({hint})"
        elif close:
            message += f" (did you mean '{close[0]}'?)"
        elif allowed:
            message += f"; allowed fields: {', '.join(allowed)}"
    return message


def _bad_value(got: str, info: Any, rel: list[str | int], data: Any, root: Any) -> str:
    value = got.strip("'\"")
    choices: tuple[object, ...] = ()
    what = "value"
    if isinstance(info, msgspec.inspect.LiteralType):
        choices = tuple(info.values)
    elif rel and rel[-1] == "type":
        parent = _type_at(msgspec.inspect.type_info(root), rel[:-1], data, pick_variant=False)
        if isinstance(parent, msgspec.inspect.UnionType):
            choices = tuple(
                t.tag for t in parent.types if isinstance(t, msgspec.inspect.StructType) and t.tag is not None
            )
            what = "plugin type" if set(choices) <= set(PLUGIN_TYPES) else "type"
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


# -- decoding -----------------------------------------------------------------------------------

_TOP_LEVEL = ("version", "services", "stacks", "tap", "rulekit")
_HOSTNAME = re.compile(
    r"(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


_MAX_REPAIRS = 200  # problems reported per section before giving up on it


def _original_path(rel: Sequence[str | int], removed: Mapping[Path_, list[int]]) -> Path_:
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
    def __init__(self, doc: _Document) -> None:
        self.doc = doc
        self.issues: list[ConfigIssue] = []
        #: A list item or mapping entry was dropped to keep validating: cross-field checks would see
        #: shifted indices or missing names, so they wait until the structure is right.
        self.lossy = False

    def add(self, path: Path_, message: str, *, at_key: bool = False, detail: str = "") -> None:
        self.issues.append(self.doc.issue(path, message, at_key=at_key, detail=detail))

    def convert(self, data: Any, tp: Any, base: Path_) -> Any:
        """Decode ``data`` as ``tp``, reporting every problem, not just the first.

        msgspec stops at the first error; each error is recorded, the offending key (or, when a
        required value is bad, the item holding it) is taken out of a copy, and decoding runs again.
        Returns the repaired value (issues were added) or None when nothing could be decoded."""
        work = copy.deepcopy(data)
        removed: dict[Path_, list[int]] = {}
        dropped_keys: set[Path_] = set()
        for _ in range(_MAX_REPAIRS):
            try:
                return msgspec.convert(work, tp, strict=True)
            except msgspec.ValidationError as exc:
                issue = _msgspec_issue(self.doc, exc, tp, work, base)
            rel = issue.path[len(base):]
            missing = re.match(r"missing required field '(.*)'$", issue.message)
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

    def _drop(self, work: Any, rel: Sequence[str | int], removed: dict[Path_, list[int]]) -> bool:
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
            got = _TYPE_WORDS.get(_kind(raw), _kind(raw))
            self.add((), f"the top level must be a mapping (version, services, stacks, tap, rulekit), got {got}")
            return None
        data = _drop_nulls(raw)
        for key in data:
            if key not in _TOP_LEVEL:
                self.add((str(key),), _unknown_field(str(key), msgspec.inspect.type_info(Config)), at_key=True)
        if "version" not in raw:
            self.add((), "missing required field 'version' (this format is 'version: 2')")
        elif raw["version"] != CONFIG_VERSION or isinstance(raw["version"], bool):
            self.add(("version",), f"unsupported version {raw['version']!r}; expected {CONFIG_VERSION}")
        services = self.services(data.get("services", {}))
        stacks = self.stacks(data.get("stacks", {}))
        tap = self.convert(data.get("tap", {}), TapConfig, ("tap",))
        rulekit = self.convert(data.get("rulekit", {}), RulekitConfig, ("rulekit",))
        if services is None or stacks is None or tap is None or rulekit is None or self.lossy:
            return None
        # Structural problems were repaired without losing items: the cross-field checks (rules,
        # stack references, filters) still see every index and name, so they report in the same run.
        config = Config(version=2, services=services, stacks=stacks, tap=tap, rulekit=rulekit)
        self.check(config)
        return None if self.issues else config

    def services(self, data: Any) -> Services | None:
        if not isinstance(data, dict):
            self.add(("services",), f"expected a mapping, got {_TYPE_WORDS.get(_kind(data), _kind(data))}")
            return None
        for key in data:
            if key not in ("event_stores", "object_stores"):
                self.add(
                    ("services", str(key)), _unknown_field(str(key), msgspec.inspect.type_info(Services)), at_key=True
                )
        event = self.stores("event", data.get("event_stores", []))
        obj = self.stores("object", data.get("object_stores", []))
        if event is None or obj is None:
            return None
        return Services(event_stores=event, object_stores=obj)

    def stores(self, kind: StoreKind, data: Any) -> list[StoreConfig] | None:
        key = f"{kind}_stores"
        base: Path_ = ("services", key)
        if not isinstance(data, list):
            self.add(base, f"expected a list, got {_TYPE_WORDS.get(_kind(data), _kind(data))}")
            return None
        known = store_types(kind)
        out: list[StoreConfig] = []
        ids: dict[str, int] = {}
        ok = True
        for index, entry in enumerate(data):
            path = (*base, index)
            if not isinstance(entry, dict):
                self.add(path, f"expected a mapping with a 'type', got {_TYPE_WORDS.get(_kind(entry), _kind(entry))}")
                ok = False
                continue
            type_name = entry.get("type")
            if type_name is None:
                if (*path, "type") in self.doc.nulls:
                    self.add((*path, "type"), "'type' is empty; it needs a value", at_key=True)
                else:
                    self.add(path, f"missing required field 'type' (one of {_choices(sorted(known))})")
                ok = False
                continue
            if not isinstance(type_name, str) or type_name not in known:
                message = f"unknown {kind} store type {type_name!r}; expected one of {_choices(sorted(known))}"
                close = difflib.get_close_matches(str(type_name), sorted(known), n=1, cutoff=0.6)
                if close:
                    message += f" (did you mean '{close[0]}'?)"
                self.add((*path, "type"), message)
                ok = False
                continue
            store_id = entry.get("id", "")
            if not isinstance(store_id, str):
                self.add((*path, "id"), f"expected a string, got {_TYPE_WORDS.get(_kind(store_id), _kind(store_id))}")
                ok = False
                continue
            if store_id:
                if store_id in ids:
                    self.add((*path, "id"), f"duplicate {kind} store id '{store_id}' (also {key}[{ids[store_id]}])")
                    ok = False
                ids[store_id] = index
            settings = {k: v for k, v in entry.items() if k not in ("type", "id")}
            bad_keys = [k for k in settings if not isinstance(k, str)]
            if bad_keys:
                self.add(path, f"keys must be strings, got {bad_keys[0]!r}")
                ok = False
                continue
            options = None
            cls = known[type_name]
            if cls is not None:
                payload = dict(settings)
                info = msgspec.inspect.type_info(cls)
                names = {f.encode_name for f in info.fields} if isinstance(info, msgspec.inspect.StructType) else set()
                tag_field = getattr(cls.__struct_config__, "tag_field", None)
                if "type" in names or tag_field == "type":
                    payload["type"] = type_name
                if "id" in names:
                    payload["id"] = store_id
                elif "name" in names and store_id and "name" not in payload:
                    payload["name"] = store_id  # Qtap's id names the store (metrics, spool directory)
                before = len(self.issues)
                options = self.convert(payload, cls, path)
                if len(self.issues) > before:
                    ok = False
                    continue
            out.append(StoreConfig(type=type_name, id=store_id, settings=settings, options=options))
        return out if ok else None

    def stacks(self, data: Any) -> dict[str, StackConfig] | None:
        if not isinstance(data, dict):
            self.add(("stacks",), f"expected a mapping of stack names, got {_TYPE_WORDS.get(_kind(data), _kind(data))}")
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

    # -- cross-field checks ---------------------------------------------------------------------

    def check(self, config: Config) -> None:
        macros = self.check_macros(config)
        self.check_rules(config, macros)
        self.check_stack_refs(config)
        self.check_filters(config)
        self.check_endpoints(config)

    def check_macros(self, config: Config) -> set[str]:
        """Report bad macros; returns the names of the broken ones."""
        broken: set[str] = set()
        seen: dict[str, int] = {}
        for index, macro in enumerate(config.rulekit.macros):
            path: Path_ = ("rulekit", "macros", index)
            if macro.name in seen:
                self.add((*path, "name"), f"duplicate macro name '{macro.name}' (also macros[{seen[macro.name]}])")
                broken.add(macro.name)
            elif not is_macro_name(macro.name):
                self.add(
                    (*path, "name"),
                    f"invalid macro name {macro.name!r}: use letters, digits and '_' (not a keyword)",
                )
                broken.add(macro.name)
            seen.setdefault(macro.name, index)
        errors = validate_macros(config.macro_map())
        for index, macro in enumerate(config.rulekit.macros):
            exc = errors.get(macro.name)
            if exc is not None and macro.name not in broken and seen[macro.name] == index:
                self.rule_issue(("rulekit", "macros", index, "expr"), macro.expr, exc)
                broken.add(macro.name)
        return broken | set(errors)

    def check_rules(self, config: Config, broken_macros: set[str]) -> None:
        macros = config.macro_map()
        for name, stack in config.stacks.items():
            for p_index, plugin in enumerate(stack.plugins):
                names: dict[str, int] = {}
                for r_index, rule in enumerate(_plugin_rules(plugin)):
                    path: Path_ = ("stacks", name, "plugins", p_index, "config", "rules", r_index)
                    if not rule.name.strip():
                        self.add((*path, "name"), "a rule needs a non-empty name")
                    elif rule.name in names:
                        self.add((*path, "name"), f"duplicate rule name '{rule.name}' (also rules[{names[rule.name]}])")
                    names.setdefault(rule.name, r_index)
                    try:
                        compile_rule(rule.expr, macros)
                    except RuleSyntaxError as exc:
                        if exc.macro is not None and exc.macro in broken_macros:
                            continue  # reported where the macro is defined
                        self.rule_issue((*path, "expr"), rule.expr, exc)

    def rule_issue(self, path: Path_, expr: str, exc: RuleSyntaxError) -> None:
        mark = self.doc.mark(path)
        line = mark.line if mark else None
        column = mark.column if mark else None
        lines = self.doc.text.splitlines()
        if mark is not None and mark.style in (None, "'", '"') and mark.end_line == mark.line:
            # A one-line scalar: point at the column inside the expression when the text is verbatim.
            src = lines[mark.line - 1] if mark.line <= len(lines) else ""
            start = mark.column - 1 + (0 if mark.style is None else 1)
            if src[start : start + len(expr)] == expr:
                column = start + exc.column
        elif mark is not None and mark.style == "|":
            # A literal block: its lines are in the file verbatim, indented, from the next line on.
            offset = exc.column - 1
            k = expr.count("\n", 0, offset)
            expr_line = expr.split("\n")[k] if k < len(expr.split("\n")) else ""
            within = offset - (expr.rfind("\n", 0, offset) + 1)
            target = mark.line + 1 + k
            if target <= len(lines) and expr_line and lines[target - 1].strip() == expr_line.strip():
                line = target
                column = lines[target - 1].find(expr_line) + within + 1
        self.issues.append(
            ConfigIssue(
                path,
                f"{exc.message} (expression column {exc.column})",
                line,
                column,
                exc.caret(indent="    "),
            )
        )

    def check_stack_refs(self, config: Config) -> None:
        known = sorted(config.stacks)

        def check(path: Path_, stack: str) -> None:
            if stack in ("", "none") or stack in config.stacks:
                return
            message = f"unknown stack '{stack}'"
            close = difflib.get_close_matches(stack, known, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif known:
                message += f"; defined stacks: {', '.join(known)}"
            else:
                message += "; no stacks are defined (add one under 'stacks')"
            self.add(path, message)

        check(("tap", "http", "stack"), config.tap.http.stack)
        for index, endpoint in enumerate(config.tap.endpoints):
            check(("tap", "endpoints", index, "http", "stack"), endpoint.http.stack)

    def check_filters(self, config: Config) -> None:
        for index, custom in enumerate(config.tap.filters.custom):
            path: Path_ = ("tap", "filters", "custom", index, "exe")
            if not custom.exe:
                self.add(path, "exe must not be empty")
            elif custom.strategy == "regex":
                try:
                    re.compile(custom.exe)
                except re.error as exc:
                    self.add(path, f"invalid regex: {exc.msg} (at position {(exc.pos or 0) + 1})")
                except Exception as exc:  # RecursionError, OverflowError...
                    self.add(path, f"invalid regex: {type(exc).__name__}")

    def check_endpoints(self, config: Config) -> None:
        seen: dict[str, int] = {}
        for index, endpoint in enumerate(config.tap.endpoints):
            path: Path_ = ("tap", "endpoints", index, "domain")
            domain = endpoint.domain.lower().rstrip(".")
            if not _valid_domain(endpoint.domain):
                self.add(
                    path,
                    f"invalid domain {endpoint.domain!r}: expected a host name like api.example.com or *.example.com",
                )
            elif domain in seen:
                self.add(path, f"duplicate endpoint domain '{endpoint.domain}' (also endpoints[{seen[domain]}])")
            seen.setdefault(domain, index)


def _valid_domain(domain: str) -> bool:
    if _HOSTNAME.fullmatch(domain) and len(domain) <= 255:
        return True
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


# -- entry points -------------------------------------------------------------------------------


def loads_config(text: str, source_name: str = "<config>") -> Config:
    """Decode and validate a config from YAML text. Raises ConfigValidationError (a ConfigError)."""
    try:
        doc = _parse_yaml(text, source_name)
    except _YamlProblem as exc:
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
    import stat as stat_

    if st.st_mode & stat_.S_IWOTH and stat_.S_ISREG(st.st_mode):
        mode = stat_.S_IMODE(st.st_mode)
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


#: The config `qtap run` uses without --config; docs/config.md explains each choice.
DEFAULT_CONFIG_YAML = """\
version: 2
services:
  event_stores:
    - type: stdout        # one JSON record per line on stdout
  object_stores:
    - type: disabled      # request/response payloads never leave the agent unless you ask
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: summary  # method, url, status, duration, process: no headers, no bodies
          format: json
      - type: access_logs
        config:
          mode: summary   # one human-readable line per transaction, in the agent's log
          format: console
tap:
  direction: all          # ingress and egress
  ignore_loopback: false  # localhost traffic too: that is what you test against locally
  audit_include_dns: false
  http:
    stack: default
  filters:
    groups:
      - qpoint            # never capture the agent's own traffic
"""


@lru_cache(maxsize=1)
def default_config() -> Config:
    """The config used when no file is given (see DEFAULT_CONFIG_YAML)."""
    return loads_config(DEFAULT_CONFIG_YAML, "<default config>")


# -- summaries and warnings ---------------------------------------------------------------------


def _store_names(stores: Sequence[StoreConfig]) -> str:
    if not stores:
        return "none"
    return ", ".join(f"{s.type}" + (f" ({s.id})" if s.id else "") for s in stores)


def summarize(config: Config) -> list[str]:
    """A few lines describing the config, for `qtap validate` and the agent's startup log."""
    tap = config.tap
    lines = [
        f"event stores: {_store_names(config.services.event_stores)}",
        f"object stores: {_store_names(config.services.object_stores)}",
    ]
    for name, stack in config.stacks.items():
        plugins = ", ".join(p.type for p in stack.plugins) or "no plugins"
        lines.append(f"stack {name}: {plugins}")
    loopback = "ignored" if tap.ignore_loopback else "included"
    http = tap.http.stack if tap.http.enabled else "none"
    lines.append(f"tap: direction {tap.direction}, loopback {loopback}, http stack {http}")
    for endpoint in tap.endpoints:
        lines.append(f"endpoint {endpoint.domain}: http stack {endpoint.http.stack or 'none'}")
    filters = tap.filters
    if filters.groups or filters.custom:
        lines.append(f"ignored processes: groups [{', '.join(filters.groups)}], {len(filters.custom)} custom filter(s)")
    rules = sum(1 for _ in config.iter_rules())
    lines.append(f"rules: {rules}, macros: {len(config.rulekit.macros)}")
    return lines


def _secrets(value: Any, path: Path_) -> Iterator[tuple[Path_, dict[str, Any]]]:
    if isinstance(value, dict):
        if set(value) == {"type", "value"} and value.get("type") in ("env", "text"):
            yield path, value
            return
        for k, v in value.items():
            yield from _secrets(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _secrets(v, (*path, i))


def iter_secrets(config: Config) -> Iterator[tuple[str, SecretValue]]:
    """Every ``{type, value}`` secret in the stores' settings, with its dotted path."""
    for key, stores in (
        ("event_stores", config.services.event_stores),
        ("object_stores", config.services.object_stores),
    ):
        for index, store in enumerate(stores):
            for path, raw in _secrets(store.settings, ("services", key, index)):
                yield format_path(path), SecretValue(type=raw["type"], value=str(raw["value"]))


def config_warnings(config: Config) -> list[str]:
    """Valid but probably unintended settings, as human-readable sentences."""
    out: list[str] = []
    tap = config.tap
    used = {tap.http.stack} | {e.http.stack for e in tap.endpoints}
    if not tap.http.enabled and not any(e.http.enabled for e in tap.endpoints):
        out.append("tap.http.stack is not set and no endpoint has a stack: no HTTP traffic will be processed")
    for name in config.stacks:
        if name not in used:
            out.append(f"stacks.{name} is not used by tap.http or any endpoint")
    events = [s for s in config.services.event_stores if s.type != "disabled"]
    objects = [s for s in config.services.object_stores if s.type != "disabled"]
    if not events:
        out.append("no event store is enabled: events are discarded")
    wants_objects = False
    for _, _, _, rule in config.iter_rules():
        if isinstance(rule, HttpCaptureRule) and rule.level in ("details", "full"):
            wants_objects = True
    for stack in config.stacks.values():
        for plugin in stack.plugins:
            if isinstance(plugin, HttpCapturePlugin) and plugin.config.level in ("details", "full"):
                wants_objects = True
    if wants_objects and not objects:
        out.append("http_capture keeps headers/bodies (level details or full) but no object store is enabled")
    for path, secret in iter_secrets(config):
        if secret.type == "text":
            out.append(f"{path} is a plain-text secret; prefer {{type: env, value: VAR}}")
    for index, store in enumerate(config.services.event_stores):
        url = str(store.settings.get("url") or "")
        if store.type == "pulse" and url.rstrip("/").endswith("/v1/events"):
            out.append(f"services.event_stores[{index}].url ends with /v1/events, which the agent adds itself: "
                       f"use {url.rstrip('/')[: -len('/v1/events')]}")
    local_pulse = any(s.type == "pulse" and any(h in str(s.settings.get("url", "")) for h in ("127.0.0.1", "localhost"))
                      for s in events)
    if tap.ignore_loopback and local_pulse:
        # The single-host setup of docs/pulse.md: with loopback ignored, it captures nothing to show.
        out.append("Pulse runs on this host but tap.ignore_loopback is true: traffic between processes of this "
                   "host (curl localhost) is not captured")
    return out
