"""Every plugin type (qtap_async.plugins.catalog): entries decode into the plugins' own settings Structs,
tagged on ``type``, and each plugin with rules hands them to the config."""

from __future__ import annotations

import msgspec
import pytest

from qtap_async.plugins.access_logs import AccessLogsConfig, AccessLogsPlugin, AccessLogsRule
from qtap_async.plugins.catalog import PLUGIN_TYPES, PluginConfig
from qtap_async.plugins.detect_errors import DetectErrorsPlugin
from qtap_async.plugins.http_capture import HttpCapturePlugin
from qtap_async.plugins.http_metrics import HttpMetricsPlugin
from qtap_async.plugins.report_usage import ReportUsagePlugin
from qtap_async.plugins.stack import build_plugin
from qtap_async.rulekit import compile_rule


def test_entries_decode_into_each_plugins_struct() -> None:
    entries = msgspec.convert([{"type": t} for t in PLUGIN_TYPES], list[PluginConfig])
    assert [type(e) for e in entries] == [HttpCapturePlugin, AccessLogsPlugin, ReportUsagePlugin, DetectErrorsPlugin,
                                          HttpMetricsPlugin]
    assert [e.type for e in entries] == list(PLUGIN_TYPES)
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'debug'"):
        msgspec.convert({"type": "debug"}, PluginConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field `level`"):
        msgspec.convert({"type": "access_logs", "config": {"level": "full"}}, PluginConfig)


def test_rules_are_the_plugins_own() -> None:
    rule = AccessLogsRule(name="r", expr="true", mode="full")
    plugin = AccessLogsPlugin(config=AccessLogsConfig(rules=[rule]))
    assert plugin.rules() == [rule]
    assert ReportUsagePlugin().rules() == ()
    assert [r.name for r in DetectErrorsPlugin().rules()] == ["server error", "client error"]


def test_every_plugin_type_builds() -> None:
    for entry in msgspec.convert([{"type": t} for t in PLUGIN_TYPES], list[PluginConfig]):
        assert build_plugin(entry, compile_rule).name == entry.type
