"""The rule expression language: a small, safe language compiled once to closures.

    rule = compile_rule('http.res.status >= 500 and http.req.host matches "api\\\\..*"')
    rule.evaluate(ctx)  # ctx: anything with get(field) -> str | int | float | None

See docs/config.md ("Rule expressions") for the language.
"""

from __future__ import annotations

from collections.abc import Mapping

from qtap_async.rulekit.compiler import MAX_EVAL_DEPTH, Rule, RuleContext, compile_rule
from qtap_async.rulekit.errors import RuleSyntaxError
from qtap_async.rulekit.fields import HEADER_PREFIXES, KNOWN_FIELDS, canonical_field
from qtap_async.rulekit.parser import MAX_DEPTH, is_macro_name, parse
from qtap_async.rulekit.values import Value

__all__ = [
    "HEADER_PREFIXES",
    "KNOWN_FIELDS",
    "MAX_DEPTH",
    "MAX_EVAL_DEPTH",
    "MappingContext",
    "Rule",
    "RuleContext",
    "RuleSyntaxError",
    "Value",
    "canonical_field",
    "compile_rule",
    "is_macro_name",
    "parse",
    "validate_macros",
]


class MappingContext:
    """A RuleContext over a flat mapping of canonical field names to values.

    Header fields are looked up case-insensitively: ``{"http.req.headers.Content-Type": "x"}`` answers
    ``get("http.req.headers.content-type")``.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str | int | float | None]) -> None:
        self._values: dict[str, str | int | float | None] = {}
        for key, value in values.items():
            canonical = canonical_field(key) or key
            self._values[canonical] = value

    def get(self, field: str, /) -> str | int | float | None:
        return self._values.get(field)


def validate_macros(macros: Mapping[str, str]) -> dict[str, RuleSyntaxError]:
    """Check every macro on its own; returns the errors by macro name (empty when all are fine).

    A macro's own syntax errors, unknown names and fields, and recursion it takes part in are reported
    against that macro; a macro that only uses a broken macro is not reported again.
    """
    errors: dict[str, RuleSyntaxError] = {}
    for name, text in macros.items():
        if not is_macro_name(name):
            errors[name] = RuleSyntaxError(
                f"invalid macro name {name!r}: use letters, digits and '_', not a keyword", name, 1
            )
            continue
        try:
            compile_rule(text, macros)
        except RuleSyntaxError as exc:
            if exc.cycle is not None and name in exc.cycle:
                ring = list(exc.cycle[:-1])
                start = ring.index(name)
                ring = ring[start:] + ring[:start]
                chain = " -> ".join([*ring, name])
                errors[name] = RuleSyntaxError(
                    f"recursive macro: {chain}", text, exc.column, macro=exc.macro, cycle=(*ring, name)
                )
            elif exc.macro is None:
                errors[name] = exc
    return errors
