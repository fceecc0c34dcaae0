"""Dispatch on conntrack's real output: filters decided once per connection (and muted in conntrack),
stacks or the local output per transaction, the CLI's focus, process changes to their watchers."""

from __future__ import annotations

from typing import Any

from qtap_async.config import default_config, loads_config
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.events.kernel import ProcExec, ProcExit
from qtap_async.filters import SKIP_ALL
from qtap_async.plugins import HttpTransactionEvent
from qtap_async.topology import Graph, Pipeline, StdoutWriter
from qtap_async.transforms.conntrack import Parsed
from tests.plugins.fakes import FixedProcesses, conn_close, conn_open, http_exchange_records
from tests.topology.test_graph import GET, OK, config, one_request


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def on_exec(self, pid: int) -> None:
        self.seen.append(("exec", pid))

    def on_exit(self, pid: int) -> None:
        self.seen.append(("exit", pid))


class DomainFocus:
    """The CLI's focus (cli/filters_cli.FocusGate) reduced to what Dispatch asks."""

    def __init__(self, port: int | None = None, domain: str | None = None) -> None:
        self.port, self.name = port, domain
        self.asked: list[int] = []

    def connection(self, ev: ConnectionEvent) -> bool:
        self.asked.append(ev.conn_id)
        return self.port is None or self.port in (ev.src_port, ev.dst_port)

    @property
    def has_domains(self) -> bool:
        return self.name is not None

    def domain(self, name: str) -> bool:
        return name == self.name


def _graph(text: str | None = None, exes: dict[int, str] | None = None, **kw: Any) -> Graph:
    g = Graph(loads_config(text) if text is not None else None, **kw)
    g.conntrack.processes = FixedProcesses(exes or {100: "/usr/bin/curl", 200: "/usr/bin/wget"})
    return g


def _run(g: Graph, records: list[Any]) -> list[Any]:
    out: list[Any] = []
    for rec in records:
        out += g.stage.handle(rec)
    return out


def test_pipeline_skips_by_exe_group_direction_and_loopback() -> None:
    p = Pipeline(loads_config(config(extra_tap="""  ignore_loopback: true
  filters:
    groups: [qpoint]
    custom:
      - {exe: /usr/bin/wget}
      - {exe: /opt/java, strategy: prefix, only: [tls]}""")))
    assert p.skipped(ingress=False, remote_ip="8.8.8.8", exe="/usr/bin/curl") == frozenset()
    assert p.skipped(ingress=False, remote_ip="8.8.8.8", exe="/usr/bin/wget") is SKIP_ALL
    assert p.skipped(ingress=False, remote_ip="8.8.8.8", exe="/usr/local/bin/qtap") is SKIP_ALL
    assert p.skipped(ingress=True, remote_ip="8.8.8.8", exe="/usr/bin/curl") is SKIP_ALL
    assert p.skipped(ingress=False, remote_ip="127.0.0.1", exe="/usr/bin/curl") is SKIP_ALL
    assert p.skipped(ingress=False, remote_ip="8.8.8.8", exe="/opt/java/bin/java") == frozenset({"tls"})


def test_an_ignored_connection_is_muted_at_its_open_so_nothing_of_it_is_parsed() -> None:
    g = _graph(config(extra_tap="""  filters:
    custom: [{exe: /usr/bin/wget}]"""))
    assert g.stage.handle(conn_open(2, 200)) == []  # wget: ignored, its open not written
    assert g.conntrack.conns[2].sessions == {0: None, 1: None}  # muted: no parser will be made
    records = http_exchange_records(2, 200, GET % b"h", OK % 200)
    assert all(not isinstance(p, Parsed) for r in records for p in g.conntrack.handle(r))
    assert _run(g, [conn_close(2, 200, 9_000_000)]) == []
    assert g.dispatch.ignored_connections == 1 and g.dispatch.filtered == 2  # its open and its close
    assert g.stats()["qtap_pipeline_filtered_events_total"] == 2


def test_transactions_go_to_the_stack_with_a_config_and_to_the_local_output_without() -> None:
    with_config = _run(_graph(config()), one_request(1, 100))
    assert [type(e) for e in with_config] == [ConnectionEvent, HttpTransactionEvent, ConnectionEvent]
    local = _graph(None, local=StdoutWriter())
    assert local.config is default_config()  # no file: the default config's graph
    out = _run(local, one_request(1, 100))
    assert [e["type"] if isinstance(e, dict) else type(e).__name__ for e in out] == [
        "ConnectionEvent", "http_transaction", "ConnectionEvent"]
    tx = out[1]
    assert (tx["method"], tx["path"], tx["status"], tx["host"]) == ("GET", "/bytes?n=3", 200, "api.example.com")
    assert "request_headers" in tx and "request_body" not in tx  # level details, the default
    assert local.pipeline.stacks == {}  # the default stack is not run beside the local output
    snap = local.stats()
    assert snap['qtap_transactions_total{protocol="http/1.1"}'] == 1
    assert snap["qtap_pipeline_ignored_connections_total"] == 0  # the same counters either way


def test_focus_is_asked_once_per_connection_and_the_domain_at_close() -> None:
    focus = DomainFocus(port=80, domain="api.example.com")
    g = _graph(None, local=StdoutWriter(), focus=focus)
    kept = _run(g, [*one_request(1, 100), *one_request(2, 100, b"other.example.com")])
    assert focus.asked == [1, 2]
    txs = [e for e in kept if isinstance(e, dict) and e["type"] == "http_transaction"]
    assert [t["host"] for t in txs] == ["api.example.com"]  # other.example.com is out of --domain
    closes = [e for e in kept if isinstance(e, ConnectionEvent) and e.event == "close"]
    assert [c.conn_id for c in closes] == [1]
    out_of_port = DomainFocus(port=8443)
    g2 = _graph(None, local=StdoutWriter(), focus=out_of_port)
    assert _run(g2, one_request(1, 100)) == [] and g2.dispatch.ignored_connections == 1


def test_gaps_of_ignored_connections_are_dropped_and_process_changes_reach_the_watchers() -> None:
    g = _graph(config(extra_tap="""  filters:
    custom: [{exe: /usr/bin/wget}]"""))
    w = Watcher()
    g.dispatch.watchers.append(w)
    gap = GapEvent(id="g", ts="t", conn_id=2, stream="send", source="socket", bytes=5, pid=200, exe="/usr/bin/wget")
    g.stage.handle(conn_open(2, 200))
    g.stage.handle(conn_open(1, 100))
    kept = g.dispatch.process([gap, GapEvent(id="h", ts="t", conn_id=1, stream="send", source="socket", bytes=1,
                                              pid=100, exe="/usr/bin/curl")])
    assert [e.conn_id for e in kept] == [1]
    assert g.stage.handle(ProcExec(1, 4242, 0, 0, 0, "sh", "/bin/sh")) == []
    assert g.stage.handle(ProcExit(2, 4242, 0)) == []
    assert w.seen == [("exec", 4242), ("exit", 4242)]


def test_plugins_reach_no_live_connection() -> None:
    """Plugins import nothing of the transforms or the topology: what they get of a connection is the
    ConnContext snapshot dispatch makes (Connection.context)."""
    import subprocess
    import sys

    code = ("import sys, qtap_async.plugins\n"
            "print([m for m in sys.modules if m.startswith(('qtap_async.transforms', 'qtap_async.topology'))])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"
