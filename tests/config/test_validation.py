"""Checks across fields and warnings (qtap_async.config.validation): what a single field cannot say."""

from __future__ import annotations

import textwrap

import pytest

from qtap_async.config import Config, ConfigValidationError, config_warnings, loads_config


def load(text: str) -> Config:
    return loads_config(textwrap.dedent(text), "test.yaml")


def test_endpoint_domains() -> None:
    ok = load(
        """\
        version: 2
        tap:
          endpoints:
            - domain: api.example.com
            - domain: "*.internal.example.com"
            - domain: 10.0.0.1
            - domain: "::1"
            - domain: localhost.
        """
    )
    assert len(ok.tap.endpoints) == 5
    with pytest.raises(ConfigValidationError, match=r"duplicate endpoint domain 'API\.example\.com'"):
        load(
            """\
            version: 2
            tap:
              endpoints:
                - domain: api.example.com
                - domain: API.example.com
            """
        )


def test_cross_field_problems_are_reported_together() -> None:
    # Structure is right, so every check across fields runs and reports in the same error.
    with pytest.raises(ConfigValidationError) as info:
        load(
            """\
            version: 2
            services:
              object_stores:
                - {type: dir, id: o, path: /a}
                - {type: dir, id: o, path: /b}
            stacks:
              s:
                plugins:
                  - type: access_logs
                    config: {rules: [{name: "  ", expr: "true", mode: full}]}
            tap:
              http: {stack: t}
              filters:
                custom: [{exe: ""}]
            """
        )
    assert [(i.dotted_path, i.line, i.message) for i in info.value.issues] == [
        ("services.object_stores[1].id", 5, "duplicate object store id 'o' (also object_stores[0])"),
        ("stacks.s.plugins[0].config.rules[0].name", 10, "a rule needs a non-empty name"),
        ("tap.http.stack", 12, "unknown stack 't'; defined stacks: s"),
        ("tap.filters.custom[0].exe", 14, "exe must not be empty"),
    ]


def test_warnings() -> None:
    config = load(
        """\
        version: 2
        services:
          object_stores:
            - type: s3
              bucket: b
              secret_key: {type: text, value: plain}
        stacks:
          used:
            plugins:
              - type: http_capture
                config: {level: none, rules: [{name: x, expr: "true", level: full}]}
          unused:
            plugins: []
        tap:
          http: {stack: used}
        """
    )
    assert config_warnings(config) == [
        "stacks.unused is not used by tap.http or any endpoint",
        "no event store is enabled: events are discarded",
        "services.object_stores[0].secret_key is a plain-text secret; prefer {type: env, value: VAR}",
    ]
    no_objects = load(
        """\
        version: 2
        services: {event_stores: [{type: stdout}]}
        stacks: {s: {plugins: [{type: http_capture, config: {level: full}}]}}
        tap: {http: {stack: s}}
        """
    )
    assert config_warnings(no_objects) == [
        "http_capture keeps headers/bodies (level details or full) but no object store is enabled"
    ]


def test_validate_warns_about_the_old_pulse_example() -> None:
    cfg = loads_config("""version: 2
services:
  event_stores:
    - type: pulse
      url: http://127.0.0.1:8000/v1/events
      token: {type: env, value: PULSE_TOKEN}
stacks:
  r:
    plugins: [{type: report_usage}]
tap:
  direction: egress-external
  ignore_loopback: true
  http: {stack: r}
""")
    warnings = " ".join(config_warnings(cfg))
    assert "ends with /v1/events" in warnings and "use http://127.0.0.1:8000" in warnings
    assert "ignore_loopback is true" in warnings
