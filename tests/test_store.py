"""The store engines: acknowledged writes are committed and visible to every other connection,
one bad write cannot fail its neighbours, a write of several statements is all or nothing,
migrations apply once when several stores open together, and admin changes made through another
store instance move `admin_version`. Each of these runs on both engines (SQLite's file, a real
PostgreSQL database); what only one engine has (SQLite's group commit and WAL, PostgreSQL's
placeholder adaptation and column types) is tested on that engine only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mta.store import Statement, Store, StoreClosed
from mta.store.postgres import PostgresStore, adapt
from mta.store.schema import MIGRATIONS
from mta.store.sqlite import SqliteStore
from tests import postgres
from tests.conftest import ENGINES

Opener = Callable[[], Awaitable[Store]]


def key_insert(n: int) -> Statement:
    return Statement(
        "INSERT INTO api_keys (id, secret_hash, created_at) VALUES (?, ?, 0)",
        [(f"k{n}", f"h{n}".encode())],
    )


async def count_keys(store: Store) -> int:
    row = await store.fetchone("SELECT count(*) AS n FROM api_keys")
    assert row is not None
    return int(row["n"])


async def schema_versions(store: Store) -> list[int]:
    """The migrations the database records as applied, one entry per application."""
    if store.dialect == "sqlite":
        row = await store.fetchone("PRAGMA user_version")
        assert row is not None
        return list(range(1, row[0] + 1))
    rows = await store.fetchall("SELECT version FROM schema_version ORDER BY version")
    return [row["version"] for row in rows]


@pytest.fixture(params=ENGINES)
async def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a new store instance on one database of the engine under test (each call is
    another connection to the same data: a second process or node); all closed at the end."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "a.db"

        async def open_one() -> Store:
            opened.append(await SqliteStore.open(path, commit_window_ms=5))
            return opened[-1]
    else:
        cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database()

        async def open_one() -> Store:
            opened.append(await PostgresStore.open(
                url, node_id=f"node{len(opened)}", pool_size=4, statement_timeout_s=30
            ))
            return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


# -- both engines --------------------------------------------------------------------------------


async def test_a_write_is_visible_to_other_store_instances_when_it_returns(open_engine: Opener):
    store, other = await open_engine(), await open_engine()
    await store.write(key_insert(1))
    assert await count_keys(other) == 1


async def test_a_failing_write_fails_alone_and_its_neighbours_commit(open_engine: Opener):
    store = await open_engine()
    await store.write(key_insert(0))
    results = await asyncio.gather(
        *(store.write(key_insert(n)) for n in range(1, 6)),
        store.write(key_insert(0)),  # duplicate primary key
        *(store.write(key_insert(n)) for n in range(6, 11)),
        return_exceptions=True,
    )
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [5], results
    assert "unique" in str(results[5]).lower() or "duplicate" in str(results[5]).lower()
    assert await count_keys(store) == 11


async def test_a_write_with_several_statements_is_all_or_nothing(open_engine: Opener):
    store = await open_engine()
    await store.write(key_insert(1))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.write(key_insert(2), key_insert(1))  # the second one fails: both are undone
    assert await count_keys(store) == 1
    assert await store.fetchone("SELECT id FROM api_keys WHERE id = ?", ("k2",)) is None


async def test_write_returning_commits_and_hands_back_the_rows(open_engine: Opener):
    store, other = await open_engine(), await open_engine()
    rows = await store.write_returning(
        "INSERT INTO api_keys (id, secret_hash, created_at) VALUES (?, ?, 0) RETURNING id",
        ("k1", b"h1"),
    )
    assert [row["id"] for row in rows] == ["k1"]
    assert await count_keys(other) == 1


async def test_close_finishes_writes_already_begun_then_refuses_new_ones(open_engine: Opener):
    store = await open_engine()
    pending = [asyncio.create_task(store.write(key_insert(n))) for n in range(50)]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    assert await count_keys(await open_engine()) == 50
    with pytest.raises(StoreClosed):
        await store.write(key_insert(99))


async def test_migrations_apply_once_when_stores_open_together(open_engine: Opener):
    first, second, third = await asyncio.gather(open_engine(), open_engine(), open_engine())
    await first.write(key_insert(1))  # every table is there, whoever migrated
    assert await count_keys(second) == 1
    assert await schema_versions(third) == list(range(1, len(MIGRATIONS) + 1))
    fourth = await open_engine()  # a later start finds nothing left to apply
    assert await schema_versions(fourth) == list(range(1, len(MIGRATIONS) + 1))


async def test_admin_changes_through_this_store_move_its_admin_version(open_engine: Opener):
    store = await open_engine()
    before = store.admin_version()
    await store.write(key_insert(1))
    assert store.admin_version() != before


async def test_admin_changes_through_another_store_move_admin_version_within_a_second(
    open_engine: Opener,
):
    """Another process (the CLI) or node changes api_keys: caches here reload."""
    store, other = await open_engine(), await open_engine()
    before = store.admin_version()
    await other.write(key_insert(1))
    deadline = time.monotonic() + 1.0
    while store.admin_version() == before:
        assert time.monotonic() < deadline, "admin_version did not move within a second"
        await asyncio.sleep(0.01)
    settled = store.admin_version()
    await asyncio.sleep(0.1)
    assert store.admin_version() == settled  # it moves on changes, not all the time


async def test_writes_to_other_tables_leave_admin_version_alone(open_engine: Opener):
    store = await open_engine()
    await store.write(key_insert(1))
    await asyncio.sleep(0.1)
    before = store.admin_version()
    await store.write(Statement(
        "INSERT INTO events (id, domain, ts, event, payload) VALUES (?, ?, ?, ?, ?)",
        [("e1", "d.example", 0.0, "accepted", b"{}")],
    ))
    assert await count_keys(store) == 1
    await asyncio.sleep(0.1)
    assert store.admin_version() == before


# -- SQLite only: one group-committing writer, a WAL file ---------------------------------------


@pytest.mark.skipif("sqlite" not in ENGINES, reason="MTA_TEST_ENGINES leaves SQLite out")
async def test_sqlite_groups_concurrent_writes_into_fewer_commits(tmp_path: Path):
    store = await SqliteStore.open(tmp_path / "a.db", commit_window_ms=2)
    try:
        await asyncio.gather(*(store.write(key_insert(n)) for n in range(500)))
        assert await count_keys(store) == 500
        assert store.committed_jobs == 500
        assert store.commits < 50
    finally:
        await store.close()


async def test_additive_upserts_of_writes_committed_together_add_up(open_engine: Opener):
    """Counter rows of grouped writes may be summed per key before they run: the total is
    what every write added, on both engines."""
    store = await open_engine()
    upsert = (
        "INSERT INTO stats_counters (domain, scope, resolution, bucket, opened, clicked)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, scope, resolution, bucket) DO UPDATE"
        " SET opened = stats_counters.opened + excluded.opened,"
        " clicked = stats_counters.clicked + excluded.clicked"
    )

    def write(n: int) -> Statement:
        rows = [("d.test", "", "hour", 0, 1, n), ("d.test", "", "day", 0, 2, 0)]
        return Statement(upsert, rows, summed_keys=4)

    await asyncio.gather(*(store.write(write(n)) for n in range(200)))
    rows = await store.fetchall(
        "SELECT resolution, opened, clicked FROM stats_counters ORDER BY resolution"
    )
    assert [tuple(r) for r in rows] == [("day", 400, 0), ("hour", 200, sum(range(200)))]


@pytest.mark.skipif("sqlite" not in ENGINES, reason="MTA_TEST_ENGINES leaves SQLite out")
async def test_sqlite_file_is_in_wal_mode_with_the_schema_version_recorded(tmp_path: Path):
    store = await SqliteStore.open(tmp_path / "a.db")
    try:
        assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
    finally:
        await store.close()


# -- PostgreSQL only: placeholders adapted, its column types ------------------------------------


def test_question_mark_placeholders_become_numbered_in_order():
    assert adapt("SELECT a FROM t WHERE b = ? AND c = ?") == (
        "SELECT a FROM t WHERE b = $1 AND c = $2"
    )


def test_numbered_placeholders_keep_their_numbers():
    assert adapt("UPDATE t SET a = ?2 WHERE b = ?1 OR c = ?1") == (
        "UPDATE t SET a = $2 WHERE b = $1 OR c = $1"
    )


def test_question_marks_inside_quoted_text_are_left_alone():
    assert adapt("SELECT '?', 'it''s ?1' FROM t WHERE a = ? AND b LIKE '%?%'") == (
        "SELECT '?', 'it''s ?1' FROM t WHERE a = $1 AND b LIKE '%?%'"
    )


@pytest.mark.skipif("postgresql" not in ENGINES, reason="MTA_TEST_ENGINES leaves PostgreSQL out")
async def test_postgresql_runs_adapted_placeholders_and_keeps_quoted_question_marks(
    postgres_cluster: postgres.Cluster,
):
    store = await PostgresStore.open(
        postgres_cluster.new_database(), node_id="n", pool_size=4, statement_timeout_s=30
    )
    try:
        row = await store.fetchone(
            "SELECT ?2::text AS second, ?1::text AS first, '?' AS mark, ?2::text AS again",
            ("one", "two"),
        )
        assert dict(row) == {"second": "two", "first": "one", "mark": "?", "again": "two"}
        await store.write(Statement(
            "INSERT INTO api_keys (id, secret_hash, description, created_at)"
            " VALUES (?, ?, 'who? me?', ?)",
            [("k1", b"h1", 1.5)],
        ))
        found = await store.fetchone("SELECT description FROM api_keys WHERE id = ?", ("k1",))
        assert found["description"] == "who? me?"
    finally:
        await store.close()


@pytest.mark.skipif("postgresql" not in ENGINES, reason="MTA_TEST_ENGINES leaves PostgreSQL out")
async def test_postgresql_round_trips_bytes_floats_and_text_by_column_name(
    postgres_cluster: postgres.Cluster,
):
    store = await PostgresStore.open(
        postgres_cluster.new_database(), node_id="n", pool_size=4, statement_timeout_s=30
    )
    try:
        secret = bytes(range(256))
        await store.write(Statement(
            "INSERT INTO api_keys (id, secret_hash, domain, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [("k1", secret, "d.example", 1700000000.25, None), ("k2", b"x", None, 2.0, 3.5)],
        ))
        rows = await store.fetchall(
            "SELECT id, secret_hash, domain, created_at, revoked_at FROM api_keys ORDER BY id"
        )
        assert [dict(r) for r in rows] == [
            {"id": "k1", "secret_hash": secret, "domain": "d.example",
             "created_at": 1700000000.25, "revoked_at": None},
            {"id": "k2", "secret_hash": b"x", "domain": None, "created_at": 2.0,
             "revoked_at": 3.5},
        ]
        assert isinstance(rows[0]["secret_hash"], bytes)
        assert rows[0][0] == "k1"  # by index too, as sqlite3.Row
    finally:
        await store.close()
