"""The one error the rule language raises on purpose.

It lives here rather than in ``qtap_async/errors.py`` only to keep the rule language self-contained; it
is part of the agent's single hierarchy (``QtapError`` > ``ConfigError`` > ``RuleSyntaxError``).
"""

from __future__ import annotations

from qtap_async.errors import ConfigError


class RuleSyntaxError(ConfigError):
    """A rule expression (or a macro it uses) cannot be compiled.

    ``message`` says what is wrong, ``expression`` is the text that was being compiled and ``column`` is
    the 1-based position (in characters) in ``expression`` where the problem starts; ``len(expression)
    + 1`` means "at the end of the expression". ``macro`` names the macro the error comes from when the
    reference to a broken or recursive macro is what is reported.
    """

    __slots__ = ("column", "cycle", "expression", "macro", "message")

    def __init__(
        self,
        message: str,
        expression: str,
        column: int,
        *,
        macro: str | None = None,
        cycle: tuple[str, ...] | None = None,
    ) -> None:
        self.message = message
        self.expression = expression
        self.column = column
        self.macro = macro
        #: For a recursive macro: the chain of macro names, first and last equal.
        self.cycle = cycle
        super().__init__(f"{message} (column {column})\n{self.caret()}")

    def caret(self, indent: str = "  ") -> str:
        """The line of the expression holding the error, with a caret under the column."""
        offset = max(0, min(self.column - 1, len(self.expression)))
        start = self.expression.rfind("\n", 0, offset) + 1
        end = self.expression.find("\n", offset)
        if end == -1:
            end = len(self.expression)
        line = self.expression[start:end].replace("\t", " ")
        return f"{indent}{line}\n{indent}{' ' * (offset - start)}^"
