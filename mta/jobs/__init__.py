"""Jobs: one durable outbox for the work that leaves the process (route forwards, store
notifications, webhooks) — the only writer of the `jobs` table.

Why an outbox: a forward or a webhook must happen exactly when its cause does (a received
message, an event), survive a crash, and never block the commit that acknowledges the cause. So
the cause's transaction also inserts the job (`enqueue` builds that statement) and a `Runner`
does the work afterwards, from the store, with the kind's retry schedule.

- A kind ("inbound.post", "webhook", ...) is registered on a runner with its handler and its
  `Schedule`: retry policy is data, not code in each caller. A handler returns an `Outcome`:
  done, retry (given up when the schedule runs out), stop (Mailgun's 406: the application
  refused, never retried), fail (nothing to retry, e.g. the message is gone) or later (not
  tried now, e.g. its receiver already has its share of posts in flight: due again after a
  wait, without counting an attempt).
- Leases are as in the delivery queue (mta.queue): a leased job has `due_at = lease_until`, so
  the due-jobs index skips it, and names the node holding it (`lease_node`). A node killed with
  kill -9 loses nothing: its jobs become due again when the lease runs out and any runner takes
  them. A runner starting frees only its own node's leases. On PostgreSQL, runners leasing
  together skip each other's locked rows (FOR UPDATE SKIP LOCKED); on SQLite the one writer
  serialises leases.
- An outcome is recorded only by the lease that ran the job (`lease_node` and `lease_until`
  must still be the ones taken), so a runner whose lease ran out cannot overwrite the run of
  the runner that took the job over. A handler is given at most `lease_s * RUN_SHARE` to run,
  so on a live node a lease never runs out under a running job.
- A job belongs to an `owner` (e.g. "inbound:<key>"): the owner asks which of its keys still
  have work queued (`pending`) and drops its jobs with itself (`forget`). Finished jobs are
  kept `keep_finished_s` for inspection (`last_error`), then purged once per cluster.

At-least-once: a handler that had its effect but whose node died before the outcome was
committed runs again on another node, as a delivery does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from mta.store import Statement, Store, periodic

log = logging.getLogger("mta.jobs")

QUEUED, DONE, FAILED, STOPPED = "queued", "done", "failed", "stopped"
RUN_SHARE = 0.8  # of the lease a handler may take before it counts as a failed attempt
ERROR_CHARS = 1000  # of a failure kept in `last_error`
PURGE_EVERY_S = 3600.0  # finished jobs are purged this often, by one node of the cluster
PURGE_CHECK_S = 60.0  # how often a runner asks whether that is its turn
PURGE_CHUNK = 500
_CHUNK = 500  # owners per statement

_INSERT = (
    "INSERT INTO jobs (kind, owner, payload, state, due_at, created_at)"
    " VALUES (?, ?, ?, 'queued', ?, ?)"
)
_LEASE = (
    "UPDATE jobs SET lease_until = ?1, due_at = ?1, lease_node = ?2"
    " WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND due_at <= ?3"
    " AND kind IN ({kinds}) ORDER BY due_at LIMIT ?4{lock})"
    " RETURNING id, kind, owner, payload, attempts, created_at"
)
_LOCK = {"sqlite": "", "postgresql": " FOR UPDATE SKIP LOCKED"}
_HELD = " WHERE id = ? AND state = 'queued' AND lease_node = ? AND lease_until = ?"
_FINISH = (
    "UPDATE jobs SET state = ?, attempts = attempts + 1, lease_until = 0, last_error = ?,"
    " finished_at = ?" + _HELD
)
_RETRY = (
    "UPDATE jobs SET attempts = attempts + 1, due_at = ?, lease_until = 0, last_error = ?"
    + _HELD
)
_LATER = "UPDATE jobs SET due_at = ?, lease_until = 0" + _HELD


@dataclass(frozen=True)
class Schedule:
    """Waits (seconds) before each retry of a failed attempt: len(intervals) + 1 attempts in
    all, then the job is given up. `max_age_s`, when set, also gives up a retry that would
    come later than that after the job was created (Mailgun's "retry during 8 hours", even
    when the nodes were down for part of it)."""

    intervals: tuple[float, ...]
    max_age_s: float | None = None

    def next_wait(self, failed_attempts: int, created_at: float, now: float) -> float | None:
        """The wait before the next attempt after `failed_attempts` failures; None: give up."""
        if failed_attempts > len(self.intervals):
            return None
        wait = float(self.intervals[failed_attempts - 1])
        if self.max_age_s is not None and now + wait > created_at + self.max_age_s:
            return None
        return wait


# The manual's schedule for webhooks and route forwards: 10m, 10m, 15m, 30m, 1h, 2h, 4h.
MAILGUN_RETRIES = Schedule((600, 600, 900, 1800, 3600, 7200, 14400))
NO_RETRY = Schedule(())


def enqueue(
    kind: str,
    payload: Mapping[str, Any],
    *,
    owner: str = "",
    due_at: float | None = None,
    now: float | None = None,
) -> Statement:
    """The statement that queues one job; put it in the transaction of the job's cause."""
    return enqueue_many([NewJob(kind, payload, owner, due_at)], now=now)


@dataclass(frozen=True)
class NewJob:
    kind: str
    payload: Mapping[str, Any]
    owner: str = ""
    due_at: float | None = None  # None: now


def enqueue_many(new: Iterable[NewJob], *, now: float | None = None) -> Statement:
    """One statement queueing several jobs (one executemany on SQLite's grouped writer)."""
    now = time.time() if now is None else now
    rows = [
        (j.kind, j.owner, orjson.dumps(j.payload), now if j.due_at is None else j.due_at, now)
        for j in new
    ]
    return Statement(_INSERT, rows)


@dataclass(frozen=True)
class Job:
    """A leased job as its handler sees it."""

    id: int
    kind: str
    owner: str
    payload: dict[str, Any]
    attempts: int  # attempts made before this one
    created_at: float
    lease_until: float  # identifies this lease when its outcome is recorded

    @property
    def attempt_no(self) -> int:
        return self.attempts + 1


@dataclass(frozen=True)
class Outcome:
    """What a handler made of one attempt. `record` statements (events, say) are written in
    the transaction that records the outcome; for a retry, only if it is given up."""

    action: Literal["done", "retry", "stop", "fail", "later"]
    error: str = ""
    record: tuple[Statement, ...] = ()
    wait_s: float = 0.0  # later: how long until it is due again

    @classmethod
    def done(cls, *record: Statement) -> Outcome:
        return cls("done", "", record)

    @classmethod
    def retry(cls, error: str, *if_given_up: Statement) -> Outcome:
        """A temporary failure: tried again per the kind's schedule, or given up."""
        return cls("retry", error, if_given_up)

    @classmethod
    def stop(cls, reason: str, *record: Statement) -> Outcome:
        """The other side refused it for good (HTTP 406): not retried, state 'stopped'."""
        return cls("stop", reason, record)

    @classmethod
    def fail(cls, error: str, *record: Statement) -> Outcome:
        """Nothing left to retry (the cause is gone, the work is refused here): 'failed'."""
        return cls("fail", error, record)

    @classmethod
    def later(cls, wait_s: float) -> Outcome:
        """Not attempted: due again in `wait_s`, no attempt counted (a busy receiver's turn
        comes later, and the runner's slots go to other work meanwhile)."""
        return cls("later", wait_s=wait_s)


Handler = Callable[[Job], Awaitable[Outcome]]


@dataclass(frozen=True)
class Kind:
    handler: Handler
    schedule: Schedule


@dataclass
class Runner:
    """Leases due jobs of the kinds registered on it, runs their handlers (at most
    `concurrency` at once) and records the outcomes. Several runners (in one process or on
    several nodes) may share a store; each job runs in one of them at a time."""

    store: Store
    lease_s: float = 600.0
    batch: int = 100
    concurrency: int = 20
    poll_s: float = 0.05
    keep_finished_s: float = 86400.0
    name: str = "jobs"
    _kinds: dict[str, Kind] = field(default_factory=dict, init=False)
    _running: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _handling: int = field(default=0, init=False)  # started jobs whose handler has not returned
    _loop: asyncio.Task[None] | None = field(default=None, init=False)
    _room: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def register(self, kind: str, handler: Handler, schedule: Schedule) -> None:
        """Run jobs of `kind` with `handler`; a failed attempt is retried per `schedule`.
        Register before `start`."""
        if self._loop is not None:
            raise RuntimeError("register kinds before the runner starts")
        self._kinds[kind] = Kind(handler, schedule)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Free the leases this node's previous run left (it crashed or was killed), then run.
        Other nodes' leases are theirs: they run out on their own if those nodes are gone."""
        released = await self.release_own(time.time())
        if released:
            log.info("%s: %d job(s) left leased by this node's previous run are due again",
                     self.name, released)
        self._loop = asyncio.create_task(self._run_loop(), name=self.name)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop leasing; give running jobs `grace_s` to finish. A job cancelled after that
        keeps its lease: this node's next start frees it, or another node takes it when the
        lease runs out."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def release_own(self, now: float) -> int:
        """Make this node's leased jobs (and leases no node named) of our kinds due now."""
        if not self._kinds:
            return 0
        marks = ",".join("?" * len(self._kinds))
        rows = await self.store.write_returning(
            "UPDATE jobs SET due_at = ?, lease_until = 0 WHERE state = 'queued'"
            f" AND lease_until > 0 AND lease_node IN (?, '') AND kind IN ({marks}) RETURNING id",
            (now, self.store.node_id, *self._kinds),
        )
        return len(rows)

    # -- leasing and running -----------------------------------------------------------------

    async def _run_loop(self) -> None:
        purge_checked = 0.0
        while True:
            try:
                now = time.time()
                if now - purge_checked > PURGE_CHECK_S:
                    purge_checked = now
                    if await periodic.claim(self.store, f"{self.name}-purge", PURGE_EVERY_S):
                        await purge_finished(self.store, now - self.keep_finished_s)
                # a busy runner leases in batches (one lease is one commit), not a job at a time
                room = self.concurrency - self._handling
                if room < (self._least_lease() if self._handling else 1):
                    self._room.clear()
                    await self._room.wait()
                    continue
                if not await self.start_due(now, min(room, self.batch)):
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: taking due jobs failed; trying again", self.name)
                await asyncio.sleep(1.0)

    async def lease(self, now: float, limit: int) -> list[Job]:
        """Take up to `limit` due jobs of our kinds for this node, oldest due first."""
        if not self._kinds or not await self._anything_due(now):
            return []
        kinds = ",".join(f"?{n}" for n in range(5, 5 + len(self._kinds)))
        sql = _LEASE.format(kinds=kinds, lock=_LOCK[self.store.dialect])
        until = now + self.lease_s
        rows = await self.store.write_returning(
            sql, (until, self.store.node_id, now, limit, *self._kinds)
        )
        return [
            Job(row["id"], row["kind"], row["owner"], orjson.loads(bytes(row["payload"])),
                row["attempts"], row["created_at"], until)
            for row in rows
        ]

    async def _anything_due(self, now: float) -> bool:
        """A read first: an idle runner polls without taking the writer."""
        marks = ",".join("?" * len(self._kinds))
        row = await self.store.fetchone(
            f"SELECT 1 FROM jobs WHERE state = 'queued' AND due_at <= ? AND kind IN ({marks})"
            " LIMIT 1",
            (now, *self._kinds),
        )
        return row is not None

    def _least_lease(self) -> int:
        return max(1, min(self.batch, self.concurrency) // 4)

    async def start_due(self, now: float, limit: int) -> int:
        """Lease due jobs and start running them; how many were started."""
        leased = await self.lease(now, limit)
        self._handling += len(leased)
        for job in leased:
            task = asyncio.create_task(self.run(job, holds_slot=True),
                                       name=f"{self.name}-{job.id}")
            self._running.add(task)
            task.add_done_callback(self._finished)
        return len(leased)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._room.set()

    async def run_due(self, now: float | None = None) -> int:
        """Lease what is due now, run it and wait for the outcomes (tests, one-off runs)."""
        leased = await self.lease(time.time() if now is None else now, self.batch)
        await asyncio.gather(*(self.run(job) for job in leased))
        return len(leased)

    async def run(self, job: Job, *, holds_slot: bool = False) -> None:
        """One attempt of a leased job, and its outcome recorded. A job started by the loop
        `holds_slot` of `concurrency` while its handler runs, not while its outcome waits for
        its commit: the commit is the writer's work, and slots are for the handlers' (posts in
        flight)."""
        kind = self._kinds[job.kind]
        try:
            async with asyncio.timeout(self.lease_s * RUN_SHARE):
                outcome = await kind.handler(job)
        except TimeoutError:
            outcome = Outcome.retry(f"took longer than {self.lease_s * RUN_SHARE:.0f} s")
        except Exception as exc:
            log.exception("%s: job %d (%s) failed; it is tried again", self.name, job.id,
                          job.kind)
            outcome = Outcome.retry(f"local error: {type(exc).__name__}")
        finally:
            if holds_slot:
                self._handling -= 1
                self._room.set()
        try:
            await self._record(job, kind.schedule, outcome)
        except Exception:  # the lease runs out and the job runs again (at-least-once)
            log.exception("%s: recording the outcome of job %d (%s) failed", self.name,
                          job.id, job.kind)

    async def _record(self, job: Job, schedule: Schedule, outcome: Outcome) -> None:
        now = time.time()
        held = (job.id, self.store.node_id, job.lease_until)
        error = outcome.error[:ERROR_CHARS]
        if outcome.action == "later":
            await self.store.write(Statement(_LATER, [(now + outcome.wait_s, *held)]))
            return
        if outcome.action == "retry":
            wait = schedule.next_wait(job.attempt_no, job.created_at, now)
            if wait is not None:
                log.info("%s: job %d (%s) attempt %d failed (%s): tried again in %.0f s",
                         self.name, job.id, job.kind, job.attempt_no, error, wait)
                await self.store.write(Statement(_RETRY, [(now + wait, error, *held)]))
                return
            log.warning("%s: job %d (%s) given up after %d attempt(s): %s",
                        self.name, job.id, job.kind, job.attempt_no, error)
            state = FAILED
        else:
            state = {"done": DONE, "stop": STOPPED, "fail": FAILED}[outcome.action]
            if state != DONE:
                log.info("%s: job %d (%s) %s: %s", self.name, job.id, job.kind, state, error)
        await self.store.write(Statement(_FINISH, [(state, error, now, *held)]), *outcome.record)


# -- owners ------------------------------------------------------------------------------------


async def pending(store: Store, owners: Sequence[str]) -> set[str]:
    """The owners among `owners` that still have a job queued (leased or not)."""
    found: set[str] = set()
    for start in range(0, len(owners), _CHUNK):
        chunk = list(owners[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = await store.fetchall(
            f"SELECT DISTINCT owner FROM jobs WHERE state = 'queued' AND owner IN ({marks})",
            chunk,
        )
        found.update(row["owner"] for row in rows)
    return found


def forget(owners: Sequence[str]) -> list[Statement]:
    """Statements dropping every job of `owners`, queued ones included: for the owner's
    transaction that removes the owners themselves."""
    statements = []
    for start in range(0, len(owners), _CHUNK):
        chunk = list(owners[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        statements.append(Statement(f"DELETE FROM jobs WHERE owner IN ({marks})", [chunk]))
    return statements


async def purge_finished(store: Store, before: float) -> int:
    """Drop jobs finished before `before`, a few hundred at a time (one long transaction
    would hold up every acknowledgement behind it); how many."""
    total = 0
    while True:
        rows = await store.fetchall(
            "SELECT id FROM jobs WHERE finished_at > 0 AND finished_at < ? LIMIT ?",
            (before, PURGE_CHUNK),
        )
        if not rows:
            return total
        ids = [row["id"] for row in rows]
        marks = ",".join("?" * len(ids))
        await store.write(Statement(f"DELETE FROM jobs WHERE id IN ({marks})", [ids]))
        total += len(ids)


@dataclass(frozen=True)
class Backlog:
    queued: int  # not finished yet: due, waiting for a retry, or running
    oldest_at: float | None  # when the oldest of them was queued


async def backlog(store: Store, kinds: Sequence[str]) -> Backlog:
    """What waits of these kinds, across the cluster (metrics)."""
    marks = ",".join("?" * len(kinds))
    row = await store.fetchone(
        f"SELECT count(*) AS n, min(created_at) AS oldest FROM jobs"
        f" WHERE state = 'queued' AND kind IN ({marks})",
        list(kinds),
    )
    assert row is not None
    return Backlog(int(row["n"]), row["oldest"])


async def find(store: Store, *, owner: str | None = None, kind: str | None = None
               ) -> list[dict[str, Any]]:
    """Jobs as stored (payload decoded), oldest first: for tests, the CLI and inspection."""
    where, params = ["1 = 1"], []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    rows = await store.fetchall(
        "SELECT id, kind, owner, payload, state, attempts, due_at, lease_until, lease_node,"
        f" last_error, created_at, finished_at FROM jobs WHERE {' AND '.join(where)}"
        " ORDER BY id",
        params,
    )
    found = []
    for row in rows:
        job = dict(row)
        job["payload"] = orjson.loads(bytes(job["payload"]))
        found.append(job)
    return found
