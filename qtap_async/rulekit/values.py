"""How rule values compare. Every function here is total: it returns a result for any input."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

Value = str | int | float | None

_INT_RE = re.compile(r"[+-]?\d{1,40}", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:\d{1,40}\.?\d{0,40}|\.\d{1,40})(?:[eE][+-]?\d{1,4})?", re.ASCII)


def normalize(value: object) -> Value:
    """Bring whatever a context returned into the value domain: bool -> int, unknown types -> None."""
    cls = value.__class__
    if cls is str or cls is int or cls is float or value is None:
        return value  # type: ignore[return-value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return None


def to_number(text: str) -> int | float | None:
    """Parse ``text`` (surrounding whitespace allowed) as a decimal number; None when it is not one."""
    text = text.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        value = float(text)
        if value - value == 0.0:  # finite
            return value
    return None


def compare(a: Value, b: Value) -> int | None:
    """-1, 0 or 1 when ``a`` and ``b`` are comparable, None when not.

    Strings compare with strings by code point; numbers with numbers; a string compared with a number
    is read as a number first. Null, NaN and strings that are not numbers (against a number) are
    incomparable.
    """
    if a is None or b is None:
        return None
    if a.__class__ is str:
        if b.__class__ is str:
            return (a > b) - (a < b)
        a = to_number(a)
        if a is None:
            return None
    elif b.__class__ is str:
        b = to_number(b)
        if b is None:
            return None
    if a != a or b != b:  # NaN
        return None
    return (a > b) - (a < b)  # type: ignore[operator]


def as_text(value: Value) -> str | None:
    """The text a string operator sees: strings as is, numbers in decimal, null as None."""
    if value is None or value.__class__ is str:
        return value
    return str(value)


def in_status_class(value: Value, digit: int) -> bool:
    """Whether ``value`` (a number, or a string holding one) lies in [digit*100, digit*100 + 100)."""
    if value is None:
        return False
    if value.__class__ is str:
        value = to_number(value)
        if value is None:
            return False
    low = digit * 100
    return low <= value < low + 100  # type: ignore[operator]


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (IPv4-mapped IPv6 addresses become IPv4), None when it is not one."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_network(value: Value, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if value is None or value.__class__ is not str:
        return False
    ip = parse_ip(value)
    return ip is not None and ip.version == network.version and ip in network


def truthy(value: Value) -> bool:
    """A field alone is true when present and neither "" nor 0."""
    return value is not None and value != "" and value != 0
