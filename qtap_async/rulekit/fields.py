"""The fields a rule can read, their canonical names and the spellings accepted for them."""

from __future__ import annotations

import difflib

#: Every plain field a rule may name. ``RuleContext.get`` is only ever asked for these names and for
#: header fields (``http.req.headers.<name>`` / ``http.res.headers.<name>``, name lowercased).
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "http.req.method",
        "http.req.path",
        "http.req.host",
        "http.req.url",
        "http.res.status",
        "process.exe",
        "process.pid",
        "conn.direction",
        "conn.remote_ip",
    }
)

#: Prefixes of header fields; what follows is the header name, case-insensitive (lowercased).
HEADER_PREFIXES: tuple[str, ...] = ("http.req.headers.", "http.res.headers.")

#: Qtap-style spellings, rewritten to the canonical prefix at compile time.
ALIASES: tuple[tuple[str, str], ...] = (
    ("request.", "http.req."),
    ("response.", "http.res."),
    ("http.request.", "http.req."),
    ("http.response.", "http.res."),
)


def canonical_field(name: str) -> str | None:
    """The canonical name of ``name``, or None when it names no field.

    Aliases are rewritten, header names are lowercased.
    """
    for alias, target in ALIASES:
        if name.startswith(alias):
            name = target + name[len(alias) :]
            break
    if name in KNOWN_FIELDS:
        return name
    for prefix in HEADER_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return prefix + name[len(prefix) :].lower()
    return None


def suggest_field(name: str) -> str | None:
    """A known field close to ``name`` (for "did you mean"), or None."""
    candidates = sorted(KNOWN_FIELDS) + [p.rstrip(".") for p in HEADER_PREFIXES]
    for alias, target in ALIASES:
        if name.startswith(alias):
            name = target + name[len(alias) :]
            break
    # A bare last segment ("status") maps to the field that ends with it.
    if "." not in name:
        tails = [f for f in candidates if f.rsplit(".", 1)[-1] == name.lower()]
        if len(tails) == 1:
            return tails[0]
    # A header prefix with a typo ("http.req.header.host").
    for prefix in HEADER_PREFIXES:
        stem = prefix.rstrip(".")
        head, _, tail = name.rpartition(".")
        if tail and difflib.SequenceMatcher(None, head, stem).ratio() > 0.85 and head != stem:
            return f"{stem}.{tail.lower()}"
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return close[0] if close else None
