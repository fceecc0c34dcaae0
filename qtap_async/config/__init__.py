"""The agent's configuration: a Qtap-style YAML file (``version: 2``) decoded into msgspec Structs.

    config = load_config(Path("qpoint.yaml"))      # or loads_config(text, "qpoint.yaml")
    config = default_config()                       # what `qtap run` uses without a file (docs/config.md)

Loading is all-or-nothing: it returns a complete, validated ``Config`` or raises ``ConfigValidationError``
(a ``ConfigError``) listing every problem found, each with the field path, what was expected and the
line (and column) in the file. Rule expressions are compiled during loading, so a config that loads
never fails later on a rule. docs/config.md documents every field.

The package, in the order a file goes through it:

- ``yamldoc``: YAML text -> data, with the line and column of every key and value;
- ``schema``: ``Config`` and its sections; stores and plugins are tagged unions of the settings Structs
  that live beside their code (``qtap_async.sinks.catalog``, ``qtap_async.plugins.catalog``);
- ``load``: ``load_config``/``loads_config``, which decode each section once and collect every problem;
- ``validation``: the checks across fields (rules, stack references, ids), and ``config_warnings``;
- ``messages``: the words of every problem (``ConfigIssue``, ``ConfigValidationError``);
- ``defaults``: the default config; ``summary``: a config in a few lines.

Secrets are ``qtap_async.settings.Secret`` (``{type: env|file|text, value: ...}``).
"""

from qtap_async.config.defaults import DEFAULT_CONFIG_YAML, default_config
from qtap_async.config.load import check_config_permissions, load_config, loads_config
from qtap_async.config.messages import ConfigIssue, ConfigValidationError, format_path
from qtap_async.config.schema import (
    CONFIG_VERSION,
    Config,
    EndpointConfig,
    ExeFilterConfig,
    FiltersConfig,
    MacroConfig,
    ProtocolTap,
    RulekitConfig,
    Services,
    StackConfig,
    TapConfig,
    TlsTapConfig,
    iter_secrets,
)
from qtap_async.config.summary import summarize
from qtap_async.config.validation import config_warnings
from qtap_async.plugins.catalog import PluginConfig
from qtap_async.sinks.catalog import EventStoreConfig, ObjectStoreConfig, StoreConfig

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_CONFIG_YAML",
    "Config",
    "ConfigIssue",
    "ConfigValidationError",
    "EndpointConfig",
    "EventStoreConfig",
    "ExeFilterConfig",
    "FiltersConfig",
    "MacroConfig",
    "ObjectStoreConfig",
    "PluginConfig",
    "ProtocolTap",
    "RulekitConfig",
    "Services",
    "StackConfig",
    "StoreConfig",
    "TapConfig",
    "TlsTapConfig",
    "check_config_permissions",
    "config_warnings",
    "default_config",
    "format_path",
    "iter_secrets",
    "load_config",
    "loads_config",
    "summarize",
]
