"""The jobs outbox (mta.jobs): a job exists exactly when its cause does and runs once it is
committed; a failed attempt is retried on its kind's schedule and given up after it; a stop (a
406) ends it at once; a lease left by a dead node is taken by another runner when it runs out
(and a late outcome of the dead lease changes nothing); a restarted node frees only its own
leases; two runners, on one store or on two nodes of one database, never run a job twice.
Every test runs on both engines (SQLite's file, a real PostgreSQL database)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mta import jobs
from mta.store import Statement, Store
from mta.store.postgres import PostgresStore
from mta.store.schema import MIGRATIONS
from mta.store.sqlite import SqliteStore

Opener = Callable[[str], Awaitable[Store]]


@pytest.fixture
async def open_node(store_url: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store on the one database of the test as the node named (another process or
    node of one system); every store and runner made is closed at the end."""
    opened: list[Store] = []

    async def open_one(node_id: str) -> Store:
        if store_url:
            store: Store = await PostgresStore.open(
                store_url, node_id=node_id, pool_size=5, statement_timeout_s=30
            )
        else:
            store = await SqliteStore.open(tmp_path / "jobs.db", node_id=node_id,
                                           commit_window_ms=1)
        opened.append(store)
        return store

    yield open_one
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def runners() -> AsyncIterator[list[jobs.Runner]]:
    """Runners a test starts are stopped at its end (before the stores close)."""
    made: list[jobs.Runner] = []
    yield made
    for runner in made:
        await runner.stop(grace_s=1)


def marker(name: str) -> Statement:
    """A row standing for a cause (or an outcome's record) in tests."""
    return Statement("INSERT INTO server_secrets (name, value) VALUES (?, ?)", [(name, b"x")])


async def markers(store: Store, name: str) -> int:
    row = await store.fetchone("SELECT count(*) AS n FROM server_secrets WHERE name = ?", (name,))
    assert row is not None
    return int(row["n"])


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def one_job(store: Store) -> dict[str, Any]:
    [job] = await jobs.find(store)
    return job


def finished(store: Store) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(j["state"] != jobs.QUEUED for j in await jobs.find(store))

    return check


class Calls:
    """A handler that answers from a script of outcomes and records each call."""

    def __init__(self, *outcomes: jobs.Outcome, hold_s: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.hold_s = hold_s
        self.jobs: list[jobs.Job] = []
        self.at: list[float] = []
        self.running: Counter[int] = Counter()
        self.overlaps = 0

    async def __call__(self, job: jobs.Job) -> jobs.Outcome:
        self.jobs.append(job)
        self.at.append(time.monotonic())
        self.running[job.id] += 1
        if self.running[job.id] > 1:
            self.overlaps += 1
        try:
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
            if not self.outcomes:
                return jobs.Outcome.done()
            outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            self.running[job.id] -= 1


def runner(store: Store, made: list[jobs.Runner], handler: Calls,
           schedule: jobs.Schedule = jobs.NO_RETRY, **options: Any) -> jobs.Runner:
    options.setdefault("poll_s", 0.02)
    run = jobs.Runner(store, **options)
    run.register("test", handler, schedule)
    made.append(run)
    return run


async def test_a_job_queued_with_its_cause_runs_once_and_only_if_the_cause_commits(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    calls = Calls()
    await store.write(marker("cause"), jobs.enqueue("test", {"n": 1}, owner="thing:1"))
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        # the cause fails (a duplicate key): its job is not queued either
        await store.write(jobs.enqueue("test", {"n": 2}, owner="thing:2"), marker("cause"))
    await store.write(jobs.enqueue("elsewhere", {"n": 3}))  # a kind no runner here knows
    await runner(store, runners, calls).start()
    await until(lambda: _state(store, "thing:1", jobs.DONE))

    assert [j.payload for j in calls.jobs] == [{"n": 1}]
    job = (await jobs.find(store, owner="thing:1"))[0]
    assert (job["attempts"], job["lease_node"], job["finished_at"] > 0) == (1, "a", True)
    assert await jobs.find(store, owner="thing:2") == []
    [other] = await jobs.find(store, kind="elsewhere")
    assert other["state"] == jobs.QUEUED and other["attempts"] == 0


async def _state(store: Store, owner: str, state: str) -> bool:
    found = await jobs.find(store, owner=owner)
    return bool(found) and found[0]["state"] == state


async def test_a_failed_attempt_is_retried_on_the_kinds_schedule(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    calls = Calls(jobs.Outcome.retry("503 Service Unavailable"), RuntimeError("boom"),
                  jobs.Outcome.done())
    await runner(store, runners, calls, jobs.Schedule((0.3, 0.6, 60))).start()
    await store.write(jobs.enqueue("test", {}))
    await until(finished(store))

    job = await one_job(store)
    assert (job["state"], job["attempts"]) == (jobs.DONE, 3)
    first_wait, second_wait = calls.at[1] - calls.at[0], calls.at[2] - calls.at[1]
    assert 0.3 <= first_wait < 0.55  # the schedule's waits, in order
    assert 0.6 <= second_wait < 0.85
    assert [j.attempts for j in calls.jobs] == [0, 1, 2]


async def test_a_stop_406_ends_the_job_without_a_retry_and_records_with_it(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    calls = Calls(jobs.Outcome.stop("406 Not Acceptable", marker("stopped")))
    await runner(store, runners, calls, jobs.MAILGUN_RETRIES).start()
    await store.write(jobs.enqueue("test", {}))
    await until(finished(store))
    await asyncio.sleep(0.2)

    job = await one_job(store)
    assert (job["state"], job["attempts"], job["last_error"]) == (
        jobs.STOPPED, 1, "406 Not Acceptable")
    assert len(calls.jobs) == 1
    assert await markers(store, "stopped") == 1


async def test_a_job_is_given_up_after_its_schedule_and_only_then_records_it(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    calls = Calls(jobs.Outcome.retry("500 Internal Server Error", marker("given-up")))
    await runner(store, runners, calls, jobs.Schedule((0.05, 0.05))).start()
    await store.write(jobs.enqueue("test", {}))
    await until(finished(store))
    await asyncio.sleep(0.2)

    job = await one_job(store)
    assert (job["state"], job["attempts"], job["last_error"]) == (
        jobs.FAILED, 3, "500 Internal Server Error")
    assert len(calls.jobs) == 3  # the first attempt and one per interval
    assert await markers(store, "given-up") == 1  # written with the give-up, not each retry


async def test_a_schedules_max_age_gives_up_a_retry_that_would_come_too_late(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    calls = Calls(jobs.Outcome.retry("timeout"))
    await runner(store, runners, calls, jobs.Schedule((0.1,) * 50, max_age_s=0.35)).start()
    await store.write(jobs.enqueue("test", {}))
    await until(finished(store))

    assert (await one_job(store))["state"] == jobs.FAILED
    assert 2 <= len(calls.jobs) <= 4


async def test_a_lease_left_by_a_dead_node_is_taken_by_another_when_it_runs_out(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    dead, alive = await open_node("node-a"), await open_node("node-b")
    await dead.write(jobs.enqueue("test", {"n": 1}))
    lost = Calls()
    dead_runner = runner(dead, [], lost, lease_s=1.0)
    [held] = await dead_runner.lease(time.time(), 10)  # then node-a is killed (kill -9)
    leased_at = time.monotonic()
    assert (await one_job(dead))["lease_node"] == "node-a"

    calls = Calls()
    await runner(alive, runners, calls).start()  # frees node-b's leases only
    await until(finished(alive))

    assert calls.at[0] - leased_at >= 0.9  # not before node-a's lease ran out
    job = await one_job(alive)
    assert (job["state"], job["attempts"], job["lease_node"]) == (jobs.DONE, 1, "node-b")

    # node-a comes back late with an outcome of its lost lease: nothing changes
    late = jobs.Runner(dead)
    late.register("test", Calls(jobs.Outcome.retry("late")), jobs.Schedule((0.01,)))
    await late.run(held)
    job = await one_job(alive)
    assert (job["state"], job["attempts"], job["last_error"]) == (jobs.DONE, 1, "")


async def test_a_restarted_node_frees_its_own_leases_and_no_other_nodes(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.write(jobs.enqueue("test", {"n": 1}))
    [mine] = await runner(a, [], Calls(), lease_s=600).lease(time.time(), 1)
    await a.write(jobs.enqueue("test", {"n": 2}))
    [theirs] = await runner(b, [], Calls(), lease_s=600).lease(time.time(), 1)

    calls = Calls()
    await runner(a, runners, calls).start()  # node-a starting again
    await until(lambda: _all_states(a, {mine.id: jobs.DONE}))
    await asyncio.sleep(0.2)

    assert [j.payload for j in calls.jobs] == [{"n": 1}]
    states = {j["id"]: (j["state"], j["lease_node"]) for j in await jobs.find(a)}
    assert states[theirs.id] == (jobs.QUEUED, "node-b")  # node-b's lease is node-b's


async def _all_states(store: Store, expected: dict[int, str]) -> bool:
    states = {j["id"]: j["state"] for j in await jobs.find(store)}
    return all(states.get(i) == s for i, s in expected.items())


@pytest.mark.parametrize("nodes", [1, 2], ids=["one store", "two nodes"])
async def test_two_runners_never_run_a_job_twice(
    open_node: Opener, runners: list[jobs.Runner], nodes: int
) -> None:
    first = await open_node("node-a")
    second = first if nodes == 1 else await open_node("node-b")
    calls = Calls(hold_s=0.03)  # shared: overlaps and repeats would show in it
    for store in (first, second):
        await runner(store, runners, calls, batch=7, concurrency=5).start()
    await first.write(jobs.enqueue_many(jobs.NewJob("test", {"n": n}) for n in range(60)))
    await until(finished(first), timeout=30)

    ran = Counter(j.id for j in calls.jobs)
    assert len(ran) == 60 and set(ran.values()) == {1}
    assert calls.overlaps == 0
    found = await jobs.find(first)
    assert {(j["state"], j["attempts"]) for j in found} == {(jobs.DONE, 1)}
    if nodes == 2:  # both took work
        assert {j["lease_node"] for j in found} == {"node-a", "node-b"}


async def test_owners_see_their_pending_work_and_drop_their_jobs(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    await store.write(jobs.enqueue("test", {}, owner="m:1"), jobs.enqueue("test", {}, owner="m:2"),
                      jobs.enqueue("later", {}, owner="m:2"))
    await runner(store, runners, Calls()).start()
    await until(lambda: _state(store, "m:1", jobs.DONE))
    await until(lambda: jobs_of(store, "m:2", "test", jobs.DONE))

    assert await jobs.pending(store, ["m:1", "m:2", "m:3"]) == {"m:2"}  # "later" waits
    await store.write(*jobs.forget(["m:1", "m:2"]))
    assert await jobs.find(store) == []


async def jobs_of(store: Store, owner: str, kind: str, state: str) -> bool:
    found = await jobs.find(store, owner=owner, kind=kind)
    return bool(found) and found[0]["state"] == state


async def test_finished_jobs_are_purged_and_queued_ones_kept(
    open_node: Opener, runners: list[jobs.Runner]
) -> None:
    store = await open_node("a")
    await store.write(jobs.enqueue("test", {}), jobs.enqueue("later", {}))
    await runner(store, runners, Calls()).start()
    await until(lambda: jobs_of(store, "", "test", jobs.DONE))

    assert await jobs.purge_finished(store, time.time() - 60) == 0  # not old enough yet
    assert await jobs.purge_finished(store, time.time() + 1) == 1
    assert [j["kind"] for j in await jobs.find(store)] == ["later"]


async def test_schema_7_moves_inbound_jobs_into_the_outbox(
    empty_store_url: str, tmp_path: Path
) -> None:
    """A database at schema 6 keeps its route actions' jobs: they become jobs of the outbox,
    owned by their message, in the shape mta.inbound reads (a 406 'rejected' is 'stopped')."""
    old_rows = (
        "INSERT INTO inbound_jobs (inbound_key, kind, target, route_id, state, attempts,"
        " due_at, lease_until, created_at) VALUES"
        " ('k1', 'post', 'https://app.test/in', 'r1', 'queued', 1, 50, 50, 10),"
        " ('k2', 'notify', 'https://app.test/n', 'r2', 'rejected', 1, 60, 0, 20)"
    )
    store_url = empty_store_url
    if store_url:
        conn = await asyncpg.connect(store_url)
        async with conn.transaction():
            await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for number, migration in enumerate(MIGRATIONS[:6], start=1):
                await conn.execute(migration.postgresql)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
            await conn.execute(old_rows)
        await conn.close()
        store: Store = await PostgresStore.open(store_url, node_id="a", pool_size=2,
                                                statement_timeout_s=30)
    else:
        path = tmp_path / "old.db"
        conn6 = sqlite3.connect(path, isolation_level=None)
        for number, migration in enumerate(MIGRATIONS[:6], start=1):
            conn6.executescript(migration.sqlite)
            conn6.execute(f"PRAGMA user_version = {number}")
        conn6.execute(old_rows)
        conn6.close()
        store = await SqliteStore.open(path, node_id="a")
    try:
        found = [
            {k: j[k] for k in ("kind", "owner", "payload", "state", "attempts", "due_at",
                               "lease_until", "created_at", "finished_at")}
            for j in await jobs.find(store)
        ]
        assert found == [
            {"kind": "inbound.post", "owner": "inbound:k1",
             "payload": {"inbound": "k1", "target": "https://app.test/in", "route": "r1"},
             "state": "queued", "attempts": 1, "due_at": 50, "lease_until": 50,
             "created_at": 10, "finished_at": 0},
            {"kind": "inbound.notify", "owner": "inbound:k2",
             "payload": {"inbound": "k2", "target": "https://app.test/n", "route": "r2"},
             "state": "stopped", "attempts": 1, "due_at": 60, "lease_until": 0,
             "created_at": 20, "finished_at": 60},
        ]
        tables = await store.fetchall(
            "SELECT name FROM sqlite_master WHERE name = 'inbound_jobs'"
            if not store_url else
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_name = 'inbound_jobs'"
        )
        assert tables == []
        # a job of a lease no node named (from before leases named nodes) is freed at start
        freed = jobs.Runner(store)
        freed.register("inbound.post", Calls(), jobs.NO_RETRY)
        assert await freed.release_own(100.0) == 1
    finally:
        await store.close()
