"""The one telemetry surface (qtap_async.telemetry.metrics): names declared once with their types and labels,
samples keyed through the declarations, every declaration exported by a real agent, and no metric name spelled
out anywhere else in the package."""

from __future__ import annotations

import ast
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qtap_async.bpf import abi
from qtap_async.telemetry import MetricRegistry, metrics
from qtap_async.telemetry.metrics import DECLARED, MetricDef, parse_key

ROOT = Path(__file__).resolve().parents[2]


# -- declarations ---------------------------------------------------------------------------------------------


def test_declarations_are_consistent() -> None:
    assert len(DECLARED) > 100
    families = [m.family for m in DECLARED.values()]
    assert len(families) == len(set(families))
    for name, m in DECLARED.items():
        # The agent's own metrics are qtap_*; the RED histograms take the OpenTelemetry HTTP names.
        assert m.name == name and (name.startswith("qtap_") or (m.kind == "histogram" and name.startswith("http_")))
        assert (m.kind == "counter") == name.endswith("_total"), name
        assert m.help and not m.help[0].islower() and m.help.endswith("."), name  # a sentence
    # The kernel counters declared are exactly the ABI's (and program_misses, counted by libbpf): a counter
    # added to abi.Counter must be declared to be exported.
    assert {c.name.lower() for c in abi.Counter} | {"program_misses"} == set(metrics.KERNEL)


def test_a_name_cannot_be_declared_twice_or_with_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        metrics._counter("qtap_events_written_total", "Again.")
    with pytest.raises(ValueError, match="ends in _total"):
        metrics._gauge("qtap_something_total", "A gauge named like a counter.")
    with pytest.raises(ValueError, match="family"):
        metrics._gauge("qtap_events_written", "The stem of a counter.")
    assert "qtap_something_total" not in DECLARED and "qtap_events_written" not in DECLARED


def test_keys_carry_exactly_the_declared_labels_escaped() -> None:
    assert metrics.EVENTS_WRITTEN.key() == "qtap_events_written_total"
    key = metrics.STACK_TRANSACTIONS.key(stack='we"ird\\name\n')
    assert parse_key(key) == ("qtap_stack_transactions_total", {"stack": 'we"ird\\name\n'})
    two = metrics.TLS_LIBRARIES_ATTACHED.key(path="fast", kind="go")  # declared order, whatever the call order
    assert two == 'qtap_tls_libraries_attached{kind="go",path="fast"}'
    with pytest.raises(ValueError, match="labels"):
        metrics.STACK_TRANSACTIONS.key()
    with pytest.raises(ValueError, match="labels"):
        metrics.EVENTS_WRITTEN.key(stack="x")


def test_the_scrape_types_samples_by_declaration_and_leaves_out_undeclared_names() -> None:
    snapshot = {
        metrics.SINK_LATENCY_COUNT.key(store="event:x"): 3,  # a gauge although its name ends in _count
        metrics.STATUS_REQUESTS.key(code="200"): 4,
        "qtap_nobody_declared_this_total": 5,
    }
    reg = MetricRegistry([lambda: snapshot], info={"version": "1"})
    fams = {f.name: f for f in text_string_to_metric_families(reg.exposition().decode())}
    assert fams["qtap_sink_latency_seconds_count"].type == "gauge"
    assert fams["qtap_sink_latency_seconds_count"].documentation == metrics.SINK_LATENCY_COUNT.help
    assert fams["qtap_status_requests"].type == "counter"
    assert [s.labels for s in fams["qtap_status_requests"].samples] == [{"code": "200"}]
    assert "qtap_nobody_declared_this" not in fams
    assert reg.collector.undeclared == {"qtap_nobody_declared_this_total"}


def test_pulse_and_control_metrics_take_only_their_declarations() -> None:
    from qtap_async.pulse.metrics import Metrics

    pulse = Metrics()
    pulse.inc(metrics.PULSE_HTTP_REQUESTS, route='/v1/"x"', status="200")
    pulse.observe(metrics.PULSE_QUERY_SECONDS, 0.5, route="/q")
    assert pulse.get("pulse_http_requests_total", route='/v1/"x"', status="200") == 1
    text = pulse.render()
    assert 'pulse_http_requests_total{route="/v1/\\"x\\"",status="200"} 1' in text
    assert "# TYPE pulse_query_seconds summary" in text and 'pulse_query_seconds_count{route="/q"} 1' in text
    fams = {f.name for f in text_string_to_metric_families(text)}
    assert {"pulse_build_info", "pulse_http_requests", "pulse_query_seconds"} <= fams
    with pytest.raises(ValueError, match="labelled"):
        pulse.inc(metrics.PULSE_HTTP_REQUESTS, method="GET")
    with pytest.raises(ValueError, match="summary"):
        pulse.inc(metrics.PULSE_QUERY_SECONDS)
    with pytest.raises(KeyError):
        pulse.inc(metrics.CONTROL_LOGINS, method="password", result="ok")  # the control plane's, not Pulse's
    control = Metrics(metrics.CONTROL)
    control.inc(metrics.CONTROL_PUSH_STREAMS)
    assert "control_push_streams 1" in control.render().splitlines()


def test_built_histograms_are_exported_only_when_declared_as_such() -> None:
    decl = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")]
    good = metrics.Histograms(decl, ("stack", "method"), (1.0,), [(("a", 'G"T'), [1, 2], 3.0)])
    other = metrics.Histograms(decl, ("stack", "method"), (0.5, 1.0), [(("b", "GET"), [0, 0, 1], 4.0)])
    server = metrics.HTTP_HISTOGRAMS[("server", "request_duration_seconds")]
    wrong_label = metrics.Histograms(server, ("user",), (), [(("bob",), [1], 1.0)])
    undeclared = metrics.Histograms(metrics.MetricDef("made_up", "histogram", "x"), (), (), [((), [1], 1.0)])
    reg = metrics.MetricRegistry([], info={})
    reg.add_families(lambda: [good, wrong_label, undeclared])
    reg.add_families(lambda: [other])
    reg.add_families(lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    fams = {f.name: f for f in text_string_to_metric_families(reg.exposition().decode())}
    always = {metrics.BUILD_INFO.name, metrics.BUILD_INFO.family, metrics.METRICS_SOURCE_ERRORS.family}
    assert set(fams) - always == {decl.name}
    assert fams[decl.name].type == "histogram" and fams[decl.name].documentation == decl.help
    samples = [(s.name, s.labels, s.value) for s in fams[decl.name].samples]
    assert samples == [
        (decl.name + "_bucket", {"stack": "a", "method": 'G"T', "le": "1.0"}, 1.0),
        (decl.name + "_bucket", {"stack": "a", "method": 'G"T', "le": "+Inf"}, 2.0),
        (decl.name + "_count", {"stack": "a", "method": 'G"T'}, 2.0),
        (decl.name + "_sum", {"stack": "a", "method": 'G"T'}, 3.0),
        (decl.name + "_bucket", {"stack": "b", "method": "GET", "le": "0.5"}, 0.0),
        (decl.name + "_bucket", {"stack": "b", "method": "GET", "le": "1.0"}, 0.0),
        (decl.name + "_bucket", {"stack": "b", "method": "GET", "le": "+Inf"}, 1.0),
        (decl.name + "_count", {"stack": "b", "method": "GET"}, 1.0),
        (decl.name + "_sum", {"stack": "b", "method": "GET"}, 4.0),
    ]  # two sources' series in one family, label values escaped
    assert reg.collector.failed_sources == 1


# -- no name spelled out elsewhere --------------------------------------------------------------------------------


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _metric_literals(path: Path, names: set[str], prefixes: set[str]) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            # A whole name, or the start of one being assembled (f"qtap_kernel_{k}_total" has "qtap_kernel_").
            hit = next((n for n in names if n in text), None) or (text if text in prefixes else None)
            if hit is not None:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                yield f"{where}:{node.lineno}: {text!r}"


def test_no_metric_name_is_spelled_out_outside_the_declarations() -> None:
    declarations = ROOT / "qtap_async" / "telemetry" / "metrics.py"
    every = [*DECLARED.values(), *metrics.PULSE.values(), *metrics.CONTROL.values()]
    names = {m.name for m in every} | {m.family for m in every}
    # Prefixes of declared names that are longer than the bare "qtap_" (which module names start with too).
    prefixes = {m.name[:i] for m in every for i in range(len("qtap_") + 2, len(m.name)) if m.name[i - 1] == "_"}
    files = sorted([*(ROOT / "qtap_async").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])
    found = [hit for f in files if f != declarations for hit in _metric_literals(f, names, prefixes)]
    assert not found, "metric names outside qtap_async/telemetry/metrics.py:\n" + "\n".join(found)


def test_the_literal_finder_finds_assembled_names(tmp_path: Path) -> None:
    src = tmp_path / "probe.py"
    src.write_text('"""qtap_events_written_total in a docstring is fine."""\n'
                   'A = {"qtap_events_written_total": 1}\nB = f"qtap_kernel_{1}_total"\nC = "qtap_async.x"\n')
    names = set(DECLARED)
    prefixes = {n[:i] for n in DECLARED for i in range(len("qtap_") + 2, len(n)) if n[i - 1] == "_"}
    hits = list(_metric_literals(src, names, prefixes))
    assert [h.split(": ", 1)[1] for h in hits] == ["'qtap_events_written_total'", "'qtap_kernel_'"]


# -- a real agent exports every declaration -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        # An OTLP/HTTP receiver that takes everything: an empty protobuf answer is a full success.
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _scrape(url: str) -> dict[str, list[dict[str, str]]]:
    """Label sets by sample name; a histogram's samples (_bucket, _count, _sum) under the family's name."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(fam.name if fam.type == "histogram" else s.name, []).append(s.labels)
    return out


@pytest.mark.bpf
def test_a_real_agent_exports_every_declared_metric(tmp_path: Path) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    config = tmp_path / "qtap.yaml"
    config.write_text(f"""
version: 2
services:
  event_stores:
    - {{type: stdout}}
    - {{type: otel, id: otlp, endpoint: "http://127.0.0.1:{web.server_port}", metrics_interval: 0.5}}
  object_stores:
    - {{type: dir, id: objects, path: {tmp_path / "objects"}, retention: 1h, prune_interval: 0.2}}
stacks:
  default:
    plugins:
      - type: http_capture
        config: {{level: full, format: json}}
      - type: http_metrics
tap:
  direction: all
  ignore_loopback: false
  http: {{stack: default}}
  tls: {{state_dir: {tmp_path / "state"}}}
""")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--config", str(config),
                                 "--status-listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "err").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        missing: list[str] = []
        while time.monotonic() < deadline:
            # Real traffic, so the per-protocol and per-stack series have something to count.
            for _ in range(3):
                httpx.get(f"http://127.0.0.1:{web.server_port}/metrics-test", timeout=5)
            scraped = _scrape(url)
            missing = [n for n in DECLARED if n not in scraped]
            if not missing:
                break
            time.sleep(0.5)
        assert not missing, f"declared but not exported by a running agent: {missing}"
        for name, labelsets in scraped.items():
            decl = DECLARED.get(name)
            assert decl is not None, f"exported but not declared: {name}"
            if decl.kind == "histogram":  # a config picks its labels: some of the declared ones
                assert all(set(ls) - {"le"} <= set(decl.labels) for ls in labelsets), (name, labelsets)
                continue
            assert all(sorted(ls) == sorted(decl.labels) for ls in labelsets), (name, labelsets)
        assert {"protocol": "http/1.1"} in scraped[metrics.TRANSACTIONS.name]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        web.shutdown()


def test_metric_def_is_frozen() -> None:
    with pytest.raises(AttributeError):
        metrics.EVENTS_WRITTEN.name = "x"  # type: ignore[misc]
    assert isinstance(metrics.EVENTS_WRITTEN, MetricDef)
