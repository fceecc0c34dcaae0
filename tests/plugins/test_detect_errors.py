from __future__ import annotations

from typing import Any

import msgspec

from qtap_async.plugins import DetectErrors, IssueEvent
from qtap_async.plugins.detect_errors import DetectErrorsConfig, DetectErrorsRule
from qtap_async.pulse.bounds import Event as PulseEvent
from qtap_async.pulse.bounds import bounded
from qtap_async.rulekit import compile_rule
from qtap_async.sinks.base import StoredObject
from tests.plugins.helpers import exchange, recorded, tx


def detect(t: Any, plugin: DetectErrors | None = None) -> tuple[list[IssueEvent], list[StoredObject]]:
    out = (plugin or DetectErrors(DetectErrorsConfig(), compile_rule)).on_http(exchange(t))
    return [i for i in out if isinstance(i, IssueEvent)], [i for i in out if isinstance(i, StoredObject)]


def test_default_rules_server_and_client_errors() -> None:
    issues, objects = detect(tx(status=503, path="/v1/pay?card=4111", response_body=b"down", response_body_size=4))
    assert [(i.rule, i.severity, i.status) for i in issues] == [("server error", "error", "503")]
    assert len(objects) == 1 and issues[0].object_digest == objects[0].digest
    doc = msgspec.json.decode(objects[0].data)
    assert doc["response"]["body"] == {"text": "down"} and doc["level"] == "full"
    assert "card" not in issues[0].summary and issues[0].summary == "GET api.example.com/v1/pay -> 503"
    assert detect(tx(status=404))[0][0].severity == "warning"
    assert detect(tx(status=200)) == ([], [])


def test_issue_is_pulse_compatible() -> None:
    (issue,), _ = detect(tx(status=500))
    raw = msgspec.json.decode(msgspec.json.encode(issue))
    assert set(raw) <= set(bounded(IssueEvent).__struct_fields__) | {"type"}
    decoded = msgspec.json.decode(msgspec.json.encode(issue), type=PulseEvent)
    assert isinstance(decoded, bounded(IssueEvent)) and decoded.rule == "server error"


def test_every_matching_rule_reports_and_extra_checks() -> None:
    cfg = DetectErrorsConfig(rules=[
        DetectErrorsRule(name="any 5xx", expr="http.res.status == 5xx", severity="critical"),
        DetectErrorsRule(name="api", expr='http.req.host endswith "example.com"', severity="info"),
    ])
    p = DetectErrors(cfg, compile_rule, slow_after_ns=3_000_000, empty_body=True, attach=False)
    issues, objects = detect(tx(status=500), p)
    assert [i.rule for i in issues] == ["any 5xx", "api", "slow response"] and objects == []
    issues, _ = detect(tx(status=200, response_body=b"", response_body_size=0, response_end_ns=2_000_000), p)
    assert [i.rule for i in issues] == ["api", "empty response body"]


def test_recorded_404_is_a_warning() -> None:
    found = [detect(t)[0] for t in recorded("h2c_nghttp_two")]
    assert [[i.rule for i in f] for f in found] == [[], ["client error"]]
