"""The control plane's state: users, teams, tokens, sessions, agents, config versions, activations, audit.

SQLite (one file in the data directory) by default, PostgreSQL for several instances: the same SQL runs
on both (db.py only turns ``?`` into ``%s``): no ``INSERT OR REPLACE``, no ``AUTOINCREMENT``, no date
functions; ids are made in Python, times are epoch seconds (DOUBLE PRECISION), JSON is stored as text,
sequence numbers are MAX + 1 inside a serialized write transaction. Secrets are stored as hashes only
(SHA-256 for random tokens, argon2 for passwords, in auth.py).

One connection shared by the server's threads behind a lock; the CLI opens the same database while the
server runs, and the server sees its changes on its next read.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from qtap_async.control.db import Database, open_database
from qtap_async.control.models import (
    Activation,
    AgentOut,
    AuditRecord,
    ConfigVersion,
    Membership,
    RegistrationTokenOut,
    TokenOut,
    UserOut,
)
from qtap_async.control.settings import ControlSettings
from qtap_async.errors import ControlError

SCHEMA_VERSION = 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, source TEXT NOT NULL,"
    " password_hash TEXT, subject TEXT, created_at DOUBLE PRECISION NOT NULL, disabled INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS memberships (user_id TEXT NOT NULL, team TEXT NOT NULL, role TEXT NOT NULL,"
    " PRIMARY KEY (user_id, team))",
    "CREATE TABLE IF NOT EXISTS api_tokens (id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, name TEXT NOT NULL,"
    " user_id TEXT NOT NULL, scopes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION, last_used_at DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS sessions (hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, source TEXT NOT NULL,"
    " csrf TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,"
    " address TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oidc_logins (state_hash TEXT PRIMARY KEY, verifier TEXT NOT NULL,"
    " nonce TEXT NOT NULL, next_path TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registration_tokens (id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL,"
    " team TEXT NOT NULL, agent_group TEXT NOT NULL, created_by TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION,"
    " uses INTEGER NOT NULL, max_uses INTEGER)",
    "CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, team TEXT NOT NULL,"
    " agent_group TEXT NOT NULL, hostname TEXT NOT NULL, agent_version TEXT NOT NULL, kernel TEXT NOT NULL,"
    " address TEXT NOT NULL, registered_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION,"
    " health TEXT NOT NULL, running_version INTEGER, refused_version INTEGER, refused_reason TEXT NOT NULL,"
    " counters TEXT NOT NULL, revoked_at DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS configs (team TEXT NOT NULL, version INTEGER NOT NULL, yaml TEXT NOT NULL,"
    " sha256 TEXT NOT NULL, created_by TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " comment TEXT NOT NULL, PRIMARY KEY (team, version))",
    "CREATE TABLE IF NOT EXISTS activations (team TEXT NOT NULL, agent_group TEXT NOT NULL,"
    " version INTEGER NOT NULL, activated_by TEXT NOT NULL, activated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (team, agent_group))",
    # Every activation ever made, so a rollback knows what was active before.
    "CREATE TABLE IF NOT EXISTS activation_history (seq INTEGER PRIMARY KEY, team TEXT NOT NULL,"
    " agent_group TEXT NOT NULL, version INTEGER NOT NULL, activated_by TEXT NOT NULL,"
    " activated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,"
    " address TEXT NOT NULL, team TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,"
    " detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_team_ts ON audit (team, ts)",
    "CREATE INDEX IF NOT EXISTS agents_team ON agents (team)",
)


def new_id() -> str:
    return secrets.token_hex(8)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Store:
    def __init__(self, target: str | Path) -> None:
        """``target``: a SQLite file path, ``sqlite:///PATH`` or ``postgresql://...`` (see db.py)."""
        self._db: Database = open_database(target)
        try:
            for stmt in SCHEMA:
                self._db.execute(stmt)
            rows = self._q("SELECT value FROM meta WHERE key = 'schema'")
            if not rows:
                self._x("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(rows[0][0]) > SCHEMA_VERSION:
                raise ControlError(f"{target}: store schema {rows[0][0]} is newer than this qtap ({SCHEMA_VERSION})")
        except ControlError:
            self._db.close()
            raise

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def close(self) -> None:
        self._db.close()

    # -- plumbing ----------------------------------------------------------------------------------
    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args)[0]

    def _x(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a write; the number of rows it changed."""
        return self._db.execute(sql, args)[1]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (serialized with other writers)."""
        with self._db.transaction():
            yield

    def ping(self) -> bool:
        try:
            self._q("SELECT 1")
        except ControlError:
            return False
        return True

    # -- users -------------------------------------------------------------------------------------
    def user_row(self, name: str) -> tuple[str, str, str | None, int] | None:
        """(id, source, password_hash, disabled) of a user."""
        rows = self._q("SELECT id, source, password_hash, disabled FROM users WHERE name = ?", (name,))
        return (rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def user_name(self, user_id: str) -> str | None:
        rows = self._q("SELECT name FROM users WHERE id = ? AND disabled = 0", (user_id,))
        return rows[0][0] if rows else None

    def create_user(self, name: str, source: str, password_hash: str | None, subject: str = "") -> str:
        if self.user_row(name) is not None:
            raise ControlError(f"conflict: user {name!r} exists")
        uid = new_id()
        self._x(
            "INSERT INTO users (id, name, source, password_hash, subject, created_at, disabled)"
            " VALUES (?, ?, ?, ?, ?, ?, 0)",
            (uid, name, source, password_hash, subject, time.time()),
        )
        return uid

    def set_password(self, user_id: str, password_hash: str) -> None:
        self._x("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    def set_disabled(self, user_id: str, disabled: bool) -> None:
        self._x("UPDATE users SET disabled = ? WHERE id = ?", (1 if disabled else 0, user_id))

    def memberships(self, user_id: str) -> dict[str, str]:
        return {t: r for t, r in self._q("SELECT team, role FROM memberships WHERE user_id = ?", (user_id,))}

    def set_membership(self, user_id: str, team: str, role: str) -> None:
        with self.transaction():
            self._x("DELETE FROM memberships WHERE user_id = ? AND team = ?", (user_id, team))
            self._x("INSERT INTO memberships (user_id, team, role) VALUES (?, ?, ?)", (user_id, team, role))

    def replace_memberships(self, user_id: str, roles: dict[str, str]) -> None:
        with self.transaction():
            self._x("DELETE FROM memberships WHERE user_id = ?", (user_id,))
            for team, role in roles.items():
                self._x("INSERT INTO memberships (user_id, team, role) VALUES (?, ?, ?)", (user_id, team, role))

    def remove_membership(self, user_id: str, team: str) -> bool:
        return self._x("DELETE FROM memberships WHERE user_id = ? AND team = ?", (user_id, team)) > 0

    def list_users(self, team: str) -> list[UserOut]:
        rows = self._q(
            "SELECT u.id, u.name, u.source, u.created_at, u.disabled FROM users u"
            " JOIN memberships m ON m.user_id = u.id WHERE m.team = ? ORDER BY u.name",
            (team,),
        )
        out = []
        for uid, name, source, created, disabled in rows:
            # Only the memberships in the asking team: other teams are not the caller's business.
            role = self.memberships(uid).get(team, "viewer")
            out.append(UserOut(name=name, source=source, memberships=[Membership(team=team, role=role)],  # type: ignore[arg-type]
                               created_at=created, disabled=bool(disabled)))
        return out

    # -- API tokens --------------------------------------------------------------------------------
    def create_api_token(self, token_id: str, token_hash: str, name: str, user_id: str, scopes: Sequence[str],
                         expires_at: float | None) -> None:
        self._x(
            "INSERT INTO api_tokens (id, hash, name, user_id, scopes, created_at, expires_at, revoked_at,"
            " last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (token_id, token_hash, name, user_id, ",".join(sorted(set(scopes))), time.time(), expires_at),
        )

    def api_token(self, token_hash: str) -> tuple[str, str, list[str], float | None, float | None] | None:
        """(id, user_id, scopes, expires_at, revoked_at) of a token."""
        rows = self._q("SELECT id, user_id, scopes, expires_at, revoked_at FROM api_tokens WHERE hash = ?",
                       (token_hash,))
        if not rows:
            return None
        r = rows[0]
        return r[0], r[1], r[2].split(","), r[3], r[4]

    def touch_api_token(self, token_id: str) -> None:
        self._x("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (time.time(), token_id))

    def list_api_tokens(self, user_ids: Sequence[str]) -> list[TokenOut]:
        if not user_ids:
            return []
        marks = ",".join("?" for _ in user_ids)
        rows = self._q(
            "SELECT t.id, t.name, u.name, t.scopes, t.created_at, t.expires_at, t.revoked_at, t.last_used_at"
            f" FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.user_id IN ({marks})"
            " ORDER BY t.created_at",
            list(user_ids),
        )
        return [TokenOut(id=r[0], name=r[1], user=r[2], scopes=r[3].split(","), created_at=r[4], expires_at=r[5],
                         revoked_at=r[6], last_used_at=r[7]) for r in rows]

    def api_token_owner(self, token_id: str) -> str | None:
        rows = self._q("SELECT user_id FROM api_tokens WHERE id = ?", (token_id,))
        return rows[0][0] if rows else None

    def revoke_api_token(self, token_id: str) -> bool:
        return self._x("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (time.time(), token_id)) > 0

    def user_ids_in_team(self, team: str) -> list[str]:
        return [r[0] for r in self._q("SELECT user_id FROM memberships WHERE team = ?", (team,))]

    # -- sessions ----------------------------------------------------------------------------------
    def create_session(self, session_hash: str, user_id: str, source: str, csrf: str, expires_at: float,
                       address: str) -> None:
        now = time.time()
        self._x("DELETE FROM sessions WHERE expires_at < ?", (now,))
        self._x(
            "INSERT INTO sessions (hash, user_id, source, csrf, created_at, expires_at, address)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_hash, user_id, source, csrf, now, expires_at, address),
        )

    def session(self, session_hash: str) -> tuple[str, str, str, float] | None:
        """(user_id, source, csrf, expires_at) of a live session."""
        rows = self._q("SELECT user_id, source, csrf, expires_at FROM sessions WHERE hash = ? AND expires_at > ?",
                       (session_hash, time.time()))
        return (rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def delete_session(self, session_hash: str) -> None:
        self._x("DELETE FROM sessions WHERE hash = ?", (session_hash,))

    def delete_user_sessions(self, user_id: str) -> None:
        self._x("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    # -- OIDC logins in progress -------------------------------------------------------------------
    def put_oidc_login(self, state_hash: str, verifier: str, nonce: str, next_path: str) -> None:
        self._x("INSERT INTO oidc_logins (state_hash, verifier, nonce, next_path, created_at) VALUES (?, ?, ?, ?, ?)",
                (state_hash, verifier, nonce, next_path, time.time()))

    def take_oidc_login(self, state_hash: str, max_age_s: float) -> tuple[str, str, str] | None:
        """(verifier, nonce, next_path) of a login started less than ``max_age_s`` ago; used once."""
        with self.transaction():
            self._x("DELETE FROM oidc_logins WHERE created_at < ?", (time.time() - max_age_s,))
            rows = self._q("SELECT verifier, nonce, next_path FROM oidc_logins WHERE state_hash = ?", (state_hash,))
            self._x("DELETE FROM oidc_logins WHERE state_hash = ?", (state_hash,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    # -- registration tokens -----------------------------------------------------------------------
    def create_registration_token(self, token_id: str, token_hash: str, team: str, group: str, created_by: str,
                                  expires_at: float | None, max_uses: int | None) -> None:
        self._x(
            "INSERT INTO registration_tokens (id, hash, team, agent_group, created_by, created_at, expires_at,"
            " revoked_at, uses, max_uses) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0, ?)",
            (token_id, token_hash, team, group, created_by, time.time(), expires_at, max_uses),
        )

    def use_registration_token(self, token_hash: str) -> tuple[str, str, str] | None:
        """(id, team, group) of a usable registration token, counting the use; None when unusable."""
        now = time.time()
        with self.transaction():
            rows = self._q(
                "SELECT id, team, agent_group FROM registration_tokens WHERE hash = ? AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > ?) AND (max_uses IS NULL OR uses < max_uses)",
                (token_hash, now),
            )
            if not rows:
                return None
            self._x("UPDATE registration_tokens SET uses = uses + 1 WHERE id = ?", (rows[0][0],))
        return rows[0][0], rows[0][1], rows[0][2]

    def list_registration_tokens(self, team: str) -> list[RegistrationTokenOut]:
        rows = self._q(
            "SELECT id, team, agent_group, created_by, created_at, expires_at, revoked_at, uses, max_uses"
            " FROM registration_tokens WHERE team = ? ORDER BY created_at",
            (team,),
        )
        return [RegistrationTokenOut(id=r[0], team=r[1], group=r[2], created_by=r[3], created_at=r[4],
                                     expires_at=r[5], revoked_at=r[6], uses=r[7], max_uses=r[8]) for r in rows]

    def revoke_registration_token(self, team: str, token_id: str) -> bool:
        return self._x("UPDATE registration_tokens SET revoked_at = ? WHERE id = ? AND team = ? AND revoked_at IS NULL",
                       (time.time(), token_id, team)) > 0

    # -- agents ------------------------------------------------------------------------------------
    def create_agent(self, agent_id: str, token_hash: str, team: str, group: str, hostname: str,
                     agent_version: str, kernel: str, address: str) -> None:
        self._x(
            "INSERT INTO agents (id, token_hash, team, agent_group, hostname, agent_version, kernel, address,"
            " registered_at, last_seen, health, running_version, refused_version, refused_reason, counters,"
            " revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'unknown', NULL, NULL, '', '{}', NULL)",
            (agent_id, token_hash, team, group, hostname, agent_version, kernel, address, time.time()),
        )

    def agent_by_token(self, token_hash: str) -> tuple[str, str, str] | None:
        """(id, team, group) of a live agent identity."""
        rows = self._q("SELECT id, team, agent_group FROM agents WHERE token_hash = ? AND revoked_at IS NULL",
                       (token_hash,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def update_agent_status(self, agent_id: str, *, address: str, health: str, running: int | None,
                            refused: int | None, reason: str, counters: dict[str, int], agent_version: str,
                            kernel: str) -> None:
        self._x(
            "UPDATE agents SET last_seen = ?, address = ?, health = ?, running_version = ?, refused_version = ?,"
            " refused_reason = ?, counters = ?,"
            " agent_version = CASE WHEN ? = '' THEN agent_version ELSE ? END,"
            " kernel = CASE WHEN ? = '' THEN kernel ELSE ? END WHERE id = ?",
            (time.time(), address, health, running, refused, reason, _json(counters), agent_version, agent_version,
             kernel, kernel, agent_id),
        )

    def touch_agent(self, agent_id: str, address: str) -> None:
        self._x("UPDATE agents SET last_seen = ?, address = ? WHERE id = ?", (time.time(), address, agent_id))

    def list_agents(self, team: str, stale_after_s: float, agent_id: str | None = None) -> list[AgentOut]:
        sql = ("SELECT id, team, agent_group, hostname, agent_version, kernel, address, registered_at, last_seen,"
               " health, running_version, refused_version, refused_reason, counters FROM agents"
               " WHERE team = ? AND revoked_at IS NULL")
        args: list[Any] = [team]
        if agent_id is not None:
            sql += " AND id = ?"
            args.append(agent_id)
        rows = self._q(sql + " ORDER BY hostname, id", args)
        now = time.time()
        out = []
        for r in rows:
            last_seen = r[8]
            state: Literal["online", "stale", "never_seen"] = "never_seen"
            if last_seen is not None:
                state = "online" if now - last_seen <= stale_after_s else "stale"
            out.append(AgentOut(
                id=r[0], team=r[1], group=r[2], hostname=r[3], agent_version=r[4], kernel=r[5], address=r[6],
                registered_at=r[7], last_seen=last_seen, state=state, health=r[9],
                desired_version=self.desired_version(r[1], r[2]), running_version=r[10], refused_version=r[11],
                refused_reason=r[12], counters=json.loads(r[13]),
            ))
        return out

    def revoke_agent(self, team: str, agent_id: str) -> bool:
        return self._x("UPDATE agents SET revoked_at = ? WHERE id = ? AND team = ? AND revoked_at IS NULL",
                       (time.time(), agent_id, team)) > 0

    # -- configs -----------------------------------------------------------------------------------
    def add_config(self, team: str, yaml_text: str, sha256: str, created_by: str, comment: str) -> int:
        with self.transaction():
            rows = self._q("SELECT MAX(version) FROM configs WHERE team = ?", (team,))
            version = (rows[0][0] or 0) + 1
            self._x(
                "INSERT INTO configs (team, version, yaml, sha256, created_by, created_at, comment)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (team, version, yaml_text, sha256, created_by, time.time(), comment),
            )
        return int(version)

    def _active_for(self, team: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        rows = self._q("SELECT agent_group, version FROM activations WHERE team = ? ORDER BY agent_group", (team,))
        for group, version in rows:
            out.setdefault(version, []).append(group)
        return out

    def list_configs(self, team: str, limit: int, offset: int) -> list[ConfigVersion]:
        active = self._active_for(team)
        rows = self._q(
            "SELECT version, sha256, LENGTH(yaml), created_by, created_at, comment FROM configs WHERE team = ?"
            " ORDER BY version DESC LIMIT ? OFFSET ?",
            (team, limit, offset),
        )
        return [ConfigVersion(team=team, version=r[0], sha256=r[1], size=r[2], created_by=r[3], created_at=r[4],
                              comment=r[5], active_for=active.get(r[0], [])) for r in rows]

    def config(self, team: str, version: int) -> tuple[str, str, str, float, str, list[str]] | None:
        """(yaml, sha256, created_by, created_at, comment, active_for) of a version."""
        rows = self._q("SELECT yaml, sha256, created_by, created_at, comment FROM configs"
                       " WHERE team = ? AND version = ?", (team, version))
        if not rows:
            return None
        r = rows[0]
        return r[0], r[1], r[2], r[3], r[4], self._active_for(team).get(version, [])

    def activate(self, team: str, group: str, version: int, by: str) -> int | None:
        """Make ``version`` active for (team, group); the version active before (None if none)."""
        now = time.time()
        with self.transaction():
            rows = self._q("SELECT version FROM activations WHERE team = ? AND agent_group = ?", (team, group))
            previous = rows[0][0] if rows else None
            self._x("DELETE FROM activations WHERE team = ? AND agent_group = ?", (team, group))
            self._x("INSERT INTO activations (team, agent_group, version, activated_by, activated_at)"
                    " VALUES (?, ?, ?, ?, ?)", (team, group, version, by, now))
            seq = self._q("SELECT MAX(seq) FROM activation_history")[0][0] or 0
            self._x("INSERT INTO activation_history (seq, team, agent_group, version, activated_by, activated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (seq + 1, team, group, version, by, now))
        return previous

    def previous_activation(self, team: str, group: str) -> int | None:
        """The version that was active for (team, group) before the current one (the rollback target)."""
        rows = self._q("SELECT version FROM activation_history WHERE team = ? AND agent_group = ?"
                       " ORDER BY seq DESC", (team, group))
        if not rows:
            return None
        current = rows[0][0]
        for (version,) in rows[1:]:
            if version != current:
                return int(version)
        return None

    def activations(self, team: str) -> list[Activation]:
        rows = self._q("SELECT team, agent_group, version, activated_by, activated_at FROM activations"
                       " WHERE team = ? ORDER BY agent_group", (team,))
        return [Activation(team=r[0], group=r[1], version=r[2], activated_by=r[3], activated_at=r[4]) for r in rows]

    def activation_stamps(self) -> list[tuple[Any, ...]]:
        """(team, group, version, activated_at) of every activation: what the push watcher compares."""
        return self._q("SELECT team, agent_group, version, activated_at FROM activations")

    def desired_version(self, team: str, group: str) -> int | None:
        """What an agent of (team, group) should run: its group's activation, else the team default."""
        rows = self._q("SELECT agent_group, version FROM activations WHERE team = ? AND agent_group IN (?, '')",
                       (team, group))
        by_group = dict(rows)
        if group in by_group:
            return int(by_group[group])
        return int(by_group[""]) if "" in by_group else None

    # -- audit -------------------------------------------------------------------------------------
    def audit(self, actor: str, address: str, team: str, action: str, target: str, detail: dict[str, Any]) -> None:
        with self.transaction():
            seq = self._q("SELECT MAX(seq) FROM audit")[0][0] or 0
            self._x("INSERT INTO audit (seq, ts, actor, address, team, action, target, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq + 1, time.time(), actor, address, team, action, target, _json(detail)))

    def query_audit(self, team: str, *, action: str | None, actor: str | None, since: float | None,
                    limit: int, offset: int) -> list[AuditRecord]:
        sql = "SELECT seq, ts, actor, address, team, action, target, detail FROM audit WHERE team = ?"
        args: list[Any] = [team]
        if action:
            sql += " AND action = ?"
            args.append(action)
        if actor:
            sql += " AND actor = ?"
            args.append(actor)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        return [AuditRecord(id=r[0], ts=r[1], actor=r[2], address=r[3], team=r[4], action=r[5], target=r[6],
                            detail=json.loads(r[7])) for r in self._q(sql, args)]


def open_store(settings: ControlSettings) -> Store:
    """The store the settings name: ``database_url`` when set, else SQLite in the data directory."""
    return Store(settings.database_url or settings.sqlite_path)
