"""A config in a few lines, for `qtap validate` and the agent's start-up log."""

from __future__ import annotations

from collections.abc import Sequence

from qtap_async.config.schema import Config
from qtap_async.sinks.base import StoreSettings

__all__ = ["summarize"]


def _store_names(stores: Sequence[StoreSettings]) -> str:
    if not stores:
        return "none"
    return ", ".join(f"{s.type}" + (f" ({s.id})" if s.id else "") for s in stores)


def summarize(config: Config) -> list[str]:
    """A few lines describing the config: stores, stacks, tap, endpoints, filters, rule counts."""
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
