"""Compile a syntax tree into nested closures; macros are expanded inline, once per rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from qtap_async.errors import ConfigError
from qtap_async.rulekit import ast
from qtap_async.rulekit.errors import RuleSyntaxError
from qtap_async.rulekit.parser import parse
from qtap_async.rulekit.values import (
    Value,
    as_text,
    compare,
    in_network,
    in_status_class,
    normalize,
    to_number,
)

#: How deeply compiled conditions may nest once macros are expanded.
MAX_EVAL_DEPTH = 200

_PLAIN = frozenset({str, int, float, type(None)})


class RuleContext(Protocol):
    """What a rule reads. ``get`` returns None for a missing field; it is only asked for canonical names
    (see ``fields.KNOWN_FIELDS``) and for ``http.req.headers.<name>`` / ``http.res.headers.<name>``
    with ``<name>`` lowercased."""

    def get(self, field: str, /) -> str | int | float | None: ...


Evaluator = Callable[[RuleContext], bool]
Getter = Callable[[RuleContext], Value]


class Rule:
    """A compiled rule expression. ``evaluate`` never raises for values of the documented types."""

    __slots__ = ("_fn", "expr", "fields", "macros_used")

    def __init__(self, expr: str, fn: Evaluator, fields: frozenset[str], macros_used: frozenset[str]) -> None:
        self.expr = expr
        self._fn = fn
        #: The canonical fields the rule (with its macros) may read.
        self.fields = fields
        #: The macros the rule uses, directly or through other macros.
        self.macros_used = macros_used

    def evaluate(self, ctx: RuleContext) -> bool:
        return self._fn(ctx)

    __call__ = evaluate

    def __repr__(self) -> str:
        return f"Rule({self.expr!r})"


def compile_rule(expr: str, macros: Mapping[str, str] | None = None) -> Rule:
    """Compile ``expr``; ``macros`` maps macro names to their expressions. Raises RuleSyntaxError."""
    compiler = _Compiler(expr, macros or {})
    fn = compiler.compile()
    return Rule(expr, fn, frozenset(compiler.fields), frozenset(compiler.used))


class _MacroFailure(ConfigError):
    """Internal: a macro the expression uses is broken; turned into a RuleSyntaxError at the reference."""

    def __init__(self, message: str, cycle: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cycle = cycle


class _Compiler:
    def __init__(self, text: str, macros: Mapping[str, str]) -> None:
        self.text = text
        self.macros = macros
        self.names = frozenset(macros)
        self.memo: dict[str, tuple[Evaluator, int]] = {}
        self.stack: list[str] = []
        self.fields: set[str] = set()
        self.used: set[str] = set()

    def compile(self) -> Evaluator:
        node = parse(self.text, self.names)
        fn, _ = self.node(node, 0)
        return fn

    def fail(self, message: str, pos: int) -> Exception:
        if self.stack:
            return _MacroFailure(message)
        return RuleSyntaxError(message, self.text, pos + 1)

    # -- conditions -----------------------------------------------------------------------------

    def node(self, node: ast.Node, level: int) -> tuple[Evaluator, int]:
        if level > MAX_EVAL_DEPTH:
            raise self.fail(
                f"expression nests too deeply once macros are expanded (more than {MAX_EVAL_DEPTH} levels)",
                _pos(node),
            )
        if isinstance(node, ast.And | ast.Or):
            compiled = [self.node(item, level + 1) for item in node.items]
            fns = tuple(fn for fn, _ in compiled)
            depth = 1 + max(d for _, d in compiled)
            return (_all(fns) if isinstance(node, ast.And) else _any(fns)), depth
        if isinstance(node, ast.Not):
            inner, depth = self.node(node.operand, level + 1)
            return (lambda ctx: not inner(ctx)), depth + 1
        if isinstance(node, ast.MacroRef):
            return self.macro_ref(node, level)
        if isinstance(node, ast.Const):
            return (_true if node.value else _false), 0
        if isinstance(node, ast.Truthy):
            self.fields.add(node.field.name)
            return _truthy(node.field.name), 0
        if isinstance(node, ast.Compare):
            return self.compare(node), 0
        if isinstance(node, ast.Match):
            self.fields.add(node.left.name)
            return _match(node), 0
        if isinstance(node, ast.In):
            self.fields.add(node.left.name)
            return _in(node), 0
        raise AssertionError(f"unknown node {node!r}")  # pragma: no cover

    def macro_ref(self, ref: ast.MacroRef, level: int) -> tuple[Evaluator, int]:
        try:
            fn, depth = self.macro(ref.name, level)
        except _MacroFailure as failure:
            if self.stack:
                raise
            raise RuleSyntaxError(
                failure.message, self.text, ref.pos + 1, macro=ref.name, cycle=failure.cycle
            ) from None
        if level + depth > MAX_EVAL_DEPTH:
            raise self.fail(
                f"expression nests too deeply once macros are expanded (more than {MAX_EVAL_DEPTH} levels)",
                ref.pos,
            )
        return fn, depth

    def macro(self, name: str, level: int) -> tuple[Evaluator, int]:
        if name in self.stack:
            cycle = (*self.stack[self.stack.index(name) :], name)
            raise _MacroFailure(f"recursive macro: {' -> '.join(cycle)}", cycle)
        if name in self.memo:
            return self.memo[name]
        self.used.add(name)
        self.stack.append(name)
        try:
            try:
                node = parse(self.macros[name], self.names)
            except RuleSyntaxError as exc:
                raise _MacroFailure(f"macro '{name}' has an error at its column {exc.column}: {exc.message}") from None
            result = self.node(node, level)
        finally:
            self.stack.pop()
        self.memo[name] = result
        return result

    # -- comparisons ----------------------------------------------------------------------------

    def operand(self, operand: ast.Operand) -> Getter:
        if isinstance(operand, ast.Field):
            self.fields.add(operand.name)
            return _getter(operand.name)
        if isinstance(operand, ast.Literal):
            value = operand.value
            return lambda ctx: value
        raise AssertionError("status classes are handled by compare()")  # pragma: no cover

    def compare(self, node: ast.Compare) -> Evaluator:
        left, right, op, negated = node.left, node.right, node.op, node.negated
        # Put the field first when only one side is a field; flip the operator to match.
        if not isinstance(left, ast.Field) and op in _FLIP:
            left, right, op = right, left, _FLIP[op]
        if isinstance(right, ast.StatusClass) or isinstance(left, ast.StatusClass):
            field_side = left if isinstance(right, ast.StatusClass) else right
            cls = right if isinstance(right, ast.StatusClass) else left
            assert isinstance(cls, ast.StatusClass)
            return _status_class(self.operand(field_side), cls.digit, negated)
        if isinstance(left, ast.Field) and isinstance(right, ast.Literal):
            self.fields.add(left.name)
            fast = _compare_literal(left.name, op, right.value, negated)
            if fast is not None:
                return fast
        return _compare_generic(self.operand(left), op, self.operand(right), negated)


_FLIP = {"==": "==", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _pos(node: ast.Node) -> int:
    if isinstance(node, ast.And | ast.Or):
        return _pos(node.items[0])
    if isinstance(node, ast.Truthy):
        return node.field.pos
    return node.pos


def _true(ctx: RuleContext) -> bool:
    return True


def _false(ctx: RuleContext) -> bool:
    return False


def _all(fns: tuple[Evaluator, ...]) -> Evaluator:
    if len(fns) == 2:
        a, b = fns
        return lambda ctx: a(ctx) and b(ctx)

    def all_of(ctx: RuleContext) -> bool:
        for fn in fns:  # noqa: SIM110 - a plain loop is faster than all() over a generator
            if not fn(ctx):
                return False
        return True

    return all_of


def _any(fns: tuple[Evaluator, ...]) -> Evaluator:
    if len(fns) == 2:
        a, b = fns
        return lambda ctx: a(ctx) or b(ctx)

    def any_of(ctx: RuleContext) -> bool:
        for fn in fns:  # noqa: SIM110 - a plain loop is faster than any() over a generator
            if fn(ctx):
                return True
        return False

    return any_of


def _getter(name: str) -> Getter:
    def get(ctx: RuleContext) -> Value:
        v = ctx.get(name)
        if v.__class__ in _PLAIN:
            return v
        return normalize(v)

    return get


def _truthy(name: str) -> Evaluator:
    def truthy(ctx: RuleContext) -> bool:
        v = ctx.get(name)
        if v.__class__ not in _PLAIN:
            v = normalize(v)
        return v is not None and v != "" and v != 0

    return truthy


def _status_class(get: Getter, digit: int, negated: bool) -> Evaluator:
    if negated:
        return lambda ctx: (v := get(ctx)) is not None and not in_status_class(v, digit)
    return lambda ctx: in_status_class(get(ctx), digit)


_ORDER: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}


def _compare_literal(name: str, op: str, lit: str | int | float, negated: bool) -> Evaluator | None:
    """Fast paths for ``field OP literal``; None when the generic path should be used."""
    get = _getter(name)
    if op == "==" and isinstance(lit, str):
        s = lit
        num = to_number(s)
        if negated:

            def ne_str(ctx: RuleContext) -> bool:
                v = get(ctx)
                if v.__class__ is str:
                    return v != s
                if v is None:
                    return False
                return num is None or v != num

            return ne_str

        def eq_str(ctx: RuleContext) -> bool:
            v = get(ctx)
            if v.__class__ is str:
                return v == s
            if v is None:
                return False
            return num is not None and v == num

        return eq_str
    if op == "==":
        n = lit
        if negated:

            def ne_num(ctx: RuleContext) -> bool:
                v = get(ctx)
                if v is None:
                    return False
                if v.__class__ is str:
                    x = to_number(v)
                    return x is None or x != n
                return v != n

            return ne_num

        def eq_num(ctx: RuleContext) -> bool:
            v = get(ctx)
            if v is None:
                return False
            if v.__class__ is str:
                x = to_number(v)
                return x is not None and x == n
            return v == n

        return eq_num
    if op in _ORDER:
        test = _ORDER[op]

        def order(ctx: RuleContext) -> bool:
            c = compare(get(ctx), lit)
            return c is not None and test(c)

        return order
    if op in ("contains", "startswith", "endswith") and isinstance(lit, str):
        s = lit
        if op == "contains":
            if negated:
                return lambda ctx: (t := as_text(get(ctx))) is not None and s not in t
            return lambda ctx: (t := as_text(get(ctx))) is not None and s in t
        if op == "startswith":
            if negated:
                return lambda ctx: (t := as_text(get(ctx))) is not None and not t.startswith(s)
            return lambda ctx: (t := as_text(get(ctx))) is not None and t.startswith(s)
        if negated:
            return lambda ctx: (t := as_text(get(ctx))) is not None and not t.endswith(s)
        return lambda ctx: (t := as_text(get(ctx))) is not None and t.endswith(s)
    return None


def _text_op(op: str) -> Callable[[str, str], bool]:
    if op == "contains":
        return lambda a, b: b in a
    if op == "startswith":
        return lambda a, b: a.startswith(b)
    return lambda a, b: a.endswith(b)


def _compare_generic(left: Getter, op: str, right: Getter, negated: bool) -> Evaluator:
    if op == "==":
        if negated:

            def ne(ctx: RuleContext) -> bool:
                a, b = left(ctx), right(ctx)
                return a is not None and b is not None and compare(a, b) != 0

            return ne
        return lambda ctx: compare(left(ctx), right(ctx)) == 0
    if op in _ORDER:
        test = _ORDER[op]

        def order(ctx: RuleContext) -> bool:
            c = compare(left(ctx), right(ctx))
            return c is not None and test(c)

        return order
    text_op = _text_op(op)

    def text(ctx: RuleContext) -> bool:
        a, b = as_text(left(ctx)), as_text(right(ctx))
        if a is None or b is None:
            return False
        return text_op(a, b) != negated

    return text


def _match(node: ast.Match) -> Evaluator:
    get = _getter(node.left.name)
    search = node.pattern.regex.search
    if node.negated:
        return lambda ctx: (t := as_text(get(ctx))) is not None and search(t) is None
    return lambda ctx: (t := as_text(get(ctx))) is not None and search(t) is not None


def _in(node: ast.In) -> Evaluator:
    get = _getter(node.left.name)
    strings: set[str] = set()
    numbers: set[int | float] = set()  # number literals
    numbers_for_numbers: set[int | float] = set()  # number literals + string literals read as numbers
    digits: list[int] = []
    networks: list[ast.Network] = []
    for item in node.items:
        if isinstance(item, ast.Literal):
            if isinstance(item.value, str):
                strings.add(item.value)
                as_num = to_number(item.value)
                if as_num is not None:
                    numbers_for_numbers.add(as_num)
            else:
                numbers.add(item.value)
                numbers_for_numbers.add(item.value)
        elif isinstance(item, ast.StatusClass):
            digits.append(item.digit)
        else:
            networks.append(item.network)
    negated = node.negated

    def member(v: Value) -> bool:
        if v.__class__ is str:
            if v in strings:
                return True
            if numbers:
                x = to_number(v)
                if x is not None and x in numbers:
                    return True
            for net in networks:
                if in_network(v, net):
                    return True
        elif v in numbers_for_numbers:
            return True
        for digit in digits:  # noqa: SIM110
            if in_status_class(v, digit):
                return True
        return False

    if negated:
        return lambda ctx: (v := get(ctx)) is not None and not member(v)
    return lambda ctx: (v := get(ctx)) is not None and member(v)
