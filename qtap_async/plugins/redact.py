"""Credentials out of every output: header values and query values that carry secrets are replaced by
their kind and a short keyed hash.

``Authorization: Bearer eyJ...`` becomes ``Authorization: Bearer [redacted:3f9a0c1d2b4e]``; a cookie
keeps its names and loses its values; ``?token=abc`` becomes ``?token=[redacted:...]``. The hash is an
HMAC-SHA256 with the agent's key (random at each start unless ``tap.redaction.key`` sets one), cut to
12 hex digits: equal secrets stay correlatable across lines and stores, and a short or guessable secret
cannot be found by hashing candidates without the key.

Applied to stdout, access logs and every stored object; rules still see the real values (they run
inside the agent). ``show_secrets`` turns it off, and the agent logs a warning at start when it is.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Collection

import msgspec

from qtap_async.events.http import Headers
from qtap_async.settings import Secret, Settings

__all__ = [
    "DEFAULT_REDACTOR",
    "DEFAULT_SECRET_HEADERS",
    "DEFAULT_SECRET_QUERY_PARAMS",
    "RedactionConfig",
    "Redactor",
    "looks_secret",
    "redactor_from",
    "warn_if_clear",
]

#: Headers whose values are credentials (lowercase): ``tap.redaction.headers``.
DEFAULT_SECRET_HEADERS: tuple[str, ...] = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey",
    "x-auth-token", "x-access-token", "x-amz-security-token", "x-csrf-token", "x-xsrf-token",
    "x-goog-api-key", "private-token",
)
#: Query parameters whose values are credentials (lowercase): ``tap.redaction.query_params``. Values
#: that look like tokens (long, letters and digits mixed, or JWTs) are redacted whatever their name.
DEFAULT_SECRET_QUERY_PARAMS: tuple[str, ...] = (
    "token", "access_token", "refresh_token", "id_token", "auth", "api_key", "apikey", "key", "secret",
    "client_secret", "password", "passwd", "pwd", "sig", "signature", "x-amz-signature",
    "x-amz-security-token", "session", "sessionid", "jwt", "code",
)


class RedactionConfig(Settings, frozen=True):
    """``tap.redaction``: credentials in stdout, logs and stored objects are replaced by
    ``[redacted:<keyed hash>]``. ``show_secrets: true`` (or ``qtap run --show-secrets``) shows them in
    clear, with a warning at start; ``key`` fixes the HMAC key (random per process otherwise) so hashes
    compare across agents."""

    show_secrets: bool = False
    headers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SECRET_HEADERS))
    query_params: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SECRET_QUERY_PARAMS))
    key: Secret | None = None

# A value that looks like a credential whatever its name: long, opaque, mixing letters and digits
# (API keys, base64 tokens), or a JWT.
_OPAQUE = re.compile(r"[A-Za-z0-9_\-.~+/=%]{20,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.?[A-Za-z0-9_-]*")
_DIGIT = re.compile(r"\d")
_ALPHA = re.compile(r"[A-Za-z]")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")
_SCHEMES = {"authorization", "proxy-authorization"}
_MAX_PLAIN_NAMES = 1024  # bound of Redactor._plain: names past it are looked at every time
# One key per process unless configured: reloads keep it, so hashes stay comparable within a run.
_PROCESS_KEY = secrets.token_bytes(32)
log = logging.getLogger("qtap.redact")


def looks_secret(value: str) -> bool:
    """A JWT, or 20+ opaque characters with digits and letters that are not lower-case words: mixed case,
    upper case only (AKIA...), or 32+ long. Random tokens are; ``after-h2_garbage_frames`` is not."""
    if _JWT.fullmatch(value):
        return True
    if not (_OPAQUE.fullmatch(value) and _DIGIT.search(value) and _ALPHA.search(value)):
        return False
    if len(value) >= 32 or not _LOWER.search(value):  # long, or upper case and digits (AKIA...)
        return True
    return bool(_UPPER.search(value))


class Redactor:
    """Replaces secrets in headers and request targets. ``enabled=False`` passes everything through."""

    def __init__(
        self,
        headers: Collection[str] = DEFAULT_SECRET_HEADERS,
        query_params: Collection[str] = DEFAULT_SECRET_QUERY_PARAMS,
        key: bytes | None = None,
        enabled: bool = True,
    ) -> None:
        self.headers_lc = frozenset(h.lower() for h in headers)
        self.query_lc = frozenset(q.lower() for q in query_params)
        self._key = key or _PROCESS_KEY
        self.enabled = enabled
        self.redacted = 0  # values replaced so far (exported as a metric by the caller)
        # Header names (as spelled on the wire) known not to be secret: most transactions repeat the same
        # few, and one set lookup each is cheaper than lowering every name of every transaction.
        self._plain: set[str] = set()

    def tag(self, secret: str) -> str:
        self.redacted += 1
        digest = hmac.new(self._key, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return f"[redacted:{digest[:12]}]"

    # -- headers --------------------------------------------------------------------------------
    def header_value(self, name: str, value: str) -> str:
        lname = name.lower()
        if not self.enabled or lname not in self.headers_lc:
            return value
        if lname in _SCHEMES:
            scheme, sep, rest = value.strip().partition(" ")
            if sep and rest.strip() and scheme.isalpha():
                return f"{scheme} {self.tag(rest.strip())}"
            return self.tag(value)
        if lname == "cookie":
            return "; ".join(self._pair(p.strip()) for p in value.split(";") if p.strip())
        if lname == "set-cookie":
            first, sep, attrs = value.partition(";")
            return self._pair(first.strip()) + (sep + attrs if sep else "")
        return self.tag(value)

    def _pair(self, pair: str) -> str:
        name, eq, val = pair.partition("=")
        return f"{name}={self.tag(val)}" if eq else self.tag(pair)

    def headers(self, headers: Headers) -> Headers:
        if not self.enabled:
            return headers
        plain = self._plain
        for k, _ in headers:
            if k not in plain:
                break
        else:  # every name already seen and not secret (the usual case): nothing to look at
            return list(headers)
        out = [(k, self.header_value(k, v)) for k, v in headers]
        if len(plain) < _MAX_PLAIN_NAMES:
            secret = self.headers_lc
            plain.update(k for k, _ in headers if k.lower() not in secret)
        return out

    # -- request targets ------------------------------------------------------------------------
    def target(self, target: str | None) -> str | None:
        """The request target with secret query values replaced (names and order kept)."""
        if not self.enabled or not target or "?" not in target:
            return target
        head, _, rest = target.partition("?")
        query, hsep, fragment = rest.partition("#")
        parts = []
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            if eq and value and (name.lower() in self.query_lc or looks_secret(value)):
                parts.append(f"{name}={self.tag(value)}")
            else:
                parts.append(part)
        return f"{head}?{'&'.join(parts)}" + (hsep + fragment if hsep else "")


#: What outputs use when nothing configured one.
DEFAULT_REDACTOR = Redactor()


def redactor_from(config: RedactionConfig, show_secrets: bool = False) -> Redactor:
    """The redactor of ``tap.redaction``; ``show_secrets`` (the CLI flag) turns it off as well."""
    key = config.key.resolve("tap.redaction.key").encode() if config.key is not None else None
    return Redactor(config.headers, config.query_params, key, enabled=not (show_secrets or config.show_secrets))


def warn_if_clear(redactor: Redactor) -> None:
    if not redactor.enabled:
        log.warning("credentials are shown IN CLEAR (show_secrets): Authorization, cookies and secret query "
                    "values reach stdout, logs and every store unredacted")
