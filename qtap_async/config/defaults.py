"""The config ``qtap run`` uses without a file: ``DEFAULT_CONFIG_YAML`` (shown verbatim in docs/config.md,
which explains each choice) and ``default_config()``, the same text loaded."""

from __future__ import annotations

from functools import lru_cache

from qtap_async.config.load import loads_config
from qtap_async.config.schema import Config

__all__ = ["DEFAULT_CONFIG_YAML", "default_config"]

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
    """The config used when no file is given (see DEFAULT_CONFIG_YAML), built once."""
    return loads_config(DEFAULT_CONFIG_YAML, "<default config>")
