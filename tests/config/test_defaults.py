"""The default config (qtap_async.config.defaults): what `qtap run` uses without a file."""

from __future__ import annotations

import re
from pathlib import Path

from qtap_async.config import DEFAULT_CONFIG_YAML, config_warnings, default_config
from qtap_async.plugins.access_logs import AccessLogsPlugin
from qtap_async.plugins.http_capture import HttpCapturePlugin
from qtap_async.sinks.stdout import DisabledObjectStore, StdoutEventStore

ROOT = Path(__file__).resolve().parents[2]
DOC_BLOCKS = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "config.md").read_text(), re.S)


def test_docs_show_the_default_config_verbatim() -> None:
    assert DEFAULT_CONFIG_YAML in DOC_BLOCKS


def test_default_config() -> None:
    config = default_config()
    assert config is default_config()  # built once
    assert [s.type for s in config.services.event_stores] == ["stdout"]
    assert [s.type for s in config.services.object_stores] == ["disabled"]
    assert isinstance(config.services.event_stores[0], StdoutEventStore)
    assert isinstance(config.services.object_stores[0], DisabledObjectStore)
    assert config.tap.direction == "all"
    assert config.tap.ignore_loopback is False
    assert config.tap.http.stack == "default"
    assert config.tap.filters.groups == ["qpoint"]
    plugins = config.stacks["default"].plugins
    assert [p.type for p in plugins] == ["http_capture", "access_logs"]
    assert isinstance(plugins[0], HttpCapturePlugin) and plugins[0].config.level == "summary"
    assert isinstance(plugins[1], AccessLogsPlugin) and plugins[1].config.mode == "summary"
    assert config_warnings(config) == []
