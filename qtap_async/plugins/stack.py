"""Stacks: named lists of plugins built from the config; every transaction routed to a stack goes
through each of its plugins in order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from qtap_async.plugins.access_logs import AccessLogs, AccessLogsPlugin
from qtap_async.plugins.base import Compile, Emission, Plugin
from qtap_async.plugins.catalog import PluginConfig
from qtap_async.plugins.detect_errors import DetectErrors, DetectErrorsPlugin
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.http_capture import HttpCapture, HttpCapturePlugin
from qtap_async.plugins.http_metrics import HttpMetrics, HttpMetricsPlugin
from qtap_async.plugins.report_usage import ReportUsage, ReportUsagePlugin

if TYPE_CHECKING:
    from qtap_async.telemetry.metrics import Histograms

if TYPE_CHECKING:  # the config decodes into this package's settings: it imports plugins, not the reverse
    from qtap_async.config import Config, StackConfig

__all__ = ["Stack", "build_plugin", "build_stacks"]

log = logging.getLogger("qtap.plugins")


def build_plugin(cfg: PluginConfig, compile: Compile, *, access_log: Callable[[str], None] | None = None,
                 stack: str = "") -> Plugin:
    if isinstance(cfg, HttpCapturePlugin):
        return HttpCapture(cfg.config, compile)
    if isinstance(cfg, AccessLogsPlugin):
        return AccessLogs(cfg.config, compile, access_log)
    if isinstance(cfg, ReportUsagePlugin):
        return ReportUsage(cfg.config)
    if isinstance(cfg, DetectErrorsPlugin):
        return DetectErrors(cfg.config, compile)
    if isinstance(cfg, HttpMetricsPlugin):
        return HttpMetrics(cfg.config, stack)
    raise TypeError(f"unknown plugin config {type(cfg).__name__}")


class Stack:
    """A named list of plugins. A plugin that raises costs its own output for that transaction, never
    the other plugins' nor the agent (the error is counted and logged a few times)."""

    __slots__ = ("errors", "name", "plugins", "transactions")

    def __init__(self, name: str, plugins: Sequence[Plugin]) -> None:
        self.name = name
        self.plugins = tuple(plugins)
        self.errors = 0
        self.transactions = 0

    @classmethod
    def from_config(cls, name: str, cfg: StackConfig, compile: Compile, *,
                    access_log: Callable[[str], None] | None = None) -> Stack:
        return cls(name, [build_plugin(p, compile, access_log=access_log, stack=name) for p in cfg.plugins])

    def stats(self) -> dict[str, int]:
        """The plugins' own counters (http_metrics' series and folds), by metric key."""
        out: dict[str, int] = {}
        for p in self.plugins:
            if isinstance(p, HttpMetrics):
                out.update(p.stats())
        return out

    def families(self) -> Iterator[Histograms]:
        """The metric families the plugins build (http_metrics' histograms)."""
        for p in self.plugins:
            if isinstance(p, HttpMetrics):
                yield from p.families()

    def on_http(self, ex: HttpExchange) -> list[Emission]:
        self.transactions += 1
        out: list[Emission] = []
        for plugin in self.plugins:
            try:
                out.extend(plugin.on_http(ex))
            except Exception:
                self.errors += 1
                if self.errors <= 10:
                    log.exception("stack %s: plugin %s failed on transaction %s", self.name, plugin.name, ex.id)
        return out


def build_stacks(config: Config, *, access_log: Callable[[str], None] | None = None) -> dict[str, Stack]:
    """Every stack of the config, its rules compiled with the config's macros."""
    return {name: Stack.from_config(name, cfg, config.compile, access_log=access_log)
            for name, cfg in config.stacks.items()}
