"""One time representation (qtap_async.events.times): RFC 3339 UTC text with nanoseconds, exact both ways,
and the one every event's ``ts`` is declared as."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from qtap_async.events import EVENT_TYPES, ObjectRef
from qtap_async.events.schema import json_schema
from qtap_async.events.times import EXAMPLE, RFC3339_PATTERN, format_ns, parse_ns
from qtap_async.transforms.conntrack import Conntrack

NS_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, 1_796_226_895_160_620_107, 2**62 + 7])
def test_format_is_utc_with_nine_digits_and_parses_back_exactly(ns: int) -> None:
    text = format_ns(ns)
    assert NS_TIME.fullmatch(text), text
    assert parse_ns(text) == ns
    # The seconds agree with the standard library (which stops at microseconds).
    assert text[:19] == datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_parse_reads_any_offset_and_precision() -> None:
    whole = int(datetime(2026, 12, 2, 15, 38, 44, tzinfo=UTC).timestamp()) * 10**9
    assert parse_ns(EXAMPLE) == whole + 123_456_789
    assert parse_ns("2026-12-02T16:38:44.123456789+01:00") == parse_ns(EXAMPLE)
    assert parse_ns("2026-12-02T15:08:44.123456789-00:30") == parse_ns(EXAMPLE)
    assert parse_ns("2026-12-02T15:38:44Z") == whole
    assert parse_ns("2026-12-02t15:38:44.5z") == whole + 500_000_000
    assert parse_ns("2016-12-31T23:59:60Z") == parse_ns("2017-01-01T00:00:00Z")  # a leap second
    for bad in ("2026-12-02", "2026-12-02T15:38:44", "2026-02-30T00:00:00Z", "2026-12-02T15:38:44.1234567890Z",
                "1796226324123456789", "2026-12-02T15:38:44Z\n"):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_ns(bad)
    assert re.search(RFC3339_PATTERN, EXAMPLE) and not re.search(RFC3339_PATTERN, "1796226324123456789")


def test_every_event_declares_ts_as_rfc3339_text_only() -> None:
    defs = json_schema()["$defs"]
    for cls in EVENT_TYPES:
        ts = defs[cls.__name__]["properties"]["ts"]
        assert ts["type"] == "string" and ts["format"] == "date-time", (cls.__name__, ts)  # no integer branch
        if "ts_ns" in cls.__struct_fields__:
            assert defs[cls.__name__]["properties"]["ts_ns"]["type"] == "integer"


def test_conntrack_writes_the_same_text_as_format_ns() -> None:
    ct = Conntrack()
    mono = time.monotonic_ns()
    # Across a second boundary, where conntrack's per-second cache of the date part changes.
    for ts in (mono, mono + 1, mono + 999_999_999, mono + 10**9, mono + 3 * 10**9 + 7):
        assert ct.rfc3339(ts) == format_ns(ct.wall_ns(ts))


def test_object_ref_carries_text_and_ns_of_one_instant() -> None:
    class Obj:
        data = b"{}"
        digest = "sha256:" + "ab" * 32
        transaction_id = "t-1"
        conn_id = 7
        content_type = "application/json"

    before = time.time_ns()
    ref = ObjectRef.of(Obj(), "file:///tmp/x", "dir")
    assert NS_TIME.fullmatch(ref.ts) and parse_ns(ref.ts) == ref.ts_ns
    assert before <= ref.ts_ns <= time.time_ns()


def test_calendar_agrees_with_the_standard_library_over_centuries() -> None:
    # Leap years (1900 no, 2000 yes), month ends, before the epoch: every day of 1899-2101 and a few far ones.
    day = 86_400 * 10**9
    for ns in [*range(-(70 * 366) * day, (132 * 366) * day, day), 253_402_300_799 * 10**9, -62_135_596_800 * 10**9]:
        want = datetime.fromtimestamp(ns // 10**9, UTC).isoformat()[:19]  # strftime does not pad year 1
        assert format_ns(ns + 5) == f"{want}.000000005Z", ns
        assert parse_ns(format_ns(ns + 5)) == ns + 5
