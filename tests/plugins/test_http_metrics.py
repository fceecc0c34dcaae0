"""The http_metrics plugin and the RED aggregation it shares with the otel store (qtap_async.telemetry.red):
label values, histogram buckets, the cardinality limits folding into "other", the Prometheus exposition
through the agent's registry, and the config's checks. The real agent with real curl traffic is
tests/integration/test_http_metrics_e2e.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qtap_async.config import ConfigValidationError, loads_config
from qtap_async.plugins.http_metrics import LABELS, HttpMetrics, HttpMetricsConfig
from qtap_async.plugins.stack import Stack
from qtap_async.telemetry import metrics
from qtap_async.telemetry.metrics import MetricRegistry
from qtap_async.telemetry.red import OTHER, Hist, LabelLimit, SeriesTable, status_class
from tests.plugins.helpers import conn, exchange, tx

ROOT = Path(__file__).resolve().parents[2]


def plugin(**kw: Any) -> HttpMetrics:
    return HttpMetrics(HttpMetricsConfig(**kw), "web")


def scrape(*plugins: HttpMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    reg = MetricRegistry([], info={})
    reg.add_families(lambda: [f for p in plugins for f in p.families()])
    reg.add_source(lambda: {k: v for p in plugins for k, v in p.stats().items()})
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(reg.exposition().decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_histogram_buckets_are_upper_inclusive_and_cumulative_for_prometheus() -> None:
    h = Hist(3)
    bounds = (0.1, 1.0, 10.0)
    for v in (0.05, 0.1, 0.5, 1.0, 20.0):
        h.add(bounds, v)
    assert h.counts == [2, 2, 0, 1]  # (..0.1], (0.1..1], (1..10], (10..)
    assert h.cumulative() == [2, 4, 4, 5]
    assert (h.n, h.min, h.max) == (5, 0.05, 20.0)
    assert h.sum == pytest.approx(21.65)


def test_status_class() -> None:
    assert [status_class(s) for s in (200, 204, 301, 404, 503, None, 0, 700)] == ["2xx", "2xx", "3xx", "4xx", "5xx",
                                                                                  "", "", ""]


def test_series_table_folds_past_max_series_then_overflows() -> None:
    t: SeriesTable[bool] = SeriesTable(2, (1,), lambda g: (g, ("*", "*")))
    for i in range(10):
        t.observe(False, ("GET", f"/p{i}"), 0.01, 0, 0)
    # /p0, /p1 kept; then (GET, other) is the third series; the rest join it (count < 2 * max_series).
    assert {a for _, a, _ in t.items()} == {("GET", "/p0"), ("GET", "/p1"), ("GET", OTHER)}
    assert (t.count, t.folded, t.observed) == (3, 8, 10)
    for m in ("A", "B", "C"):
        t.observe(False, (m, "/x"), 0.01, 0, 0)
    # (A, other) is the fourth series; past 2 * max_series, B and C go to the overflow series.
    assert ("A", OTHER) in {a for _, a, _ in t.items()}
    assert ("*", "*") in {a for _, a, _ in t.items()} and ("B", OTHER) not in {a for _, a, _ in t.items()}
    assert t.count == 5 and t.folded == 11


def test_label_limit_keeps_the_first_values() -> None:
    lim = LabelLimit(2)
    assert [lim(v) for v in ("a", "b", "c", "a", "", "d")] == ["a", "b", OTHER, "a", "", OTHER]
    assert lim.folded == 2


def test_the_declared_labels_are_the_plugins() -> None:
    # Labels the declaration does not list are left out of /metrics: the two lists must be the same.
    assert ("stack", *LABELS) == metrics.HTTP_METRIC_LABELS
    assert set(HttpMetricsConfig().labels) == set(LABELS)


def test_labels_of_a_transaction() -> None:
    p = plugin(routes=["/v1/items/{id}"])
    ex = exchange(tx(path="/v1/items/42?x=1", status=404, method="BREW"),
                  conn(exe="/usr/local/bin/api", container_name="shop-api"))
    assert p.values(ex) == ("_OTHER", "4xx", "api.example.com", "/v1/items/{id}", "egress", "api", "shop-api")
    # The config's order does not matter; the samples' order is fixed.
    assert plugin(labels=["route", "method"]).labels == ("method", "route")
    assert plugin(labels=["process"]).values(exchange(tx(), conn(container_id="c" * 64))) == ("curl",)
    assert plugin(labels=["container"]).values(exchange(tx(), conn(container_id="c" * 64))) == ("c" * 12,)


def test_exposition_counts_durations_and_sizes_by_side() -> None:
    p = plugin(labels=["method", "status_class", "route"])
    for _ in range(3):  # 4 ms each (helpers.tx: request start 1 ms, response end 5 ms)
        p.on_http(exchange(tx(path="/v1/users/7", response_body_size=1500), conn()))
    p.on_http(exchange(tx(path="/v1/users/8", status=500, method="POST", request_body_size=20),
                       conn(direction="ingress")))
    p.on_http(exchange(tx(method=None, status=None), conn()))  # nothing parsed: not counted
    got = scrape(p)
    client = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")].name
    server = metrics.HTTP_HISTOGRAMS[("server", "request_duration_seconds")].name
    want = {"stack": "web", "method": "GET", "status_class": "2xx", "route": "/v1/users/{id}"}
    assert got[client + "_count"] == [(want, 3.0)]
    assert got[client + "_sum"][0][1] == pytest.approx(0.012)
    buckets = {ls["le"]: v for ls, v in got[client + "_bucket"]}
    assert (buckets.get("0.0025", 0.0), buckets["0.005"], buckets["+Inf"]) == (0.0, 3.0, 3.0)
    assert got[server + "_count"] == [({"stack": "web", "method": "POST", "status_class": "5xx",
                                        "route": "/v1/users/{id}"}, 1.0)]
    size = metrics.HTTP_HISTOGRAMS[("client", "response_body_size_bytes")].name
    assert {ls["le"]: v for ls, v in got[size + "_bucket"]}["10000.0"] == 3.0
    assert {ls["le"]: v for ls, v in got[size + "_bucket"]}["1000.0"] == 0.0
    assert got[metrics.HTTP_METRICS_OBSERVATIONS.name] == [({"stack": "web"}, 4.0)]
    assert got[metrics.HTTP_METRICS_SERIES.name] == [({"stack": "web"}, 2.0)]


def test_a_path_flood_folds_into_other_and_is_counted() -> None:
    p = plugin(labels=["method", "route"], max_series=5)
    names = [f"/flood/{a}{b}" for a in "abcdefghij" for b in "abcdefghijklmnopqrst"]  # 200 words, no ids
    for path in names:
        p.on_http(exchange(tx(path=path), conn()))
    got = scrape(p)
    count = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")].name + "_count"
    by_route = {ls["route"]: v for ls, v in got[count]}
    assert len(by_route) == 6 and by_route[OTHER] == 195
    assert sum(by_route.values()) == 200
    assert got[metrics.HTTP_METRICS_FOLDED.name] == [({"stack": "web"}, 195.0)]


def test_max_values_caps_one_label() -> None:
    p = plugin(labels=["domain", "method"], max_values={"domain": 2})
    for host in ("a.example", "b.example", "c.example", "d.example", "a.example"):
        p.on_http(exchange(tx(authority=host), conn()))
    assert {a for _, a, _ in p.table.items()} == {("GET", "a.example"), ("GET", "b.example"), ("GET", OTHER)}
    assert p.folded == 2


def test_buckets_follow_the_config() -> None:
    p = plugin(labels=["method"], duration_buckets=[0.001, 0.01])
    p.on_http(exchange(tx(), conn()))  # 4 ms
    got = scrape(p)
    name = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")].name + "_bucket"
    assert [(ls["le"], v) for ls, v in got[name]] == [("0.001", 0.0), ("0.01", 1.0), ("+Inf", 1.0)]


def test_two_stacks_share_one_family_each_with_its_stack_label() -> None:
    cfg = HttpMetricsConfig(labels=["method"])
    a, b = HttpMetrics(cfg, "a"), HttpMetrics(cfg, "b")
    a.on_http(exchange(tx(), conn()))
    b.on_http(exchange(tx(), conn()))
    b.on_http(exchange(tx(), conn()))
    got = scrape(a, b)
    count = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")].name + "_count"
    assert sorted((ls["stack"], v) for ls, v in got[count]) == [("a", 1.0), ("b", 2.0)]


def test_a_stack_reports_its_plugins_metrics() -> None:
    p = plugin(labels=["method"])
    s = Stack("web", [p])
    s.on_http(exchange(tx(), conn()))
    assert s.stats()[metrics.HTTP_METRICS_OBSERVATIONS.key(stack="web")] == 1
    assert [f.decl.name for f in s.families()] == [metrics.HTTP_HISTOGRAMS[("client", m)].name for m in
                                              ("request_duration_seconds", "request_body_size_bytes",
                                               "response_body_size_bytes")]


def _config(body: str) -> str:
    return "version: 2\nstacks:\n  web:\n    plugins:\n" + textwrap.indent(textwrap.dedent(body), "      ")


@pytest.mark.parametrize(("body", "path", "words"), [
    ("- type: http_metrics\n  config: {labels: [method, verb]}\n",
     "stacks.web.plugins[0].config.labels[1]", "unknown value 'verb'"),
    ("- type: http_metrics\n  config: {labels: [method, method]}\n",
     "stacks.web.plugins[0].config.labels[1]", "label 'method' is listed twice"),
    ("- type: http_metrics\n  config: {max_series: 0}\n",
     "stacks.web.plugins[0].config.max_series", ">= 1"),
    ("- type: http_metrics\n  config: {labels: [method], max_values: {route: 10}}\n",
     "stacks.web.plugins[0].config.max_values.route", "'route' is not one of the labels kept"),
    ("- type: http_metrics\n  config: {duration_buckets: [0.1, 0.05]}\n",
     "stacks.web.plugins[0].config.duration_buckets[1]", "bucket bounds must increase"),
    ("- type: http_metrics\n  config: {duration_buckets: [0, 1]}\n",
     "stacks.web.plugins[0].config.duration_buckets[0]", "above 0"),
    ("- type: http_metrics\n- type: http_metrics\n",
     "stacks.web.plugins[1].type", "http_metrics is already plugins[0]"),
    ("- type: http_metrics\n  config: {max_serie: 10}\n",
     "stacks.web.plugins[0].config.max_serie", "unknown field 'max_serie' (did you mean 'max_series'?)"),
])
def test_config_errors_name_the_field_and_why(body: str, path: str, words: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        loads_config(_config(body))
    issues = info.value.issues
    found = [(i.dotted_path, i.message) for i in issues]
    assert any(where == path and words in why for where, why in found), found


def test_a_valid_config_loads() -> None:
    cfg = loads_config(_config("- type: http_metrics\n  config: {labels: [method, route], max_values: {route: 50},"
                               " routes: ['/users/{id}']}\n"))
    (p,) = cfg.stacks["web"].plugins
    assert p.type == "http_metrics"


def test_the_example_validates_with_qtap_validate(tmp_path: Path) -> None:
    example = ROOT / "examples" / "http-metrics.yaml"
    ok = subprocess.run([sys.executable, "-m", "cli.main", "validate", str(example)], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "stack default: http_metrics" in ok.stdout, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("max_values: {domain: 200}", "max_values: {container: 5}"))
    no = subprocess.run([sys.executable, "-m", "cli.main", "validate", str(bad)], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    assert no.returncode == 1, no.stdout + no.stderr
    assert "stacks.default.plugins[0].config.max_values.container: 'container' is not one of the labels kept" in (
        no.stdout + no.stderr)
