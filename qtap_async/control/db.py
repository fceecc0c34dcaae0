"""The two databases the store runs its (one set of) SQL on: embedded SQLite, or PostgreSQL for several
instances behind a load balancer.

The store writes ``?`` placeholders; the PostgreSQL side turns them into ``%s`` (the store's SQL holds no
other ``?`` or ``%``). A write transaction is serialized on both: SQLite's ``BEGIN IMMEDIATE`` takes the
database's write lock, PostgreSQL's takes one transaction-scoped advisory lock, so read-then-insert
sequences (next version, next audit sequence number) never race across instances.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qtap_async.errors import ControlError

Rows = list[tuple[Any, ...]]
_PG_LOCK_KEY = 0x71746170  # "qtap": the advisory lock every write transaction takes


class Database:
    dialect = ""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[Rows, int]:
        """(rows, rowcount) of one statement; ControlError("conflict: ...") on a constraint violation."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=10000")
        except (OSError, sqlite3.Error) as e:
            raise ControlError(f"{path}: cannot open the control plane store: {e}") from e
        with contextlib.suppress(OSError):
            path.chmod(0o600)  # password hashes and token hashes: owner only
        self._lock = threading.RLock()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[Rows, int]:
        with self._lock:
            try:
                cur = self._db.execute(sql, tuple(args))
                return cur.fetchall(), cur.rowcount
            except sqlite3.IntegrityError as e:
                raise ControlError(f"conflict: {e}") from e
            except sqlite3.Error as e:
                raise ControlError(f"store: {e}") from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ModuleNotFoundError as e:
            raise ControlError("a postgresql:// database_url needs the psycopg package (pip install 'psycopg[binary]')"
                               ) from e
        self._psycopg = psycopg
        self._url = url
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_tx = False
        self._connect()

    def _connect(self) -> None:
        try:
            self._conn = self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as e:
            raise ControlError(f"cannot connect to the control plane database: {e}") from e

    def execute(self, sql: str, args: Sequence[Any] = ()) -> tuple[Rows, int]:
        pg = self._psycopg
        with self._lock:
            if self._conn is None or self._conn.closed:
                if self._in_tx:
                    raise ControlError("store: the database connection was lost inside a transaction")
                self._connect()  # the server restarted or the connection dropped: try once more
            try:
                cur = self._conn.execute(sql.replace("?", "%s"), tuple(args), prepare=False)
                rows = cur.fetchall() if cur.description is not None else []
                return rows, cur.rowcount
            except pg.errors.IntegrityError as e:
                raise ControlError(f"conflict: {e}") from e
            except pg.Error as e:
                raise ControlError(f"store: {e}") from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self.execute("BEGIN")
            self._in_tx = True
            try:
                self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))
                yield
            except BaseException:
                self._in_tx = False
                with contextlib.suppress(ControlError):
                    self.execute("ROLLBACK")
                raise
            self._in_tx = False
            self.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def open_database(target: str | Path) -> Database:
    """``postgresql://...`` (or ``postgres://``), ``sqlite:///PATH``, or a plain path to a SQLite file."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text)
    if text.startswith("sqlite:///"):
        return SqliteDatabase(Path(text[len("sqlite://"):]))
    if "://" in text:
        raise ControlError(f"database_url {text!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    return SqliteDatabase(Path(text))
