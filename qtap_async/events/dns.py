"""DNS records produced by the protocol layer (``qtap_async.protocols.dns``).

Types and rcodes are names ("A", "AAAA", "CNAME", ...; "NOERROR", "NXDOMAIN", ...); a type without
a name is written "TYPE<n>" (RFC 3597), an rcode without one "RCODE<n>".
"""

from __future__ import annotations

import msgspec

from qtap_async.events.context import ConnContext, Timestamp

__all__ = ["DnsAnswer", "DnsMessage", "DnsMessageEvent"]


class DnsAnswer(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One resource record of the answer section.

    ``data``: dotted IPv4 (A), compressed IPv6 (AAAA), a domain name (CNAME, NS, PTR, DNAME),
    "<preference> <exchange>" (MX), the joined strings (TXT), else the rdata as hex.
    """

    name: str
    type: str
    ttl: int
    data: str


class DnsMessage(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="dns_message", tag_field="kind"):
    """A DNS query or response (UDP datagram or one TCP length-prefixed message)."""

    id: int
    is_response: bool
    opcode: int = 0
    rcode: str = "NOERROR"
    truncated: bool = False
    qname: str | None = None
    qtype: str | None = None
    qdcount: int = 0
    answers: list[DnsAnswer] = []
    transport: str = "udp"
    direction: int | None = None
    ts_ns: int = 0


class DnsMessageEvent(ConnContext, frozen=True, gc=False, kw_only=True, tag="dns_message", tag_field="type",
                      omit_defaults=True):
    """A ``DnsMessage`` with its connection context; the message's own id is ``dns_id`` (``id`` names the
    event)."""

    id: str
    ts: Timestamp
    dns_id: int
    is_response: bool
    opcode: int
    rcode: str
    truncated: bool
    qname: str | None
    qtype: str | None
    qdcount: int
    answers: list[DnsAnswer]
    transport: str
