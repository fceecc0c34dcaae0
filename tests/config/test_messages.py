"""The words of config errors (qtap_async.config.messages): a table of invalid configs, each rejected with
its specific message, field path and line; and the pieces that make the words."""

from __future__ import annotations

import textwrap

import pytest

from qtap_async.config import ConfigIssue, ConfigValidationError, format_path, loads_config
from qtap_async.errors import ConfigError

# (id, yaml, path, line, column, message start)
CASES: list[tuple[str, str, str, int, int | None, str]] = [
    (
        "unknown strategy",
        """
        version: 2
        tap:
          filters:
            custom:
              - exe: /usr/bin/curl
                strategy: prefx
        """,
        "tap.filters.custom[0].strategy",
        6,
        19,
        "unknown value 'prefx'; expected one of contains, exact, prefix, regex, suffix (did you mean 'prefix'?)",
    ),
    (
        "unknown top-level key",
        """
        version: 2
        servics: {}
        """,
        "servics",
        2,
        1,
        "unknown field 'servics' (did you mean 'services'?)",
    ),
    (
        "unknown tap key",
        """
        version: 2
        tap:
          direction: all
          ignore_loopbak: true
        """,
        "tap.ignore_loopbak",
        4,
        3,
        "unknown field 'ignore_loopbak' (did you mean 'ignore_loopback'?)",
    ),
    (
        "missing version",
        """
        tap:
          direction: all
        """,
        "",
        1,
        1,
        "missing required field 'version' (this format is 'version: 2')",
    ),
    (
        "wrong version",
        """
        version: 1
        """,
        "version",
        1,
        10,
        "unsupported version 1; expected 2",
    ),
    (
        "bad direction",
        """
        version: 2
        tap:
          direction: outbound
        """,
        "tap.direction",
        3,
        14,
        "unknown value 'outbound'; expected one of all, egress, egress-external, egress-internal, ingress",
    ),
    (
        "bool expected",
        """
        version: 2
        tap:
          ignore_loopback: maybe
        """,
        "tap.ignore_loopback",
        3,
        20,
        "expected true or false, got a string",
    ),
    (
        "unknown event store type",
        """
        version: 2
        services:
          event_stores:
            - type: stdot
        """,
        "services.event_stores[0].type",
        4,
        13,
        "unknown event store type 'stdot'; expected one of disabled, kafka, otel, pulse, stdout "
        "(did you mean 'stdout'?)",
    ),
    (
        "object store type used as event store",
        """
        version: 2
        services:
          event_stores:
            - type: s3
              bucket: b
        """,
        "services.event_stores[0].type",
        4,
        13,
        "unknown event store type 's3'",
    ),
    (
        "store without type",
        """
        version: 2
        services:
          object_stores:
            - bucket: b
        """,
        "services.object_stores[0]",
        4,
        7,
        "missing required field 'type' (one of dir, disabled, s3, stdout)",
    ),
    (
        "store settings decoded by the sink's struct",
        """
        version: 2
        services:
          event_stores:
            - type: kafka
              topic: qtap
        """,
        "services.event_stores[0]",
        4,
        7,
        "missing required field 'brokers'",
    ),
    (
        "secret with an unknown source",
        """
        version: 2
        services:
          object_stores:
            - type: s3
              bucket: b
              secret_key: {type: vault, value: x}
        """,
        "services.object_stores[0].secret_key.type",
        6,
        26,
        "unknown value 'vault'; expected one of env, file, text",
    ),
    (
        "duplicate store id",
        """
        version: 2
        services:
          event_stores:
            - type: stdout
              id: out
            - type: stdout
              id: out
        """,
        "services.event_stores[1].id",
        7,
        11,
        "duplicate event store id 'out' (also event_stores[0])",
    ),
    (
        "unknown plugin type",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: debug
        """,
        "stacks.default.plugins[0].type",
        5,
        15,
        "unknown plugin type 'debug'; expected one of http_capture, access_logs, report_usage, detect_errors,"
        " http_metrics (Qtap's debug plugin does not exist in qtap-async; use access_logs)",
    ),
    (
        "plugin without type",
        """
        version: 2
        stacks:
          default:
            plugins:
              - config: {}
        """,
        "stacks.default.plugins[0]",
        5,
        9,
        "missing required field 'type'",
    ),
    (
        "qtap headers level",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: http_capture
                config:
                  level: headers
        """,
        "stacks.default.plugins[0].config.level",
        7,
        18,
        "unknown value 'headers'; expected one of details, full, none, summary (Qtap's 'headers' level is called "
        "'details' here)",
    ),
    (
        "access_logs takes mode, not level",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: access_logs
                config:
                  level: full
        """,
        "stacks.default.plugins[0].config.level",
        7,
        11,
        "unknown field 'level' (access_logs uses 'mode')",
    ),
    (
        "rule without level",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: http_capture
                config:
                  rules:
                    - name: errors
                      expr: http.res.status >= 500
        """,
        "stacks.default.plugins[0].config.rules[0]",
        8,
        15,
        "missing required field 'level'",
    ),
    (
        "empty rule expression value",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: detect_errors
                config:
                  rules:
                    - name: errors
                      expr:
        """,
        "stacks.default.plugins[0].config.rules[0].expr",
        9,
        15,
        "'expr' is empty; it needs a value",
    ),
    (
        "bad rule expression: column in the line",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: detect_errors
                config:
                  rules:
                    - name: errors
                      expr: http.res.status >= 500 and http.req.hots == "x"
        tap:
          http:
            stack: default
        """,
        "stacks.default.plugins[0].config.rules[0].expr",
        9,
        48,
        "unknown field 'http.req.hots' (did you mean 'http.req.host'?) (expression column 28)",
    ),
    (
        "bad regex in a quoted rule",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: access_logs
                config:
                  rules:
                    - name: api
                      expr: 'http.req.path matches "^/v[0-9"'
                      mode: full
        """,
        "stacks.default.plugins[0].config.rules[0].expr",
        9,
        48,
        "invalid regex: unterminated character set (expression column 27)",
    ),
    (
        "rule in a literal block: line and column inside the block",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: detect_errors
                config:
                  rules:
                    - name: multi
                      expr: |
                        http.res.status >= 500
                          and process.pid > 5xx
        """,
        "stacks.default.plugins[0].config.rules[0].expr",
        11,
        37,
        "a status class like 5xx only works with ==, != and in",
    ),
    (
        "duplicate rule names",
        """
        version: 2
        stacks:
          default:
            plugins:
              - type: detect_errors
                config:
                  rules:
                    - {name: e, expr: "true"}
                    - {name: e, expr: "false"}
        """,
        "stacks.default.plugins[0].config.rules[1].name",
        9,
        22,
        "duplicate rule name 'e' (also rules[0])",
    ),
    (
        "unknown stack",
        """
        version: 2
        stacks:
          default:
            plugins: []
        tap:
          http:
            stack: defualt
        """,
        "tap.http.stack",
        7,
        12,
        "unknown stack 'defualt' (did you mean 'default'?)",
    ),
    (
        "endpoint with an unknown stack and no stacks at all",
        """
        version: 2
        tap:
          endpoints:
            - domain: api.example.com
              http: {stack: full}
        """,
        "tap.endpoints[0].http.stack",
        5,
        21,
        "unknown stack 'full'; no stacks are defined (add one under 'stacks')",
    ),
    (
        "bad endpoint domain",
        """
        version: 2
        tap:
          endpoints:
            - domain: "https://api.example.com/"
        """,
        "tap.endpoints[0].domain",
        4,
        15,
        "invalid domain 'https://api.example.com/': expected a host name",
    ),
    (
        "bad exe regex",
        """
        version: 2
        tap:
          filters:
            custom:
              - exe: "python[23"
                strategy: regex
        """,
        "tap.filters.custom[0].exe",
        5,
        14,
        "invalid regex: unterminated character set (at position 7)",
    ),
    (
        "unknown filter group",
        """
        version: 2
        tap:
          filters:
            groups: [qpoint, kubernetse]
        """,
        "tap.filters.groups[1]",
        4,
        22,
        "unknown value 'kubernetse'; expected one of container, eks, gke, kubernetes, qpoint (did you mean "
        "'kubernetes'?)",
    ),
    (
        "recursive macros",
        """
        version: 2
        rulekit:
          macros:
            - name: a
              expr: $b or false
            - name: b
              expr: true and a
        """,
        "rulekit.macros[0].expr",
        5,
        13,
        "recursive macro: a -> b -> a (expression column 1)",
    ),
    (
        "macro named like a keyword",
        """
        version: 2
        rulekit:
          macros:
            - name: not
              expr: "true"
        """,
        "rulekit.macros[0].name",
        4,
        13,
        "invalid macro name 'not': use letters, digits and '_' (not a keyword)",
    ),
    (
        "duplicate macro",
        """
        version: 2
        rulekit:
          macros:
            - {name: m, expr: "true"}
            - {name: m, expr: "false"}
        """,
        "rulekit.macros[1].name",
        5,
        14,
        "duplicate macro name 'm' (also macros[0])",
    ),
    (
        "stacks must be a mapping",
        """
        version: 2
        stacks:
          - default
        """,
        "stacks",
        3,
        3,
        "expected a mapping of stack names, got a list",
    ),
    (
        "duplicate YAML key",
        """
        version: 2
        tap:
          direction: all
          direction: ingress
        """,
        "tap.direction",
        4,
        3,
        "duplicate key 'direction' (first written on line 3)",
    ),
    (
        "tap.redis from Qtap",
        """
        version: 2
        tap:
          redis:
            stack: default
        """,
        "tap.redis",
        3,
        3,
        "unknown field 'redis' (qtap-async captures HTTP only)",
    ),
    (
        "YAML syntax error",
        """
        version: 2
        tap:
          direction: [all
        """,
        "",
        4,
        1,
        "invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "top level is a list",
        """
        - version: 2
        """,
        "",
        1,
        1,
        "the top level must be a mapping (version, services, stacks, tap, rulekit), got a list",
    ),
    (
        "integer expected",
        """
        version: 2
        services:
          event_stores:
            - type: kafka
              brokers: [localhost:9092]
              topic: t
              buffer: {max_events: lots}
        """,
        "services.event_stores[0].buffer.max_events",
        7,
        28,
        "expected an integer, got a string",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "column", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_config(text: str, path: str, line: int, column: int | None, message: str) -> None:
    source = textwrap.dedent(text).lstrip("\n")
    with pytest.raises(ConfigValidationError) as info:
        loads_config(source, "bad.yaml")
    err = info.value
    assert isinstance(err, ConfigError)
    issue = err.issues[0]
    assert issue.message.startswith(message), issue.message
    assert issue.dotted_path == path
    assert (issue.line, issue.column) == (line, column)
    rendered = f"bad.yaml:{line}:{column}: {path + ': ' if path else ''}{message}"
    assert rendered in str(err)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 15


def test_every_problem_is_reported_sorted_by_line() -> None:
    text = textwrap.dedent(
        """\
        version: 2
        services:
          event_stores:
            - type: stdut
        stacks:
          default:
            plugins:
              - type: http_capture
                config:
                  level: headers
        tap:
          ignore_loopbak: true
        rulekit:
          macros: {}
        """
    )
    with pytest.raises(ConfigValidationError) as info:
        loads_config(text, "bad.yaml")
    assert [(i.dotted_path, i.line) for i in info.value.issues] == [
        ("services.event_stores[0].type", 4),
        ("stacks.default.plugins[0].config.level", 10),
        ("tap.ignore_loopbak", 12),
        ("rulekit.macros", 14),
    ]
    assert str(info.value).splitlines()[0] == "bad.yaml: invalid config (4 problems)"


def test_rules_using_a_broken_macro_are_not_reported_twice() -> None:
    text = textwrap.dedent(
        """\
        version: 2
        rulekit:
          macros:
            - name: bad
              expr: http.res.statsu > 1
        stacks:
          default:
            plugins:
              - type: detect_errors
                config:
                  rules:
                    - {name: uses bad, expr: "$bad"}
                    - {name: unknown, expr: "$nope"}
        """
    )
    with pytest.raises(ConfigValidationError) as info:
        loads_config(text, "bad.yaml")
    assert [i.dotted_path for i in info.value.issues] == [
        "rulekit.macros[0].expr",
        "stacks.default.plugins[0].config.rules[1].expr",
    ]


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("services", "event_stores", 0, "url")) == "services.event_stores[0].url"
    assert format_path(("stacks", "my stack", "plugins")) == "stacks['my stack'].plugins"


def test_an_issue_renders_file_line_column_path_and_detail() -> None:
    issue = ConfigIssue(("tap", "direction"), "bad", 3, 14, "    ^")
    assert issue.format("q.yaml") == "q.yaml:3:14: tap.direction: bad\n    ^"
    assert ConfigIssue((), "empty", 1, None).format("q.yaml") == "q.yaml:1: empty"
    err = ConfigValidationError("q.yaml", [ConfigIssue(("b",), "two", 5, 1), ConfigIssue(("a",), "one", 2, 1)])
    assert str(err).splitlines() == ["q.yaml: invalid config (2 problems)", "q.yaml:2:1: a: one", "q.yaml:5:1: b: two"]


@pytest.mark.parametrize(("text", "expected"), [
    # A store or plugin entry without a type lists the types it may have, in its union's order.
    ("version: 2\nstacks:\n  s:\n    plugins:\n      - config: {}\n",
     "stacks.s.plugins[0]: missing required field 'type' (one of http_capture, access_logs, report_usage, "
     "detect_errors, http_metrics)"),
    ("version: 2\nservices:\n  event_stores:\n    - id: x\n",
     "services.event_stores[0]: missing required field 'type' (one of disabled, kafka, otel, pulse, stdout)"),
    # The hints of a Struct's field_hints, and close names otherwise.
    ("version: 2\nstacks:\n  s:\n    plugins:\n      - type: http_capture\n        config: {mode: full}\n",
     "stacks.s.plugins[0].config.mode: unknown field 'mode' (http_capture uses 'level')"),
    ("version: 2\ntap:\n  endpoints:\n    - {domain: a.example.com, redis: {}}\n",
     "tap.endpoints[0].redis: unknown field 'redis' (qtap-async captures HTTP only)"),
    ("version: 2\nservices:\n  object_stores:\n    - {type: dir, path: /x, zzz: 1}\n",
     "services.object_stores[0].zzz: unknown field 'zzz'; allowed fields: path, key, fsync, access_url, "
     "retention, max_bytes, prune_interval, id, name, buffer, retry, spool, shutdown_timeout, check_on_start"),
    ("version: 2\ntap:\n  direction: egress_external\n",
     "tap.direction: unknown value 'egress_external'; expected one of all, egress, egress-external, "
     "egress-internal, ingress (use 'egress-external')"),
    ("version: 2\nservices:\n  object_stores:\n    - {type: dir, path: /x, retention: 3w}\n",
     "services.object_stores[0].retention: expected a string matching regex '^[1-9][0-9]*[smhd]$'"),
    ("version: 2\nservices:\n  event_stores:\n    - {type: stdout, id: 7}\n",
     "services.event_stores[0].id: expected a string, got an integer"),
    ("version: 2\nservices:\n  event_stores: {type: stdout}\n",
     "services.event_stores: expected a list, got a mapping"),
])
def test_messages_name_the_field_and_the_reason(text: str, expected: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        loads_config(text, "bad.yaml")
    first = info.value.issues[0]
    assert f"{first.dotted_path}: {first.message}" == expected
