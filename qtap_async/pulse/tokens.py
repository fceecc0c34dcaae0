"""Bearer tokens: stored hashed in SQLite, scoped to a team (and optionally an agent), revocable.

A token is ``qtp_<id>_<secret>``: the id names it in ``token list``/``token revoke``, the secret is 32
random bytes. Only the SHA-256 of the whole token is stored (tokens are high-entropy, so a fast hash
is enough). SQLite, not ClickHouse: the CLI edits tokens while the server runs, and the server sees a
revocation on the next request because it reads the row on every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from qtap_async.errors import PulseAuthError, PulseError

SCOPES = ("ingest", "query")
_TEAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN_RE = re.compile(r"^qtp_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


class Caller(msgspec.Struct, frozen=True, gc=False):
    """Who a request acts as: every row it writes and every query it runs is confined to ``team``."""

    token_id: str
    team: str
    agent: str
    scopes: tuple[str, ...]


class TokenInfo(msgspec.Struct, frozen=True, gc=False):
    token_id: str
    team: str
    agent: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The token hashes and teams are private to the service user (the file and its WAL/SHM files).
        old_umask = os.umask(0o077)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
            self._lock = threading.Lock()
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")  # creates the -wal/-shm files: inside the umask
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS tokens (token_id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL,"
                    " team TEXT NOT NULL, agent TEXT NOT NULL, scopes TEXT NOT NULL,"
                    " created_at REAL NOT NULL, revoked_at REAL)"
                )
        finally:
            os.umask(old_umask)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)  # a file made by an older version

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, team: str, agent: str = "", scopes: tuple[str, ...] = SCOPES) -> tuple[str, str]:
        """Make a token; returns (token_id, token). The token is shown once and never stored."""
        if not _TEAM_RE.match(team):
            raise PulseError(f"team {team!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if agent and not _TEAM_RE.match(agent):
            raise PulseError(f"agent {agent!r}: use 1-64 letters, digits, '.', '_' or '-'")
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise PulseError(f"scopes {list(scopes)}: choose from {list(SCOPES)}")
        token_id = secrets.token_hex(6)
        token = f"qtp_{token_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (token_id, hash_token(token), team, agent, ",".join(sorted(set(scopes))), time.time()),
            )
        return token_id, token

    def list(self, team: str | None = None) -> list[TokenInfo]:
        sql = "SELECT token_id, team, agent, scopes, created_at, revoked_at FROM tokens"
        args: tuple[str, ...] = ()
        if team is not None:
            sql += " WHERE team = ?"
            args = (team,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [TokenInfo(r[0], r[1], r[2], tuple(r[3].split(",")), r[4], r[5]) for r in rows]

    def revoke(self, token_id: str) -> bool:
        """Revoke by id; False when no such (unrevoked) token exists."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                (time.time(), token_id),
            )
        return cur.rowcount > 0

    def authenticate(self, token: str, scope: str) -> Caller:
        """The principal of ``token``; PulseAuthError 401 (unknown) or 403 (revoked, wrong scope)."""
        if not _TOKEN_RE.match(token):
            raise PulseAuthError("invalid token", 401)
        with self._lock:
            row = self._db.execute(
                "SELECT token_id, team, agent, scopes, revoked_at FROM tokens WHERE hash = ?",
                (hash_token(token),),
            ).fetchone()
        if row is None:
            raise PulseAuthError("invalid token", 401)
        if row[4] is not None:
            raise PulseAuthError("token revoked", 403)
        scopes = tuple(row[3].split(","))
        if scope not in scopes:
            raise PulseAuthError(f"token lacks the {scope!r} scope", 403)
        return Caller(row[0], row[1], row[2], scopes)
