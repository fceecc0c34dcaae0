"""Body decoding and sanitation, without storage."""

from __future__ import annotations

import gzip
import time
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
import zstandard

from qtap_async.errors import BodyError
from qtap_async.events.times import format_ns
from qtap_async.pulse.config import IngestLimits, Retention
from qtap_async.pulse.ingest import JSON, MSGPACK, Sanitizer, decode_body

NOW = time.time_ns()
LIMITS = IngestLimits(max_body_bytes=1 << 20, max_decoded_bytes=2 << 20, max_batch_events=100, max_event_bytes=2048)


def req(i: int = 0, **kw: object) -> dict[str, object]:
    ev: dict[str, object] = {"type": "request", "id": f"r{i}", "ts": NOW, "domain": "a.example", "status": 200}
    ev.update(kw)
    return ev


def rows_of(prepared: object, table: str = "requests") -> list[dict[str, object]]:
    return [msgspec.json.decode(r) for r in prepared.rows[table]]  # type: ignore[attr-defined]


def prepare(items: list[object], **kw: object) -> object:
    data = msgspec.json.encode(items)
    raws = msgspec.json.decode(data, type=list[msgspec.Raw])
    return Sanitizer(LIMITS, Retention()).prepare(JSON, raws, "team-x", "agent-y", reference_ns=NOW, body=data, **kw)


def test_valid_rest_is_accepted_with_per_item_errors() -> None:
    items: list[object] = [
        req(0),
        req(1, status="200"),  # wrong type
        {"type": "nope", "id": "z", "ts": NOW},  # unknown type
        42,  # not an object
        req(4, ts="yesterday"),  # bad time
        req(5, auth_token_hash="Bearer abc"),  # a token in clear is refused
        {"type": "connection", "id": "c", "ts": NOW, "event": "open", "dst_port": 70000},
        req(7),
    ]
    p = prepare(items)
    result = p.result  # type: ignore[attr-defined]
    assert (result.accepted, result.rejected) == (2, 6)
    by_index = {e.index: e.error for e in result.errors}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6]
    assert "$.status" in by_index[1] and "Expected `int`" in by_index[1]
    assert "$.type" in by_index[2]
    assert "Expected `object`" in by_index[3]
    assert "$.ts" in by_index[4]
    assert "$.auth_token_hash" in by_index[5]
    assert "$.dst_port" in by_index[6]
    assert [r["id"] for r in rows_of(p)] == ["r0", "r7"]


def test_team_and_agent_come_from_the_token_and_forbidden_fields_are_dropped() -> None:
    p = prepare([req(0, team="evil", agent="evil", headers={"cookie": "x"}, body="secret", request_body="s", extra=1)])
    (row,) = rows_of(p)
    assert row["team"] == "team-x" and row["agent"] == "agent-y"
    assert not {"headers", "body", "request_body", "extra"} & set(row)
    assert b"secret" not in b"".join(p.rows["requests"])  # type: ignore[attr-defined]
    assert p.result.stripped == 1  # type: ignore[attr-defined]
    clean = prepare([req(0), req(1, path="/no/such/keys")])
    assert clean.result.stripped == 0  # type: ignore[attr-defined]


def test_rfc3339_time_is_converted_to_epoch_ns() -> None:
    when = datetime.fromtimestamp(NOW // 10**9 - 3600, UTC).replace(microsecond=123456)
    text = when.astimezone(timezone(timedelta(hours=1))).isoformat()  # same instant, another offset
    p = prepare([req(0, ts=text)])
    assert rows_of(p)[0]["ts"] == (NOW // 10**9 - 3600) * 10**9 + 123456000


def test_agent_time_text_is_stored_to_the_nanosecond() -> None:
    """What the agent writes (RFC 3339 UTC, nine digits) keeps its nanoseconds; a date that does not exist is
    that item's error, not the batch's."""
    sent = NOW - 3600 * 10**9 + 789  # nanoseconds a datetime could not hold
    p = prepare([req(0, ts=format_ns(sent)), req(1, ts="2026-02-30T00:00:00.000000000Z"), req(2, ts="yesterday")])
    assert [r["ts"] for r in rows_of(p)] == [sent]
    errors = {e.index: e.error for e in p.result.errors}  # type: ignore[attr-defined]
    assert set(errors) == {1, 2} and "2026-02-30" in errors[1] and "`$.ts`" in errors[2]


def test_clock_skew_batch_offset_and_future_clamp() -> None:
    hour = 3600 * 10**9
    # The agent's clock is an hour ahead: sent_at tells, every event is shifted back.
    p = prepare([req(0, ts=NOW + hour - 5 * 10**9), req(1, ts=NOW + hour)], sent_at=NOW + hour)
    assert [r["ts"] for r in rows_of(p)] == [NOW - 5 * 10**9, NOW]
    assert p.result.skew_corrected == 2  # type: ignore[attr-defined]
    # Without sent_at, an event far in the future is clamped to the receive time...
    p = prepare([req(0, ts=NOW + hour), req(1, ts=NOW + 10**9)])
    assert [r["ts"] for r in rows_of(p)] == [NOW, NOW + 10**9]  # ...a small skew is kept as sent.
    assert p.result.skew_corrected == 1  # type: ignore[attr-defined]


def test_events_older_than_retention_are_rejected() -> None:
    p = prepare([req(0, ts=NOW - 31 * 86400 * 10**9), req(1)])
    assert p.result.rejected == 1 and "retention" in p.result.errors[0].error  # type: ignore[attr-defined]
    assert p.result.errors[0].id == "r0"  # type: ignore[attr-defined]


def test_oversized_and_overlong_items_are_item_errors() -> None:
    p = prepare([req(0, user_agent="x" * 300), req(1, summary="y" * 3000), req(2)])
    errors = {e.index: e.error for e in p.result.errors}  # type: ignore[attr-defined]
    assert "$.user_agent" in errors[0]
    assert "limit is 2048" in errors[1]
    assert p.result.accepted == 1  # type: ignore[attr-defined]


def _body(obj: object) -> bytes:
    return msgspec.json.encode(obj)


def test_decode_body_envelopes_encodings_and_formats() -> None:
    events = [req(0), req(1)]
    for body, ctype, enc in [
        (_body(events), "application/json", ""),
        (_body({"events": events, "sent_at": NOW}), "application/json; charset=utf-8", "identity"),
        (gzip.compress(_body(events)), "application/json", "gzip"),
        (zstandard.ZstdCompressor().compress(_body(events)), "application/json", "zstd"),
        (msgspec.msgpack.encode({"events": events}), "application/msgpack", "gzip"),
    ]:
        if ctype == "application/msgpack":
            body = gzip.compress(body)
        fmt, items, _, data = decode_body(body, ctype, enc, LIMITS)
        p = Sanitizer(LIMITS, Retention()).prepare(fmt, items, "t", reference_ns=NOW, body=data)
        assert p.result.accepted == 2, (ctype, enc)
    assert decode_body(msgspec.msgpack.encode(events), "application/x-msgpack", "", LIMITS)[0] is MSGPACK


@pytest.mark.parametrize(
    ("body", "ctype", "enc", "status", "text"),
    [
        (b"{nope", "application/json", "", 400, "malformed json"),
        (b'{"events": 3}', "application/json", "", 400, "array of events"),
        (b'"just a string"', "application/json", "", 400, "array of events"),
        (b"[]", "text/csv", "", 415, "Content-Type"),
        (b"[]", "application/json", "br", 415, "Content-Encoding"),
        (b"not gzip", "application/json", "gzip", 400, "gzip"),
        (b"not zstd", "application/json", "zstd", 400, "zstd"),
        (b"[" + b"{}," * 100 + b"{}]", "application/json", "", 413, "limit is 100"),
        (b" " * (2 << 20), "application/json", "", 413, "limit is"),
        # A zip bomb: small on the wire, over the decoded limit once inflated.
        (gzip.compress(b" " * (3 << 20)), "application/json", "gzip", 413, "decodes to more than"),
    ],
)
def test_decode_body_refuses_unusable_bodies(body: bytes, ctype: str, enc: str, status: int, text: str) -> None:
    with pytest.raises(BodyError) as info:
        decode_body(body, ctype, enc, LIMITS)
    assert info.value.status == status
    assert text in str(info.value)
