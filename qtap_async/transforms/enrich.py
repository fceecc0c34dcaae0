"""Enrichment: the one stage that names connections (``domain`` and ``domain_source``).

It runs right after conntrack, on what conntrack returned for one kernel record, and before anything
reads a domain (filters, stacks, the output formatter, the close event):

- a connection's open: the DNS answers seen so far (this process's, then any process's), else the hosts
  file the process sees (``context.domains.Domains.at_open``); the open event is given that name;
- a TLS ClientHello: its SNI (what the client asked for beats every guess);
- an HTTP transaction: its ``Host`` / ``:authority``;
- a DNS answer: learnt (per process and host-wide) for the connections opened after it;
- a process exit: the hosts file path of that process is forgotten.

Precedence (sni > host > dns > dns_host > hosts) is ``context.domains.offer``'s; a weaker source never
replaces a stronger one. Conntrack builds the close event from the connection, so it carries the final
name.
"""

from __future__ import annotations

from typing import Any

import msgspec

from qtap_async.context.dns_cache import DnsCache
from qtap_async.context.domains import Domains, HostsFiles, offer
from qtap_async.events.connection import ConnectionEvent
from qtap_async.events.dns import DnsMessage
from qtap_async.events.http import HttpTransaction, host_of
from qtap_async.events.kernel import ProcExit
from qtap_async.events.tls import TlsClientHello
from qtap_async.transforms.conntrack import Conntrack, Parsed

__all__ = ["Enrich"]

_replace = msgspec.structs.replace


class Enrich:
    """Names connections from what conntrack returns; ``apply`` edits the list in place and returns it."""

    __slots__ = ("conns", "dns", "domains")

    def __init__(self, conntrack: Conntrack, *, dns: DnsCache | None = None, hosts: HostsFiles | None = None) -> None:
        self.conns = conntrack.conns  # read only: the open connections, to name one at its open event
        self.dns = dns or DnsCache()
        self.domains = Domains(self.dns, hosts)

    def apply(self, items: list[Any]) -> list[Any]:
        for i, item in enumerate(items):
            t = type(item)
            if t is Parsed:
                # Inline (one call per record costs measurably in replay): what a record tells about its
                # connection's name, or (DNS) about later connections'.
                rec = item.record
                rt = type(rec)
                if rt is HttpTransaction:
                    item.host = host = host_of(rec.authority)
                    offer(item.conn, host, "host")
                elif rt is TlsClientHello:
                    if rec.sni:
                        offer(item.conn, rec.sni, "sni")
                elif rt is DnsMessage:
                    self.dns.learn(item.conn.pid, rec)
            elif t is ConnectionEvent and item.event == "open" and not item.resumed:
                c = self.conns.get(item.conn_id)
                if c is not None:
                    self.domains.at_open(c)
                    if c.domain:
                        items[i] = _replace(item, domain=c.domain, domain_source=c.domain_source)
            elif t is ProcExit:
                self.domains.hosts.forget(item.pid)
        return items
