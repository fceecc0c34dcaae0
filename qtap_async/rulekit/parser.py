"""Recursive-descent parser: tokens in, a syntax tree (``ast.Node``) out.

Grammar (lowest precedence first)::

    expr      := and_expr (("or" | "||") and_expr)*
    and_expr  := unary (("and" | "&&") unary)*
    unary     := ("not" | "!") unary | condition
    condition := "(" expr ")" | "true" | "false" | macro | operand [compare_op right]
    macro     := "$" NAME | NAME | NAME "(" ")"
    operand   := field | string | number | status_class | ipv4
    compare_op:= == != < <= > >= | ["not"] (matches | contains | startswith | endswith | in)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from functools import lru_cache

from qtap_async.rulekit import ast
from qtap_async.rulekit.errors import RuleSyntaxError
from qtap_async.rulekit.fields import HEADER_PREFIXES, canonical_field, suggest_field
from qtap_async.rulekit.lexer import (
    EOF_,
    IDENT,
    IP,
    KEYWORD,
    KEYWORDS,
    MACRO,
    NUMBER,
    OP,
    REGEX,
    STATUS,
    STRING,
    Token,
    tokenize,
)

#: How deeply parentheses and ``not`` may nest in one expression.
MAX_DEPTH = 64

_ORDER_OPS = ("<", "<=", ">", ">=")
_STRING_OPS = ("contains", "startswith", "endswith")
_NEGATABLE = ("matches", "contains", "startswith", "endswith", "in")


def parse(text: str, macro_names: Collection[str] = ()) -> ast.Node:
    """Parse ``text``; bare names are macros when listed in ``macro_names``. Raises RuleSyntaxError."""
    return _parse_cached(text, frozenset(macro_names))


@lru_cache(maxsize=1024)
def _parse_cached(text: str, macro_names: frozenset[str]) -> ast.Node:
    return _Parser(text, macro_names).parse()


def is_macro_name(name: str) -> bool:
    """Whether ``name`` can name a macro (an identifier that is not a keyword)."""
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and name.lower() not in KEYWORDS


class _Parser:
    def __init__(self, text: str, macro_names: frozenset[str]) -> None:
        self.text = text
        self.macros = macro_names
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers --------------------------------------------------------------------------------

    def error(self, message: str, pos: int) -> RuleSyntaxError:
        return RuleSyntaxError(message, self.text, pos + 1)

    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != EOF_:
            self.i += 1
        return tok

    def at(self, kind: str, value: object = None) -> bool:
        tok = self.peek()
        return tok.kind == kind and (value is None or tok.value == value)

    def expect_op(self, value: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind == OP and tok.value == value:
            return self.advance()
        raise self.error(f"expected {what}, found {tok.describe()}", tok.pos)

    # -- grammar --------------------------------------------------------------------------------

    def parse(self) -> ast.Node:
        if self.peek().kind == EOF_:
            raise self.error("empty expression", 0)
        node = self.expr()
        tok = self.peek()
        if tok.kind != EOF_:
            if tok.kind == OP and tok.value == ")":
                raise self.error("unbalanced ')'", tok.pos)
            raise self.error(f"expected 'and', 'or' or end of expression, found {tok.describe()}", tok.pos)
        return node

    def expr(self) -> ast.Node:
        items = [self.and_expr()]
        while self.at(KEYWORD, "or"):
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else ast.Or(tuple(items))

    def and_expr(self) -> ast.Node:
        items = [self.unary()]
        while self.at(KEYWORD, "and"):
            self.advance()
            items.append(self.unary())
        return items[0] if len(items) == 1 else ast.And(tuple(items))

    def unary(self) -> ast.Node:
        if self.at(KEYWORD, "not"):
            tok = self.advance()
            self.enter(tok)
            node = ast.Not(self.unary(), tok.pos)
            self.depth -= 1
            return node
        return self.condition()

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nests too deeply (more than {MAX_DEPTH} levels)", tok.pos)

    def condition(self) -> ast.Node:
        tok = self.peek()
        if tok.kind == OP and tok.value == "(":
            self.advance()
            self.enter(tok)
            node = self.expr()
            self.depth -= 1
            self.expect_op(")", "')' to close the '(' at column " + str(tok.pos + 1))
            self.no_compare_after("a parenthesized condition")
            return node
        if tok.kind == KEYWORD and tok.value in ("true", "false"):
            self.advance()
            self.no_compare_after(f"'{tok.value}'")
            return ast.Const(tok.value == "true", tok.pos)
        if tok.kind == MACRO:
            self.advance()
            name = str(tok.value)
            if name not in self.macros:
                raise self.error(_unknown_macro(name, self.macros), tok.pos)
            self.macro_call_parens()
            self.no_compare_after(f"macro '{name}'")
            return ast.MacroRef(name, tok.pos)
        if tok.kind == IDENT and "." not in str(tok.value) and not self.index_follows():
            name = str(tok.value)
            self.advance()
            if name in self.macros:
                self.macro_call_parens()
                self.no_compare_after(f"macro '{name}'")
                return ast.MacroRef(name, tok.pos)
            raise self.error(_unknown_name(name, self.macros), tok.pos)
        if tok.kind == EOF_:
            raise self.error("expected a condition, found end of expression", tok.pos)
        left = self.operand("a condition")
        op_tok = self.peek()
        op, negated = self.compare_op()
        if op is None:
            if isinstance(left, ast.Field):
                return ast.Truthy(left)
            raise self.error(
                f"a value alone is not a condition; compare it with a field (found {op_tok.describe()})",
                left.pos,
            )
        node = self.comparison(left, op, negated, op_tok)
        follow = self.peek()
        if self.compare_op(peek_only=True)[0] is not None:
            raise self.error("comparisons cannot be chained; join them with 'and'", follow.pos)
        return node

    def index_follows(self) -> bool:
        nxt = self.peek(1)
        return nxt.kind == OP and nxt.value == "[" and self.peek(2).kind == STRING

    def macro_call_parens(self) -> None:
        # Qtap's rulekit calls macros like functions: name().
        if self.at(OP, "(") and self.peek(1).kind == OP and self.peek(1).value == ")":
            self.advance()
            self.advance()

    def no_compare_after(self, what: str) -> None:
        tok = self.peek()
        if self.compare_op(peek_only=True)[0] is not None:
            raise self.error(f"{what} is a condition and cannot be compared", tok.pos)

    def compare_op(self, peek_only: bool = False) -> tuple[str | None, bool]:
        tok = self.peek()
        if tok.kind == OP and tok.value in ("==", "!=", "<", "<=", ">", ">="):
            if not peek_only:
                self.advance()
            return ("==", True) if tok.value == "!=" else (str(tok.value), False)
        if tok.kind == KEYWORD and tok.value in _NEGATABLE:
            if not peek_only:
                self.advance()
            return str(tok.value), False
        if tok.kind == KEYWORD and tok.value == "not":
            nxt = self.peek(1)
            if nxt.kind == KEYWORD and nxt.value in _NEGATABLE:
                if not peek_only:
                    self.advance()
                    self.advance()
                return str(nxt.value), True
        return None, False

    def operand(self, what: str) -> ast.Operand:
        tok = self.advance()
        if tok.kind == IDENT:
            return self.field(tok)
        if tok.kind == STRING:
            return ast.Literal(str(tok.value), tok.pos)
        if tok.kind == NUMBER:
            assert isinstance(tok.value, int | float)
            return ast.Literal(tok.value, tok.pos)
        if tok.kind == STATUS:
            assert isinstance(tok.value, int)
            return ast.StatusClass(tok.value, tok.pos)
        if tok.kind == IP:
            if "/" in str(tok.value):
                raise self.error("a network can only follow 'in' (write: field in 10.0.0.0/8)", tok.pos)
            return ast.Literal(str(tok.value), tok.pos)
        if tok.kind == REGEX:
            raise self.error("a regex can only follow 'matches'", tok.pos)
        if tok.kind == MACRO:
            raise self.error(f"macro '{tok.value}' is a condition, not a value", tok.pos)
        if tok.kind == KEYWORD and tok.value in ("true", "false"):
            raise self.error(f"'{tok.value}' is a condition, not a value; test a field alone or with 'not'", tok.pos)
        raise self.error(f"expected {what}, found {tok.describe()}", tok.pos)

    def field(self, tok: Token) -> ast.Field:
        name = str(tok.value)
        if "." not in name and not self.index_follows_current():
            if name in self.macros:
                raise self.error(f"macro '{name}' is a condition, not a value", tok.pos)
            raise self.error(_unknown_name(name, self.macros), tok.pos)
        if self.index_follows_current():
            self.advance()
            key = self.advance()
            self.expect_op("]", "']' after the key")
            name = f"{name}.{key.value}"
        canonical = canonical_field(name)
        if canonical is None:
            as_stem = canonical_field(name + ".x")
            if as_stem is not None and as_stem.startswith(HEADER_PREFIXES):
                raise self.error(f"'{name}' needs a header name: {name}.<name> or {name}[\"<name>\"]", tok.pos)
            hint = suggest_field(name)
            message = f"unknown field '{name}'"
            if hint:
                message += f" (did you mean '{hint}'?)"
            raise self.error(message, tok.pos)
        return ast.Field(canonical, tok.pos)

    def index_follows_current(self) -> bool:
        return self.at(OP, "[") and self.peek(1).kind == STRING

    def comparison(self, left: ast.Operand, op: str, negated: bool, op_tok: Token) -> ast.Node:
        pos = op_tok.pos
        if op == "matches":
            field = self.require_field(left, op)
            return ast.Match(field, self.pattern(), negated, pos)
        if op == "in":
            field = self.require_field(left, op)
            return ast.In(field, self.in_items(), negated, pos)
        right_tok = self.peek()
        if right_tok.kind == EOF_:
            raise self.error(f"expected a value after '{_op_text(op, negated)}'", right_tok.pos)
        right = self.operand(f"a value after '{_op_text(op, negated)}'")
        if not isinstance(left, ast.Field) and not isinstance(right, ast.Field):
            raise self.error("both sides are values; compare a field with a value", pos)
        for side in (left, right):
            if isinstance(side, ast.StatusClass) and op != "==":
                raise self.error(f"a status class like {side.digit}xx only works with ==, != and in", side.pos)
        if op in _STRING_OPS:
            for side in (left, right):
                if isinstance(side, ast.Literal) and not isinstance(side.value, str):
                    raise self.error(f"'{op}' needs a string, found number {side.value!r}", side.pos)
        return ast.Compare(op, left, right, negated, pos)

    def require_field(self, left: ast.Operand, op: str) -> ast.Field:
        if not isinstance(left, ast.Field):
            raise self.error(f"the left side of '{op}' must be a field", left.pos)
        return left

    def pattern(self) -> ast.Pattern:
        tok = self.advance()
        if tok.kind not in (STRING, REGEX):
            raise self.error(f"expected a regex after 'matches' (\"...\" or /.../), found {tok.describe()}", tok.pos)
        source = str(tok.value)
        try:
            regex = re.compile(source)
        except re.error as exc:
            where = tok.pos
            if exc.pos is not None and tok.offsets:
                where = tok.offsets[exc.pos] if exc.pos < len(tok.offsets) else tok.end - 1
            raise self.error(f"invalid regex: {exc.msg}", where) from None
        except Exception as exc:  # RecursionError, OverflowError...: any failure is a bad pattern
            raise self.error(f"invalid regex: {type(exc).__name__}", tok.pos) from None
        return ast.Pattern(regex, tok.pos)

    def in_items(self) -> tuple[ast.InItem, ...]:
        tok = self.peek()
        if tok.kind in (STRING, IP):
            self.advance()
            return (self.network(tok),)
        if not (tok.kind == OP and tok.value == "["):
            raise self.error(
                f"expected a list [...] or a network like \"10.0.0.0/8\" after 'in', found {tok.describe()}",
                tok.pos,
            )
        self.advance()
        items: list[ast.InItem] = []
        while True:
            tok = self.peek()
            if tok.kind == OP and tok.value == "]":
                self.advance()
                return tuple(items)
            items.append(self.in_item())
            tok = self.peek()
            if tok.kind == OP and tok.value == ",":
                self.advance()
                continue
            if tok.kind == OP and tok.value == "]":
                continue
            raise self.error(f"expected ',' or ']' in the list, found {tok.describe()}", tok.pos)

    def in_item(self) -> ast.InItem:
        tok = self.advance()
        if tok.kind == STRING:
            text = str(tok.value)
            if "/" in text:
                net = _parse_network(text)
                if net is not None:
                    return ast.NetworkLit(net, text, tok.pos)
            return ast.Literal(text, tok.pos)
        if tok.kind == NUMBER:
            assert isinstance(tok.value, int | float)
            return ast.Literal(tok.value, tok.pos)
        if tok.kind == STATUS:
            assert isinstance(tok.value, int)
            return ast.StatusClass(tok.value, tok.pos)
        if tok.kind == IP:
            text = str(tok.value)
            if "/" in text:
                return self.network(tok)
            return ast.Literal(text, tok.pos)
        raise self.error(f"expected a string, number or status class in the list, found {tok.describe()}", tok.pos)

    def network(self, tok: Token) -> ast.NetworkLit:
        text = str(tok.value)
        net = _parse_network(text)
        if net is None:
            raise self.error(f"expected a network like \"10.0.0.0/8\" after 'in', found {tok.describe()}", tok.pos)
        return ast.NetworkLit(net, text, tok.pos)


def _parse_network(text: str) -> ast.Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        return None


def _op_text(op: str, negated: bool) -> str:
    if op == "==":
        return "!=" if negated else "=="
    return f"not {op}" if negated else op


def _unknown_macro(name: str, macros: Collection[str]) -> str:
    import difflib

    message = f"unknown macro '${name}'"
    close = difflib.get_close_matches(name, list(macros), n=1, cutoff=0.7)
    if close:
        message += f" (did you mean '${close[0]}'?)"
    elif not macros:
        message += " (no macros are defined; add them under rulekit.macros)"
    return message


def _unknown_name(name: str, macros: Collection[str]) -> str:
    import difflib

    message = f"unknown name '{name}': not a macro, and fields look like http.res.status"
    close = difflib.get_close_matches(name, list(macros), n=1, cutoff=0.7)
    if close:
        return f"unknown name '{name}' (did you mean macro '{close[0]}'?)"
    hint = suggest_field(name)
    if hint:
        return f"unknown name '{name}' (did you mean '{hint}'?)"
    return message
