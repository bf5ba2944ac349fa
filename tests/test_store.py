"""The store: acknowledged writes are committed, concurrent writes share commits, one bad write
cannot fail its neighbours, and migrations apply once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mta.store import Statement, StoreClosed
from mta.store.schema import MIGRATIONS
from mta.store.sqlite import SqliteStore as Store

pytestmark = pytest.mark.asyncio

INSERT_KEY = Statement(
    "INSERT INTO api_keys (id, secret_hash, created_at) VALUES (?, ?, 0)", [("k1", b"h1")]
)


def key_insert(n: int) -> Statement:
    return Statement(
        "INSERT INTO api_keys (id, secret_hash, created_at) VALUES (?, ?, 0)",
        [(f"k{n}", f"h{n}".encode())],
    )


def count_keys(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]


async def test_a_write_is_visible_to_other_connections_when_it_returns(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db")
    try:
        await store.write(key_insert(1))
        assert count_keys(tmp_path / "a.db") == 1
    finally:
        await store.close()


async def test_concurrent_writes_are_grouped_into_fewer_commits(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db", commit_window_ms=2)
    try:
        await asyncio.gather(*(store.write(key_insert(n)) for n in range(500)))
        assert count_keys(tmp_path / "a.db") == 500
        assert store.committed_jobs == 500
        assert store.commits < 50
    finally:
        await store.close()


async def test_a_failing_write_fails_alone_and_its_neighbours_commit(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db", commit_window_ms=5)
    try:
        await store.write(key_insert(0))
        results = await asyncio.gather(
            *(store.write(key_insert(n)) for n in range(1, 6)),
            store.write(key_insert(0)),  # duplicate primary key
            *(store.write(key_insert(n)) for n in range(6, 11)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results].count("IntegrityError") == 1
        assert isinstance(results[5], sqlite3.IntegrityError)
        assert count_keys(tmp_path / "a.db") == 11
    finally:
        await store.close()


async def test_a_job_with_several_statements_is_all_or_nothing(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db")
    try:
        await store.write(key_insert(1))
        with pytest.raises(sqlite3.IntegrityError):
            await store.write(key_insert(2), key_insert(1))
        assert count_keys(tmp_path / "a.db") == 1
    finally:
        await store.close()


async def test_close_finishes_queued_writes_then_refuses_new_ones(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db")
    pending = [asyncio.create_task(store.write(key_insert(n))) for n in range(50)]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    assert count_keys(tmp_path / "a.db") == 50
    with pytest.raises(StoreClosed):
        await store.write(key_insert(99))


async def test_migrations_apply_once_and_record_the_schema_version(tmp_path: Path):
    path = tmp_path / "a.db"
    first, second = await asyncio.gather(Store.open(path), Store.open(path))
    await first.close()
    await second.close()
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_admin_changes_bump_the_admin_version(tmp_path: Path):
    store = await Store.open(tmp_path / "a.db")
    try:
        before = store.admin_version()
        await store.write(key_insert(1))
        assert store.admin_version() == before + 1
    finally:
        await store.close()
