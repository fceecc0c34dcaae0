"""Pulse: the self-hosted ingestion + query service (HTTP and Kafka in, ClickHouse/chDB out).

The server side lives in ``qtap_async.pulse.app`` (``create_app``) and ``qtap_async.pulse.server``
(``run``). The agent imports this package for its client (``pulse.client``, ``pulse.wire``), so importing it
loads nothing of the server side: no web stack, token store, ingest path or ClickHouse engine. The events are
the agent's own types (``qtap_async.events``, re-exported here); Pulse's limits on them are
``qtap_async.pulse.bounds``.
"""

from qtap_async.events import ConnectionEvent, Event, IssueEvent, ObjectRef, RequestEvent
from qtap_async.pulse.client import PulseClient
from qtap_async.pulse.schema import IngestResult, ItemError

__all__ = [
    "ConnectionEvent",
    "Event",
    "IngestResult",
    "IssueEvent",
    "ItemError",
    "ObjectRef",
    "PulseClient",
    "RequestEvent",
]
