"""Turning request details into anonymized metadata for the event stores.

Events leave the host (Kafka, Pulse) and are kept for a long time, so they carry no header values,
no bodies and no query-string values except those configured as safe. Path segments that look like
identifiers become placeholders, so usage aggregates per endpoint and ids stay out of the events.
Credentials are reduced to a SHA-256 hash: it tells "same caller" apart without revealing the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping

__all__ = ["MASK", "auth_token", "hash_token", "mask_query", "masked_target", "path_template", "split_path"]

#: What a masked value is replaced with.
MASK = "*"

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
# Long opaque tokens (base64/base64url, JWTs...): long, and mixing letters with digits.
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+=]{20,}")
_HAS_DIGIT = re.compile(r"\d")
_HAS_ALPHA = re.compile(r"[A-Za-z]")
_EMAIL = re.compile(r"[^@/\s]+@[^@/\s]+\.[A-Za-z]{2,}")


def split_path(path: str) -> tuple[str, str]:
    """(path, query) of a request target; the query is "" when there is none. A fragment is dropped."""
    path = path.partition("#")[0]
    head, _, query = path.partition("?")
    return head, query


def _segment(seg: str) -> str:
    if not seg:
        return seg
    if _UUID.fullmatch(seg):
        return "{uuid}"
    if _NUMBER.fullmatch(seg):
        return "{id}"
    if _HEX.fullmatch(seg) and _HAS_DIGIT.search(seg):
        return "{hash}"
    if _EMAIL.fullmatch(seg):
        return "{email}"
    if _TOKEN.fullmatch(seg) and _HAS_DIGIT.search(seg) and _HAS_ALPHA.search(seg):
        return "{token}"
    return seg


def path_template(path: str) -> str:
    """The path (no query) with ids, UUIDs, numbers, hashes, emails and long tokens as placeholders:
    ``/users/42/orders/9f1c...`` -> ``/users/{id}/orders/{hash}``."""
    head, _ = split_path(path)
    return "/".join(_segment(s) for s in head.split("/"))


def mask_query(query: str, safe: Collection[str] = ()) -> str:
    """The query string with every value masked except those of parameters named in ``safe``.

    Parameter names stay (they describe the API, not the caller); the order is kept.
    """
    if not query:
        return ""
    out: list[str] = []
    for part in query.split("&"):
        if not part:
            continue
        name, eq, _ = part.partition("=")
        if not eq or name in safe:
            out.append(part)
        else:
            out.append(f"{name}={MASK}")
    return "&".join(out)


def masked_target(path: str, safe: Collection[str] = (), *, template: bool = False) -> str:
    """A request target fit for an event: the path (templated when ``template``) and the masked query."""
    head, query = split_path(path)
    if template:
        head = path_template(head)
    q = mask_query(query, safe)
    return f"{head}?{q}" if q else head


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a credential (the only form a credential takes in an event)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


# Credential headers in the order they are looked at; other configured names come after.
_AUTH_FIRST = ("authorization", "x-api-key", "api-key", "x-auth-token", "proxy-authorization")


def auth_token(headers: Mapping[str, str], names: Collection[str] = ()) -> str | None:
    """The credential a request carries, or None: the Authorization value without its scheme
    (``Bearer xyz`` -> ``xyz``), else the value of an X-API-Key style header, else the first other
    header named in ``names`` (lowercased) that is present. Response headers are not looked at."""
    extra = [n.lower() for n in names if n.lower() not in _AUTH_FIRST and n.lower() != "set-cookie"]
    for name in (*_AUTH_FIRST, *extra):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        if name in ("authorization", "proxy-authorization"):
            scheme, sep, rest = value.partition(" ")
            if sep and rest.strip() and scheme.isalpha():
                return rest.strip()
        return value
    return None
