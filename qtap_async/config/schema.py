"""The config file's shape: ``Config`` and the Structs of its sections (``version: 2``, Qtap-style).

Stores and plugins are tagged unions of the settings Structs that live beside their code
(``qtap_async.sinks.catalog``, ``qtap_async.plugins.catalog``): a store or plugin entry is decoded once,
into its own Struct, when the file loads. docs/config.md documents every field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

import msgspec

from qtap_async.config.messages import format_path
from qtap_async.context.filters import ContainerFilterConfig
from qtap_async.filters import Direction, MatchStrategy, ProcessGroup
from qtap_async.plugins.base import PluginSettings, RuleSettings
from qtap_async.plugins.catalog import PluginConfig
from qtap_async.plugins.redact import RedactionConfig
from qtap_async.rulekit import Rule, compile_rule
from qtap_async.settings import Secret, Settings, find_secrets
from qtap_async.sinks.catalog import EventStoreConfig, ObjectStoreConfig

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "EndpointConfig",
    "ExeFilterConfig",
    "FiltersConfig",
    "MacroConfig",
    "ProtocolTap",
    "RulekitConfig",
    "Services",
    "StackConfig",
    "TapConfig",
    "TlsTapConfig",
    "iter_secrets",
]

CONFIG_VERSION = 2
_HTTP_ONLY = "qtap-async captures HTTP only"


class Services(Settings, frozen=True):
    """Where events and payloads go: each entry is one store's settings Struct, chosen by its ``type``."""

    event_stores: list[EventStoreConfig] = msgspec.field(default_factory=list)
    object_stores: list[ObjectStoreConfig] = msgspec.field(default_factory=list)


class StackConfig(Settings, frozen=True):
    plugins: list[PluginConfig] = msgspec.field(default_factory=list)


# -- tap ----------------------------------------------------------------------------------------


class ProtocolTap(Settings, frozen=True):
    """``stack`` names the stack that processes this protocol; "" or "none" means no processing."""

    stack: str = ""

    @property
    def enabled(self) -> bool:
        return self.stack not in ("", "none")


class ExeFilterConfig(Settings, frozen=True):
    """Ignore processes whose executable path matches ``exe`` (``only`` narrows what is skipped)."""

    exe: str
    strategy: MatchStrategy = "exact"
    only: list[Literal["data", "dns", "tls", "http"]] = msgspec.field(default_factory=list)


class FiltersConfig(Settings, frozen=True):
    groups: list[ProcessGroup] = msgspec.field(default_factory=list)
    custom: list[ExeFilterConfig] = msgspec.field(default_factory=list)
    containers: list[ContainerFilterConfig] = msgspec.field(default_factory=list)  # qtap_async.context.filters


class EndpointConfig(Settings, frozen=True):
    """Traffic to ``domain`` (``*.example.com`` for subdomains) uses this stack instead of tap.http."""

    field_hints: ClassVar[dict[str, str]] = {"redis": _HTTP_ONLY}

    domain: str
    http: ProtocolTap = msgspec.field(default_factory=ProtocolTap)


class TlsTapConfig(Settings, frozen=True):
    """TLS probe settings (see qtap_async/tls/manager.py)."""

    state_dir: str = "/var/lib/qtap"
    """Analysis cache kept across restarts (created 0700); "" keeps it in memory only."""
    preattach_path: bool = True
    """At start-up, analyse and attach the executables in PATH (cached after the first time)."""
    hold_exec: bool = False
    """Stop a never-analysed executable at exec until its probes are attached (SIGSTOP/SIGCONT)."""
    max_hold_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    """Longest a held process waits; it is continued then, attached or not."""
    java: bool = False
    """Load qtap's Java agent into running HotSpot JVMs (dynamic attach) for their JSSE plaintext."""


class TapConfig(Settings, frozen=True):
    field_hints: ClassVar[dict[str, str]] = {"redis": _HTTP_ONLY, "mysql": _HTTP_ONLY, "kafka": _HTTP_ONLY}

    direction: Direction = "all"
    ignore_loopback: bool = False
    audit_include_dns: bool = False
    http: ProtocolTap = msgspec.field(default_factory=ProtocolTap)
    filters: FiltersConfig = msgspec.field(default_factory=FiltersConfig)
    endpoints: list[EndpointConfig] = msgspec.field(default_factory=list)
    tls: TlsTapConfig = msgspec.field(default_factory=TlsTapConfig)
    redaction: RedactionConfig = msgspec.field(default_factory=RedactionConfig)  # qtap_async.plugins.redact


# -- rulekit ------------------------------------------------------------------------------------


class MacroConfig(Settings, frozen=True):
    name: str
    expr: str


class RulekitConfig(Settings, frozen=True):
    macros: list[MacroConfig] = msgspec.field(default_factory=list)


# -- the file -----------------------------------------------------------------------------------


class Config(Settings, frozen=True):
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

    def iter_rules(self) -> Iterator[tuple[str, int, PluginSettings, RuleSettings]]:
        """Every rule of every plugin: (stack name, plugin index, plugin, rule)."""
        for name, stack in self.stacks.items():
            for index, plugin in enumerate(stack.plugins):
                for rule in plugin.rules():
                    yield name, index, plugin, rule


def iter_secrets(config: Config) -> Iterator[tuple[str, Secret]]:
    """Every ``{type, value}`` secret of the config (stores, then ``tap``), with its dotted path."""
    for path, secret in find_secrets(config.services, ("services",)):
        yield format_path(path), secret
    for path, secret in find_secrets(config.tap, ("tap",)):
        yield format_path(path), secret
