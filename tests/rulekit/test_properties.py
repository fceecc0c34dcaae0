"""Property tests of the rule language.

- Any text, and any soup of real tokens, either compiles or raises RuleSyntaxError with a position.
- Compiled rules never raise on any context.
- A reference interpreter written here, over a syntax tree generated here, agrees with compile_rule on
  random well-formed expressions and random contexts.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtap_async.rulekit import RuleSyntaxError, compile_rule

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = [
    "http.req.method",
    "http.req.path",
    "http.req.host",
    "http.req.headers.x-a",
    "http.res.status",
    "process.pid",
    "conn.remote_ip",
]
VOCAB = [
    *FIELDS,
    "http.res.headers.content-type",
    'http.req.headers["X-A"]',
    "request.host",
    "response.status",
    "==", "!=", "<", "<=", ">", ">=", "=", "!", "&&", "||", "(", ")", "[", "]", ",",
    "and", "or", "not", "in", "matches", "contains", "startswith", "endswith", "true", "false",
    "eq", "lt", "AND", "Not",
    '"GET"', '"a\\"b"', "'x'", '"10.0.0.0/8"', '"(unclosed"', '"', "/re/", "/a(/", "/",
    "0", "200", "-1", "1.5", "1e3", "5xx", "0xx", "10.0.0.0/8", "1.2.3", "9" * 50,
    "$m", "$nope", "m", "m()", "$", "nope", "#", "\\", "\n", "é",
]  # fmt: skip


# -- any input ----------------------------------------------------------------------------------


def _compiles_or_raises_positioned(expr: str) -> None:
    try:
        rule = compile_rule(expr, {"m": "http.res.status == 5xx"})
    except RuleSyntaxError as exc:
        assert exc.expression == expr
        assert 1 <= exc.column <= len(expr) + 1
        assert exc.message
        assert str(exc)  # formats, with the caret line
        return
    assert rule.evaluate(_Ctx({})) in (True, False)


@SETTINGS
@given(st.text(max_size=80))
def test_random_text_only_raises_rule_syntax_error(expr: str) -> None:
    _compiles_or_raises_positioned(expr)


@SETTINGS
@given(st.lists(st.sampled_from(VOCAB), max_size=25), st.lists(st.sampled_from([" ", "", "  ", "\t"]), min_size=25))
def test_token_soup_only_raises_rule_syntax_error(tokens: list[str], gaps: list[str]) -> None:
    expr = "".join(tok + gap for tok, gap in zip(tokens, gaps, strict=False))
    _compiles_or_raises_positioned(expr)


# -- a syntax tree of our own, rendered to text -------------------------------------------------

STATUS = "status"
NETWORKS = ["10.0.0.0/8", "192.168.0.0/16", "::/0", "2001:db8::/32", "127.0.0.1"]
PATTERNS = ["^a", "b$", "[0-9]+", "(?i)get", "^/v[0-9]", ".*", "x|y", r"\.", "^$"]


@dataclass(frozen=True)
class Lit:
    value: Any  # str | int | float | ("status", digit)


@dataclass(frozen=True)
class Net:
    text: str


@dataclass(frozen=True)
class Cmp:
    op: str
    left: str | Lit  # a field name or a literal
    right: str | Lit
    negated: bool


@dataclass(frozen=True)
class Matches:
    field: str
    pattern: str
    negated: bool


@dataclass(frozen=True)
class InList:
    field: str
    items: tuple[Lit | Net, ...]
    single_network: bool
    negated: bool


@dataclass(frozen=True)
class Bool:
    op: str  # "and", "or", "not", "const", "truthy", "macro"
    args: tuple[Any, ...]


small_text = st.text(alphabet='abxyGET/.0123456789 -é"\\', max_size=6)
BOUNDARIES = [0, 1, 199, 200, 500, 599, 600]
numbers = st.one_of(
    st.sampled_from(BOUNDARIES),
    st.sampled_from(BOUNDARIES).map(float),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(lambda f: abs(f) < 1e300),
)
numeric_text = st.one_of(
    st.sampled_from(BOUNDARIES).map(str),
    st.sampled_from(BOUNDARIES).map(lambda n: f" {n}.0"),
    st.sampled_from(["+5", "1e2", ".5", "5.", "abc", "", " ", "0x10", "1_0"]),
)
fields = st.sampled_from(FIELDS)
literals = st.one_of(small_text.map(Lit), numeric_text.map(Lit), numbers.map(Lit))


@st.composite
def comparisons(draw: st.DrawFn) -> Cmp:
    op = draw(st.sampled_from(["==", "<", "<=", ">", ">=", "contains", "startswith", "endswith"]))
    negated = draw(st.booleans()) if op in ("==", "contains", "startswith", "endswith") else False
    left: str | Lit = draw(fields)
    if op in ("contains", "startswith", "endswith"):
        right: str | Lit = draw(st.one_of(fields, small_text.map(Lit)))
    elif op == "==":
        right = draw(st.one_of(fields, literals, st.integers(1, 9).map(lambda d: Lit((STATUS, d)))))
    else:
        right = draw(st.one_of(fields, literals))
    if isinstance(right, Lit) and draw(st.booleans()) and op in ("==", "<", "<=", ">", ">="):
        left, right = right, left  # literal on the left
    return Cmp(op, left, right, negated)


in_items = st.one_of(
    small_text.map(Lit),
    numeric_text.map(Lit),
    numbers.map(Lit),
    st.integers(1, 9).map(lambda d: Lit((STATUS, d))),
    st.sampled_from(NETWORKS).filter(lambda n: "/" in n).map(Net),
)


@st.composite
def in_tests(draw: st.DrawFn) -> InList:
    if draw(st.booleans()):
        field = draw(st.one_of(st.just("conn.remote_ip"), fields))
        return InList(field, (Net(draw(st.sampled_from(NETWORKS))),), True, draw(st.booleans()))
    items = tuple(draw(st.lists(in_items, max_size=4)))
    return InList(draw(fields), items, False, draw(st.booleans()))


leaves = st.one_of(
    comparisons(),
    in_tests(),
    st.builds(Matches, fields, st.sampled_from(PATTERNS), st.booleans()),
    fields.map(lambda f: Bool("truthy", (f,))),
    st.booleans().map(lambda b: Bool("const", (b,))),
    st.sampled_from(["m0", "m1", "m2"]).map(lambda m: Bool("macro", (m,))),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        children.map(lambda c: Bool("not", (c,))),
        st.lists(children, min_size=2, max_size=4).map(lambda cs: Bool("and", tuple(cs))),
        st.lists(children, min_size=2, max_size=4).map(lambda cs: Bool("or", tuple(cs))),
    )


conditions = st.recursive(leaves, _extend, max_leaves=12)

# Macros: m0 may use m1 and m2, m1 may use m2, m2 uses none (no recursion).
MACRO_TREES = {
    "m2": Cmp("==", "http.res.status", Lit((STATUS, 5)), False),
    "m1": Bool("or", (Bool("macro", ("m2",)), Cmp("==", "http.req.method", Lit("GET"), False))),
    "m0": Bool("and", (Bool("not", (Bool("macro", ("m1",)),)), Bool("truthy", ("http.req.path",)))),
}


def q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_value(v: str | Lit, draw: st.DrawFn) -> str:
    if isinstance(v, str):
        if v.startswith("http.req.headers.") and draw(st.booleans()):
            return f'http.req.headers["{v.rsplit(".", 1)[1].upper()}"]'
        if v.startswith("http.req.") and draw(st.booleans()):
            return "request." + v[len("http.req.") :]
        return v
    value = v.value
    if isinstance(value, tuple):
        return f"{value[1]}{draw(st.sampled_from(['xx', 'XX']))}"
    if isinstance(value, str):
        return q(value)
    return repr(value)


def render(node: Any, draw: st.DrawFn) -> str:
    if isinstance(node, Cmp):
        op = node.op
        if op == "==":
            op = "!=" if node.negated else draw(st.sampled_from(["==", "eq"]))
        elif node.negated:
            op = f"not {op}"
        return f"{render_value(node.left, draw)} {op} {render_value(node.right, draw)}"
    if isinstance(node, Matches):
        op = "not matches" if node.negated else "matches"
        pattern = q(node.pattern) if draw(st.booleans()) or "/" in node.pattern else f"/{node.pattern}/"
        return f"{node.field} {op} {pattern}"
    if isinstance(node, InList):
        op = "not in" if node.negated else "in"
        if node.single_network:
            return f"{node.field} {op} {q(node.items[0].text)}"  # type: ignore[union-attr]
        rendered = [q(i.text) if isinstance(i, Net) else render_value(i, draw) for i in node.items]
        return f"{node.field} {op} [{', '.join(rendered)}]"
    assert isinstance(node, Bool)
    if node.op == "const":
        return "true" if node.args[0] else "false"
    if node.op == "truthy":
        return str(node.args[0])
    if node.op == "macro":
        return draw(st.sampled_from([f"${node.args[0]}", str(node.args[0]), f"{node.args[0]}()"]))
    if node.op == "not":
        return f"{draw(st.sampled_from(['not ', '!', 'NOT ']))}({render(node.args[0], draw)})"
    joiner = draw(st.sampled_from([f" {node.op} ", " && " if node.op == "and" else " || "]))
    return "(" + joiner.join(render(c, draw) for c in node.args) + ")"


# -- the reference interpreter ------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def ref_number(text: str) -> float | int | None:
    t = text.strip()
    if _INT.fullmatch(t) and len(t.lstrip("+-")) <= 40:
        return int(t)
    if _FLOAT.fullmatch(t):
        f = float(t)
        return f if math.isfinite(f) else None
    return None


def ref_value(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    return v if isinstance(v, str | int | float) else None


def ref_order(a: Any, b: Any) -> int | None:
    if a is None or b is None:
        return None
    if isinstance(a, str) and isinstance(b, str):
        return -1 if a < b else (1 if a > b else 0)
    if isinstance(a, str):
        a = ref_number(a)
    if isinstance(b, str):
        b = ref_number(b)
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return None
    return -1 if a < b else (1 if a > b else 0)


def ref_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return str(v)


def ref_in_class(v: Any, digit: int) -> bool:
    n = ref_number(v) if isinstance(v, str) else v
    return n is not None and digit * 100 <= n < digit * 100 + 100


def ref_in_net(v: Any, text: str) -> bool:
    if not isinstance(v, str):
        return False
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    net = ipaddress.ip_network(text, strict=False)
    return ip.version == net.version and ip in net


def ref_operand(x: str | Lit, ctx: dict[str, Any]) -> Any:
    return ref_value(ctx.get(x)) if isinstance(x, str) else x.value


def ref_eval(node: Any, ctx: dict[str, Any]) -> bool:
    if isinstance(node, Cmp):
        a, b = ref_operand(node.left, ctx), ref_operand(node.right, ctx)
        if isinstance(b, tuple) or isinstance(a, tuple):
            v, digit = (a, b[1]) if isinstance(b, tuple) else (b, a[1])
            if v is None:
                return False
            return ref_in_class(v, digit) != node.negated
        if node.op in ("contains", "startswith", "endswith"):
            ta, tb = ref_text(a), ref_text(b)
            if ta is None or tb is None:
                return False
            hit = {"contains": tb in ta, "startswith": ta.startswith(tb), "endswith": ta.endswith(tb)}[node.op]
            return hit != node.negated
        c = ref_order(a, b)
        if node.op == "==":
            if node.negated:
                return a is not None and b is not None and c != 0
            return c == 0
        return c is not None and {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[node.op]
    if isinstance(node, Matches):
        t = ref_text(ref_value(ctx.get(node.field)))
        if t is None:
            return False
        return (re.search(node.pattern, t) is not None) != node.negated
    if isinstance(node, InList):
        v = ref_value(ctx.get(node.field))
        if v is None:
            return False
        hit = False
        for item in node.items:
            if isinstance(item, Net):
                hit = hit or ref_in_net(v, item.text)
            elif isinstance(item.value, tuple):
                hit = hit or ref_in_class(v, item.value[1])
            else:
                hit = hit or ref_order(v, item.value) == 0
        return hit != node.negated
    assert isinstance(node, Bool)
    if node.op == "const":
        return bool(node.args[0])
    if node.op == "truthy":
        v = ref_value(ctx.get(node.args[0]))
        return v is not None and v != "" and v != 0
    if node.op == "macro":
        return ref_eval(MACRO_TREES[node.args[0]], ctx)
    if node.op == "not":
        return not ref_eval(node.args[0], ctx)
    if node.op == "and":
        return all(ref_eval(c, ctx) for c in node.args)
    return any(ref_eval(c, ctx) for c in node.args)


class _Ctx:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get(self, field: str) -> Any:
        return self.values.get(field)


values = st.one_of(
    st.none(),
    small_text,
    numbers,
    st.booleans(),
    numbers.map(lambda n: f" {n} "),
    numeric_text,
    st.integers(100, 599),
    st.sampled_from(["10.1.2.3", "192.168.7.7", "::ffff:10.0.0.1", "2001:db8::5", "127.0.0.1", "GET", "get"]),
)
contexts = st.dictionaries(st.sampled_from(FIELDS), values)
wild_values = st.one_of(
    values,
    st.floats(),
    st.integers(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=20),
)
wild_contexts = st.dictionaries(st.sampled_from(FIELDS), wild_values)


def macro_texts(draw: st.DrawFn) -> dict[str, str]:
    return {name: render(tree, draw) for name, tree in MACRO_TREES.items()}


@SETTINGS
@given(st.data(), conditions, st.lists(contexts, min_size=1, max_size=5))
def test_compiled_rules_agree_with_the_reference(data: st.DataObject, tree: Any, ctxs: list[dict[str, Any]]) -> None:
    text = render(tree, data.draw)
    rule = compile_rule(text, macro_texts(data.draw))
    for ctx in ctxs:
        assert rule.evaluate(_Ctx(ctx)) is ref_eval(tree, ctx), (text, ctx)


@SETTINGS
@given(st.data(), conditions, st.lists(wild_contexts, min_size=1, max_size=5))
def test_evaluation_never_raises(data: st.DataObject, tree: Any, ctxs: list[dict[str, Any]]) -> None:
    rule = compile_rule(render(tree, data.draw), macro_texts(data.draw))
    for ctx in ctxs:
        assert rule.evaluate(_Ctx(ctx)) in (True, False)


IPS = ["10.1.2.3", "192.168.7.7", "::ffff:10.0.0.1", "::ffff:192.168.0.1", "2001:db8::5", "127.0.0.1", "::1", "x"]
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "conn.remote_ip": st.one_of(st.sampled_from(IPS), values),
    "http.res.status": st.one_of(st.sampled_from(BOUNDARIES), st.sampled_from(BOUNDARIES).map(str), values),
    "process.pid": st.one_of(st.sampled_from(BOUNDARIES), values),
}
full_contexts = st.fixed_dictionaries({f: FIELD_VALUES.get(f, values) for f in FIELDS})


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.one_of(leaves, in_tests(), comparisons()), st.lists(full_contexts, min_size=1, max_size=8))
def test_single_conditions_agree_with_the_reference(data: st.DataObject, leaf: Any, ctxs: list[dict[str, Any]]) -> None:
    # One comparison against contexts where every field is set: no and/or to hide a disagreement.
    text = render(leaf, data.draw)
    rule = compile_rule(text, macro_texts(data.draw))
    for ctx in ctxs:
        assert rule.evaluate(_Ctx(ctx)) is ref_eval(leaf, ctx), (text, ctx)
