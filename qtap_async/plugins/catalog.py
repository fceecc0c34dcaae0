"""Every plugin type, as the tagged union the config decodes each plugin entry of a stack into.

A new plugin declares its settings beside its code (a ``PluginSettings`` Struct with a ``tag``, and the
Struct of its ``config``), is added to the union here, and is built in ``build_plugin``
(``plugins/stack.py``). The config's error messages list the allowed types in the union's order.
"""

from __future__ import annotations

from typing import TypeAlias

from qtap_async.plugins.access_logs import AccessLogsPlugin
from qtap_async.plugins.detect_errors import DetectErrorsPlugin
from qtap_async.plugins.http_capture import HttpCapturePlugin
from qtap_async.plugins.http_metrics import HttpMetricsPlugin
from qtap_async.plugins.report_usage import ReportUsagePlugin

__all__ = ["PLUGIN_TYPES", "PluginConfig"]

PluginConfig: TypeAlias = (HttpCapturePlugin | AccessLogsPlugin | ReportUsagePlugin | DetectErrorsPlugin
                           | HttpMetricsPlugin)
PLUGIN_TYPES: tuple[str, ...] = tuple(
    str(cls.__struct_config__.tag)
    for cls in (HttpCapturePlugin, AccessLogsPlugin, ReportUsagePlugin, DetectErrorsPlugin, HttpMetricsPlugin)
)
