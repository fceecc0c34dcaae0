"""Pulse's own wire types: the batch envelope and the answers of POST /v1/events.

The events a batch carries are the agent's (``qtap_async.events``); what Pulse accepts of them, and the
bounds on each field, is ``qtap_async.pulse.bounds``.
"""

from __future__ import annotations

import msgspec

from qtap_async.pulse.bounds import Timestamp

# The events themselves and the limits Pulse puts on them: qtap_async.events, qtap_async.pulse.bounds.


class Batch(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=False):
    """The request body of POST /v1/events (a bare JSON array of events is accepted too).

    ``sent_at`` is the agent's clock when it sent the batch: when it is far from the server's clock,
    every event time is shifted by the difference.
    """

    events: list[msgspec.Raw]
    # A float is taken when integral-looking JSON numbers (310.0) arrive: JSON Schema calls them integers.
    sent_at: Timestamp | float | None = None


class ItemError(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    index: int
    error: str
    id: str | None = None


class IngestResult(msgspec.Struct, frozen=True, gc=False):
    accepted: int
    rejected: int
    errors: list[ItemError]
    # Items that carried fields Pulse never stores (headers, bodies...): those fields were dropped.
    stripped: int = 0
    # Items whose time was corrected for clock skew (batch offset or future time clamped).
    skew_corrected: int = 0


class PulseErrorBody(msgspec.Struct, frozen=True, gc=False):
    error: str
