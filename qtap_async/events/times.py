"""The one way qtap_async writes a point in time: RFC 3339 in UTC with nanoseconds.

``2026-12-02T15:38:44.123456789Z``: always ``Z`` (never an offset), always nine fraction digits, so the
text sorts as the time does and keeps the precision of the kernel's clock. It is what ``ts`` holds in every
event (``qtap_async.events``) and in every row of Pulse's query API. Where a program needs the number, the
same instant is also given as ``ts_ns``, integer nanoseconds since the Unix epoch (the ``_ns`` suffix:
epoch nanoseconds for a point in time, nanoseconds for a duration such as ``duration_ns``).

Inputs stay lenient (``parse_ns`` reads any RFC 3339 offset and 0-9 fraction digits): outputs are exact.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeAlias

import msgspec

__all__ = ["EXAMPLE", "RFC3339_PATTERN", "Timestamp", "format_ns", "parse_ns"]

EXAMPLE = "2026-12-02T15:38:44.123456789Z"

#: A point in time as RFC 3339 UTC text with nanoseconds (the JSON Schema says ``format: date-time``).
Timestamp: TypeAlias = Annotated[
    str,
    msgspec.Meta(description="RFC 3339 in UTC with nanoseconds", extra_json_schema={"format": "date-time",
                                                                                  "examples": [EXAMPLE]}),
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: What ``parse_ns`` reads (for validators: a JSON Schema ``pattern``).
RFC3339_PATTERN = (
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def format_ns(epoch_ns: int) -> str:
    """``epoch_ns`` (nanoseconds since the Unix epoch) as ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``."""
    sec, frac = divmod(epoch_ns, 1_000_000_000)
    return f"{(_EPOCH + timedelta(seconds=sec)).strftime('%Y-%m-%dT%H:%M:%S')}.{frac:09d}Z"


def parse_ns(text: str) -> int:
    """Epoch nanoseconds of an RFC 3339 time, exact to the nanosecond (``datetime`` stops at microseconds).

    ValueError names what is wrong with ``text``.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time (like {EXAMPLE})")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        whole = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)  # 60: a leap second
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an RFC 3339 time: {exc}") from None
    ns = ((whole - _EPOCH) // timedelta(seconds=1) + (second - whole.second)) * 1_000_000_000
    ns += int((m.group(7) or "").ljust(9, "0"))
    if m.group(9):
        offset_min = int(m.group(10)) * 60 + int(m.group(11))
        ns -= (offset_min if m.group(9) == "+" else -offset_min) * 60 * 1_000_000_000
    return ns
