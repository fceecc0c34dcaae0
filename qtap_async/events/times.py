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

#: What ``parse_ns`` reads (for validators: a JSON Schema ``pattern``).
RFC3339_PATTERN = (
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS

# The calendar is done in integers (proleptic Gregorian, days since 1970-01-01), not with datetime: the
# event model is imported by the protocol parsers, which must not reach a clock (tests/test_layout.py), and
# datetime would stop at microseconds anyway.


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of ``days`` since 1970-01-01."""
    z = days + 719_468  # days since 0000-03-01: leap days fall at the end of a year
    era, doe = divmod(z, 146_097)
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a (valid) date: the inverse of ``_civil``."""
    year -= month <= 2
    era, yoe = divmod(year, 400)
    doy = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def format_ns(epoch_ns: int) -> str:
    """``epoch_ns`` (nanoseconds since the Unix epoch) as ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``."""
    days, rest = divmod(epoch_ns, _DAY_NS)
    secs, frac = divmod(rest, _NS)
    year, month, day = _civil(days)
    return f"{year:04d}-{month:02d}-{day:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:09d}Z"


# "YYYY-MM-DDTHH:MM:SS" -> its epoch ns, for the agent's own "...SS.nnnnnnnnnZ" form: stores read one time
# per event, and events of one second share their head, so only the fraction is left to read.
_SECONDS: dict[str, int] = {}


def parse_ns(text: str) -> int:
    """Epoch nanoseconds of an RFC 3339 time, exact to the nanosecond (``datetime`` stops at microseconds).

    ValueError names what is wrong with ``text``.
    """
    sec = _SECONDS.get(text[:19])
    if sec is not None and text[19:20] == "." and text[-1:] == "Z" and 21 < len(text) <= 30:
        frac = text[20:-1]
        if frac.isdigit() and frac.isascii():
            return sec + int(frac.ljust(9, "0"))
    ns = _parse(text)
    if text[19:20] == "." and text[-1:] == "Z":  # the agent's form: remember its whole second
        if len(_SECONDS) >= 64:
            _SECONDS.clear()
        _SECONDS[text[:19]] = ns - ns % _NS
    return ns


def _parse(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time (like {EXAMPLE})")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    # second 60: a leap second, read as the first second of the next minute
    if not (1 <= month <= 12 and 1 <= day <= _month_days(year, month) and hour <= 23 and minute <= 59
            and second <= 60):
        raise ValueError(f"{text!r} is not an RFC 3339 time: no such date or time of day")
    ns = _days(year, month, day) * _DAY_NS + ((hour * 60 + minute) * 60 + second) * _NS
    ns += int((m.group(7) or "").ljust(9, "0"))
    if m.group(9):
        offset_min = int(m.group(10)) * 60 + int(m.group(11))
        ns -= (offset_min if m.group(9) == "+" else -offset_min) * 60 * _NS
    return ns
