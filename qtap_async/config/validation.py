"""Checks that need more than one field: rule expressions against the macros, stack references,
unique names and ids, regexes and domains (``check``); and settings that are valid but probably not
what was meant (``config_warnings``).

A config that passes ``check`` never fails later on a rule: every expression has been compiled.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence

from qtap_async.config.messages import ConfigIssue
from qtap_async.config.schema import Config, iter_secrets
from qtap_async.config.yamldoc import Document
from qtap_async.plugins.http_capture import HttpCapturePlugin, HttpCaptureRule
from qtap_async.rulekit import RuleSyntaxError, compile_rule, is_macro_name, validate_macros
from qtap_async.settings import FieldPath
from qtap_async.sinks.base import StoreSettings
from qtap_async.sinks.pulse import PulseEventStore

__all__ = ["check", "config_warnings"]

_HOSTNAME = re.compile(
    r"(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def check(config: Config, doc: Document) -> list[ConfigIssue]:
    """Every cross-field problem of a structurally valid ``config``, placed in ``doc``."""
    checks = _Checks(doc)
    checks.store_ids("event", config.services.event_stores)
    checks.store_ids("object", config.services.object_stores)
    broken = checks.macros(config)
    checks.rules(config, broken)
    checks.plugins(config)
    checks.stack_refs(config)
    checks.filters(config)
    checks.endpoints(config)
    return checks.issues


class _Checks:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.issues: list[ConfigIssue] = []

    def add(self, path: FieldPath, message: str) -> None:
        self.issues.append(self.doc.issue(path, message))

    def store_ids(self, kind: str, stores: Sequence[StoreSettings]) -> None:
        key = f"{kind}_stores"
        ids: dict[str, int] = {}
        for index, store in enumerate(stores):
            if not store.id:
                continue
            if store.id in ids:
                self.add(("services", key, index, "id"),
                         f"duplicate {kind} store id '{store.id}' (also {key}[{ids[store.id]}])")
            ids.setdefault(store.id, index)

    def macros(self, config: Config) -> set[str]:
        """Report bad macros; returns the names of the broken ones."""
        broken: set[str] = set()
        seen: dict[str, int] = {}
        for index, macro in enumerate(config.rulekit.macros):
            path: FieldPath = ("rulekit", "macros", index)
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

    def rules(self, config: Config, broken_macros: set[str]) -> None:
        macros = config.macro_map()
        for name, stack in config.stacks.items():
            for p_index, plugin in enumerate(stack.plugins):
                names: dict[str, int] = {}
                for r_index, rule in enumerate(plugin.rules()):
                    path: FieldPath = ("stacks", name, "plugins", p_index, "config", "rules", r_index)
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

    def plugins(self, config: Config) -> None:
        for name, stack in config.stacks.items():
            for p_index, plugin in enumerate(stack.plugins):
                for where, why in plugin.problems():
                    self.add(("stacks", name, "plugins", p_index, "config", *where), why)
            # Two http_metrics in one stack would export the same series twice.
            first = next((i for i, p in enumerate(stack.plugins) if p.type == "http_metrics"), None)
            for p_index, plugin in enumerate(stack.plugins):
                if plugin.type == "http_metrics" and first is not None and p_index != first:
                    self.add(("stacks", name, "plugins", p_index, "type"),
                             f"a stack counts its transactions once: http_metrics is already plugins[{first}]")

    def rule_issue(self, path: FieldPath, expr: str, exc: RuleSyntaxError) -> None:
        """An expression's error at the line and column of the file where the bad part is written."""
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

    def stack_refs(self, config: Config) -> None:
        known = sorted(config.stacks)

        def check(path: FieldPath, stack: str) -> None:
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

    def filters(self, config: Config) -> None:
        for index, custom in enumerate(config.tap.filters.custom):
            path: FieldPath = ("tap", "filters", "custom", index, "exe")
            if not custom.exe:
                self.add(path, "exe must not be empty")
            elif custom.strategy == "regex":
                try:
                    re.compile(custom.exe)
                except re.error as exc:
                    self.add(path, f"invalid regex: {exc.msg} (at position {(exc.pos or 0) + 1})")
                except Exception as exc:  # RecursionError, OverflowError...
                    self.add(path, f"invalid regex: {type(exc).__name__}")

    def endpoints(self, config: Config) -> None:
        seen: dict[str, int] = {}
        for index, endpoint in enumerate(config.tap.endpoints):
            path: FieldPath = ("tap", "endpoints", index, "domain")
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


# -- warnings -----------------------------------------------------------------------------------


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
        url = store.url if isinstance(store, PulseEventStore) else ""
        if url.rstrip("/").endswith("/v1/events"):
            out.append(f"services.event_stores[{index}].url ends with /v1/events, which the agent adds itself: "
                       f"use {url.rstrip('/')[: -len('/v1/events')]}")
    local_pulse = any(isinstance(s, PulseEventStore) and any(h in s.url for h in ("127.0.0.1", "localhost"))
                      for s in events)
    if tap.ignore_loopback and local_pulse:
        # The single-host setup of docs/pulse.md: with loopback ignored, it captures nothing to show.
        out.append("Pulse runs on this host but tap.ignore_loopback is true: traffic between processes of this "
                   "host (curl localhost) is not captured")
    return out
