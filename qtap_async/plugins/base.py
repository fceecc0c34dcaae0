"""The plugin interface and the first-match rule list the plugins share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from qtap_async.plugins.events import Emission
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.rulekit import Rule

__all__ = ["Compile", "FirstMatch", "Plugin"]

#: Compiles a rule expression with the config's macros (``Config.compile``).
Compile = Callable[[str], Rule]

T = TypeVar("T")


class Plugin(Protocol):
    """One step of a stack. ``on_http`` is called once per transaction routed to the stack and returns
    what to store; it must not block (logging is fine) and must not keep the exchange."""

    name: str

    def on_http(self, ex: HttpExchange) -> list[Emission]: ...


class FirstMatch(Generic[T]):
    """Rules in order with what each decides; ``decide`` returns the first match's (name, value), or
    ("", default) when none matches."""

    __slots__ = ("default", "rules")

    def __init__(self, rules: Sequence[tuple[str, Rule, T]], default: T) -> None:
        self.rules = tuple(rules)
        self.default = default

    def decide(self, ex: HttpExchange) -> tuple[str, T]:
        if self.rules:
            ctx = ex.context
            for name, rule, value in self.rules:
                if rule.evaluate(ctx):
                    return name, value
        return "", self.default
