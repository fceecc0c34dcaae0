"""Storage: one interface, two backends running the same SQL.

- ChdbStorage: the embedded chDB engine (real ClickHouse) in a persistent directory; the default, so
  Pulse runs with no server.
- ClickHouseStorage: a ClickHouse server or cluster through clickhouse-connect (any DSN it takes).

All methods are blocking; the server calls them from worker threads. Queries take ClickHouse
``{name:Type}`` parameters, bound by the engine, never formatted into the SQL. Rows are written as
JSONEachRow into the ``<table>_in`` landing tables (see tables.py).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import msgspec

from qtap_async.errors import PulseError
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.tables import TABLES, ddl, landing_ddl, stored_table, ttl_clause

# Settings every query runs with: 64-bit integers as JSON numbers, and FINAL that does not merge
# across partitions (an event and its copies always share a partition: its day).
QUERY_SETTINGS: dict[str, int] = {
    "output_format_json_quote_64bit_integers": 0,
    "do_not_merge_across_partitions_select_final": 1,
    # `toUnixTimestamp64Nano(ts) AS ts` in a SELECT must not change what WHERE ts means.
    "prefer_column_name_to_alias": 1,
}
INSERT_SETTINGS: dict[str, int] = {"input_format_skip_unknown_fields": 1}
_TTL_DAYS = re.compile(r"TTL toDateTime\(ts\) \+ (?:toIntervalDay\((\d+)\)|INTERVAL (\d+) DAY)")


class _JsonResult(msgspec.Struct, gc=False):
    data: list[dict[str, Any]] = []


_result_decoder = msgspec.json.Decoder(_JsonResult)


def _rows(body: bytes) -> list[dict[str, Any]]:
    if not body.strip():
        return []
    return _result_decoder.decode(body).data


class Storage(ABC):
    # Whether a TEMPORARY table made by one statement is there for the next ones (one session for all).
    scratch_tables = False

    def __init__(self, config: PulseConfig) -> None:
        self.config = config
        self.database = config.database

    @abstractmethod
    def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL)."""

    @abstractmethod
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT with bound parameters; rows as dicts."""

    @abstractmethod
    def insert(self, table: str, rows: bytes) -> None:
        """Write JSONEachRow ``rows`` (one batch, one INSERT) into ``<table>_in``."""

    @abstractmethod
    def close(self) -> None: ...

    def ping(self) -> bool:
        try:
            return bool(self.query("SELECT 1 AS ok")[0]["ok"] == 1)
        except Exception:
            return False

    def setup(self) -> None:
        """Create the schema (idempotent) and bring each table's TTL in line with the config."""
        stmts = ddl(self.config)
        self.command(stmts[0])  # the database
        # Before the CREATE ... IF NOT EXISTS statements: ClickHouse checks a view's SELECT even when the
        # view exists, and the current one names columns an older landing table lacks.
        self._add_new_columns()
        for stmt in stmts:
            self.command(stmt)
        for name in TABLES:
            table = stored_table(self.config, name)
            days = getattr(self.config.retention, name)
            rows = self.query(
                "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": self.database, "t": table},
            )
            m = _TTL_DAYS.search(rows[0]["engine_full"]) if rows else None
            if m is not None and int(m.group(1) or m.group(2)) != days:
                on_cluster = f" ON CLUSTER {self.config.cluster}" if self.config.cluster else ""
                self.command(f"ALTER TABLE {self.database}.{table}{on_cluster} MODIFY {ttl_clause(days)}")


    def _add_new_columns(self) -> None:
        """A data directory made by an older Pulse lacks columns added since: add them to the stored
        table (existing rows read the column's default), and remake the landing table and view, which
        hold no rows, in the current shape."""
        db = self.database
        on_cluster = f" ON CLUSTER {self.config.cluster}" if self.config.cluster else ""
        for t in TABLES.values():
            rows = self.query(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": db, "t": f"{t.name}_in"},
            )
            have = {r["name"] for r in rows}
            if not have or all(c.name in have for c in (*t.columns, *t.landing_only)):
                continue
            targets = [stored_table(self.config, t.name)] + ([t.name] if self.config.cluster else [])
            for target in targets:
                for c in t.columns:
                    self.command(f"ALTER TABLE {db}.{target}{on_cluster} ADD COLUMN IF NOT EXISTS {c.name} {c.type}")
            self.command(f"DROP VIEW IF EXISTS {db}.{t.name}_mv{on_cluster}")
            if t.name == "requests":  # the rollups' view reads requests_in too; the DDL makes it again
                self.command(f"DROP VIEW IF EXISTS {db}.requests_touched_mv{on_cluster}")
            self.command(f"DROP TABLE IF EXISTS {db}.{t.name}_in{on_cluster}")
            for stmt in landing_ddl(self.config, t):
                self.command(stmt)


def _escape(value: str) -> str:
    """chDB reads a String parameter in ClickHouse's escaped (TSV) form, as the server's HTTP
    interface does: without this a tab or newline fails to parse and ``\\n`` would turn into a newline.
    (clickhouse-connect escapes on its side.)"""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    )


def _bind(value: Any) -> Any:
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, list):  # Array(<integer type>) parameters: chDB takes the literal's text
        return "[" + ",".join(str(int(v)) for v in value) + "]"
    return value


class ChdbStorage(Storage):
    """Embedded chDB. chDB allows one engine path per process: open one ChdbStorage per data dir."""

    scratch_tables = True  # one session; names are unique per use, so threads do not share one

    def __init__(self, config: PulseConfig, path: str | Path | None = None) -> None:
        super().__init__(config)
        from chdb import session as chdb_session

        target = Path(path) if path is not None else config.chdb_path
        target.mkdir(parents=True, exist_ok=True)
        try:
            self._session = chdb_session.Session(  # type: ignore[no-untyped-call]
                str(target.resolve())
            )
        except Exception as e:
            raise PulseError(f"cannot open chDB at {target} (is another Pulse using this data directory?): {e}") from e
        # While a streaming insert is open chDB refuses every other statement on the connection
        # ("Cannot run a query while a streaming insert is active"): one lock serializes them, so a
        # query waits for the INSERT round in progress (inline-data INSERTs would interleave but run
        # 3-4x slower, measured).
        self._lock = threading.Lock()
        for key, value in QUERY_SETTINGS.items():
            self.command(f"SET {key} = {int(value)}")

    def command(self, sql: str) -> None:
        try:
            with self._lock:
                self._session.query(sql, "CSV")  # type: ignore[no-untyped-call]
        except Exception as e:
            raise PulseError(f"chDB: {e}") from e

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            bound = {k: _bind(v) for k, v in (params or {}).items()}
            with self._lock:
                res = self._session.query(sql, "JSON", params=bound)  # type: ignore[no-untyped-call]
        except Exception as e:
            raise PulseError(f"chDB: {e}") from e
        return _rows(res.bytes())

    def insert(self, table: str, rows: bytes) -> None:
        if table not in TABLES:
            raise PulseError(f"unknown table {table!r}")
        sql = f"INSERT INTO {self.database}.{table}_in SETTINGS input_format_skip_unknown_fields = 1"
        with self._lock:
            try:
                with self._session.send_insert(sql, "JSONEachRow") as ins:
                    ins.append(rows)
                    ins.finish()
            except Exception as e:
                raise PulseError(f"chDB insert into {table}: {e}") from e

    def close(self) -> None:
        self._session.close()  # type: ignore[no-untyped-call]


class ClickHouseStorage(Storage):
    """A ClickHouse server or cluster through clickhouse-connect."""

    def __init__(self, config: PulseConfig, dsn: str | None = None) -> None:
        super().__init__(config)
        import clickhouse_connect

        try:
            self._client = clickhouse_connect.get_client(dsn=dsn or config.clickhouse_url, settings=QUERY_SETTINGS)
        except Exception as e:
            raise PulseError(f"cannot connect to ClickHouse: {e}") from e

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as e:
            raise PulseError(f"ClickHouse: {e}") from e

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            body = self._client.raw_query(sql, parameters=params or {}, fmt="JSON")
        except Exception as e:
            raise PulseError(f"ClickHouse: {e}") from e
        return _rows(body)

    def insert(self, table: str, rows: bytes) -> None:
        if table not in TABLES:
            raise PulseError(f"unknown table {table!r}")
        try:
            self._client.raw_insert(
                f"{self.database}.{table}_in", insert_block=rows, settings=INSERT_SETTINGS, fmt="JSONEachRow"
            )
        except Exception as e:
            raise PulseError(f"ClickHouse insert into {table}: {e}") from e

    def close(self) -> None:
        self._client.close()


def open_storage(config: PulseConfig) -> Storage:
    """The configured backend with its schema set up."""
    storage: Storage = ClickHouseStorage(config) if config.clickhouse_url else ChdbStorage(config)
    try:
        storage.setup()
    except Exception:
        storage.close()
        raise
    return storage
