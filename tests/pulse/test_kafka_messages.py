"""Decoding Kafka messages into rows (no broker): formats, team from token header or default."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.pulse.config import IngestLimits, Retention
from qtap_async.pulse.ingest import Sanitizer
from qtap_async.pulse.kafka import prepare_messages
from qtap_async.pulse.metrics import Metrics
from qtap_async.pulse.tokens import TokenStore

NOW = time.time_ns()


class Msg(msgspec.Struct):
    value: bytes
    headers: list[tuple[str, bytes]] = []
    timestamp: int = NOW // 1_000_000
    partition: int = 0
    offset: int = 0


def ev(i: int, **kw: Any) -> dict[str, Any]:
    return {"type": "issue", "id": f"i{i}", "ts": NOW, "rule": "r", **kw}


def test_messages_decode_to_rows_with_the_right_team(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "t.sqlite3")
    good = tokens.create("team-tok", "agent-7")[1]
    revoked_id, revoked = tokens.create("team-rev")
    tokens.revoke(revoked_id)
    metrics = Metrics()
    auth = [("Authorization", f"Bearer {good}".encode())]
    messages = [
        Msg(msgspec.json.encode(ev(0))),  # default team
        Msg(msgspec.json.encode([ev(1), ev(2), {"type": "issue"}]), headers=auth),  # token team, 1 bad item
        Msg(msgspec.msgpack.encode([ev(3)]), headers=[("content-type", b"application/msgpack")]),
        Msg(msgspec.msgpack.encode(ev(4)), headers=[("content-type", b"application/msgpack"), *auth]),
        Msg(b"[not json"),  # undecodable batch
        Msg(b"not json"),  # one undecodable event: an item error
        Msg(msgspec.json.encode(ev(5)), headers=[("authorization", f"Bearer {revoked}".encode())]),
        Msg(msgspec.json.encode(ev(6, ts=NOW + 3600 * 10**9))),  # future: clamped to the message time
    ]
    rows = prepare_messages(messages, Sanitizer(IngestLimits(), Retention(), metrics), tokens, "team-default", metrics)
    got = [msgspec.json.decode(r) for r in rows["issues"]]
    assert [(r["id"], r["team"], r["agent"]) for r in got] == [
        ("i0", "team-default", ""),
        ("i1", "team-tok", "agent-7"),
        ("i2", "team-tok", "agent-7"),
        ("i3", "team-default", ""),
        ("i4", "team-tok", "agent-7"),
        ("i6", "team-default", ""),
    ]
    assert got[-1]["ts"] == NOW // 1_000_000 * 1_000_000
    assert metrics.get("pulse_kafka_rejected_total", reason="decode") == 1
    assert metrics.get("pulse_kafka_rejected_total", reason="auth") == 1
    assert metrics.get("pulse_events_rejected_total") == 2
    # Without a default team, messages without a token are dropped.
    rows = prepare_messages(messages[:1], Sanitizer(IngestLimits(), Retention(), metrics), tokens, "", metrics)
    assert rows == {} and metrics.get("pulse_kafka_rejected_total", reason="no_team") == 1
    tokens.close()
