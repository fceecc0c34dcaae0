"""Who a request acts as, and what it may do.

- Local passwords are hashed with argon2id (argon2-cffi defaults: 64 MiB, 3 passes); hashing runs in a
  worker thread. Failed logins are counted per user name and per client address (``LoginLimiter``).
- API tokens (``qct_<id>_<secret>``), agent identities (``qca_...``) and registration tokens
  (``qcr_...``) carry 32 random bytes; only their SHA-256 is stored (high entropy: a fast hash suffices)
  and they are looked up on every request, so a revocation applies to the next request.
- Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie (Secure unless turned off), stored
  hashed with an expiry. Writes made with a session cookie must echo the session's CSRF token in
  ``X-CSRF-Token``; bearer tokens need none (a browser never adds them on its own).
- Roles per team: viewer < editor < admin. A token's scopes cap the user's roles (``read`` = viewer).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from qtap_async.control.models import ROLE_RANK, SCOPE_ROLE
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import Store
from qtap_async.errors import ControlAuthError

SESSION_COOKIE = "qtap_session"
CSRF_HEADER = "x-csrf-token"
_TOKEN_RE = re.compile(r"^(qct|qca|qcr)_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")

_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_token(kind: str) -> tuple[str, str]:
    """(id, token) for ``kind`` qct (API), qca (agent) or qcr (registration)."""
    token_id = secrets.token_hex(8)
    return token_id, f"{kind}_{token_id}_{secrets.token_urlsafe(32)}"


def token_kind(token: str) -> str | None:
    m = _TOKEN_RE.match(token)
    return m.group(1) if m else None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the user has a password."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Principal:
    """A user (by session or API token) or an agent."""

    kind: str  # session | token | agent
    name: str  # user name, or the agent id
    user_id: str = ""
    roles: dict[str, str] = field(default_factory=dict)  # team -> role, already capped by token scopes
    csrf: str = ""  # sessions only
    session_hash: str = ""
    token_id: str = ""
    expires_at: float | None = None
    source: str = ""  # local | oidc for users
    team: str = ""  # agents only
    group: str = ""  # agents only

    @property
    def actor(self) -> str:
        return f"agent:{self.name}" if self.kind == "agent" else self.name

    def role_in(self, team: str) -> str | None:
        return self.roles.get(team)

    def can(self, team: str, role: str) -> bool:
        have = self.roles.get(team)
        return have is not None and ROLE_RANK[have] >= ROLE_RANK[role]


def cap_roles(roles: dict[str, str], scopes: list[str]) -> dict[str, str]:
    """The roles a token with ``scopes`` acts with: each team's role, at most the highest scope's role."""
    cap = max((ROLE_RANK[SCOPE_ROLE[s]] for s in scopes if s in SCOPE_ROLE), default=0)
    by_rank = {v: k for k, v in ROLE_RANK.items()}
    out = {}
    for team, role in roles.items():
        rank = min(ROLE_RANK[role], cap)
        if rank:
            out[team] = by_rank[rank]
    return out


class LoginLimiter:
    """Failed logins in a sliding window, per user name and per client address. Per process: with several
    instances behind a balancer each keeps its own count (the limits then apply per instance)."""

    def __init__(self, max_per_user: int, max_per_address: int, window_s: float) -> None:
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window_s = window_s
        self._fails: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until a login for ``user`` from ``address`` is allowed again (0: allowed now)."""
        now = time.monotonic()
        wait = 0.0
        for key, limit in ((("u", user), self.max_per_user), (("a", address), self.max_per_address)):
            q = self._recent(key, now)
            if len(q) >= limit:
                wait = max(wait, q[len(q) - limit] + self.window_s - now)
        return wait

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        for key in (("u", user), ("a", address)):
            self._fails.setdefault(key, deque()).append(now)
        if len(self._fails) > 100_000:  # a flood of distinct names: forget the oldest keys
            for k in list(self._fails)[:50_000]:
                del self._fails[k]

    def succeeded(self, user: str) -> None:
        self._fails.pop(("u", user), None)


class Authenticator:
    """Resolves the credentials of a request into a Principal (or raises ControlAuthError)."""

    def __init__(self, store: Store, settings: ControlSettings) -> None:
        self.store = store
        self.settings = settings

    def _check_size(self, what: str, value: str) -> None:
        if len(value) > self.settings.limits.max_auth_header_bytes:
            raise ControlAuthError(f"{what} is longer than {self.settings.limits.max_auth_header_bytes} bytes", 401)

    def bearer(self, header: str) -> str:
        self._check_size("authorization header", header)
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise ControlAuthError("authorization must be 'Bearer <token>'", 401)
        return token.strip()

    def user_principal(self, user_id: str, *, kind: str, source: str, scopes: list[str] | None = None,
                       csrf: str = "", session_hash: str = "", token_id: str = "",
                       expires_at: float | None = None) -> Principal:
        name = self.store.user_name(user_id)
        if name is None:
            raise ControlAuthError("user disabled or removed", 401)
        roles = self.store.memberships(user_id)
        if scopes is not None:
            roles = cap_roles(roles, scopes)
        return Principal(kind=kind, name=name, user_id=user_id, roles=roles, csrf=csrf, session_hash=session_hash,
                         token_id=token_id, expires_at=expires_at, source=source)

    def from_token(self, token: str) -> Principal:
        kind = token_kind(token)
        if kind == "qct":
            row = self.store.api_token(hash_secret(token))
            if row is None:
                raise ControlAuthError("invalid token", 401)
            token_id, user_id, scopes, expires_at, revoked_at = row
            if revoked_at is not None:
                raise ControlAuthError("token revoked", 401)
            if expires_at is not None and expires_at <= time.time():
                raise ControlAuthError("token expired", 401)
            self.store.touch_api_token(token_id)
            return self.user_principal(user_id, kind="token", source="token", scopes=scopes, token_id=token_id,
                                       expires_at=expires_at)
        if kind == "qca":
            agent = self.store.agent_by_token(hash_secret(token))
            if agent is None:
                raise ControlAuthError("invalid or revoked agent identity", 401)
            return Principal(kind="agent", name=agent[0], team=agent[1], group=agent[2])
        raise ControlAuthError("invalid token", 401)

    def from_session(self, cookie: str) -> Principal:
        self._check_size("session cookie", cookie)
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie):
            raise ControlAuthError("invalid session", 401)
        h = hash_secret(cookie)
        row = self.store.session(h)
        if row is None:
            raise ControlAuthError("session expired or unknown; log in again", 401)
        user_id, source, csrf, expires_at = row
        return self.user_principal(user_id, kind="session", source=source, csrf=csrf, session_hash=h,
                                   expires_at=expires_at)

    def check_csrf(self, principal: Principal, header: str | None) -> None:
        """Writes through a browser session must carry the session's CSRF token."""
        if principal.kind != "session":
            return
        if not header:
            raise ControlAuthError(f"missing {CSRF_HEADER} header (required for writes with a session cookie)", 403)
        self._check_size("CSRF header", header)
        if not hmac.compare_digest(header.encode(), principal.csrf.encode()):
            raise ControlAuthError("CSRF token does not match the session", 403)

    def new_session(self, user_id: str, source: str, address: str) -> tuple[str, str, float]:
        """(cookie value, CSRF token, expires_at) of a new session."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires_at = time.time() + self.settings.session_ttl_s
        self.store.create_session(hash_secret(cookie), user_id, source, csrf, expires_at, address)
        return cookie, csrf, expires_at

    def cookie_header(self, value: str, max_age: int) -> str:
        parts = [f"{SESSION_COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
        if self.settings.cookie_secure:
            parts.append("Secure")
        return "; ".join(parts)
