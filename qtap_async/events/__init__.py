"""THE event model of qtap_async: every record and event, defined once, used by capture, plugins, stores
and Pulse alike.

- ``kernel``: the records the BPF programs write (``KernelRecord``), decoded by ``sources.decode``.
- ``http``, ``dns``, ``tls``, ``parse_error``: what the protocol layer produces (records tagged by
  ``kind``), and the events made of them (with their connection context).
- ``context``: ``ConnContext``, the connection and process an event happened on, embedded (as a base
  class: its fields are flat in the JSON) in every event about a connection's traffic; and the vocabulary
  (``Direction``, ``Stream``, ``Traffic``, ``Protocol``) all of them use.
- ``connection`` (connection, gap), ``request``, ``issue``, ``objects`` (object_ref).

``Event`` is the tagged union of every event (tag field ``type``): ``msgspec.json.decode(line,
type=Event)`` reads any line the agent writes. ``python -m qtap_async.events.schema`` prints its JSON
Schema (docs/events.md is generated from it).
"""

from __future__ import annotations

from typing import TypeAlias

from qtap_async.events.connection import ConnectionEvent, GapEvent, Owner
from qtap_async.events.context import ConnContext, Direction, Protocol, Stream, Timestamp, Traffic
from qtap_async.events.dns import DnsAnswer, DnsMessage, DnsMessageEvent
from qtap_async.events.http import GrpcInfo, Headers, HttpTransaction, HttpTransactionEvent
from qtap_async.events.issue import IssueEvent
from qtap_async.events.kernel import ConnClose, ConnOpen, Data, KernelRecord, ProcExec, ProcExit, ProcFork, TlsBind
from qtap_async.events.objects import ObjectRef
from qtap_async.events.parse_error import ParseError, ParseErrorEvent
from qtap_async.events.request import RequestEvent
from qtap_async.events.tls import TlsClientHello, TlsClientHelloEvent

__all__ = [
    "EVENT_TYPES",
    "ConnClose",
    "ConnContext",
    "ConnOpen",
    "ConnectionEvent",
    "Data",
    "Direction",
    "DnsAnswer",
    "DnsMessage",
    "DnsMessageEvent",
    "Event",
    "GapEvent",
    "GrpcInfo",
    "Headers",
    "HttpTransaction",
    "HttpTransactionEvent",
    "IssueEvent",
    "KernelRecord",
    "ObjectRef",
    "Owner",
    "ParseError",
    "ParseErrorEvent",
    "ProcExec",
    "ProcExit",
    "ProcFork",
    "Protocol",
    "ProtocolRecord",
    "RequestEvent",
    "Stream",
    "Timestamp",
    "TlsBind",
    "TlsClientHello",
    "TlsClientHelloEvent",
    "Traffic",
]

#: Every event a store can receive, tagged by ``type``.
Event: TypeAlias = (ConnectionEvent | GapEvent | HttpTransactionEvent | TlsClientHelloEvent | DnsMessageEvent
                    | ParseErrorEvent | RequestEvent | IssueEvent | ObjectRef)
EVENT_TYPES: tuple[type[Event], ...] = (ConnectionEvent, GapEvent, HttpTransactionEvent, TlsClientHelloEvent,
                                        DnsMessageEvent, ParseErrorEvent, RequestEvent, IssueEvent, ObjectRef)
#: What the protocol layer produces, tagged by ``kind``.
ProtocolRecord: TypeAlias = HttpTransaction | TlsClientHello | DnsMessage | ParseError
