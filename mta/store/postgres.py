"""The PostgreSQL engine (asyncpg): one database shared by any number of nodes.

Each `write` is one transaction on a pooled connection, committed (synchronous_commit on)
before it returns, so callers may acknowledge right after, as on SQLite. PostgreSQL commits
concurrent transactions itself, so there is no single writer here. Admin changes made by any
node reach every other through LISTEN/NOTIFY (the schema's triggers send them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

import asyncpg

from mta.store import CommitObservers, NodeNameTaken, Params, Statement, StoreClosed
from mta.store.schema import MIGRATIONS

log = logging.getLogger("mta.store")

ADMIN_CHANNEL = "mta_admin"
DEADLOCK_ATTEMPTS = 3  # a transaction PostgreSQL aborted to break a deadlock is run again
MIGRATION_LOCK = 0x6D7461  # pg_advisory_xact_lock key: nodes starting together migrate once
NODE_LOCKS = 0x6D7462  # pg_try_advisory_lock(NODE_LOCKS, hashtext(node id)): one live node each
LISTENER_RETRY_S = 1.0
CLOSE_GRACE_S = 30.0  # how long close() waits for statements already running
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?(\d*)")
_ADMIN_WRITE = re.compile(
    r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"
    r"(?:domains|authorized_recipients|api_keys|credentials|routes|mailing_lists)\b",
    re.IGNORECASE,
)


@lru_cache(maxsize=1024)
def adapt(sql: str) -> str:
    """SQL written with `?` / `?N` placeholders, in PostgreSQL's `$N` (quoted text left alone)."""
    counter = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal counter
        if match.group(0).startswith("'"):
            return match.group(0)
        if match.group(1):
            return f"${match.group(1)}"
        counter += 1
        return f"${counter}"

    return _PLACEHOLDER.sub(replace, sql)


def _same(value: Any) -> Any:
    return value


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


_COERCE: dict[str, Any] = {
    "bigint": int,
    "integer": int,
    "double precision": float,
    "bytea": _bytes,
    "text": lambda v: v.decode() if isinstance(v, bytes) else str(v),
}


def _changes_admin(statements: tuple[Statement, ...] | list[Statement]) -> bool:
    return any(_ADMIN_WRITE.match(s.sql) for s in statements)


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """Pooled connections keep no session state (no LISTEN, no session locks, no cursors),
    so the pool's reset query on every release, a round trip each, is skipped."""

    def get_reset_query(self) -> str:
        return ""


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, url: str, *, node_id: str, pool_size: int,
                 statement_timeout_s: float) -> None:
        self.url = url
        self.node_id = node_id
        self._pool_size = pool_size
        self._statement_timeout_ms = int(statement_timeout_s * 1000)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._holds_name = False
        self._in_use = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._listener_task: asyncio.Task[None] | None = None
        self.observers = CommitObservers()
        self._version = 0
        self._listening = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> PostgresStore:
        store = cls(url, **kwargs)
        await store._open()
        return store

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=2,
            max_size=self._pool_size,
            connection_class=_Connection,
            server_settings={
                "statement_timeout": str(self._statement_timeout_ms),
                # durable before acknowledged, whatever the server's default says
                "synchronous_commit": "on",
                "application_name": f"mta {self.node_id}"[:63],
            },
        )
        try:
            await self._migrate()
            await self._listen()
        except BaseException:
            await self._pool.close()
            raise
        self._listener_task = asyncio.create_task(self._keep_listening(), name="store-listen")

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            for number, migration in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                await conn.execute(migration.postgresql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                log.info("store: applied migration %d", number)

    # -- admin changes pushed by every node ----------------------------------------------------

    async def hold_node_name(self) -> None:
        """A session advisory lock on the listening connection, held while it lives."""
        self._holds_name = True
        await self._lock_node_name()

    async def _lock_node_name(self) -> None:
        assert self._listener is not None
        held = await self._listener.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", NODE_LOCKS, self.node_id
        )
        if not held:
            raise NodeNameTaken(
                f"another mta server is running as node {self.node_id!r} on this database:"
                " give each node its own server.node_id"
            )

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.url)
        await self._listener.add_listener(ADMIN_CHANNEL, self._admin_changed)
        self._listener.add_termination_listener(self._listener_lost)
        self._listening = True
        self._version += 1  # changes made while we were not listening

    def _admin_changed(self, *_: Any) -> None:
        self._version += 1

    def _listener_lost(self, *_: Any) -> None:
        if not self._closed:
            log.warning("store: lost the admin-change listener; caches reload each second "
                        "until it is back")
        self._listening = False

    async def _keep_listening(self) -> None:
        while not self._closed:
            await asyncio.sleep(LISTENER_RETRY_S)
            if self._listening:
                continue
            try:
                await self._listen()
                if self._holds_name:
                    await self._lock_node_name()
                log.info("store: admin-change listener is back")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("store: cannot listen for admin changes yet: %s", exc)

    def admin_version(self) -> int:
        """Moves on every admin change of any node (NOTIFY) and of this one (at commit).
        Without a listener it moves every second, so caches are never older than that."""
        if self._listening:
            return self._version * 2
        return int(time.monotonic() / LISTENER_RETRY_S) * 2 + 1

    # -- writes and reads ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; `close` waits for those handed out (writes already begun
        finish, as on SQLite) and refuses new ones."""
        if self._closed or self._pool is None:
            raise StoreClosed("store is closed")
        self._in_use += 1
        self._idle.clear()
        try:
            async with self._pool.acquire() as conn:
                yield conn
        finally:
            self._in_use -= 1
            if not self._in_use:
                self._idle.set()

    async def write(self, *statements: Statement) -> None:
        """Retried when PostgreSQL breaks a deadlock by aborting this transaction: counter
        rows are shared by every node's writes, and two transactions can meet on them in
        either order (each statement takes its rows in one order, but a transaction may hold
        several groups of events)."""
        statements = tuple(s for s in statements if s.rows)
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                await self._write_once(statements)
                break
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
                log.warning("deadlock broken by PostgreSQL; running the transaction again")
        if _changes_admin(statements):
            self._version += 1
        self.observers.committed(statements)

    async def _write_once(self, statements: tuple[Statement, ...]) -> None:
        started = time.perf_counter()
        async with self._connection() as conn:
            if len(statements) == 1 and len(statements[0].rows) == 1:
                # one statement is a transaction of its own: no BEGIN/COMMIT round trips
                await conn.execute(adapt(statements[0].sql), *statements[0].rows[0])
            else:
                async with conn.transaction():
                    for statement in statements:
                        sql = adapt(statement.sql)
                        if len(statement.rows) == 1:
                            await conn.execute(sql, *statement.rows[0])
                        else:
                            await conn.executemany(sql, statement.rows)
        self._timed(started)

    def _timed(self, started: float) -> None:
        """A transaction's duration (from asking for a connection) to the metrics timer."""
        if self.observers.timer is not None:
            self.observers.timer(time.perf_counter() - started)

    async def write_returning(self, sql: str, params: Params = ()) -> list[Any]:
        started = time.perf_counter()
        async with self._connection() as conn:
            rows = await conn.fetch(adapt(sql), *params)  # one statement: its own transaction
        self._timed(started)
        if _ADMIN_WRITE.match(sql):
            self._version += 1
        return rows

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        async with self._connection() as conn:
            return await conn.fetch(adapt(sql), *params)

    async def fetchone(self, sql: str, params: Params = ()) -> Any | None:
        async with self._connection() as conn:
            return await conn.fetchrow(adapt(sql), *params)

    # -- bulk loading (mta store copy) ----------------------------------------------------------

    async def is_empty(self) -> bool:
        row = await self.fetchone(
            "SELECT (SELECT count(*) FROM domains) + (SELECT count(*) FROM api_keys)"
            " + (SELECT count(*) FROM messages) + (SELECT count(*) FROM events) AS n"
        )
        return row is not None and row["n"] == 0

    async def column_types(self, table: str) -> dict[str, str]:
        rows = await self.fetchall(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {r["column_name"]: r["data_type"] for r in rows}

    async def load(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        """Rows in one COPY, each value made the column's type (SQLite's typing is loose:
        a REAL column may hold an integer, a BLOB column text)."""
        types = await self.column_types(table)
        casts = [_COERCE.get(types[c], _same) for c in columns]
        records = [
            tuple(None if v is None else cast(v) for cast, v in zip(casts, row, strict=True))
            for row in rows
        ]
        async with self._connection() as conn, conn.transaction():
            await conn.copy_records_to_table(table, records=records, columns=columns)

    async def after_load(self, now: float) -> None:
        """Identity counters continue after the copied ids; copied leases are void."""
        async with self._connection() as conn, conn.transaction():
            for row in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND is_identity = 'YES'"
            ):
                table, column = row["table_name"], row["column_name"]
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" coalesce(max({column}), 0) + 1, false) FROM {table}"
                )
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.columns WHERE table_schema ="
                " current_schema() AND column_name = 'lease_node'"
            ):
                await conn.execute(
                    f"UPDATE {row['table_name']} SET due_at = LEAST(due_at, $1),"
                    " lease_until = 0, lease_node = '' WHERE lease_until > 0",
                    now,
                )
            await conn.execute("UPDATE admin_version SET version = version + 1")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), CLOSE_GRACE_S)
        except TimeoutError:
            log.warning("store: closing with %d statement(s) still running", self._in_use)
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        if self._pool is not None:
            await self._pool.close()
