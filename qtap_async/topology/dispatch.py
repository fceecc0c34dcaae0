"""Dispatch: what conntrack and enrichment returned -> the output events of the run.

The compiled config (``Pipeline``) decides per connection and per transaction:

- a connection is decided once, at its open event (exe/group filters, direction, loopback, containers,
  the Pulse endpoints of the config, the CLI's ``--port/--exe/...`` focus). An ignored connection is muted
  in conntrack (nothing more of it is parsed: the cheapest place to drop it) and none of its events
  are written;
- an HTTP transaction goes to the stack chosen from its host (Host / ``:authority``, else the
  connection's domain), whose plugins decide what to emit, as ``HttpExchange`` over a ``ConnContext``
  snapshot: plugins never see a live connection. Without a config file (``local``) it is formatted by
  transforms/output.py at the run's level instead, which is what ``qtap run`` prints;
- TLS hellos, DNS messages (``tap.audit_include_dns``) and parse errors are formatted by
  transforms/output.py;
- process changes (exec, exit) go to the process watchers (TLS discovery).

A reload swaps the ``Pipeline``: connections already open keep their filter decision and their parser
state, and their next transactions use the new stacks.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from qtap_async.config import Config
from qtap_async.context.containers import installed as installed_containers
from qtap_async.context.filters import ContainerFilter
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.events.dns import DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.events.kernel import ProcExec, ProcExit
from qtap_async.events.parse_error import ParseError
from qtap_async.filters import SKIP_ALL, SKIP_NOTHING, OwnServices, StackSelector, TrafficFilter
from qtap_async.plugins.exchange import HttpExchange
from qtap_async.plugins.redact import redactor_from
from qtap_async.plugins.stack import Stack, build_stacks
from qtap_async.sinks.pulse import PulseEventStore
from qtap_async.telemetry import metrics
from qtap_async.telemetry.counters import TransactionCounter
from qtap_async.transforms.conntrack import Connection, Conntrack, Parsed
from qtap_async.transforms.output import Level, ProtocolOutput

__all__ = ["Dispatch", "FocusCheck", "Pipeline", "ProcessWatcher"]


class FocusCheck(Protocol):
    """What the CLI's focus flags (cli/filters_cli.FocusGate) decide, asked by ``Dispatch``."""

    def connection(self, ev: ConnectionEvent) -> bool: ...
    @property
    def has_domains(self) -> bool: ...
    def domain(self, name: str) -> bool: ...


class ProcessWatcher(Protocol):
    """Told about every exec and exit (TLS discovery attaches to a new program's libraries)."""

    def on_exec(self, pid: int) -> None: ...
    def on_exit(self, pid: int) -> None: ...


class Pipeline:
    """The parts of a config that decide per connection and per transaction, compiled once."""

    __slots__ = ("config", "containers", "include_dns", "own", "redactor", "selector", "stacks", "traffic")

    def __init__(self, config: Config, *, access_log: Callable[[str], None] | None = None,
                 show_secrets: bool = False, stacks: bool = True) -> None:
        self.config = config
        self.redactor = redactor_from(config.tap.redaction, show_secrets)
        self.traffic = TrafficFilter.from_config(config.tap)
        #: Pulse endpoints of the config: their traffic is never captured (it would feed Pulse itself).
        self.own = OwnServices.from_urls(
            s.url for s in config.services.event_stores if isinstance(s, PulseEventStore))
        self.containers = ContainerFilter(config.tap.filters.containers)
        self.selector = StackSelector.from_config(config.tap)
        self.stacks: dict[str, Stack] = build_stacks(config, access_log=access_log) if stacks else {}
        self.include_dns = config.tap.audit_include_dns

    def skipped(self, *, ingress: bool, remote_ip: str, exe: str) -> frozenset[str]:
        """What to skip for a connection: everything (SKIP_ALL) when it is not captured, else the
        ``only`` parts of the exe filters that match its process."""
        if not self.traffic.captures(ingress=ingress, remote_ip=remote_ip, exe=exe or None):
            return SKIP_ALL
        return self.traffic.processes.skipped(exe) if exe else SKIP_NOTHING

    def stack_for(self, host: str) -> Stack | None:
        name = self.selector.select(host)
        return self.stacks.get(name) if name is not None else None


class Dispatch:
    """Routes every value of one kernel record; ``process`` returns the output events."""

    def __init__(self, pipeline: Pipeline, conntrack: Conntrack, *, local: Level | None = None,
                 focus: FocusCheck | None = None) -> None:
        self.pipeline = pipeline
        self.conntrack = conntrack
        #: Without a config file: the level transactions are formatted at (None: the stacks decide).
        self.local = local
        self.focus = focus
        self.watchers: list[ProcessWatcher] = []
        self.transactions = TransactionCounter()  # by protocol, for /metrics
        self._by_protocol = self.transactions.by_protocol
        # parse_error records by parser, for /metrics; every parser from 0, so the series exist before an error.
        self.parse_errors: Counter[str] = Counter(dict.fromkeys(("http1", "http2", "tls", "dns", "session"), 0))
        self.output = ProtocolOutput(conntrack, local or "summary", pipeline.redactor)
        self._skips: dict[int, frozenset[str]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self.ignored_connections = 0
        self.own_service_connections = 0  # connections to or of our own Pulse, never captured
        self.filtered = 0  # connection and gap events of ignored connections, not written

    # -- connections ----------------------------------------------------------------------------
    def per_connection_table(self) -> dict[int, frozenset[str]]:
        """The table with an entry per open connection (for TableCompactor: it is rebuilt in place)."""
        return self._skips

    def _ignore(self, conn_id: int) -> frozenset[str]:
        self._skips[conn_id] = SKIP_ALL
        self.ignored_connections += 1
        self.conntrack.mute(conn_id)
        return SKIP_ALL

    def decide(self, conn_id: int, ingress: bool, remote_ip: str, exe: str, container_id: str = "") -> frozenset[str]:
        """What to skip of a connection (by the config's filters), decided once and kept until its close;
        what is skipped is muted in conntrack."""
        skip = self._skips.get(conn_id)
        if skip is None:
            p = self.pipeline
            skip = p.skipped(ingress=ingress, remote_ip=remote_ip, exe=exe)
            cache = installed_containers()
            if skip is not SKIP_ALL and container_id and p.containers and cache is not None \
                    and p.containers.ignores(cache.get(container_id)):
                skip = SKIP_ALL
            if skip is SKIP_ALL:
                return self._ignore(conn_id)
            self._skips[conn_id] = skip
            if "data" in skip or "http" in skip:
                self.conntrack.mute(conn_id)
            elif "tls" in skip:
                self.conntrack.mute(conn_id, socket=False)
        return skip

    def _connection(self, ev: ConnectionEvent) -> bool:
        cid = ev.conn_id
        ingress = ev.direction == "ingress"
        if cid not in self._skips:
            own = self.pipeline.own
            if own:
                local = (ev.dst_ip, ev.dst_port) if ingress else (ev.src_ip, ev.src_port)
                remote = (ev.src_ip, ev.src_port) if ingress else (ev.dst_ip, ev.dst_port)
                if own.involves(ingress=ingress, local=local, remote=remote):
                    self.own_service_connections += 1
                    self._ignore(cid)
            if cid not in self._skips and self.focus is not None and not self.focus.connection(ev):
                self._ignore(cid)
        skip = self.decide(cid, ingress, ev.src_ip if ingress else ev.dst_ip, ev.exe, ev.container_id)
        if ev.event == "close":
            self._skips.pop(cid, None)
        if skip is SKIP_ALL:
            self.filtered += 1
            return False
        focus = self.focus
        # The domain is known at close (SNI, Host, DNS); an open has none yet.
        if focus is not None and focus.has_domains and ev.event == "close" and not focus.domain(ev.domain):
            self.filtered += 1
            return False
        return True

    # -- records --------------------------------------------------------------------------------
    def process(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            t = type(item)
            if t is Parsed:
                out.extend(self._parsed(item))
            elif t is ConnectionEvent:
                if self._connection(item):
                    out.append(item)
            elif t is GapEvent:
                if self._skips.get(item.conn_id) is not SKIP_ALL:
                    out.append(item)
                else:
                    self.filtered += 1
            elif t is ProcExec:
                for w in self.watchers:
                    w.on_exec(item.pid)
            elif t is ProcExit:
                for w in self.watchers:
                    w.on_exit(item.pid)
            else:
                out.append(item)
        return out

    def _parsed(self, p: Parsed) -> list[Any]:
        conn, rec = p.conn, p.record
        if self._skips.get(conn.conn_id) is SKIP_ALL:
            return []
        focus = self.focus
        rt = type(rec)
        is_http = rt is HttpTransaction
        if focus is not None and focus.has_domains and is_http and not focus.domain(p.host or conn.domain):
            return []  # out of --domain: no stack, no plugin, no store sees it
        # Transactions by protocol (TransactionCounter.count, inline: this runs per record).
        if is_http:
            self._by_protocol["grpc" if rec.grpc is not None else rec.protocol or "http"] += 1
        elif rt is DnsMessage:
            self._by_protocol["dns"] += 1
        elif rt is ParseError:
            self.parse_errors[rec.protocol] += 1
        if self.local is not None:
            out = self.output.convert(conn, rec, p.layer, p.host or None)
        elif is_http:
            out = self._http(conn, rec, p.layer, p.host)
        else:
            out = self.output.convert(conn, rec, p.layer)
            if rt is DnsMessage and not self.pipeline.include_dns:
                return []
        if focus is not None and focus.has_domains and not is_http and not focus.domain(conn.domain):
            return []
        return out

    def _http(self, conn: Connection, tx: HttpTransaction, layer: int, host: str) -> list[Any]:
        pipeline = self.pipeline  # one config for the whole transaction, even across a reload
        stack = pipeline.stack_for(host or conn.domain)
        if stack is None:
            return []
        start = tx.request_start_ns or tx.response_start_ns or conn.last_ns
        ct = self.conntrack
        ex = HttpExchange(tx, conn.context(layer), id=f"{self._id_prefix}-t{next(self._ids)}", ts=ct.rfc3339(start),
                          ts_ns=ct.wall_ns(start), redactor=pipeline.redactor)
        return list(stack.on_http(ex))

    def stats(self) -> dict[str, int]:
        out = {
            metrics.PIPELINE_IGNORED_CONNECTIONS.name: self.ignored_connections,
            metrics.PIPELINE_OWN_SERVICE_CONNECTIONS.name: self.own_service_connections,
            metrics.PIPELINE_FILTERED_EVENTS.name: self.filtered,
        }
        for name, stack in self.pipeline.stacks.items():
            out[metrics.STACK_TRANSACTIONS.key(stack=name)] = stack.transactions
            out[metrics.STACK_PLUGIN_ERRORS.key(stack=name)] = stack.errors
            out.update(stack.stats())
        out.update(self.transactions.snapshot())
        for protocol, n in sorted(self.parse_errors.items()):
            out[metrics.PARSE_ERRORS.key(protocol=protocol)] = n
        return out
