"""Every event type the agent produces is accepted and stored by Pulse, with all its fields; a batch
Pulse takes only partly (207) is counted by the agent's sink as partly rejected, with Pulse's reason.

The events are made by the agent's own code (conntrack, ProtocolOutput, the plugins' event types), so a
field added on the agent's side and forgotten in Pulse's schema fails here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import pytest

from qtap_async.events import (
    ConnectionEvent,
    DnsAnswer,
    DnsMessage,
    DnsMessageEvent,
    GapEvent,
    HttpTransactionEvent,
    IssueEvent,
    Owner,
    ParseError,
    ParseErrorEvent,
    RequestEvent,
    TlsClientHello,
    TlsClientHelloEvent,
)
from qtap_async.events.times import format_ns, parse_ns
from qtap_async.pulse.app import create_app
from qtap_async.pulse.bounds import NOT_STORED, bounded
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.ingest import JSON, Sanitizer
from qtap_async.pulse.storage import Storage
from qtap_async.pulse.tables import TABLES, Table, landing_ddl
from qtap_async.pulse.tokens import TokenStore
from qtap_async.sinks import BufferConfig, EventSinkRunner, RetryConfig
from qtap_async.sinks.base import ObjectRef
from qtap_async.sinks.pulse import PulseEventSink
from qtap_async.transforms.output import ProtocolOutput
from tests.pulse.test_app import _Server
from tests.transforms.test_conntrack import _ct, _open

NOW = time.time_ns()

# Agent type -> (Pulse's decoder type, agent fields Pulse takes under another name or on purpose not at all).
_PAIRS: list[tuple[type[msgspec.Struct], type[msgspec.Struct], set[str]]] = [
    (ConnectionEvent, bounded(ConnectionEvent), set()),
    (GapEvent, bounded(GapEvent), set()),
    (HttpTransactionEvent, bounded(HttpTransactionEvent), set(NOT_STORED)),  # headers and bodies: never
    (RequestEvent, bounded(RequestEvent), set()),
    (IssueEvent, bounded(IssueEvent), set()),
    (ObjectRef, bounded(ObjectRef), set()),
    # Protocol records: their events write ts_ns as `ts`, the context's direction replaces the
    # record's, and a DNS message's id is `dns_id`.
    (TlsClientHello, bounded(TlsClientHelloEvent), {"ts_ns", "direction"}),
    (DnsMessage, bounded(DnsMessageEvent), {"ts_ns", "direction", "id"}),
    (ParseError, bounded(ParseErrorEvent), {"ts_ns", "direction"}),
    # ... and every record field is a field of its event.
    (TlsClientHello, TlsClientHelloEvent, {"ts_ns", "direction"}),
    (DnsMessage, DnsMessageEvent, {"ts_ns", "direction", "id"}),
    (ParseError, ParseErrorEvent, {"ts_ns", "direction"}),
]


_IDS = [f"{a.__name__}-{b.__module__.rsplit('.', 1)[-1]}" for a, b, _ in _PAIRS]


@pytest.mark.parametrize(("agent", "pulse", "renamed"), _PAIRS, ids=_IDS)
def test_pulse_schema_has_every_field_the_agent_writes(agent: type[msgspec.Struct], pulse: type[msgspec.Struct],
                                                       renamed: set[str]) -> None:
    missing = set(agent.__struct_fields__) - set(pulse.__struct_fields__) - renamed
    assert not missing, f"Pulse's {pulse.__name__} would drop {sorted(missing)} of the agent's {agent.__name__}"


def agent_events() -> list[dict[str, Any]]:
    """One event of each type the agent sends to an event store, made by the agent's own code."""
    ct, _ = _ct()
    out = ProtocolOutput(ct, "summary")
    ct.handle(_open(1, role=1, rport=443))
    conn = ct.conns[1]
    open_ev = msgspec.to_builtins(ConnectionEvent(
        id="c-open", ts=ct.rfc3339(10), ts_ns=ct.wall_ns(10), event="open", conn_id=1, direction="unknown",
        family="ipv4", src_ip="::ffff:127.0.0.1", src_port=1, dst_ip="127.0.0.1", dst_port=53, pid=7, exe="/x",
        comm="x", tls=False, container_id="", user="nobody", transport="udp", midstream=True, protocol="dns",
        domain="a.test", domain_source="dns_host"))
    open_ev.update(uid=65534, resumed=True, io_uring=True, reason="evicted",
                   owners=[{"pid": 7, "exe": "/x", "comm": "x", "user": "nobody", "first_ns": 1},
                           {"pid": 8, "exe": "/y", "comm": "y", "user": "root", "first_ns": 2}])
    hello = TlsClientHello(direction=0, ts_ns=20, sni="sni.test", alpn=["h2", "http/1.1"], version="TLS1.3",
                           legacy_version="TLS1.2", supported_versions=["TLS1.3"], cipher_suites=[4865, 0x0A0A],
                           extensions=[0, 16, 43])
    dns = DnsMessage(id=4242, is_response=True, qname="a.test.", qtype="A", qdcount=1, ts_ns=21,
                     answers=[DnsAnswer(name="a.test.", type="A", ttl=60, data="127.0.0.1")])
    perr = ParseError(reason="HTTP/1 message head over 65536 bytes (max_head_bytes)", direction=0, offset=9,
                      ts_ns=22, protocol="http1")
    records = [e for r in (hello, dns, perr) for e in out.convert(conn, r, 0)]
    closed = [msgspec.to_builtins(e) for e in ct.handle(_close(1))]
    gap = msgspec.to_builtins(GapEvent(id="g1", ts=ct.rfc3339(30), conn_id=1, stream="recv", source="socket",
                                       bytes=4096, pid=7, exe="/x"))
    gap["reason"] = "truncated"
    http = msgspec.to_builtins(HttpTransactionEvent(
        id="h1", ts=ct.rfc3339(40), conn_id=1, transaction_id="t1", direction="egress", protocol="h2",
        method="GET", scheme="https", authority="a.test", host="a.test", path="/p", status=200,
        request_body_size=0, response_body_size=2, level="summary", pid=7, tls=True, src_ip="127.0.0.1",
        src_port=5, dst_ip="127.0.0.1", dst_port=443, exe="/x", comm="x", container_id="",
        request_headers=[("authorization", "secret")]))
    http.update(pushed=True, promised_by=1)
    request = msgspec.to_builtins(RequestEvent(id="r1", ts=ct.rfc3339(41), domain="a.test", status=200,
                                               tags=["checkout"]))
    issue = msgspec.to_builtins(IssueEvent(id="i1", ts=ct.rfc3339(42), rule="slow", severity="high"))
    ref = msgspec.to_builtins(ObjectRef(id="o1", ts=format_ns(NOW), ts_ns=NOW, conn_id=1, transaction_id="t1",
                                        digest="ab" * 32, url="s3://b/k", size=3, content_type="application/json",
                                        store="s3"))
    return [open_ev, *records, *closed, gap, http, request, issue, ref]


def _close(conn_id: int) -> Any:
    from qtap_async.events.kernel import ConnClose

    return ConnClose(50, conn_id, 1, 10, 20, 1)


def test_every_agent_event_is_accepted_with_all_fields(config: PulseConfig) -> None:
    events = agent_events()
    assert {e["type"] for e in events} == {"connection", "tls_client_hello", "dns_message", "parse_error", "gap",
                                           "http_transaction", "request", "issue", "object_ref"}
    raws = [msgspec.Raw(msgspec.json.encode(e)) for e in events]
    prepared = Sanitizer(config.limits, config.retention).prepare(JSON, raws, "team-x")
    assert prepared.result.errors == [] and prepared.result.accepted == len(events)
    rows = {t: [msgspec.json.decode(r) for r in rs] for t, rs in prepared.rows.items()}
    (hello,) = [msgspec.json.decode(r["data"]) for r in rows["records"] if r["type"] == "tls_client_hello"]
    assert hello["sni"] == "sni.test" and hello["cipher_suites"] == [4865, 0x0A0A] and hello["pid"] == 1
    (dns,) = [msgspec.json.decode(r["data"]) for r in rows["records"] if r["type"] == "dns_message"]
    assert dns["dns_id"] == 4242 and dns["answers"][0]["data"] == "127.0.0.1"
    (gap,) = [msgspec.json.decode(r["data"]) for r in rows["records"] if r["type"] == "gap"]
    assert gap["reason"] == "truncated" and gap["bytes"] == 4096
    (http,) = [msgspec.json.decode(r["data"]) for r in rows["records"] if r["type"] == "http_transaction"]
    assert http["pushed"] is True and http["promised_by"] == 1
    (opened,) = [r for r in rows["connections"] if r["id"] == "c-open"]
    assert opened["direction"] == "unknown" and opened["protocol"] == "dns" and opened["transport"] == "udp"
    assert opened["midstream"] and opened["resumed"] and opened["io_uring"] and opened["uid"] == 65534
    assert [o["pid"] for o in msgspec.json.decode(opened["owners"])] == [7, 8]
    assert rows["requests"][0]["tags"] == ["checkout"]


def test_agent_events_are_stored_and_read_back(config: PulseConfig, storage: Storage, team: str) -> None:
    events = agent_events()
    prepared = Sanitizer(config.limits, config.retention).prepare(
        JSON, [msgspec.Raw(msgspec.json.encode(e)) for e in events], team)
    for table, chunks in prepared.rows.items():
        if chunks:
            storage.insert(table, b"\n".join(chunks))
    db = storage.database
    got = storage.query(f"SELECT type, count() AS n FROM {db}.records FINAL WHERE team = {{t:String}} GROUP BY type"
                        " ORDER BY type", {"t": team})
    assert {r["type"]: int(r["n"]) for r in got} == {"dns_message": 1, "gap": 1, "http_transaction": 1,
                                                     "parse_error": 1, "tls_client_hello": 1}
    (conn,) = storage.query(f"SELECT domain_source, owners, uid, reason, user FROM {db}.connections FINAL"
                            " WHERE team = {t:String} AND id = 'c-open'", {"t": team})
    assert conn["domain_source"] == "dns_host" and conn["uid"] == 65534 and conn["reason"] == "evicted"
    assert conn["user"] == "nobody" and len(msgspec.json.decode(conn["owners"])) == 2
    # The query API shows them too.
    from qtap_async.pulse.queries import ConnectionSearch, connections

    rows = {r.id: r for r in connections(storage, team, ConnectionSearch(limit=100))}
    opened = rows["c-open"]
    assert (opened.domain_source, opened.reason, opened.uid, opened.transport) == ("dns_host", "evicted", 65534, "udp")
    assert opened.midstream and opened.resumed and opened.io_uring and "first_ns" in opened.owners
    # Times read back as the agent wrote them, to the nanosecond: RFC 3339 text beside ts_ns.
    from qtap_async.pulse.queries import IssueSearch, ObjectParams, issues, objects

    sent = {e["id"]: e for e in events}
    assert (opened.ts, opened.ts_ns) == (sent["c-open"]["ts"], parse_ns(sent["c-open"]["ts"]))
    (issue,) = issues(storage, team, IssueSearch(start=0, limit=10))
    assert (issue.ts, issue.ts_ns) == (sent["i1"]["ts"], parse_ns(sent["i1"]["ts"]))
    (ref,) = objects(storage, team, ObjectParams(transaction_id="t1"))
    assert (ref.ts, ref.ts_ns) == (sent["o1"]["ts"], sent["o1"]["ts_ns"]) == (format_ns(NOW), NOW)


class _OtherDatabase(Storage):
    """The shared chDB engine (one per process) under another database name."""

    def __init__(self, config: PulseConfig, inner: Storage) -> None:
        super().__init__(config)
        self.inner = inner

    def command(self, sql: str) -> None:
        self.inner.command(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.inner.query(sql, params)

    def insert(self, table: str, rows: bytes) -> None:
        self.inner.command(f"INSERT INTO {self.database}.{table}_in FORMAT JSONEachRow " + rows.decode())

    def close(self) -> None:
        pass


def test_older_data_directory_gets_the_new_columns(config: PulseConfig, storage: Storage) -> None:
    """A connections table made before these columns existed is brought up to date by setup()."""
    cfg = msgspec.structs.replace(config, database=f"old{NOW % 10**6}")
    old = _OtherDatabase(cfg, storage)
    old.setup()
    # Make it what an older Pulse left: no such columns in the table, its landing table or its view.
    db, gone = cfg.database, ("domain_source", "owners", "user")
    t = TABLES["connections"]
    old.command(f"DROP VIEW {db}.connections_mv")
    old.command(f"DROP TABLE {db}.connections_in")
    for c in gone:
        old.command(f"ALTER TABLE {db}.connections DROP COLUMN {c}")
    for stmt in landing_ddl(cfg, Table(t.name, tuple(c for c in t.columns if c.name not in gone), t.order_by)):
        old.command(stmt)
    old.setup()
    cols = {r["name"] for r in old.query("SELECT name FROM system.columns WHERE database = {d:String} AND"
                                         " table = 'connections'", {"d": db})}
    assert set(gone) <= cols
    row = {"type": "connection", "id": "m1", "ts": NOW, "event": "close", "domain_source": "hosts", "user": "u"}
    prepared = Sanitizer(cfg.limits, cfg.retention).prepare(JSON, [msgspec.Raw(msgspec.json.encode(row))], "mig")
    old.insert("connections", b"\n".join(prepared.rows["connections"]))
    (got,) = old.query(f"SELECT domain_source, user FROM {db}.connections FINAL WHERE id = 'm1'")
    assert got == {"domain_source": "hosts", "user": "u"}


async def _run_sink(url: str, token: str, values: list[bytes]) -> EventSinkRunner:
    sink = PulseEventSink(url, token, use_gzip=False)
    runner = EventSinkRunner(sink, buffer=BufferConfig(batch_max_events=100, linger=0.01),
                             retry=RetryConfig(initial=0.01, maximum=0.05, jitter=0.1, spool_after=1.0))
    task = asyncio.create_task(runner.run())
    for v in values:
        runner.channel.send_nowait(v)
    runner.channel.close()
    await task
    await sink.close()
    return runner


def test_partial_rejection_is_counted_and_logged(config: PulseConfig, storage: Storage, tokens: TokenStore,
                                                 team: str, caplog: pytest.LogCaptureFixture) -> None:
    token = tokens.create(team, "partial")[1]
    good = [msgspec.json.encode(e) for e in agent_events()]
    bad = msgspec.json.encode({"type": "connection", "id": "bad-1", "ts": NOW, "event": "reopened"})
    values = [*good[:3], bad, *good[3:]]
    with _Server(create_app(config, storage=storage, tokens=tokens)) as url, \
            caplog.at_level(logging.WARNING, logger="qtap.sinks"):
        runner = asyncio.run(_run_sink(url, token, values))
    st = runner.stats()
    assert st["qtap_sink_delivered_events_total"] == len(good)
    assert st["qtap_sink_dropped_rejected_events_total"] == 1
    assert st["qtap_sink_dropped_rejected_bytes_total"] == len(bad)
    (msg,) = [r.getMessage() for r in caplog.records if "rejected by the store" in r.getMessage()]
    assert "1 of 11 events" in msg and "Invalid enum value 'reopened' - at `$.event`" in msg


def test_every_connection_field_round_trips_through_storage(config: PulseConfig, storage: Storage,
                                                            team: str) -> None:
    """Each field of the agent's connection event, set to a value other than its default, is stored in a
    column of its own and read back as sent (the fields an older Pulse dropped among them)."""
    ev = ConnectionEvent(
        id="rt-1", ts=format_ns(NOW), ts_ns=NOW + 5, event="close", conn_id=42, direction="ingress", family="ipv6",
        src_ip="::1", src_port=40000, dst_ip="::2", dst_port=8443, pid=77, exe="/usr/sbin/nginx", comm="nginx",
        tls=True, container_id="c0ffee", container_name="web", container_image="nginx:1", container_labels={"a": "b"},
        pod_name="p", pod_namespace="ns", pod_uid="u-1", user="www-data", domain="rt.test", uid=33,
        cgroup="/sys/fs/cgroup/x", bytes_sent=1, bytes_received=2, duration_ns=3, protocol="http1",
        domain_source="sni", transport="udp", midstream=True, resumed=True, io_uring=True,
        owners=[Owner(pid=77, exe="/usr/sbin/nginx", comm="nginx", user="www-data", first_ns=9,
                      first_ts=format_ns(9))], reason="evicted")
    defaults = {f.name: f.default for f in msgspec.structs.fields(ConnectionEvent)}
    sent = msgspec.structs.asdict(ev)
    assert all(sent[k] != d for k, d in defaults.items() if d is not msgspec.NODEFAULT), "set every field"
    prepared = Sanitizer(config.limits, config.retention).prepare(JSON, [msgspec.Raw(msgspec.json.encode(ev))], team)
    assert prepared.result.errors == []
    storage.insert("connections", b"\n".join(prepared.rows["connections"]))
    (row,) = storage.query(f"SELECT * FROM {storage.database}.connections FINAL WHERE team = {{t:String}}"
                           " AND id = 'rt-1'", {"t": team})
    got = {k: row[k] for k in sent}
    got["ts"] = format_ns(NOW)  # stored as DateTime64(9): checked below, to the nanosecond
    got["owners"] = [Owner(**o) for o in msgspec.json.decode(got["owners"])]
    got["container_labels"] = msgspec.json.decode(got["container_labels"])
    got = {k: (bool(v) if isinstance(sent[k], bool) else int(v) if isinstance(sent[k], int) else v)
           for k, v in got.items()}
    assert got == sent
    for field in ("ts_ns", "user", "transport", "midstream", "reason"):  # what Pulse used to drop
        assert got[field] == sent[field] and sent[field] != defaults[field], field
    (t,) = storage.query(f"SELECT toUnixTimestamp64Nano(ts) AS ns FROM {storage.database}.connections FINAL"
                         " WHERE team = {t:String} AND id = 'rt-1'", {"t": team})
    assert int(t["ns"]) == NOW
