"""The store: one interface, two engines.

Modules own their tables and speak SQL through this narrow interface only: `write` (statements
committed in one transaction, returning once durable), `write_returning` (one statement whose
rows come back, e.g. taking a lease), and `fetchall`/`fetchone` for reads. SQL is written once
with `?` or `?N` placeholders where the dialects agree; the PostgreSQL engine adapts them. Where
the dialects differ (JSON, leasing) the owner picks its SQL by `store.dialect`.

- `sqlite`: the embedded default, one file under `data_dir`, one node (mta.store.sqlite).
- `postgresql`: one database shared by any number of nodes (mta.store.postgres).
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mta.config import ConfigError

if TYPE_CHECKING:
    from mta.config import Config

log = logging.getLogger("mta.store")

Row = Mapping[str, Any]  # sqlite3.Row or asyncpg.Record: by column name (and by index)
Params = Sequence[Any]


@dataclass(frozen=True)
class Statement:
    """One SQL statement run once per row of parameters (executemany).

    `summed_keys` N > 0 marks an additive upsert (counters): rows whose first N values are
    equal may be run as one row holding the sum of the other values, so an engine that
    groups several writes into one transaction runs one row per key, not one per write.

    `observed`: what the statement records, handed to the store's commit observers once the
    transaction holding it is durable (the events an INSERT wrote: metrics, log lines)."""

    sql: str
    rows: Sequence[Params] = ((),)
    summed_keys: int = 0
    observed: tuple[Any, ...] = ()


CommitObserver = Callable[[Sequence[Any]], None]


class CommitObservers:
    """Who hears about committed `observed` items; each engine calls `committed` after its
    commit returns. An observer runs on the event loop, must be quick, and cannot fail a
    write (its errors are logged).

    `timer`, when set (metrics), is given each transaction's duration in seconds, on the
    event loop, by the engine that ran it: the store needs no metrics of its own."""

    def __init__(self) -> None:
        self._observers: list[CommitObserver] = []
        self.timer: Callable[[float], None] | None = None

    def add(self, observer: CommitObserver) -> None:
        self._observers.append(observer)

    def committed(self, statements: Sequence[Statement]) -> None:
        if not self._observers:
            return
        observed = [item for s in statements for item in s.observed]
        if not observed:
            return
        for observer in self._observers:
            try:
                observer(observed)
            except Exception:
                log.exception("a commit observer failed")


class StoreClosed(Exception):
    pass


class StoreUnavailable(Exception):
    """The configured store cannot be opened (no server there, no such database, refused)."""


class NodeNameTaken(ConfigError):
    """Another running server already uses this node's name on the store."""


class Store(Protocol):
    dialect: str  # "sqlite" or "postgresql"
    node_id: str  # this node's name in leases and shared counters
    observers: CommitObservers  # told what committed statements recorded (Statement.observed)

    async def write(self, *statements: Statement) -> None:
        """Run the statements in one transaction; return once it is durable."""

    async def write_returning(self, sql: str, params: Params = ()) -> list[Any]:
        """One statement with a RETURNING clause, committed like `write`; its rows."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Any | None: ...

    async def hold_node_name(self) -> None:
        """Claim this node's name for as long as the store is open (leases carry it, and a
        node frees its own leases at start): raises NodeNameTaken if a live server has it."""

    def admin_version(self) -> int:
        """A number that moves whenever domains, keys, credentials or routes change on any
        node or process; caches of them reload when it moves."""

    async def close(self) -> None: ...


async def open_store(config: Config) -> Store:
    """The engine `[store]` selects, migrated to the current schema."""
    if config.store.url:
        import asyncpg

        from mta.store.postgres import PostgresStore

        try:
            return await PostgresStore.open(
                config.store.url,
                node_id=config.node_id,
                pool_size=config.store.pool_size,
                statement_timeout_s=config.store.statement_timeout_s,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(
                f"cannot open the store {config.store_name}: {exc or exc.__class__.__name__}"
            ) from exc
    from mta.store.sqlite import SqliteStore

    return await SqliteStore.open(
        config.db_path,
        node_id=config.node_id,
        commit_window_ms=config.store.commit_window_ms,
        max_batch=config.store.max_batch,
        busy_timeout_ms=config.store.busy_timeout_ms,
    )


def owner_only(path: Path, mode: int) -> None:
    """Tighten an existing file or directory that other local users could read to `mode`:
    it holds secrets (DKIM and signing keys, messages, TLS keys). Logged, since someone made
    it wider (an older version, `install -d`, a copy)."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        path.chmod(mode)
        log.warning("%s was mode %04o, open to other local users: tightened to %04o",
                    path, current, mode)
