"""The SQLite-WAL engine: one group-committing writer, async readers, one node.

Every write goes through `Store.write`, which returns only after the transaction holding it
has committed (synchronous=FULL), so callers may acknowledge to clients right after.
Writes that arrive while a commit is running are gathered into the next transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from mta.store import (
    CommitObservers,
    NodeNameTaken,
    Params,
    Row,
    Statement,
    StoreClosed,
    owner_only,
)
from mta.store.schema import MIGRATIONS

log = logging.getLogger("mta.store")

ADMIN_VERSION_MAX_AGE_S = 0.05
CROWDED_FOR_S = 0.1  # after a commit of several writes, the writer waits for company this long
WAIT_GAIN_SMOOTHING = 0.2  # weight of the latest wait in the average of writes a wait gathered
WAIT_PROBE_EVERY = 20  # while waits gather too little, one crowded commit in this many waits


@dataclass
class _Job:
    statements: Sequence[Statement]
    future: asyncio.Future[list[Row]]
    returning: bool = False  # one statement whose rows are handed back (never grouped)
    result: list[Row] = field(default_factory=list)
    shape: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.returning:
            self.shape = ("returning", id(self))
        else:
            self.shape = tuple(s.sql for s in self.statements)


def _summed(rows: list[Params], keys: int) -> list[Params]:
    """Rows of an additive upsert with equal keys as one row of their sums (first-seen order:
    the statement's own lock order)."""
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = tuple(row[:keys])
        found = sums.get(key)
        if found is None:
            sums[key] = list(row[keys:])
        else:
            for n, value in enumerate(row[keys:]):
                found[n] += value
    return [(*key, *values) for key, values in sums.items()]


def _private_files(path: Path) -> None:
    """The database and its -wal/-shm companions are made 0600 whatever the umask (SQLite
    gives the companions the main file's mode), in a directory made 0700 if it is missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # made here, never briefly open to others
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if file.is_file():
            owner_only(file, 0o600)


def _connect(path: Path, busy_timeout_ms: int, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if not readonly:
        _set_wal(conn, busy_timeout_ms)
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def _set_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switching a new file to WAL takes a lock busy_timeout does not wait for: retry."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; safe when several processes open the file at once."""
    for number, script in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= number:
                conn.execute("COMMIT")
                continue
            for sql in _split_script(script.sqlite):
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
            log.info("store: applied migration %d", number)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _split_script(script: str) -> list[str]:
    """Split on statement boundaries (triggers contain ';' inside BEGIN ... END)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


class SqliteStore:
    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        node_id: str = "",
        commit_window_ms: float = 1.0,
        max_batch: int = 1000,
        busy_timeout_ms: int = 10_000,
        readers: int = 2,
    ) -> None:
        self.path = path
        self.node_id = node_id
        self._window = commit_window_ms / 1000
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        self._reader_count = readers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._write_conn: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle([0])
        self._peek_conn: sqlite3.Connection | None = None
        self._admin_version: int | None = None
        self._admin_read_at = 0.0
        self.observers = CommitObservers()
        self._closed = False
        self._node_lock: int | None = None
        self.commits = 0
        self.committed_jobs = 0

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> SqliteStore:
        store = cls(path, **kwargs)
        await store._open()
        return store

    async def _open(self) -> None:
        _private_files(self.path)
        loop = asyncio.get_running_loop()
        self._write_conn = await loop.run_in_executor(
            None, _connect, self.path, self._busy_timeout_ms
        )
        await loop.run_in_executor(None, migrate, self._write_conn)
        for _ in range(self._reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            await reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            self._readers.append(reader)
        self._next_reader = itertools.cycle(range(len(self._readers)))
        self._peek_conn = _connect(self.path, self._busy_timeout_ms, readonly=True)
        self._writer = threading.Thread(target=self._writer_loop, args=(loop,),
                                        name="store-writer", daemon=True)
        self._writer.start()

    async def hold_node_name(self) -> None:
        """One server delivers from the file: the embedded engine is one node."""
        path = Path(f"{self.path}.node.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeNameTaken(f"another mta server is delivering from {self.path}") from None
        self._node_lock = fd

    async def close(self) -> None:
        """Finish every queued write, then close all connections."""
        if self._closed:
            return
        self._closed = True
        if self._node_lock is not None:
            os.close(self._node_lock)
            self._node_lock = None
        self._jobs.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        for reader in self._readers:
            await reader.close()
        if self._peek_conn is not None:
            self._peek_conn.close()
        if self._write_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._write_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._write_conn.close()

    # -- writes -------------------------------------------------------------------------------

    async def write(self, *statements: Statement) -> None:
        """Run the statements in one transaction (shared with other writers); return once durable.

        Jobs committed together must be independent of each other: statements of jobs with the
        same shape are run grouped per statement (executemany), each job's own order kept.
        A job that fails is retried alone so that it cannot fail the others; its error is raised.
        """
        await self._submit(_Job(statements, asyncio.get_running_loop().create_future()))

    async def write_returning(self, sql: str, params: Params = ()) -> list[Row]:
        """One statement with a RETURNING clause (e.g. taking a lease), committed like `write`;
        returns its rows once durable. It shares the transaction but is never grouped."""
        job = _Job([Statement(sql, [params])], asyncio.get_running_loop().create_future(), True)
        return await self._submit(job)

    async def _submit(self, job: _Job) -> list[Row]:
        if self._closed:
            raise StoreClosed("store is closed")
        self._jobs.put(job)
        return await job.future

    def _writer_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer's own thread: it takes jobs as they are queued and hands each batch's
        outcome back to the loop in one call, so a write costs the loop one wake-up (an
        executor round trip cost it four loop iterations: 0.13 ms of a lone 0.35 ms write)."""
        jobs = self._jobs
        stopping = False
        crowded_at = float("-inf")  # when a commit last held more than one write
        gain = 1.0  # writes a wait for company gathered, on average
        skipped = 0  # crowded commits that did not wait since the last wait
        while not stopping:
            job = jobs.get()
            if job is None:
                break
            batch = [job]
            # Waiting for company only pays while writers come together: a lone writer (one
            # SMTP session waiting for its 250) would wait the whole window for nobody, which
            # was 1.1 ms of its 1.3 ms write (bench/smtp_clients.py). Nor does it pay when
            # waits gather less than one write each (that session beside delivery's own
            # writes): then only a probe now and then waits, to see whether that changed.
            crowded = time.monotonic() - crowded_at < CROWDED_FOR_S
            if crowded and jobs.empty() and self._window > 0:
                if gain >= 1.0 or skipped >= WAIT_PROBE_EVERY:
                    time.sleep(self._window)
                    gain += WAIT_GAIN_SMOOTHING * (jobs.qsize() - gain)
                    skipped = 0
                else:
                    skipped += 1
            while len(batch) < self._max_batch and not jobs.empty():
                nxt = jobs.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            if len(batch) > 1:
                crowded_at = time.monotonic()
            started = time.perf_counter()
            try:
                errors = self._commit_batch(batch)
            except Exception as exc:  # the connection itself failed
                errors = [exc] * len(batch)
            loop.call_soon_threadsafe(self._settle, batch, errors, time.perf_counter() - started)

    def _settle(self, batch: list[_Job], errors: list[Exception | None], took_s: float) -> None:
        """On the loop: a committed batch's futures and observers."""
        if self.observers.timer is not None:
            self.observers.timer(took_s)
        self._admin_version = None  # what we just committed may have changed admin data
        for item, error in zip(batch, errors, strict=True):
            if item.future.done():
                continue
            if error is None:
                self.observers.committed(item.statements)
                item.future.set_result(item.result)
            else:
                item.future.set_exception(error)

    def _commit_batch(self, batch: list[_Job]) -> list[Exception | None]:
        try:
            self._run_transaction(batch)
            self.commits += 1
            self.committed_jobs += len(batch)
            return [None] * len(batch)
        except sqlite3.Error as exc:
            if len(batch) == 1:
                return [exc]
        errors: list[Exception | None] = []
        for job in batch:
            try:
                self._run_transaction([job])
                self.commits += 1
                self.committed_jobs += 1
                errors.append(None)
            except sqlite3.Error as exc:
                errors.append(exc)
        return errors

    def _run_transaction(self, batch: list[_Job]) -> None:
        conn = self._write_conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for _shape, group in itertools.groupby(batch, key=lambda job: job.shape):
                jobs = list(group)
                if jobs[0].returning:
                    statement = jobs[0].statements[0]
                    jobs[0].result = conn.execute(statement.sql, statement.rows[0]).fetchall()
                    continue
                for index, statement in enumerate(jobs[0].statements):
                    rows = [row for job in jobs for row in job.statements[index].rows]
                    if statement.summed_keys and len(jobs) > 1:
                        rows = _summed(rows, statement.summed_keys)
                    if rows:
                        # executemany hands the GIL back and forth for every row, which
                        # the busy event loop makes slow: fewer rows, fewer hand-offs
                        conn.executemany(statement.sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- reads --------------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        reader = self._readers[next(self._next_reader)]
        async with reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        reader = self._readers[next(self._next_reader)]
        async with reader.execute(sql, params) as cursor:
            return await cursor.fetchone()

    def admin_version(self) -> int:
        """A counter bumped (by triggers) whenever domains, keys or credentials change; caches of
        them reload when it moves. Re-read after each commit of ours and at least every
        ADMIN_VERSION_MAX_AGE_S (changes made by another process, e.g. the CLI). The read runs
        on the loop's own thread: a thread hand-off would cost more than the query."""
        now = time.monotonic()
        if self._admin_version is None or now - self._admin_read_at > ADMIN_VERSION_MAX_AGE_S:
            assert self._peek_conn is not None
            self._admin_version = self._peek_conn.execute(
                "SELECT version FROM admin_version"
            ).fetchone()[0]
            self._admin_read_at = now
        return self._admin_version
