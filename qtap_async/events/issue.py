"""The ``issue`` event: detect_errors' record of a transaction a rule flagged (the transaction itself is
the object ``object_digest`` names)."""

from __future__ import annotations

import msgspec

from qtap_async.events.context import Timestamp

__all__ = ["IssueEvent"]


class IssueEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="issue", tag_field="type",
                 omit_defaults=True):
    """A transaction a detect_errors rule flagged: the rule's name and severity, a one-line summary
    (method, host, path without its query, status) and the object holding the transaction."""

    id: str
    ts: Timestamp
    conn_id: int = 0
    rule: str
    severity: str = ""
    summary: str = ""
    status: str = ""
    duration_ns: int = 0
    object_digest: str = ""
