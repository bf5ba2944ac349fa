"""Webhooks (the manual's "Webhooks"): each domain's URLs per event, and posting events there.

- The `webhooks` table is owned here: one row per (domain, name, URL). Current names take up to
  three URLs and post JSON; legacy names one URL and post form fields (mta.webhooks.payloads).
  `unsubscribe` is the legacy name: it is what the older API and the manual call that hook.
- Fan-out needs no code in the producers of events: the `events_webhooks` trigger (migration
  8) queues a job per matching URL in the event's own transaction, owned by
  'webhook:<webhooks.id>' with the event id as payload ('webhook.once' for delivery
  notifications, which Mailgun posts once and never retries). Removing a URL drops its jobs.
- `Webhooks.start` runs the jobs on a runner of their own, so webhooks never wait behind route
  forwards and the other way round. 200 is done, 406 stops, anything else (a timeout, a refused
  connection, a redirect, which is never followed) is retried on `webhooks.retry_intervals_s`.
  Each post is signed with the account key at the moment it is made (a fresh token each time).
- Fairness: at most `posts_per_url` posts are in flight to one URL. A job over that waits a
  moment for a turn, and if none comes it is put back for later without counting an attempt,
  so a slow or dead receiver holds a few of the runner's slots, never all of them, and other
  domains' webhooks keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
from yarl import URL

from mta import jobs, webpost
from mta.account import Account, signed_fields
from mta.config import Config
from mta.dns import Resolver
from mta.store import Statement, Store
from mta.webhooks.payloads import (
    CURRENT_NAMES,
    LEGACY_NAMES,
    is_legacy,
    json_body,
    legacy_fields,
    legacy_form,
    sample_event,
)

log = logging.getLogger("mta.webhooks")

__all__ = ["CURRENT_NAMES", "LEGACY_NAMES", "WebhookError", "Webhooks", "is_legacy"]

KINDS = ("webhook", "webhook.once")  # as the events_webhooks trigger names them
MAX_URLS = 3  # per current name (Mailgun's limit); legacy names take one
TURN_WAIT_S = 0.25  # a job waits this long for a busy URL's turn before it is put back
MIN_LATER_S = 0.05
READ_CHUNK = 200  # events read in one query


class WebhookError(Exception):
    """A refused change, with its HTTP status and the client-facing text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Hook:
    id: int
    domain: str
    name: str
    url: str


def check_name(name: str) -> None:
    if name not in CURRENT_NAMES and name not in LEGACY_NAMES:
        names = ", ".join((*CURRENT_NAMES, *LEGACY_NAMES))
        raise WebhookError(400, f"Invalid webhook name {name[:60]!r}: expected one of {names}")


def check_urls(name: str, urls: Sequence[str]) -> list[str]:
    """The URLs as given (duplicates dropped), or the 400 saying what is wrong with them."""
    kept = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
    if not kept:
        raise WebhookError(400, "url parameter is missing")
    limit = 1 if is_legacy(name) else MAX_URLS
    if len(kept) > limit:
        raise WebhookError(400, f"The webhook '{name}' takes at most {limit} URL(s)"
                           if limit > 1 else f"The legacy webhook '{name}' takes one url")
    for url in kept:
        try:
            parsed = URL(url)
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise WebhookError(400, f"Invalid url {webpost.redact(url)[:200]!r}: expected an"
                               " http:// or https:// URL")
    return kept


@dataclass
class _Turns:
    """Posts in flight to one URL (their start times) and the jobs waiting for a turn."""

    limit: int
    started: list[float] = field(default_factory=list)
    waiting: int = 0
    freed: asyncio.Event = field(default_factory=asyncio.Event)

    async def take(self, within_s: float) -> float | None:
        """A turn (its start, to hand back to `give_back`); None if none came in time, or the
        receiver is slow (its oldest post is older than `within_s`), or so many already wait
        that this one would only hold a runner slot."""
        if len(self.started) >= self.limit:
            if self.waiting >= self.limit or self._oldest_s() > within_s:
                return None  # a stuck receiver's turn will not come soon: no slot is held
            self.waiting += 1
            try:
                async with asyncio.timeout(within_s):
                    while len(self.started) >= self.limit:
                        self.freed.clear()
                        await self.freed.wait()
            except TimeoutError:
                return None
            finally:
                self.waiting -= 1
        started = time.monotonic()
        self.started.append(started)
        return started

    def give_back(self, started: float) -> None:
        self.started.remove(started)
        self.freed.set()

    def _oldest_s(self) -> float:
        now = time.monotonic()
        return now - min(self.started, default=now)

    def later_s(self, timeout_s: float) -> float:
        """How long a job put back waits: about as long as the oldest post in flight has
        taken so far (a fast receiver frees turns in milliseconds, a stuck one not before its
        timeout), spread so that the put-back jobs do not all return at once."""
        return min(timeout_s, max(MIN_LATER_S, self._oldest_s())) * random.uniform(1.0, 1.5)


class _EventReads:
    """Stored event payloads, read together: the jobs of one lease start at once, and one
    query for all of them costs a reader about what one costs (under load, reads queue for the
    reader threads, and a read per job was half a post's time)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wanted: dict[tuple[str, float, str], asyncio.Future[bytes | None]] = {}
        self._reading: set[asyncio.Task[None]] = set()

    async def payload(self, domain: str, ts: float, event_id: str) -> bytes | None:
        """The event's payload; None if it is gone. The events trigger made the job at the
        event's time, so (domain, ts) finds it by the events index."""
        key = (domain, ts, event_id)
        future = self._wanted.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._wanted:  # after the jobs started with this one have asked too
                loop.call_soon(self._read_wanted)
            future = self._wanted[key] = loop.create_future()
        return await asyncio.shield(future)

    def _read_wanted(self) -> None:
        wanted, self._wanted = self._wanted, {}
        task = asyncio.create_task(self._read(wanted))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def _read(self, wanted: dict[tuple[str, float, str], asyncio.Future[bytes | None]]
                    ) -> None:
        try:
            found: dict[tuple[str, float, str], bytes] = {}
            keys = list(wanted)
            for domain in {k[0] for k in keys}:
                mine = [k for k in keys if k[0] == domain]
                for start in range(0, len(mine), READ_CHUNK):
                    chunk = mine[start : start + READ_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = await self._store.fetchall(
                        f"SELECT id, ts, payload FROM events WHERE domain = ? AND ts IN ({marks})"
                        f" AND id IN ({marks})",
                        [domain, *(k[1] for k in chunk), *(k[2] for k in chunk)],
                    )
                    for row in rows:
                        found[(domain, row["ts"], row["id"])] = bytes(row["payload"])
        except Exception as exc:
            for future in wanted.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for key, future in wanted.items():
            if not future.done():
                future.set_result(found.get(key))


class Webhooks:
    def __init__(
        self, config: Config, store: Store, resolver: Resolver, account: Account,
        failed: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._failed = failed  # metrics: told the action ("retry", "stop", "fail") of a failure
        self._store = store
        self._resolver = resolver
        self._account = account
        self._hooks: dict[int, Hook] = {}
        self._hooks_version = -1
        self._turns: dict[str, _Turns] = {}
        self._events = _EventReads(store)
        self._http: aiohttp.ClientSession | None = None
        settings = config.webhooks
        self._jobs = jobs.Runner(store, lease_s=settings.lease_s,
                                 concurrency=settings.concurrency, name="webhooks")
        self._jobs.register("webhook", self._run, jobs.Schedule(tuple(settings.retry_intervals_s)))
        self._jobs.register("webhook.once", self._run, jobs.NO_RETRY)

    # -- the table -----------------------------------------------------------------------------

    async def _rows(self, domain: str, name: str | None = None) -> list[Hook]:
        sql = "SELECT id, domain, name, url FROM webhooks WHERE domain = ?"
        params: list[object] = [domain]
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        rows = await self._store.fetchall(sql + " ORDER BY id", params)
        return [Hook(r["id"], r["domain"], r["name"], r["url"]) for r in rows]

    async def list(self, domain: str) -> dict[str, list[str]]:
        """{name: [url, ...]} of the names configured for `domain`, in name order."""
        found: dict[str, list[str]] = {}
        for hook in sorted(await self._rows(domain), key=lambda h: (h.name, h.id)):
            found.setdefault(hook.name, []).append(hook.url)
        return found

    async def get(self, domain: str, name: str) -> list[str]:
        check_name(name)
        urls = [h.url for h in await self._rows(domain, name)]
        if not urls:
            raise WebhookError(404, "Webhook not found")
        return urls

    async def create(self, domain: str, name: str, urls: Sequence[str]) -> list[str]:
        check_name(name)
        kept = check_urls(name, urls)
        if await self._rows(domain, name):
            raise WebhookError(400, f"Webhook '{name}' already exists")
        await self._store.write(self._insert(domain, name, kept))
        return kept

    async def update(self, domain: str, name: str, urls: Sequence[str]) -> list[str]:
        """The URLs become `urls`; jobs queued for a URL that stays are kept."""
        check_name(name)
        kept = check_urls(name, urls)
        existing = await self._rows(domain, name)
        if not existing:
            raise WebhookError(404, "Webhook not found")
        await self._store.write(*self._replace(domain, name, existing, kept))
        return kept

    async def delete(self, domain: str, name: str) -> list[str]:
        """Remove the hook and its queued posts; the URLs it had."""
        check_name(name)
        existing = await self._rows(domain, name)
        if not existing:
            raise WebhookError(404, "Webhook not found")
        await self._store.write(*self._replace(domain, name, existing, []))
        return [h.url for h in existing]

    async def set_url(self, domain: str, url: str, names: Sequence[str], *, only: bool) -> None:
        """The v4 form: `url` fires on each of `names` (and, with `only`, on no other name)."""
        if not names:
            raise WebhookError(400, "event_types parameter is missing")
        for name in names:
            check_name(name)
            check_urls(name, [url])
        url = url.strip()
        existing = await self._rows(domain)
        statements: list[Statement] = []
        for name in dict.fromkeys(names):
            urls = [h.url for h in existing if h.name == name]
            if url not in urls:
                check_urls(name, [*urls, url])  # the limit per name applies here too
                statements.append(self._insert(domain, name, [url]))
        if only:
            gone = [h for h in existing if h.url == url and h.name not in names]
            statements += self._forget(gone)
        if statements:
            await self._store.write(*statements)

    def _insert(self, domain: str, name: str, urls: Sequence[str]) -> Statement:
        now = time.time()
        return Statement(
            "INSERT INTO webhooks (domain, name, url, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [(domain, name, url, now) for url in urls],
        )

    def _replace(
        self, domain: str, name: str, existing: list[Hook], urls: list[str]
    ) -> list[Statement]:
        statements = self._forget([h for h in existing if h.url not in urls])
        if urls:
            statements.append(self._insert(domain, name, urls))
        return statements

    def _forget(self, gone: list[Hook]) -> list[Statement]:
        """Delete these rows and their queued jobs."""
        if not gone:
            return []
        ids = [h.id for h in gone]
        marks = ",".join("?" * len(ids))
        return [Statement(f"DELETE FROM webhooks WHERE id IN ({marks})", [ids]),
                *jobs.forget([_owner(i) for i in ids])]

    async def _hook(self, owner: str) -> Hook | None:
        """The hook a job belongs to, cached until admin data changes (a hook made a moment
        ago on another node is read at once)."""
        version = self._store.admin_version()
        if version != self._hooks_version:
            self._hooks, self._hooks_version = {}, version
        hook_id = int(owner.removeprefix("webhook:"))
        hook = self._hooks.get(hook_id)
        if hook is None:
            row = await self._store.fetchone(
                "SELECT id, domain, name, url FROM webhooks WHERE id = ?", (hook_id,)
            )
            if row is None:
                return None
            hook = self._hooks[hook_id] = Hook(row["id"], row["domain"], row["name"], row["url"])
        return hook

    # -- posting -------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self._config.webhooks
        policy = webpost.Policy(settings.allow, settings.deny, "webhooks.deny")
        self._http = webpost.session(self._resolver, policy, settings.timeout_s)
        await self._jobs.start()

    async def stop(self) -> None:
        await self._jobs.stop(self._config.outbound.stop_grace_s)
        if self._http is not None:
            await self._http.close()

    async def _run(self, job: jobs.Job) -> jobs.Outcome:
        outcome = await self._attempt(job)
        if self._failed is not None and outcome.action in ("retry", "stop", "fail"):
            self._failed(outcome.action)
        return outcome

    async def _attempt(self, job: jobs.Job) -> jobs.Outcome:
        hook = await self._hook(job.owner)
        if hook is None:
            return jobs.Outcome.fail("the webhook was removed")
        event_json = await self._events.payload(hook.domain, job.created_at, job.payload)
        if event_json is None:
            return jobs.Outcome.fail("the event is gone (past its retention)")
        turns = self._turns.get(hook.url)
        if turns is None:
            turns = self._turns[hook.url] = _Turns(self._config.webhooks.posts_per_url)
        started = await turns.take(TURN_WAIT_S)
        if started is None:
            return jobs.Outcome.later(turns.later_s(self._config.webhooks.timeout_s))
        try:
            status = await self._post(hook.name, hook.url, hook.domain, event_json)
        except webpost.PostError as exc:
            return jobs.Outcome.retry(f"{hook.name} to {webpost.redact(hook.url)}: {exc}")
        finally:
            turns.give_back(started)
            if not turns.started and not turns.waiting:
                self._turns.pop(hook.url, None)
        if status is None or status == 200:
            return jobs.Outcome.done()
        if status == 406:
            return jobs.Outcome.stop(f"{hook.name} to {webpost.redact(hook.url)}: 406, not"
                                     " retried")
        return jobs.Outcome.retry(f"{hook.name} to {webpost.redact(hook.url)}:"
                                  f" {webpost.status_line(status)}")

    async def _post(self, name: str, url: str, domain: str, event_json: bytes) -> int | None:
        """Post one event in the hook's style; its status, or None when this legacy hook
        does not post this event (a `drop` of a hard bounce, a `bounce` of a suppression)."""
        assert self._http is not None, "Webhooks.start() first"
        signature = signed_fields(await self._account.signing_key())
        if is_legacy(name):
            fields = legacy_fields(name, orjson.loads(event_json), domain)
            if fields is None:
                return None
            return await webpost.post(self._http, url, legacy_form(fields, signature))
        return await webpost.post(self._http, url, json_body(event_json, signature))

    async def test(self, domain: str, name: str, url: str | None) -> tuple[int, str]:
        """`PUT …/webhooks/<name>/test`: post a sample event to `url` (else the hook's first
        URL) now; the status and its line, or 0 and what went wrong."""
        check_name(name)
        target = check_urls(name, [url])[0] if url else (await self.get(domain, name))[0]
        try:
            status = await self._post(name, target, domain, sample_event(name, domain).to_json())
        except webpost.PostError as exc:
            return exc.status, str(exc)
        assert status is not None, "a sample event is one its hook posts"
        return status, webpost.status_line(status)


def _owner(hook_id: int) -> str:
    return f"webhook:{hook_id}"
