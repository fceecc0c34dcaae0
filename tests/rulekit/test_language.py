"""The rule language: what parses, what each operator means, and where errors point."""

from __future__ import annotations

import pytest

from qtap_async.errors import ConfigError
from qtap_async.rulekit import (
    MAX_DEPTH,
    MappingContext,
    RuleSyntaxError,
    compile_rule,
    parse,
    validate_macros,
)
from qtap_async.rulekit.lexer import tokenize

TX = MappingContext(
    {
        "http.req.method": "POST",
        "http.req.path": "/v1/items?page=2",
        "http.req.host": "api.example.com",
        "http.req.url": "https://api.example.com/v1/items?page=2",
        "http.req.headers.Content-Type": "application/json",
        "http.req.headers.content-length": "1200",
        "http.req.headers.x-empty": "",
        "http.res.status": 503,
        "http.res.headers.Retry-After": "30",
        "process.exe": "/usr/bin/curl",
        "process.pid": 4242,
        "conn.direction": "egress-external",
        "conn.remote_ip": "10.1.2.3",
    }
)
EMPTY = MappingContext({})


def ev(expr: str, ctx: MappingContext = TX, macros: dict[str, str] | None = None) -> bool:
    return compile_rule(expr, macros).evaluate(ctx)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # the example of the issue
        (r'http.res.status >= 500 and http.req.host matches "api\\..*"', True),
        (r'http.res.status >= 500 and http.req.host matches "api\..*"', True),
        # equality and ordering
        ('http.req.method == "POST"', True),
        ('http.req.method == "post"', False),
        ('http.req.method != "GET"', True),
        ("http.res.status == 503", True),
        ("http.res.status != 503", False),
        ("http.res.status < 600", True),
        ("http.res.status <= 503", True),
        ("http.res.status > 503", False),
        ("http.res.status >= 503.0", True),
        ("500 < http.res.status", True),
        ('"POST" == http.req.method', True),
        ("http.res.status eq 503 and http.res.status ge 500 and http.res.status lt 504", True),
        # strings holding numbers compare as numbers against numbers
        ("http.req.headers.content-length > 1000", True),
        ("http.req.headers.content-length == 1200", True),
        ('http.res.status == "503"', True),
        ('http.res.headers.retry-after < "31"', True),  # string vs string: by code point
        ('http.res.headers.retry-after < "4"', True),  # ... so "30" < "4"
        ("http.res.headers.retry-after < 4", False),  # against a number it is read as 30
        ("http.req.method > 5", False),  # not a number: incomparable
        ("http.req.method != 5", True),  # both present, not equal
        # status classes
        ("http.res.status == 5xx", True),
        ("http.res.status == 5XX", True),
        ("http.res.status != 5xx", False),
        ("http.res.status == 4xx", False),
        ("http.res.status in [2xx, 3xx]", False),
        ("http.res.status in [200, 5xx]", True),
        # string operators
        ('http.req.path contains "items"', True),
        ('http.req.path not contains "items"', False),
        ('http.req.path startswith "/v1/"', True),
        ('http.req.path starts_with "/v2/"', False),
        ('http.req.url endswith "page=2"', True),
        ('http.req.url not endswith "page=2"', False),
        ('process.exe endswith "curl"', True),
        ('http.res.status startswith "5"', True),  # numbers are seen as decimal text
        ("http.req.host contains http.req.host", True),
        # regexes
        ('http.req.path matches "^/v[0-9]+/"', True),
        (r"http.req.path matches /^\/v1\//", True),
        ('http.req.host matches "(?i)^API\\."', True),
        ('http.req.host not matches "^www"', True),
        ('http.res.status matches "^5"', True),
        # lists
        ('http.req.method in ["GET", "POST"]', True),
        ('http.req.method not in ["GET", "POST"]', False),
        ('http.req.method in ["GET", "HEAD",]', False),
        ("http.req.method in []", False),
        ('http.res.status in ["503"]', True),
        ("process.pid in [1, 4242]", True),
        # CIDR
        ('conn.remote_ip in "10.0.0.0/8"', True),
        ("conn.remote_ip in 10.0.0.0/8", True),
        ('conn.remote_ip in "192.168.0.0/16"', False),
        ('conn.remote_ip not in "192.168.0.0/16"', True),
        ('conn.remote_ip in ["192.168.0.0/16", "10.1.0.0/16"]', True),
        ('conn.remote_ip in "10.1.2.3"', True),
        ('conn.remote_ip in "fd00::/8"', False),
        ('conn.remote_ip == "10.1.2.3"', True),
        ("conn.remote_ip == 10.1.2.3", True),
        # headers: case-insensitive names, bracket syntax, Qtap aliases
        ('http.req.headers.content-type == "application/json"', True),
        ('http.req.headers.CONTENT-TYPE == "application/json"', True),
        ('http.req.headers["Content-Type"] contains "json"', True),
        ('request.headers["content-type"] contains "json"', True),
        ("response.status >= 500", True),
        ('request.host == "api.example.com"', True),
        # truthiness, presence, absence
        ("http.req.path", True),
        ("http.req.headers.x-empty", False),
        ("http.req.headers.missing", False),
        ("not http.req.headers.missing", True),
        ("true", True),
        ("false", False),
        ("TRUE and not FALSE", True),
        # boolean structure and precedence
        ('http.req.method == "GET" or http.res.status == 503', True),
        ('http.req.method == "GET" or http.res.status == 503 and false', False),
        ('(http.req.method == "GET" or http.res.status == 503) and true', True),
        ('not http.req.method == "GET"', True),
        ('!(http.req.method == "GET") && http.res.status == 503 || false', True),
        ("not not true", True),
        ('conn.direction == "egress-external"', True),
        ("'single' != http.req.method", True),
    ],
)
def test_evaluates(expr: str, expected: bool) -> None:
    assert ev(expr) is expected


@pytest.mark.parametrize(
    "expr",
    [
        'http.req.headers.user-agent == "curl"',
        'http.req.headers.user-agent != "curl"',
        "http.res.status > 1",
        "http.res.status < 1",
        "http.res.status == 5xx",
        "http.res.status != 5xx",
        'http.req.path contains ""',
        'http.req.path not contains "x"',
        'http.req.path matches ".*"',
        'http.req.path not matches "x"',
        'http.req.method in ["GET"]',
        'http.req.method not in ["GET"]',
        'conn.remote_ip in "0.0.0.0/0"',
        'conn.remote_ip not in "10.0.0.0/8"',
        "http.req.path == http.req.host",
        "http.req.path != http.req.host",
        "http.req.path",
    ],
)
def test_null_makes_every_comparison_false(expr: str) -> None:
    assert ev(expr, EMPTY) is False


def test_not_of_a_comparison_with_null_is_true() -> None:
    assert ev('not (http.req.headers.user-agent == "curl")', EMPTY) is True
    assert ev("not http.res.status", EMPTY) is True


@pytest.mark.parametrize(
    ("value", "expr", "expected"),
    [
        ("::ffff:10.0.0.1", 'conn.remote_ip in "10.0.0.0/8"', True),
        ("2001:db8::1", 'conn.remote_ip in "2001:db8::/32"', True),
        ("2001:db8::1", 'conn.remote_ip in "10.0.0.0/8"', False),
        ("not an ip", 'conn.remote_ip in "0.0.0.0/0"', False),
        ("not an ip", 'conn.remote_ip not in "0.0.0.0/0"', True),
    ],
)
def test_cidr_values(value: str, expr: str, expected: bool) -> None:
    assert ev(expr, MappingContext({"conn.remote_ip": value})) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 1200 ", True),
        ("1200.0", True),
        ("+1200", True),
        ("1_200", False),
        ("12e2", True),
        ("nan", False),
        ("", False),
    ],
)
def test_strings_read_as_numbers(value: str, expected: bool) -> None:
    ctx = MappingContext({"http.req.headers.content-length": value})
    assert ev("http.req.headers.content-length == 1200", ctx) is expected


def test_odd_context_values_do_not_raise() -> None:
    class Odd:
        def get(self, field: str) -> object:
            return {"http.res.status": True, "http.req.path": b"/bytes", "http.req.host": ["x"]}.get(field)

    rule = compile_rule('http.res.status == 1 and not http.req.path and not (http.req.host == "x")')
    assert rule.evaluate(Odd()) is True  # type: ignore[arg-type]
    assert compile_rule("http.res.status > 0.5").evaluate(MappingContext({"http.res.status": float("nan")})) is False


def test_fields_and_macros_used() -> None:
    rule = compile_rule(
        'request.headers["X-Id"] and $err', {"err": "http.res.status == 5xx or internal", "internal": "true"}
    )
    assert rule.fields == {"http.req.headers.x-id", "http.res.status"}
    assert rule.macros_used == {"err", "internal"}
    assert rule(TX) is False
    assert repr(rule).startswith("Rule(")


def test_macros_three_spellings_and_nesting() -> None:
    macros = {
        "server_error": "http.res.status == 5xx",
        "internal": 'conn.remote_ip in "10.0.0.0/8"',
        "both": "$server_error and internal()",
    }
    for expr in ("$server_error", "server_error", "server_error()", "both", "$both and not false"):
        assert ev(expr, macros=macros) is True
    assert ev("not $both", macros=macros) is False


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "column", "message"),
    [
        ("", 1, "empty expression"),
        ("   ", 1, "empty expression"),
        ("http.res.statsu >= 500", 1, "unknown field 'http.res.statsu' (did you mean 'http.res.status'?)"),
        ("status >= 500", 1, "unknown name 'status' (did you mean 'http.res.status'?)"),
        ("http.res.status >= ", 20, "expected a value after '>='"),
        ("http.res.status = 500", 17, "unexpected '='; use '==' to compare"),
        ("http.res.status == 500 ==", 24, "comparisons cannot be chained; join them with 'and'"),
        ("http.res.status > 5xx", 19, "a status class like 5xx only works with ==, != and in"),
        ('"a" == "b"', 5, "both sides are values; compare a field with a value"),
        ("500", 1, "a value alone is not a condition; compare it with a field (found end of expression)"),
        ("(http.res.status", 17, "expected ')' to close the '(' at column 1, found end of expression"),
        ("http.res.status)", 16, "unbalanced ')'"),
        ("http.res.status == 1 http.req.path", 22, "expected 'and', 'or' or end of expression"),
        ('http.req.host matches "a(b"', 25, "invalid regex: missing ), unterminated subpattern"),
        ("http.req.host matches /ab[/", 26, "invalid regex: unterminated character set"),
        ('http.req.host matches "ok" or http.req.path matches "x{2,1}"', 56, "invalid regex: min repeat greater"),
        ("http.req.host matches 5", 23, "expected a regex after 'matches'"),
        ('http.req.host == "unterminated', 18, "unterminated string"),
        ("http.req.host matches /abc", 23, "unterminated regex: missing closing '/'"),
        ('conn.remote_ip in "10.0.0.0/33"', 19, "expected a network like \"10.0.0.0/8\" after 'in'"),
        ('conn.remote_ip in "abc"', 19, "expected a network like"),
        ("conn.remote_ip in http.req.host", 19, "expected a list [...] or a network"),
        ('conn.remote_ip == "1.2.3.4" and conn.remote_ip == 10.0.0.0/8', 51, "a network can only follow 'in'"),
        ('http.req.method in ["GET" "POST"]', 27, "expected ',' or ']' in the list"),
        ("http.req.method in [http.req.path]", 21, "expected a string, number or status class in the list"),
        ("http.req.headers == 1", 1, "'http.req.headers' needs a header name"),
        ("http.req.host contains 5", 24, "'contains' needs a string, found number 5"),
        ("http.res.status == true", 20, "'true' is a condition, not a value"),
        ("$nope", 1, "unknown macro '$nope'"),
        ("$", 1, "expected a macro name after '$'"),
        ("http.res.status == 1.2.3", 20, "invalid number '1.2.3'"),
        ("http.res.status == 5xxx", 20, "invalid number '5xxx'"),
        ("http.res.status == 0xx", 20, "invalid number '0xx'"),
        ("http.req.path # comment", 15, "unexpected character '#'"),
        ("not", 4, "expected a condition, found end of expression"),
        ("http.req.path and", 18, "expected a condition, found end of expression"),
        ("http.req.host matches", 22, "expected a regex after 'matches'"),
        ("/re/", 1, "a regex can only follow 'matches'"),
        ("(true) == 1", 8, "a parenthesized condition is a condition and cannot be compared"),
        ("http.req.path ==\n  nope", 20, "unknown name 'nope'"),
    ],
)
def test_syntax_errors(expr: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule(expr)
    err = info.value
    assert err.message.startswith(message), err.message
    assert err.column == column, err.message
    assert err.expression == expr
    assert isinstance(err, ConfigError)
    assert f"(column {column})" in str(err)


def test_error_caret_points_at_the_column() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule('http.req.method == "GET" and\n  http.res.statsu > 1')
    assert info.value.column == 32
    assert info.value.caret() == "    http.res.statsu > 1\n    ^"
    assert info.value.caret(indent="") == "  http.res.statsu > 1\n  ^"


def test_nesting_limit() -> None:
    ok = "(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH
    assert ev(ok) is True
    with pytest.raises(RuleSyntaxError, match="nests too deeply"):
        compile_rule("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(RuleSyntaxError, match="nests too deeply"):
        compile_rule("not " * (MAX_DEPTH + 1) + "true")


def test_nesting_limit_through_macros() -> None:
    macros = {f"m{i}": "not " * 60 + f"$m{i + 1}" for i in range(6)}
    macros["m6"] = "true"
    with pytest.raises(RuleSyntaxError, match="nests too deeply once macros are expanded") as info:
        compile_rule("$m0", macros)
    assert info.value.column == 1 and info.value.macro == "m0"


def test_long_flat_chains_evaluate_without_recursion() -> None:
    expr = " and ".join(["http.res.status == 503"] * 5000)
    assert ev(expr) is True
    assert ev(" or ".join(["false"] * 5000)) is False


def test_macro_errors_point_at_the_reference() -> None:
    macros = {"a": "$b", "b": "$a", "broken": "http.res.statsu > 1", "ok": "true"}
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule("$ok and $a", macros)
    assert info.value.column == 9
    assert info.value.message == "recursive macro: a -> b -> a"
    assert info.value.cycle == ("a", "b", "a")
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule("true and broken", macros)
    assert info.value.column == 10 and info.value.macro == "broken"
    assert "macro 'broken' has an error at its column 1: unknown field 'http.res.statsu'" in info.value.message
    with pytest.raises(RuleSyntaxError, match="unknown name 'ok2' \\(did you mean macro 'ok'\\?\\)"):
        compile_rule("ok2", macros)
    with pytest.raises(RuleSyntaxError, match="macro 'ok' is a condition and cannot be compared"):
        compile_rule("ok == 1", macros)
    with pytest.raises(RuleSyntaxError, match="macro 'ok' is a condition, not a value"):
        compile_rule("http.req.path == ok", macros)


def test_validate_macros_reports_each_macro_once() -> None:
    errors = validate_macros(
        {
            "a": "$b",
            "b": "$a",
            "self": "self",
            "broken": "http.res.statsu > 1",
            "user": "$broken",
            "fine": "$user or true",
            "and": "true",
            "unknown": "$missing",
        }
    )
    assert set(errors) == {"a", "b", "self", "broken", "and", "unknown"}
    assert errors["a"].message == "recursive macro: a -> b -> a"
    assert errors["b"].message == "recursive macro: b -> a -> b"
    assert errors["self"].message == "recursive macro: self -> self"
    assert errors["unknown"].message.startswith("unknown macro '$missing'")


def test_tokens_carry_positions() -> None:
    tokens = tokenize('a.b == "x\\"y" and 5xx')
    assert [(t.kind, t.value, t.pos) for t in tokens] == [
        ("ident", "a.b", 0),
        ("op", "==", 4),
        ("string", 'x"y', 7),
        ("keyword", "and", 14),
        ("status", 5, 18),
        ("eof", "", 21),
    ]


def test_parse_is_cached_and_immutable() -> None:
    assert parse("http.res.status == 1") is parse("http.res.status == 1")
