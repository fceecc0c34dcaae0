"""The plugin interface, what a plugin returns, the first-match rule list the plugins share, and the
settings every plugin entry shares.

Each plugin's settings live beside it (``HttpCapturePlugin`` and its ``HttpCaptureConfig`` in
http_capture.py...) on ``PluginSettings``, tagged on ``type``; the union of them, which the config decodes
each plugin entry into, is in ``qtap_async.plugins.catalog``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Generic, Protocol, TypeAlias, TypeVar

from qtap_async.events import HttpTransactionEvent, IssueEvent, RequestEvent
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.rulekit import Rule
from qtap_async.settings import FieldPath, Settings
from qtap_async.sinks.base import StoredObject

__all__ = ["Compile", "Emission", "FirstMatch", "Plugin", "PluginSettings", "RuleSettings", "is_object"]

#: What plugins return: events (for the event stores) and objects (for the object stores; each stored
#: object's reference event, ``qtap_async.events.ObjectRef``, is sent to the event stores by the object
#: store's runner once the store has it). None of the events carries a header value, a body or a
#: query-string value that was not configured as safe.
Emission: TypeAlias = HttpTransactionEvent | RequestEvent | IssueEvent | StoredObject


def is_object(item: object) -> bool:
    return isinstance(item, StoredObject)

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


class RuleSettings(Settings, frozen=True, kw_only=True):
    """A rule of a plugin's config: a ``name`` (unique within the plugin) and a rulekit ``expr``; each plugin
    adds what the rule decides."""

    name: str
    expr: str


class PluginSettings(Settings, frozen=True, kw_only=True, tag_field="type"):
    """A plugin entry of a stack: ``{type: <tag>, config: {...}}``. ``kind`` names it in error messages."""

    kind: ClassVar[str] = "plugin"

    @property
    def type(self) -> str:
        """The entry's ``type`` (the Struct's tag)."""
        return str(self.__struct_config__.tag)

    def rules(self) -> Sequence[RuleSettings]:
        """The plugin's rules, which the config compiles and checks when it loads."""
        return ()

    def problems(self) -> Iterable[tuple[FieldPath, str]]:
        """What is wrong with the plugin's ``config`` beyond its types: (path under ``config``, reason)."""
        return ()
